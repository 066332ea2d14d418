// A small wirepipe server for the client's tests: it speaks enough of
// docs/protocol.md (hello/welcome with resume tokens, ev/batch, replied, pong,
// error) and lets a test cut a connection or close it with any code.
//
// Every connection, hello, frame and close is appended to `records`, and
// tests wait on those with waitFor(): no sleeping as synchronisation.

import { decode, encode } from '@msgpack/msgpack';
import { WebSocketServer } from 'ws';

/**
 * @typedef {Record<string, any>} Frame
 * @typedef {{seq: number, k: string, ts: number, d: unknown}} LogEvent
 * @typedef {{kind: 'hello' | 'frame', conn: FakeConn, frame: Frame} | {kind: 'close', conn: FakeConn, code: number}} FakeRecord
 *   what a test can wait for (the hello, every frame after it, the close)
 */

export class FakeConn {
  /**
   * @param {FakeServer} server
   * @param {import('ws').WebSocket} ws
   * @param {number} index
   * @param {string} protocol
   */
  constructor(server, ws, index, protocol) {
    this.server = server;
    this.ws = ws;
    this.index = index;
    this.protocol = protocol;
    /** @type {Frame | null} */
    this.hello = null;
    /** @type {Frame[]} */
    this.frames = []; // every frame after hello
    this.textMessages = 0;
    this.live = false;
    /** @type {Promise<{code: number, reason: string}>} */
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
  }

  /**
   * Sends one raw frame.
   * @param {unknown} frame
   */
  send(frame) {
    if (this.ws.readyState === 1) this.ws.send(encode(frame));
  }

  /**
   * Sends the welcome for this connection's hello (see FakeServer.welcome).
   * @param {Frame | null} [overrides]
   */
  welcome(overrides) {
    this.server.welcome(this, overrides);
  }

  /** Drops the TCP connection without a closing handshake: the client sees 1006. */
  cut() {
    this.ws.terminate();
  }

  /**
   * @param {number} code
   * @param {string} [reason]
   */
  closeWith(code, reason = '') {
    this.ws.close(code, reason);
  }

  /**
   * Resolves with the first frame from this connection (after hello) that matches.
   * @param {(frame: Frame) => boolean} pred
   * @returns {Promise<Frame>}
   */
  async frame(pred) {
    const rec = await this.server.waitFor((r) => r.kind === 'frame' && r.conn === this && pred(r.frame));
    return /** @type {{frame: Frame}} */ (rec).frame; // a 'frame' record, by pred
  }
}

export class FakeServer {
  /**
   * @param {object} [opts]
   * @param {string} [opts.epoch]
   * @param {number} [opts.heartbeat] ms, put in welcome
   * @param {string | null} [opts.auth] if set, a hello needs this auth or a valid resume token
   */
  static async start(opts = {}) {
    const server = new FakeServer(opts);
    await server._listen();
    return server;
  }

  /** @param {{epoch?: string, heartbeat?: number, auth?: string | null}} [opts] */
  constructor({ epoch = 'e1', heartbeat = 0, auth = null } = {}) {
    this.epoch = epoch;
    this.heartbeat = heartbeat;
    this.auth = auth;
    /** @type {LogEvent[]} */
    this.log = [];
    this.first = 1;
    /** @type {import('../src/index.js').SnapshotMap} */
    this.snapshot = { status: { state: 'running' }, plan: null, asks: [], texts: [] };
    /** @type {Map<string, {sid: string, epoch: string}>} */
    this.tokens = new Map(); // token -> {sid, epoch}
    /** @type {Map<string, Frame>} */
    this.outcomes = new Map(); // rid -> replied frame
    /** @type {FakeConn[]} */
    this.conns = [];
    /** @type {FakeRecord[]} */
    this.records = [];
    /** @type {{pred: (rec: FakeRecord) => boolean, resolve: (rec: FakeRecord) => void}[]} */
    this.waiters = [];
    /** @type {WebSocketServer | null} */
    this.wss = null;
    this.url = '';
    // Knobs a test may turn:
    this.autoWelcome = true; // answer hello with welcome + replay
    this.autoReply = true; // answer reply/send/cancel with replied ok
    this.answerPings = true;
    /** @type {Frame | null} */
    this.welcomeOverrides = null; // merged into every automatic welcome
    /** @type {((conn: FakeConn, hello: Frame) => boolean | void) | null} */
    this.onHello = null; // (conn, hello) => true if the test handled it
    this._tokenN = 0;
  }

