// The close-code table of docs/protocol.md section 7 (and its mirror in
// protocol/errors.py), and the rule that src/ imports nothing a browser
// without a build step could not load.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { CloseCode, CLOSE_FOR, ErrorCode, closeAction, isRetryableClose } from '../src/index.js';

describe('codes', () => {
  it('maps every close code of section 7 to its action', () => {
    const table = {
      1000: 'stop',
      1001: 'retry',
      1006: 'retry',
      1009: 'stop',
      1011: 'retry',
      1012: 'retry',
      1013: 'retry',
      4400: 'stop',
      4401: 'reauth',
      4404: 'stop',
      4408: 'retry',
      4409: 'stop',
      4429: 'retry',
    };
    for (const [code, action] of Object.entries(table)) {
      assert.equal(closeAction(Number(code)), action, `close ${code}`);
      assert.equal(isRetryableClose(Number(code)), action === 'retry', `close ${code}`);
    }
    assert.equal(closeAction(4999), 'stop');
    assert.equal(closeAction(1002), 'stop');
  });

  it('names each fatal error code with its close code', () => {
    assert.equal(CLOSE_FOR[ErrorCode.BAD_FRAME], CloseCode.BAD_FRAME);
    assert.equal(CLOSE_FOR[ErrorCode.TOO_BIG], 1009);
    assert.equal(CLOSE_FOR[ErrorCode.BAD_TOKEN], 4401);
    assert.equal(CLOSE_FOR[ErrorCode.SID_TAKEN], 4409);
    assert.equal(CLOSE_FOR[ErrorCode.NO_APP], 4404);
    assert.equal(CLOSE_FOR[ErrorCode.SHUTDOWN], 1001);
    assert.equal(CLOSE_FOR[ErrorCode.INTERNAL], 1011);
    assert.equal(CLOSE_FOR[ErrorCode.FORBIDDEN], null);
    assert.equal(CLOSE_FOR[ErrorCode.ENDED], null);
    assert.deepEqual(Object.keys(CLOSE_FOR).sort(), Object.values(ErrorCode).sort());
  });
});

describe('src/ for the browser', () => {
  it('imports only relative files and @msgpack/msgpack', async () => {
    const dir = new URL('../src/', import.meta.url);
    const files = (await readdir(dir)).filter((f) => f.endsWith('.js'));
    assert.ok(files.includes('wirepipe.js'));
    for (const f of files) {
      const text = await readFile(new URL(f, dir), 'utf8');
      const specs = [
        ...text.matchAll(/^\s*(?:import|export)\b[^'"]*?\bfrom\s*['"]([^'"]+)['"]/gm),
        ...text.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm),
        ...text.matchAll(/\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g),
      ].map((m) => m[1]);
      for (const spec of specs) {
        assert.ok(
          spec.startsWith('./') || spec === '@msgpack/msgpack',
          `${f} imports ${spec}`,
        );
      }
    }
  });
});

// codes.js mirrors protocol/errors.py: compare the two tables, with the
// repository's Python (.venv, which ./run test creates, or $WIREPIPE_PYTHON).
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const PYTHON = process.env.WIREPIPE_PYTHON ?? `${ROOT}.venv/bin/python`;

describe('codes.js and protocol/errors.py', () => {
  it('agree on error codes, close codes and retry actions', async () => {
    assert.ok(existsSync(PYTHON), `no Python at ${PYTHON}: run ./run test once (it creates .venv), or set WIREPIPE_PYTHON`);
    const script = `
import json
from protocol import errors as e
print(json.dumps({
  "errors": sorted(c.value for c in e.ErrorCode),
  "closes": {c.name: int(c) for c in e.CloseCode},
  "close_for": {k.value: (None if v is None else int(v)) for k, v in e.CLOSE_FOR.items()},
  "actions": {str(int(c)): e.close_action(int(c)) for c in e.CloseCode},
}))`;
    const { stdout } = await promisify(execFile)(PYTHON, ['-c', script], { cwd: ROOT });
    const py = JSON.parse(stdout);
    assert.deepEqual(Object.values(ErrorCode).sort(), py.errors);
    assert.deepEqual({ ...CloseCode }, py.closes);
    assert.deepEqual({ ...CLOSE_FOR }, py.close_for);
    for (const [code, action] of Object.entries(py.actions)) {
      assert.equal(closeAction(Number(code)), action, `close ${code}`);
    }
  });
});
