// The client against the fake server: handshake, delivery, dedup, reconnect
// and resume, resets, close codes, backoff, pending requests, flow control,
// the async iterator, heartbeat, close().

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';

import { ClientClosedError, backoffDelay, connect } from '../src/index.js';
import { FakeServer } from './fake-server.js';
import { next, recorder, stateLog } from './helpers.js';

const TINY = { base: 1, max: 4 };

/** @type {FakeServer} */
let server;
/** @type {import('../src/index.js').Client[]} */
let clients;

beforeEach(async () => {
  server = await FakeServer.start();
  clients = [];
});

afterEach(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server.close();
});

/** @param {Partial<import('../src/index.js').ConnectOptions>} [opts] */
function open(opts = {}) {
  const c = connect(server.url, { sid: 's1', backoff: TINY, ...opts });
  clients.push(c);
  return c;
}

describe('handshake', () => {
  it('offers wirepipe.v1, sends hello first, gets welcome, reset and open', async () => {
    const c = open({ auth: 'secret' });
    const states = stateLog(c);
    const welcome = next(c, 'welcome');
    const reset = next(c, 'reset');
    const opened = next(c, 'state', (s) => s === 'open');
    assert.equal(c.state, 'connecting');
    const conn = await server.connection(0);
    assert.equal(conn.protocol, 'wirepipe.v1');
    assert.deepEqual(conn.hello, { t: 'hello', sid: 's1', client: 'wirepipe-js/0.1.0', auth: 'secret' });
    const w = await welcome;
    const r = await reset;
    await opened;
    assert.equal(w.epoch, 'e1');
    assert.deepEqual(r.snapshot, server.snapshot);
    assert.equal(r.welcome, w);
    assert.equal(c.state, 'open');
    assert.deepEqual(states, ['open']);
    assert.equal(c.epoch, 'e1');
    assert.equal(c.grant, 'operator');
    assert.equal(c.sid, 's1');
    assert.equal(c.welcome, w);
    assert.deepEqual(c.snapshot, server.snapshot);
    assert.equal(c.lastSeq, 0);
    assert.equal(conn.textMessages, 0);
  });

  it('sends client name, window and live when given', async () => {
    open({ client: 'ui/2', window: 8, live: true });
    const conn = await server.connection(0);
    assert.deepEqual(conn.hello, { t: 'hello', sid: 's1', client: 'ui/2', window: 8, live: true });
  });

  it('rejects a missing or invalid sid and a bad window', () => {
    // @ts-expect-error: a missing sid is what this checks
    assert.throws(() => connect(server.url, {}), TypeError);
    assert.throws(() => connect(server.url, { sid: 'bad sid' }), TypeError);
    assert.throws(() => connect(server.url, { sid: 'x'.repeat(129) }), TypeError);
    assert.throws(() => connect(server.url, { sid: 's', window: 0 }), TypeError);
    assert.throws(() => connect(server.url, { sid: 's', window: 1.5 }), TypeError);
  });

  it('uses the WebSocket constructor given in options', async () => {
    const { WebSocket } = await import('ws');
    let made = 0;
    class Counting extends WebSocket {
      /**
       * @param {string} url
       * @param {string | string[]} [protocols]
       */
      constructor(url, protocols) {
        super(url, protocols);
        made++;
      }
    }
    const c = open({ WebSocket: Counting });
    await next(c, 'welcome');
    assert.equal(made, 1);
  });

  it('sends start on the first hello only, never on a reconnect', async () => {
    const start = { app: 'demo', input: { steps: 2, ask: true } };
    const c = open({ start });
    const conn0 = await server.connection(0);
    assert.deepEqual(conn0.hello.start, start);
    await next(c, 'welcome');
    conn0.cut();
    const conn1 = await server.connection(1);
    assert.equal('start' in conn1.hello, false);
  });
});