  get head() {
    return this.log.length ? this.log[this.log.length - 1].seq : 0;
  }

  /** @returns {Promise<void>} */
  _listen() {
    const wss = new WebSocketServer({
      host: '127.0.0.1',
      port: 0,
      handleProtocols: (protocols) => (protocols.has('wirepipe.v1') ? 'wirepipe.v1' : false),
    });
    this.wss = wss;
    wss.on('connection', (ws) => this._onConnection(ws));
    return new Promise((resolve, reject) => {
      wss.once('listening', () => {
        this.url = `ws://127.0.0.1:${/** @type {import('node:net').AddressInfo} */ (wss.address()).port}/ws`;
        resolve();
      });
      wss.once('error', reject);
    });
  }

  /** @param {FakeRecord} rec */
  _record(rec) {
    this.records.push(rec);
    for (const w of [...this.waiters]) {
      if (w.pred(rec)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(rec);
      }
    }
  }

  /**
   * Resolves with the first record (past or future) that matches.
   * @param {(rec: FakeRecord) => boolean} pred
   * @returns {Promise<FakeRecord>}
   */
  waitFor(pred) {
    const hit = this.records.find(pred);
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve) => this.waiters.push({ pred, resolve }));
  }

  /**
   * Resolves with connection number `i` (0-based) once its hello arrived.
   * @param {number} i
   * @returns {Promise<FakeConn & {hello: Frame}>}
   */
  async connection(i) {
    const rec = await this.waitFor((r) => r.kind === 'hello' && r.conn.index === i);
    return /** @type {FakeConn & {hello: Frame}} */ (rec.conn);
  }

  /**
   * Every frame of type `t` received so far, over all connections.
   * @param {string} t
   * @returns {Frame[]}
   */
  framesOf(t) {
    return this.records.filter((r) => r.kind === 'frame' && r.frame.t === t).map((r) => /** @type {{frame: Frame}} */ (r).frame);
  }

  /** @param {import('ws').WebSocket} ws */
  _onConnection(ws) {
    const conn = new FakeConn(this, ws, this.conns.length, ws.protocol);
    this.conns.push(conn);
    ws.on('message', (data, isBinary) => {
      if (!isBinary) {
        conn.textMessages++;
        return;
      }
      const frame = /** @type {Frame} */ (decode(/** @type {Buffer} */ (data))); // a binary message: one Buffer
      if (conn.hello === null) {
        conn.hello = frame;
        this._record({ kind: 'hello', conn, frame });
        this._onHello(conn, frame);
        return;
      }
      conn.frames.push(frame);
      this._onFrame(conn, frame);
      this._record({ kind: 'frame', conn, frame });
    });
    ws.on('close', (code) => this._record({ kind: 'close', conn, code }));
  }

  /**
   * @param {FakeConn} conn
   * @param {Frame} hello
   */
  _onHello(conn, hello) {
    if (this.onHello && this.onHello(conn, hello)) return;
    const token = hello.resume ? this.tokens.get(hello.resume) : null;
    if (hello.resume && (!token || token.sid !== hello.sid)) {
      conn.send({ t: 'error', code: 'bad_token', msg: 'bad resume token', fatal: true });
      conn.closeWith(4401, 'bad_token');
      return;
    }
    if (this.auth !== null && !token && hello.auth !== this.auth) {
      conn.send({ t: 'error', code: 'unauthorized', msg: 'bad auth', fatal: true });
      conn.closeWith(4401, 'unauthorized');
      return;
    }
    if (this.autoWelcome) this.welcome(conn, this.welcomeOverrides);
  }

  /**
   * Sends a welcome computed from the log and the hello (recovery rules of
   * docs/protocol.md section 4), then replays the log from the right seq as `ev`
   * frames, and marks the connection live.
   * @param {FakeConn} conn
   * @param {Frame | null} [overrides]
   */
  welcome(conn, overrides = null) {
    const hello = /** @type {Frame} */ (conn.hello); // welcomes answer a hello
    const token = hello.resume ? this.tokens.get(hello.resume) : null;
    let recovered =
      token != null &&
      token.epoch === this.epoch &&
      hello.epoch === this.epoch &&
      Number.isInteger(hello.after) &&
      hello.after + 1 >= this.first;
    if (overrides && 'recovered' in overrides) recovered = overrides.recovered;
    const resume = `tok-${++this._tokenN}`;
    this.tokens.set(resume, { sid: hello.sid, epoch: this.epoch });
    const w = {
      t: 'welcome',
      sid: hello.sid,
      epoch: this.epoch,
      resume,
      head: this.head,
      first: this.first,
      recovered,
      grant: 'operator',
      snapshot: recovered ? null : this.snapshot,
      window: hello.window ?? null,
      heartbeat: this.heartbeat,
      ...overrides,
    };
    conn.send(w);
    const from = recovered ? hello.after + 1 : hello.live ? this.head + 1 : this.first;
    for (const ev of this.log) if (ev.seq >= from) conn.send({ t: 'ev', ...ev });
    conn.live = true;
  }

  /**
   * @param {FakeConn} conn
   * @param {Frame} frame
   */
  _onFrame(conn, frame) {
    switch (frame.t) {
      case 'reply':
      case 'send':
      case 'cancel':
        if (this.autoReply) this.answer(conn, frame.rid);
        break;
      case 'ping':
        if (this.answerPings) conn.send({ t: 'pong', n: frame.n });
        break;
      default:
        break;
    }
  }

  /**
   * Sends `replied` for `rid`: the first outcome for that rid, again if it is repeated.
   * @param {FakeConn} conn
   * @param {string} rid
   * @param {Frame} [outcome]
   */
  answer(conn, rid, outcome = { ok: true }) {
    if (!this.outcomes.has(rid)) this.outcomes.set(rid, { t: 'replied', rid, ...outcome });
    conn.send(this.outcomes.get(rid));
  }

  /**
   * @param {string} k
   * @param {unknown} d
   * @returns {LogEvent}
   */
  _event(k, d) {
    return { seq: this.head + 1, k, ts: Date.now() / 1000, d };
  }

  /**
   * Appends one event and sends it as an `ev` frame to every live connection.
   * @param {string} k
   * @param {unknown} [d]
   */
  push(k, d = {}) {
    const ev = this._event(k, d);
    this.log.push(ev);
    for (const c of this.conns) if (c.live) c.send({ t: 'ev', ...ev });
    return ev;
  }

  /**
   * Appends events ([k, d] pairs) and sends them as one `batch` frame.
   * @param {[string, unknown?][]} items
   */
  pushBatch(items) {
    const evs = items.map(([k, d]) => {
      const ev = this._event(k, d ?? {});
      this.log.push(ev);
      return ev;
    });
    for (const c of this.conns) if (c.live) c.send({ t: 'batch', evs });
    return evs;
  }

  /**
   * Recreates the log under a new epoch (as after a gateway restart).
   * @param {string} epoch
   */
  newEpoch(epoch) {
    this.epoch = epoch;
    this.log = [];
    this.first = 1;
  }

  async close() {
    for (const c of this.conns) c.ws.terminate();
    const wss = this.wss;
    if (wss) await new Promise((/** @type {(value?: void) => void} */ resolve) => wss.close(() => resolve()));
  }
}
