// The client against the real Python gateway (`python -m gateway.cli serve`)
// running the scripted demo agent: start a run, answer its ask, see it finish;
// then a second client replays the whole history gap-free.
//
// It needs the repository's Python: .venv (which ./run test creates) or
// $WIREPIPE_PYTHON. Without one it fails, saying so; it never skips.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { connect } from '../src/index.js';

/**
 * @typedef {import('../src/index.js').WirepipeEvent} WirepipeEvent
 * @typedef {import('../src/index.js').Welcome} Welcome
 */

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '../../..');
const PYTHON = process.env.WIREPIPE_PYTHON ?? path.join(ROOT, '.venv', 'bin', 'python');

// A guard against a hung gateway, not a timing assertion.
const GUARD_MS = 60_000;

/** Starts the gateway; resolves with {child, url} once it printed its ws:// URL. */
function startGateway() {
  const child = spawn(
    PYTHON,
    ['-m', 'gateway.cli', 'serve', '--host', '127.0.0.1', '--port', '0', '--app', 'demo=gateway.demo_agent:app'],
    { cwd: ROOT, env: { ...process.env, PYTHONUNBUFFERED: '1' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (b) => {
    stderr = (stderr + b.toString()).slice(-4000);
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const url = new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      const m = line.match(/ws:\/\/\S+/);
      if (m) resolve(m[0]);
    });
    child.once('error', reject);
    exited.then(({ code, signal }) =>
      reject(new Error(`gateway exited (${code ?? signal}) before printing its URL:\n${stderr}`)),
    );
  });
  return { child, exited, url, stderr: () => stderr };
}

/**
 * Resolves with the first event (among `seen`, then those to come) that
 * matches; rejects if the client closes for good first.
 */
/**
 * @param {import('../src/index.js').Client} c
 * @param {(ev: WirepipeEvent) => boolean} pred
 * @param {string} what
 * @param {WirepipeEvent[]} [seen]
 * @returns {Promise<WirepipeEvent>}
 */
function waitEvent(c, pred, what, seen = []) {
  const hit = seen.find(pred);
  if (hit) return Promise.resolve(hit);
  return new Promise((resolve, reject) => {
    const offEv = c.on('event', (ev) => {
      if (pred(ev)) {
        offEv();
        offClose();
        resolve(ev);
      }
    });
    const offClose = c.on('close', (info) => {
      if (!info.willRetry) {
        offEv();
        offClose();
        reject(new Error(`closed (${info.code} ${info.reason}) while waiting for ${what}`));
      }
    });
  });
}

describe('real gateway', { timeout: GUARD_MS }, () => {
  /** @type {ReturnType<typeof startGateway> | undefined} */
  let gw;
  let url = '';
  /** @type {import('../src/index.js').Client[]} */
  const clients = [];

  before(async () => {
    assert.ok(existsSync(PYTHON), `no Python at ${PYTHON}: run ./run test once (it creates .venv), or set WIREPIPE_PYTHON`);
    const started = startGateway();
    gw = started;
    url = /** @type {string} */ (await started.url);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    if (gw && gw.child.exitCode === null && gw.child.signalCode === null) {
      const { child } = gw;
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await gw.exited;
      clearTimeout(killer);
    }
  });

  it('runs the demo, answers its ask, and replays the history gap-free', async () => {
    const sid = `js-${process.pid}-${Date.now()}`;
    const c = connect(url, { sid, start: { app: 'demo', input: { steps: 3, ask: true } } });
    clients.push(c);
    /** @type {WirepipeEvent[]} */
    const events = [];
    c.on('event', (ev) => events.push(ev));
    /** @type {import('../src/index.js').ErrorInfo[]} */
    const errors = [];
    c.on('error', (e) => errors.push(e));

    /** @type {Welcome} */
    const welcome = await new Promise((resolve) => c.on('welcome', resolve));
    assert.equal(welcome.sid, sid);
    assert.equal(welcome.grant, 'operator');

    const ask = await waitEvent(c, (ev) => ev.k === 'ask', 'the ask', events);
    assert.equal(typeof ask.d.id, 'string');
    assert.deepEqual(ask.d.choices, ['yes', 'no']);
    const done = waitEvent(c, (ev) => ev.k === 'status' && ev.d.state === 'done', 'status done', events);
    const out = await c.reply(ask.d.id, 'yes');
    assert.equal(out.ok, true, `reply failed: ${out.err}`);
    await done;

    const answer = events.find((ev) => ev.k === 'answer');
    assert.ok(answer, 'an answer event');
    assert.equal(answer.d.id, ask.d.id);
    assert.equal(answer.d.value, 'yes');
    assert.equal(answer.d.by, 'client');
    const kinds = new Set(events.map((ev) => ev.k));
    for (const k of ['status', 'plan', 'task', 'text', 'code', 'output', 'log', 'ask', 'answer', 'message']) {
      assert.ok(kinds.has(k), `saw a ${k} event`);
    }
    const seqs = events.map((ev) => ev.seq);
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), 'first client: seq 1..n gap-free');
    assert.deepEqual(errors, []);

    // A second client on the same sid, no `after`: the whole retained history.
    const c2 = connect(url, { sid });
    clients.push(c2);
    /** @type {WirepipeEvent[]} */
    const got = [];
    c2.on('event', (ev) => got.push(ev));
    /** @type {Welcome} */
    const w2 = await new Promise((resolve) => c2.on('welcome', resolve));
    assert.equal(w2.recovered, false);
    assert.equal(w2.first, 1);
    assert.ok(w2.head >= events.length, `head ${w2.head} >= ${events.length}`);
    await waitEvent(c2, (ev) => ev.seq === w2.head, `seq ${w2.head}`, got);
    assert.deepEqual(got.map((ev) => ev.seq), Array.from({ length: w2.head }, (_, i) => i + 1));
    assert.deepEqual(got.slice(0, events.length), events);
    assert.equal(got[got.length - 1].k, 'status');
    assert.equal(got[got.length - 1].d.state, 'done');
  });

  it('a windowed for-await consumer gets the whole run (acks keep the window open)', async () => {
    const sid = `js-win-${process.pid}-${Date.now()}`;
    const c = connect(url, { sid, window: 4, start: { app: 'demo', input: { steps: 2, ask: false, delay: 0 } } });
    clients.push(c);
    /** @type {number[]} */
    const seqs = [];
    // The iterator sees the events delivered after it is made: make it now.
    for await (const ev of c) {
      seqs.push(ev.seq);
      if (ev.k === 'status' && ev.d.state === 'done') break;
    }
    assert.equal(c.welcome?.window, 4);
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1));
    assert.ok(seqs.length > 8, `a whole run, got ${seqs.length} events`);
  });
});