describe('delivery', () => {
  it('delivers ev and batch frames in order as {seq, k, ts, d}', async () => {
    const c = open();
    const rec = recorder(c);
    await next(c, 'welcome');
    server.push('status', { state: 'running' });
    server.push('log', { level: 'info', msg: 'a' });
    server.pushBatch([
      ['text', { id: 't', delta: 'he' }],
      ['text', { id: 't', delta: 'llo' }],
      ['text', { id: 't', delta: '', end: true }],
    ]);
    server.push('status', { state: 'done' });
    const events = await rec.until(6);
    assert.deepEqual(rec.seqs(), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(Object.keys(events[0]).sort(), ['d', 'k', 'seq', 'ts']);
    assert.deepEqual(
      events.map((e) => e.k),
      ['status', 'log', 'text', 'text', 'text', 'status'],
    );
    assert.deepEqual(events[3].d, { id: 't', delta: 'llo' });
    assert.equal(typeof events[0].ts, 'number');
    assert.equal(c.lastSeq, 6);
  });

  it('replays history to a new client and passes unknown kinds through', async () => {
    server.push('status', { state: 'running' });
    server.push('future_kind', { x: 1 });
    const c = open();
    const rec = recorder(c);
    await rec.until(2);
    assert.equal(rec.events[1].k, 'future_kind');
    assert.deepEqual(rec.events[1].d, { x: 1 });
  });

  it('drops duplicates by seq', async () => {
    const c = open();
    const rec = recorder(c);
    const conn = await server.connection(0);
    await next(c, 'welcome');
    const ev = (/** @type {number} */ seq) => ({ seq, k: 'log', ts: 1, d: { n: seq } });
    conn.send({ t: 'ev', ...ev(1) });
    conn.send({ t: 'ev', ...ev(2) });
    conn.send({ t: 'ev', ...ev(1) });
    conn.send({ t: 'batch', evs: [ev(2), ev(3), ev(4)] });
    conn.send({ t: 'ev', ...ev(3) });
    conn.send({ t: 'ev', ...ev(4) });
    conn.send({ t: 'ev', ...ev(5) });
    await rec.until(5);
    assert.deepEqual(rec.seqs(), [1, 2, 3, 4, 5]);
  });

  it('emits error frames and ignores unknown frame types', async () => {
    const c = open();
    const conn = await server.connection(0);
    await next(c, 'welcome');
    const err = next(c, 'error');
    conn.send({ t: 'from_the_future', x: 1 });
    conn.send({ t: 'error', code: 'forbidden', msg: 'viewer', fatal: false });
    assert.deepEqual(await err, { code: 'forbidden', msg: 'viewer', fatal: false });
    assert.equal(c.state, 'open');
  });

  it('reports an undecodable server frame as a local error and goes on', async () => {
    const c = open();
    const rec = recorder(c);
    const conn = await server.connection(0);
    await next(c, 'welcome');
    const err = next(c, 'error');
    conn.ws.send(new Uint8Array([0xc1]));
    assert.equal((await err).code, 'bad_frame');
    server.push('log', {});
    await rec.until(1);
  });
});

describe('reconnect and resume', () => {
  it('after an abrupt cut, resumes with token, epoch and after', async () => {
    const c = open();
    const states = stateLog(c);
    const rec = recorder(c);
    let resets = 0;
    c.on('reset', () => resets++);
    const conn0 = await server.connection(0);
    const w0 = await next(c, 'welcome');
    server.push('log', { n: 1 });
    server.push('log', { n: 2 });
    server.push('log', { n: 3 });
    await rec.until(3);
    const closed = next(c, 'close');
    conn0.cut();
    assert.deepEqual(await closed, { code: 1006, reason: '', willRetry: true, delay: (await closed).delay });
    server.push('log', { n: 4 }); // produced while the client is away
    const conn1 = await server.connection(1);
    assert.equal(conn1.hello.resume, w0.resume);
    assert.equal(conn1.hello.epoch, 'e1');
    assert.equal(conn1.hello.after, 3);
    const w1 = await next(c, 'welcome');
    assert.equal(w1.recovered, true);
    server.push('log', { n: 5 });
    await rec.until(5);
    assert.deepEqual(rec.seqs(), [1, 2, 3, 4, 5]);
    assert.equal(resets, 1);
    assert.deepEqual(states, ['open', 'recovering', 'connecting', 'open']);
    // The next resume uses the newest token.
    conn1.cut();
    const conn2 = await server.connection(2);
    assert.equal(conn2.hello.resume, w1.resume);
    assert.equal(conn2.hello.after, 5);
  });

  it('recovered:false after an epoch change emits reset with the snapshot and resets lastSeq', async () => {
    const c = open();
    const rec = recorder(c);
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    server.push('log', { n: 1 });
    server.push('log', { n: 2 });
    server.push('log', { n: 3 });
    await rec.until(3);
    // The gateway restarts with a fresh in-memory log.
    server.newEpoch('e2');
    server.snapshot = { status: { state: 'running', detail: 'new' }, plan: null, asks: [], texts: [] };
    server.push('status', { state: 'running' });
    server.push('log', { n: 'e2-2' });
    const reset = next(c, 'reset');
    let lastSeqAtReset;
    c.on('reset', () => (lastSeqAtReset = c.lastSeq));
    conn0.cut();
    const conn1 = await server.connection(1);
    assert.equal(conn1.hello.epoch, 'e1');
    assert.equal(conn1.hello.after, 3);
    const r = await reset;
    assert.equal(r.welcome.recovered, false);
    assert.equal(r.welcome.epoch, 'e2');
    assert.deepEqual(r.snapshot, server.snapshot);
    assert.equal(lastSeqAtReset, 0);
    assert.equal(c.epoch, 'e2');
    await rec.until((ev) => ev.d.n === 'e2-2');
    assert.deepEqual(rec.seqs(), [1, 2, 3, 1, 2]);
    assert.equal(c.lastSeq, 2);
  });

  it('recovered:false within the same epoch also resets', async () => {
    const c = open();
    const rec = recorder(c);
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    server.push('log', { n: 1 });
    server.push('log', { n: 2 });
    await rec.until(2);
    server.welcomeOverrides = { recovered: false };
    const reset = next(c, 'reset');
    conn0.cut();
    await reset;
    await rec.until(() => rec.events.length === 4);
    assert.deepEqual(rec.seqs(), [1, 2, 1, 2]);
  });

  it('a welcome after lagged resets on the same socket', async () => {
    const c = open();
    const rec = recorder(c);
    const states = stateLog(c);
    const conn = await server.connection(0);
    await next(c, 'welcome');
    server.push('log', { n: 1 });
    server.push('log', { n: 2 });
    await rec.until(2);
    const err = next(c, 'error');
    const reset = next(c, 'reset');
    conn.send({ t: 'error', code: 'lagged', msg: 'too slow', fatal: false });
    conn.send({
      t: 'welcome', sid: 's1', epoch: 'e1', resume: 'tok-x', head: 2, first: 1,
      recovered: false, grant: 'operator', snapshot: { status: null }, window: null, heartbeat: 0,
    });
    conn.send({ t: 'ev', seq: 1, k: 'log', ts: 1, d: {} });
    assert.equal((await err).code, 'lagged');
    assert.deepEqual((await reset).snapshot, { status: null });
    await rec.until(() => rec.events.length === 3);
    assert.deepEqual(rec.seqs(), [1, 2, 1]);
    assert.deepEqual(states, ['open']);
  });
});

describe('close codes', () => {
  for (const code of [4400, 4404, 4409, 1009]) {
    it(`stops on ${code}`, async () => {
      const c = open();
      const conn = await server.connection(0);
      await next(c, 'welcome');
      server.autoReply = false;
      const pending = c.send('x-never-answered');
      const closed = next(c, 'close');
      const stateClosed = next(c, 'state', (s) => s === 'closed');
      conn.closeWith(code, 'because');
      assert.deepEqual(await closed, { code, reason: 'because', willRetry: false });
      await stateClosed;
      assert.equal(c.state, 'closed');
      await assert.rejects(c.reply('a', 1), ClientClosedError);
      const it = c[Symbol.asyncIterator]();
      assert.deepEqual(await it.next(), { value: undefined, done: true });
      await assert.rejects(pending, ClientClosedError);
      assert.equal(server.conns.length, 1);
    });
  }

  for (const code of [1006, 1011, 4429, 1001, 1012, 1013, 4408]) {
    it(`retries on ${code}`, async () => {
      const c = open();
      const conn0 = await server.connection(0);
      await next(c, 'welcome');
      const closed = next(c, 'close');
      if (code === 1006) conn0.cut();
      else conn0.closeWith(code);
      const info = await closed;
      assert.equal(info.code, code);
      assert.equal(info.willRetry, true);
      assert.equal(c.state, 'recovering');
      await server.connection(1);
      await next(c, 'state', (s) => s === 'open');
    });
  }

  it('gives up after maxRetries retries in a row', async () => {
    server.onHello = (conn) => conn.index > 0 && (conn.closeWith(1013), true);
    const c = open({ maxRetries: 2 });
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    const final = next(c, 'close', (i) => !i.willRetry);
    conn0.cut();
    assert.deepEqual(await final, { code: 1013, reason: '', willRetry: false });
    assert.equal(server.conns.length, 3);
    assert.equal(c.state, 'closed');
  });

  it('4401 stops until setAuth, then reconnects with the new credential', async () => {
    server.auth = 'good';
    const c = open({ auth: 'bad' });
    const err = next(c, 'error');
    const closed = next(c, 'close');
    const pending = c.reply('ask-1', 'yes'); // kept across the wait
    assert.deepEqual(await err, { code: 'unauthorized', msg: 'bad auth', fatal: true });
    assert.deepEqual(await closed, { code: 4401, reason: 'unauthorized', willRetry: false });
    assert.equal(c.state, 'closed');
    assert.equal(server.conns.length, 1);
    const opened = next(c, 'state', (s) => s === 'open');
    c.setAuth('good');
    assert.equal(c.state, 'connecting');
    const conn1 = await server.connection(1);
    assert.equal(conn1.hello.auth, 'good');
    await opened;
    const out = await pending;
    assert.equal(out.ok, true);
  });

  it('4401 on a resume drops the stale token', async () => {
    const c = open({ auth: 'a1' });
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    server.tokens.clear(); // every token is now invalid
    const closed = next(c, 'close', (i) => i.code === 4401);
    conn0.cut();
    const conn1 = await server.connection(1);
    assert.ok(conn1.hello.resume);
    await closed;
    const reset = next(c, 'reset');
    c.setAuth('a2');
    const conn2 = await server.connection(2);
    assert.equal(conn2.hello.resume, undefined);
    assert.equal(conn2.hello.auth, 'a2');
    await reset;
  });
});

describe('backoff', () => {
  it('is full jitter: random() * min(max, base * 2**attempt)', () => {
    assert.equal(backoffDelay(0, { base: 250, max: 10000 }, () => 0), 0);
    assert.equal(backoffDelay(0, { base: 250, max: 10000 }, () => 0.5), 125);
    assert.equal(backoffDelay(3, { base: 250, max: 10000 }, () => 0.5), 1000);
    assert.equal(backoffDelay(10, { base: 250, max: 10000 }, () => 0.5), 5000);
    assert.equal(backoffDelay(2000, { base: 250, max: 10000 }, () => 0.25), 2500);
    assert.equal(backoffDelay(1, undefined, () => 1), 500);
  });

  it('drives the reconnect delays, and resets after a welcome', async () => {
    const draws = [0.5, 0.5, 0.5, 0.5, 0.25, 0.75];
    let i = 0;
    server.onHello = (conn) => (conn.index >= 1 && conn.index <= 3 ? (conn.closeWith(1013), true) : false);
    const c = open({ backoff: { base: 4, max: 16 }, random: () => draws[i++] });
    /** @type {(number | undefined)[]} */
    const delays = [];
    c.on('close', (info) => delays.push(info.delay));
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    conn0.cut();
    const conn4 = await server.connection(4);
    await next(c, 'welcome');
    assert.deepEqual(delays, [2, 4, 8, 8]);
    conn4.cut();
    await server.connection(5);
    assert.deepEqual(delays, [2, 4, 8, 8, 1]);
  });
});

describe('requests', () => {
  it('reply, send and cancel resolve to the replied outcome', async () => {
    const c = open();
    await next(c, 'welcome');
    const r1 = await c.reply('ask-1', 'yes');
    assert.equal(r1.ok, true);
    assert.equal(typeof r1.rid, 'string');
    const r2 = await c.send({ hello: 'agent' });
    const r3 = await c.cancel('enough');
    assert.notEqual(r1.rid, r2.rid);
    assert.notEqual(r2.rid, r3.rid);
    const [reply] = server.framesOf('reply');
    assert.deepEqual(reply, { t: 'reply', ask: 'ask-1', value: 'yes', rid: r1.rid });
    assert.deepEqual(server.framesOf('send')[0], { t: 'send', data: { hello: 'agent' }, rid: r2.rid });
    assert.deepEqual(server.framesOf('cancel')[0], { t: 'cancel', reason: 'enough', rid: r3.rid });
  });

  it('passes an error outcome through', async () => {
    const c = open();
    const conn = await server.connection(0);
    await next(c, 'welcome');
    server.autoReply = false;
    const p = c.reply('ask-9', 'no');
    const frame = await conn.frame((f) => f.t === 'reply');
    server.answer(conn, frame.rid, { ok: false, err: 'ask_closed' });
    assert.deepEqual(await p, { rid: frame.rid, ok: false, err: 'ask_closed' });
  });

  it('re-sends a pending reply with the same rid after a reconnect; it resolves once', async () => {
    server.autoReply = false;
    const c = open();
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    let settled = 0;
    const p = c.reply('ask-1', 'yes').then((r) => {
      settled++;
      return r;
    });
    const first = await conn0.frame((f) => f.t === 'reply');
    conn0.cut();
    const conn1 = await server.connection(1);
    const again = await conn1.frame((f) => f.t === 'reply');
    assert.deepEqual(again, first);
    server.answer(conn1, again.rid);
    server.answer(conn1, again.rid); // a duplicate answer is ignored
    assert.deepEqual(await p, { rid: first.rid, ok: true });
    server.autoReply = true;
    await c.send('flush'); // every earlier frame was handled by now
    assert.equal(settled, 1);
  });

  it('queues requests made while recovering and sends them after the welcome', async () => {
    const c = open({ backoff: { base: 1, max: 1 } });
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    const recovering = next(c, 'state', (s) => s === 'recovering');
    conn0.cut();
    await recovering;
    const out = await c.send('while away');
    assert.equal(out.ok, true);
    assert.equal(server.conns[1].frames[0].t, 'send');
  });

  it('ping resolves with a round trip time', async () => {
    const c = open();
    await next(c, 'welcome');
    const rtt = await c.ping();
    assert.equal(typeof rtt, 'number');
    assert.ok(rtt >= 0);
  });
});

describe('flow control', () => {
  const acksOf = (/** @type {import('./fake-server.js').FakeConn} */ conn) => conn.frames.filter((f) => f.t === 'ack').map((f) => f.seq);

  it('acks cumulatively every window/2 events, and after a batch when over half', async () => {
    const c = open({ window: 4 });
    const rec = recorder(c);
    const conn = await server.connection(0);
    assert.equal(conn.hello.window, 4);
    await next(c, 'welcome');
    for (let i = 0; i < 10; i++) server.push('log', { i });
    await conn.frame((f) => f.t === 'ack' && f.seq === 10);
    assert.deepEqual(acksOf(conn), [2, 4, 6, 8, 10]);
    server.pushBatch([['log'], ['log'], ['log']]); // 11..13: one ack after the batch
    await conn.frame((f) => f.t === 'ack' && f.seq === 13);
    server.pushBatch([['log']]); // 14: below half, no ack
    server.push('log'); // 15
    await conn.frame((f) => f.t === 'ack' && f.seq === 15);
    assert.deepEqual(acksOf(conn), [2, 4, 6, 8, 10, 13, 15]);
    await rec.until(15);
  });

  it('follows a window the server imposes', async () => {
    server.welcomeOverrides = { window: 2 };
    const c = open();
    const conn = await server.connection(0);
    await next(c, 'welcome');
    for (let i = 0; i < 3; i++) server.push('log', { i });
    await conn.frame((f) => f.t === 'ack' && f.seq === 3);
    assert.deepEqual(acksOf(conn), [1, 2, 3]);
  });

  it('never acks without a window', async () => {
    const c = open();
    const rec = recorder(c);
    const conn = await server.connection(0);
    await next(c, 'welcome');
    for (let i = 0; i < 10; i++) server.push('log', { i });
    await rec.until(10);
    await c.send('flush');
    assert.deepEqual(acksOf(conn), []);
  });

  it('holds acks back until a for-await consumer has taken the events', async () => {
    const c = open({ window: 4 });
    const rec = recorder(c);
    const it = c[Symbol.asyncIterator]();
    const conn = await server.connection(0);
    await next(c, 'welcome');
    for (let i = 0; i < 4; i++) server.push('log', { i });
    await rec.until(4);
    await c.send('flush');
    assert.deepEqual(acksOf(conn), []);
    assert.equal((await it.next()).value.seq, 1);
    assert.equal((await it.next()).value.seq, 2);
    await conn.frame((f) => f.t === 'ack' && f.seq === 2);
    await it.next();
    await it.next();
    await conn.frame((f) => f.t === 'ack' && f.seq === 4);
    await it.return();
  });

  it('resumes ack counting from `after` on a recovered welcome', async () => {
    const c = open({ window: 4 });
    const rec = recorder(c);
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    for (let i = 0; i < 3; i++) server.push('log', { i });
    await conn0.frame((f) => f.t === 'ack' && f.seq === 2);
    await rec.until(3);
    conn0.cut();
    const conn1 = await server.connection(1);
    assert.equal(conn1.hello.after, 3);
    await next(c, 'welcome');
    server.push('log'); // 4
    server.push('log'); // 5
    await conn1.frame((f) => f.t === 'ack' && f.seq === 5);
    assert.deepEqual(acksOf(conn1), [5]);
  });
});

describe('async iterator', () => {
  it('yields events in order', async () => {
    const c = open();
    await next(c, 'welcome');
    /** @type {number[]} */
    const got = [];
    const loop = (async () => {
      for await (const ev of c) {
        got.push(ev.seq);
        if (ev.seq === 5) break;
      }
    })();
    for (let i = 0; i < 3; i++) server.push('log', { i });
    server.pushBatch([['log'], ['log'], ['log']]);
    await loop;
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
  });

  it('ends when the client is closed for good, after the buffered events', async () => {
    const c = open();
    const rec = recorder(c);
    const it = c[Symbol.asyncIterator]();
    await next(c, 'welcome');
    server.push('log');
    server.push('log');
    await rec.until(2);
    await c.close();
    const got = [];
    for await (const ev of { [Symbol.asyncIterator]: () => it }) got.push(ev.seq);
    assert.deepEqual(got, [1, 2]);
  });

  it('a waiting loop ends on close', async () => {
    const c = open();
    await next(c, 'welcome');
    const loop = (async () => {
      const got = [];
      for await (const ev of c) got.push(ev);
      return got;
    })();
    server.push('log');
    await next(c, 'event');
    c.close();
    assert.equal((await loop).length, 1);
  });
});

describe('close()', () => {
  it('closes with 1000 and stops', async () => {
    const c = open();
    const conn = await server.connection(0);
    await next(c, 'welcome');
    server.autoReply = false;
    const pending = c.send('never answered');
    await conn.frame((f) => f.t === 'send');
    const closed = next(c, 'close');
    const done = c.close();
    assert.equal(c.state, 'closed');
    assert.deepEqual(await closed, { code: 1000, reason: '', willRetry: false });
    await assert.rejects(pending, ClientClosedError);
    await done;
    assert.equal((await conn.closed).code, 1000);
    await assert.rejects(c.send('late'), ClientClosedError);
    assert.equal(server.conns.length, 1);
  });

  it('while recovering cancels the scheduled reconnect', async () => {
    const c = open({ backoff: { base: 60000, max: 60000 }, random: () => 1 });
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    const recovering = next(c, 'close');
    conn0.cut();
    assert.equal((await recovering).delay, 60000);
    await c.close();
    assert.equal(c.state, 'closed');
    assert.equal(server.conns.length, 1);
    // Were the timer still armed, this test file would not exit for a minute.
  });

  it('before the connection is open', async () => {
    const c = open();
    const closed = next(c, 'state', (s) => s === 'closed');
    await c.close();
    await closed;
    assert.equal(c.state, 'closed');
  });
});

describe('heartbeat', () => {
  it('pings after 2 x heartbeat of silence and reconnects when nothing answers', async () => {
    server.heartbeat = 10;
    server.answerPings = false;
    const c = open();
    const conn0 = await server.connection(0);
    await next(c, 'welcome');
    const closed = next(c, 'close');
    const ping = await conn0.frame((f) => f.t === 'ping');
    assert.ok('n' in ping);
    assert.deepEqual(await closed, {
      code: 1006,
      reason: 'no answer to ping',
      willRetry: true,
      delay: c.lastClose?.delay,
    });
    server.answerPings = true;
    await server.connection(1);
    await next(c, 'state', (s) => s === 'open');
  });
});

describe('live', () => {
  it('starts at the head and resumes from there', async () => {
    server.push('log');
    server.push('log');
    server.push('log');
    const c = open({ live: true });
    const rec = recorder(c);
    const conn0 = await server.connection(0);
    assert.equal(conn0.hello.live, true);
    await next(c, 'reset');
    assert.equal(c.lastSeq, 3);
    server.push('log');
    await rec.until(4);
    assert.deepEqual(rec.seqs(), [4]);
    conn0.cut();
    const conn1 = await server.connection(1);
    assert.equal(conn1.hello.after, 4);
    assert.equal(conn1.hello.live, undefined); // a reconnect resumes from the last event seen
  });
});
