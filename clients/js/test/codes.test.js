// The close-code table of PROTOCOL.md section 7, and the rule that src/ imports
// nothing a browser without a build step could not load.

import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { describe, it } from 'node:test';

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
