// The vendored @msgpack/msgpack in gateway/static/vendor/msgpack/ is what
// `npm run vendor` makes from node_modules, and it loads by relative imports
// only: with the README's import map, the browser's view of src/ works.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

import { DEST, differences, expectedFiles } from '../scripts/vendor.mjs';

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));

describe('vendored msgpack', () => {
  it('matches node_modules (else run: npm run vendor)', async () => {
    const expected = await expectedFiles();
    assert.ok(expected.has('index.mjs'));
    assert.ok(expected.has('LICENSE'));
    assert.ok(![...expected.keys()].some((f) => f.endsWith('.map')));
    assert.deepEqual(await differences(expected), []);
  });

  it('round-trips a frame through the vendored index.mjs', async () => {
    const msgpack = await import(pathToFileURL(path.join(DEST, 'index.mjs')).href);
    const frame = { t: 'ev', seq: 1, k: 'log', ts: 1.5, d: { msg: 'hé', b: new Uint8Array([1, 2]) } };
    assert.deepEqual(msgpack.decode(msgpack.encode(frame)), frame);
  });

  it('serves src/ with the import map of the README', async () => {
    // Resolve '@msgpack/msgpack' the way the browser's import map does, and
    // nothing else bare: a second bare import in src/ would fail here.
    const vendored = pathToFileURL(path.join(DEST, 'index.mjs')).href;
    const hooks = `
      export async function resolve(spec, ctx, next) {
        if (spec === '@msgpack/msgpack') return { url: ${JSON.stringify(vendored)}, shortCircuit: true };
        if (!spec.startsWith('.') && !spec.startsWith('file:') && !spec.startsWith('node:')
            && ctx.parentURL && ctx.parentURL.includes('/src/')) {
          throw new Error('bare import from src/: ' + spec);
        }
        return next(spec, ctx);
      }`;
    const src = pathToFileURL(path.join(here, '../src/index.js')).href;
    const script = `
      import { register } from 'node:module';
      register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hooks)}));
      const m = await import(${JSON.stringify(src)});
      console.log(typeof m.connect, m.PROTOCOL);`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script]);
    assert.equal(stdout.trim(), 'function wirepipe.v1');
  });
});
