// Copies the ESM build of @msgpack/msgpack from node_modules into
// gateway/static/vendor/msgpack/, so that the gateway serves it at
// /vendor/msgpack/index.mjs with no CDN: every *.mjs of dist.esm/ (keeping
// the folder layout, so the relative imports resolve), its LICENSE, and a
// VERSION file. Source maps are left out and so are the comments pointing at
// them (a browser would fetch them and get 404s).
//
//   npm run vendor            refresh the copy
//   npm run vendor -- --check exit 1 if the copy differs from node_modules

import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SOURCE = path.resolve(here, '../node_modules/@msgpack/msgpack');
export const DEST = path.resolve(here, '../../../gateway/static/vendor/msgpack');

const SOURCE_MAP_COMMENT = /^\/\/# sourceMappingURL=.*$/gm;

/**
 * Every file under `dir`/`rel`, as paths relative to `dir`, sorted.
 * @param {string} dir
 * @param {string} [rel]
 * @returns {Promise<string[]>}
 */
async function walk(dir, rel = '') {
  /** @type {string[]} */
  const out = [];
  for (const entry of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const name = path.posix.join(rel, entry.name);
    if (entry.isDirectory()) out.push(...(await walk(dir, name)));
    else out.push(name);
  }
  return out.sort();
}

/** The files the vendored folder must hold: Map of relative path -> content. */
export async function expectedFiles(source = SOURCE) {
  const pkg = JSON.parse(await readFile(path.join(source, 'package.json'), 'utf8'));
  const files = new Map();
  const esm = path.join(source, 'dist.esm');
  for (const rel of await walk(esm)) {
    if (!rel.endsWith('.mjs')) continue;
    const text = await readFile(path.join(esm, rel), 'utf8');
    files.set(rel, text.replace(SOURCE_MAP_COMMENT, '').trimEnd() + '\n');
  }
  files.set('LICENSE', await readFile(path.join(source, 'LICENSE'), 'utf8'));
  files.set(
    'VERSION',
    `${pkg.name} ${pkg.version} (dist.esm), copied by clients/js/scripts/vendor.mjs\n`,
  );
  return files;
}

/**
 * Relative paths that differ between the vendored folder and `expected`.
 * @param {Map<string, string>} expected
 * @param {string} [dest]
 */
export async function differences(expected, dest = DEST) {
  /** @type {string[]} */
  let present = [];
  try {
    present = await walk(dest);
  } catch {
    // no folder yet: everything differs
  }
  const diff = present.filter((rel) => !expected.has(rel));
  for (const [rel, text] of expected) {
    let have = null;
    try {
      have = await readFile(path.join(dest, rel), 'utf8');
    } catch {
      // missing
    }
    if (have !== text) diff.push(rel);
  }
  return diff.sort();
}

async function main() {
  const expected = await expectedFiles();
  if (process.argv.includes('--check')) {
    const diff = await differences(expected);
    if (diff.length) {
      console.error(`vendored @msgpack/msgpack is out of date (run npm run vendor): ${diff.join(', ')}`);
      process.exit(1);
    }
    console.log(`vendored @msgpack/msgpack is up to date in ${DEST}`);
    return;
  }
  await rm(DEST, { recursive: true, force: true });
  for (const [rel, text] of expected) {
    const file = path.join(DEST, rel);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, text);
  }
  console.log(`copied ${expected.size} files to ${DEST}`);
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
