// The wirepipe client: one session over one WebSocket, speaking wirepipe.v1
// (docs/protocol.md), in the browser without a build step and in Node 20.
//
// Theory of operation
//
// A Client owns at most one socket at a time. Its life is the state table
// below: `connecting` (socket opening, hello sent, no welcome yet), `open`
// (welcome received, events flow), `recovering` (the socket dropped with a
// retryable close code; a reconnect is scheduled with full-jitter backoff) and
// `closed` (for good after close() or a stop code; or, after 4401, until
// setAuth() gives new credentials).
//
// The protocol's rules live in core.js (`ClientCore`, the JavaScript twin of
// protocol/client.py): what each hello says, the position (epoch, lastSeq),
// duplicates, resets, the ack rule, pending requests, close codes. This file
// drives it: the socket, timers, listeners and async iterators.
//
// Position. Events with seq <= lastSeq are duplicates and are dropped. A
// welcome that says `recovered: false`, changes the epoch, or follows a
// `lagged` error starts over, and `reset` fires with the snapshot, so a UI
// drops what it showed and rebuilds. The very first welcome fires `reset`
// too, so that a UI builds its first view and every later one by the same
// code. Events of two epochs are never spliced: a `reset` sits between them.
// `live` is sent only until the first welcome: a reconnect resumes from the
// last event seen.
//
// Requests. reply/send/cancel get a fresh rid and stay pending until their
// `replied` frame arrives. Pending frames are (re)sent after each socket's
// welcome with the SAME rid: the server answers a repeated rid with the first
// outcome, so re-sending after a drop is safe. They reject only when the
// client is closed for good.
//
// Flow control. With a window in force (welcome.window) the client acks
// cumulatively once max(1, floor(window / 2)) events have been processed
// since the last ack (docs/protocol.md section 6; the Python client follows
// the same rule). An event is processed once the `event` listeners returned
// and every open async iterator has taken it, so a slow `for await` loop
// holds the acks back and the server stops at the window: the iterator's
// buffer is bounded by its consumer. Without a window the client never acks
// (the server does not need acks then) and an iterator buffers whatever the
// server sends.
//
// Liveness. The server pings at the WebSocket level (the browser and `ws`
// answer by themselves). On top of that, when nothing arrived for
// 2 x welcome.heartbeat, the client sends a `ping` frame; if nothing arrives
// within one more heartbeat, the connection is taken as dead: the socket is
// dropped and handled as a 1006 close (reconnect with backoff).

import { Decoder, Encoder } from '@msgpack/msgpack';
import { CloseAction, CloseCode } from './codes.js';
import { ClientCore } from './core.js';
import { SID_RE } from './state.js';

/**
 * @typedef {import('./wirepipe.d.ts').ConnectOptions} ConnectOptions
 * @typedef {import('./wirepipe.d.ts').WebSocketLike} WebSocketLike
 * @typedef {import('./wirepipe.d.ts').WebSocketConstructor} WebSocketConstructor
 * @typedef {import('./wirepipe.d.ts').ClientEvents} ClientEvents
 * @typedef {import('./wirepipe.d.ts').WirepipeEvent} WirepipeEvent
 * @typedef {import('./wirepipe.d.ts').Welcome} Welcome
 * @typedef {import('./wirepipe.d.ts').Replied} Replied
 * @typedef {import('./wirepipe.d.ts').CloseInfo} CloseInfo
 * @typedef {import('./wirepipe.d.ts').SnapshotMap} SnapshotMap
 * @typedef {import('./wirepipe.d.ts').StateName} StateName
 * @typedef {Record<string, any>} Frame
 * @typedef {(result: IteratorResult<WirepipeEvent>) => void} Waiter
 * @typedef {{ev: WirepipeEvent, gen: number, n: number}} Queued an event an iterator holds: its generation, its delivery number
 * @typedef {{queue: (Queued | undefined)[], head: number, waiters: Waiter[], done: boolean}} Iter
 * @typedef {{resolve: (replied: Replied) => void, reject: (err: Error) => void}} PendingRequest
 * @typedef {{resolve: () => void, reject: (err: Error) => void}} PendingPing
 */

/** The WebSocket subprotocol of this protocol version. */
export const PROTOCOL = 'wirepipe.v1';
/** The default `hello.client`. */
export const DEFAULT_CLIENT = 'wirepipe-js/0.1.0'; // the package version (tests/test_packaging.py)

export const State = Object.freeze({
  CONNECTING: 'connecting',
  OPEN: 'open',
  RECOVERING: 'recovering',
  CLOSED: 'closed',
});

// Every allowed state change lives here and nowhere else.
// closed -> connecting happens only after a 4401 stop, when setAuth() is called.
/** @type {Readonly<Record<StateName, readonly StateName[]>>} */
const TRANSITIONS = Object.freeze({
  connecting: ['open', 'recovering', 'closed'],
  open: ['recovering', 'closed'],
  recovering: ['connecting', 'closed'],
  closed: ['connecting'],
});

const EVENT_NAMES = new Set(['event', 'welcome', 'reset', 'state', 'error', 'close']);
const WS_OPEN = 1;

/** Raised (as a rejection) for requests that can no longer be answered because the client is closed for good. */
export class ClientClosedError extends Error {
  constructor(message = 'wirepipe client closed') {
    super(message);
    this.name = 'ClientClosedError';
  }
}

/**
 * The reconnect delay in ms before retry number `attempt` (0 for the first):
 * full jitter, random(0, min(max, base * 2**attempt)).
 *
 * @param {number} attempt
 * @param {{base?: number, max?: number}} [backoff]
 * @param {() => number} [random] returns a float in [0, 1)
 * @returns {number}
 */
export function backoffDelay(attempt, backoff = {}, random = Math.random) {
  const base = backoff.base ?? 250;
  const max = backoff.max ?? 10000;
  return random() * Math.min(max, base * 2 ** attempt);
}

const encoder = new Encoder({ ignoreUndefined: true });
const decoder = new Decoder();

/** @type {WebSocketConstructor | null} */
let defaultWebSocket = null;

// The module name sits in a variable so that browsers and bundlers never see a
// second bare specifier: src/ imports only '@msgpack/msgpack' and relative files.
const WS_PACKAGE = 'ws';

/**
 * @param {WebSocketConstructor | undefined} override
 * @returns {Promise<WebSocketConstructor>}
 */
async function resolveWebSocket(override) {
  if (override) return override;
  if (typeof globalThis.WebSocket === 'function') return /** @type {WebSocketConstructor} */ (globalThis.WebSocket);
  if (!defaultWebSocket) {
    const mod = await import(WS_PACKAGE);
    defaultWebSocket = /** @type {WebSocketConstructor} */ (mod.WebSocket ?? mod.default);
  }
  return defaultWebSocket;
}

function newRid() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * @param {unknown} data
 * @returns {Uint8Array | null}
 */
function asBytes(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}

// A listener that throws must not break the client's bookkeeping: report the
// error the way an uncaught one is reported, after the client is done.
/** @param {unknown} err */
function rethrowLater(err) {
  setTimeout(() => {
    throw err;
  }, 0);
}

/**
 * The message of a thrown value (anything may be thrown).
 * @param {unknown} err
 */
function messageOf(err) {
  return /** @type {{message?: unknown} | null | undefined} */ (err)?.message ?? err;
}

/**
 * One wirepipe session over a reconnecting WebSocket. Create it with connect().
 */
export class Client {
  /**
   * @param {string} url
   * @param {ConnectOptions} opts
   */
  constructor(url, opts) {
    if (!opts || typeof opts.sid !== 'string' || !SID_RE.test(opts.sid)) {
      throw new TypeError('wirepipe: opts.sid is required: 1-128 chars of [A-Za-z0-9._:-]');
    }
    if (opts.window != null && !(Number.isInteger(opts.window) && opts.window > 0)) {
      throw new TypeError('wirepipe: opts.window must be a positive integer');
    }
    this.url = url;
    this._opts = opts;
    this._core = new ClientCore({
      sid: opts.sid,
      auth: opts.auth,
      window: opts.window,
      start: opts.start,
      live: opts.live,
      client: opts.client ?? DEFAULT_CLIENT,
    });
    this._backoff = { base: opts.backoff?.base ?? 250, max: opts.backoff?.max ?? 10000 };
    this._random = opts.random ?? Math.random;
    this._maxRetries = opts.maxRetries ?? Infinity;

    /** @type {StateName} */
    this._state = State.CONNECTING;
    /** @type {'viewer' | 'operator' | null} */
    this._grant = null;
    /** @type {SnapshotMap | null} */
    this._snapshot = null;
    /** @type {CloseInfo | null} */
    this._lastClose = null;

    /** @type {WebSocketLike | null} */
    this._ws = null;
    this._welcomed = false; // a welcome arrived on the current socket
    this._final = false; // closed for good
    this._authWait = false; // stopped by 4401 until setAuth()
    this._attempt = 0;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._retryTimer = null;

    this._heartbeat = 0;
    /** @type {ReturnType<typeof setInterval> | null} */
    this._hbTimer = null;
    this._lastRecv = 0;
    /** @type {number | null} when the liveness ping went out, null when none is out */
    this._pingOut = null;
    this._pingN = 0;
    /** @type {Map<unknown, PendingPing>} ping frames waiting for their pong, by n */
    this._pings = new Map();

    /** @type {Map<string, PendingRequest>} requests waiting for their replied, by rid */
    this._pending = new Map();
    /** @type {Map<string, Set<(arg: any) => void>>} */
    this._listeners = new Map();
    /** @type {Set<Iter>} */
    this._iters = new Set();
    this._delivered = 0;

    this._open();
  }

  /** @returns {'connecting' | 'open' | 'recovering' | 'closed'} */
  get state() {
    return this._state;
  }
  get sid() {
    return this._core.sid;
  }
  /** The epoch of the last welcome, or null before the first one. */
  get epoch() {
    return this._core.epoch;
  }
  /** The seq of the last event delivered in the current epoch; after a reset, welcome.first - 1 (welcome.head with `live`). */
  get lastSeq() {
    return this._core.lastSeq;
  }
  /** Events received twice (dropped) and holes in the seqs: the protocol promises neither. */
  get stats() {
    return { duplicates: this._core.duplicates, gaps: this._core.gaps, connects: this._core.connects };
  }
  /** 'viewer' or 'operator', from the last welcome. */
  get grant() {
    return this._grant;
  }
  /** The snapshot of the latest welcome that carried one (always updated on a reset). */
  get snapshot() {
    return this._snapshot;
  }
  /** The last welcome frame. */
  get welcome() {
    return this._core.welcome;
  }
  /** The last close: {code, reason, willRetry, delay?}, or null. */
  get lastClose() {
    return this._lastClose;
  }

  // ---- events ----

  /**
   * Adds a listener. Returns a function that removes it.
   * @template {keyof ClientEvents} K
   * @param {K} name
   * @param {(arg: ClientEvents[K]) => void} fn
   * @returns {() => void}
   * @throws {TypeError} on an unknown event name
   */
  on(name, fn) {
    if (!EVENT_NAMES.has(name)) throw new TypeError(`wirepipe: unknown event ${JSON.stringify(name)}`);
    let set = this._listeners.get(name);
    if (!set) this._listeners.set(name, (set = new Set()));
    set.add(fn);
    return () => this.off(name, fn);
  }

  /**
   * @template {keyof ClientEvents} K
   * @param {K} name
   * @param {(arg: ClientEvents[K]) => void} fn
   */
  off(name, fn) {
    this._listeners.get(name)?.delete(fn);
  }

  /**
   * @template {keyof ClientEvents} K
   * @param {K} name
   * @param {ClientEvents[K]} arg
   */
  _emit(name, arg) {
    const set = this._listeners.get(name);
    if (!set || set.size === 0) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        rethrowLater(err);
      }
    }
  }

  // ---- public commands ----

  /**
   * Answers the ask `askId`. Resolves to the `replied` outcome {rid, ok, err}.
   * @param {string} askId
   * @param {unknown} value
   * @returns {Promise<Replied>}
   * @throws {ClientClosedError} (rejection) if the client is closed for good first
   */
  reply(askId, value) {
    return this._request({ t: 'reply', ask: String(askId), value: value === undefined ? null : value });
  }

  /**
   * Sends `data` to the agent (its Pipe's get_message). Resolves to {rid, ok, err}.
   * @param {unknown} data
   * @returns {Promise<Replied>}
   */
  send(data) {
    return this._request({ t: 'send', data: data === undefined ? null : data });
  }

  /**
   * Asks the agent run to stop (closing the socket never does). Resolves to {rid, ok, err}.
   * @param {string} [reason]
   * @returns {Promise<Replied>}
   */
  cancel(reason) {
    return this._request({ t: 'cancel', reason: reason == null ? undefined : String(reason) });
  }

  /**
   * Sends a `ping` frame; resolves to the round trip in ms when its `pong` arrives.
   * @returns {Promise<number>}
   * @throws {Error} (rejection) if the client is not open or the connection drops first
   */
  ping() {
    if (!this._welcomed) return Promise.reject(new Error('wirepipe: not open'));
    const n = ++this._pingN;
    const at = Date.now();
    return new Promise((resolve, reject) => {
      this._pings.set(n, { resolve: () => resolve(Date.now() - at), reject });
      this._core.ping(n);
      this._flush();
    });
  }

  /**
   * Sets the credential for the next hello. After a 4401 close, this reconnects.
   * The resume token is dropped on 4401, so that reconnect gets `recovered: false`
   * and a `reset`.
   * @param {string | undefined} auth
   */
  setAuth(auth) {
    this._core.auth = auth;
    if (this._authWait && !this._final) {
      this._authWait = false;
      this._attempt = 0;
      this._reconnect();
    }
  }

  /**
   * Closes with 1000 and stops reconnecting, for good: pending requests reject,
   * async iterators end after their buffered events. Resolves once the socket
   * is closed.
   * @param {string} [reason]
   * @returns {Promise<void>}
   */
  close(reason = '') {
    const ws = this._ws;
    if (this._final) return Promise.resolve();
    this._ws = null; // its close event is no longer ours to handle
    this._welcomed = false;
    /** @type {Promise<void>} */
    const closed =
      ws && ws.readyState !== 3
        ? new Promise((resolve) => ws.addEventListener('close', () => resolve()))
        : Promise.resolve();
    if (ws) {
      try {
        ws.close(CloseCode.NORMAL, reason);
      } catch {
        // already closing
      }
    }
    this._finish(CloseCode.NORMAL, reason);
    return closed;
  }

  // ---- async iteration ----

  /**
   * Yields every event delivered after this call, in order; ends when the client is closed for good.
   * @returns {AsyncIterableIterator<WirepipeEvent> & {return(): Promise<IteratorResult<WirepipeEvent>>}}
   */
  [Symbol.asyncIterator]() {
    const client = this;
    /** @type {Iter} */
    const it = { queue: [], head: 0, waiters: [], done: this._final };
    if (!it.done) this._iters.add(it);
    // Only called while it.head < it.queue.length: the slot holds an event.
    const take = () => {
      const rec = /** @type {Queued} */ (it.queue[it.head]);
      it.queue[it.head++] = undefined;
      if (it.head > 1024 && it.head * 2 > it.queue.length) {
        it.queue = it.queue.slice(it.head);
        it.head = 0;
      }
      return rec.ev;
    };
    return {
      next() {
        if (it.head < it.queue.length) {
          const value = take();
          client._maybeAck();
          return Promise.resolve({ value, done: false });
        }
        if (it.done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => it.waiters.push(resolve));
      },
      return() {
        it.done = true;
        it.queue = [];
        it.head = 0;
        client._iters.delete(it);
        for (const w of it.waiters.splice(0)) w({ value: undefined, done: true });
        client._maybeAck();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  // ---- connection lifecycle ----

  /**
   * Changes state without telling anyone; false if already there.
   * @param {StateName} next
   */
  _enter(next) {
    if (this._state === next) return false;
    if (!TRANSITIONS[this._state].includes(next)) {
      throw new Error(`wirepipe: bad state change ${this._state} -> ${next}`);
    }
    this._state = next;
    return true;
  }

  /** @param {StateName} next */
  _setState(next) {
    if (this._enter(next)) this._emit('state', next);
  }

  async _open() {
    let WS;
    try {
      WS = await resolveWebSocket(this._opts.WebSocket);
    } catch (err) {
      if (!this._final) this._fail(`no WebSocket implementation: ${messageOf(err)}`);
      return;
    }
    if (this._final || this._authWait) return;
    let ws;
    try {
      ws = new WS(this.url, [PROTOCOL]);
    } catch (err) {
      this._fail(`cannot open ${this.url}: ${messageOf(err)}`);
      return;
    }
    ws.binaryType = 'arraybuffer';
    this._ws = ws;
    this._welcomed = false;
    ws.addEventListener('open', () => {
      if (ws === this._ws) this._sendHello();
    });
    ws.addEventListener('message', (e) => {
      if (ws === this._ws) this._onMessage(e.data);
    });
    ws.addEventListener('close', (e) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._dropped(e.code, e.reason ?? '');
    });
    // The close event that follows an error says all we act on.
    ws.addEventListener('error', () => {});
  }

  _sendHello() {
    this._core.opened();
    this._flush();
  }

  // Sends what the core queued for this socket.
  _flush() {
    for (const frame of this._core.framesToSend()) this._sendFrame(frame);
  }

  _reconnect() {
    this._setState(State.CONNECTING);
    this._open();
  }

  /**
   * The socket is gone (close event, or a dead connection). Decide what next.
   * @param {number} code
   * @param {string} reason
   */
  _dropped(code, reason) {
    this._welcomed = false;
    this._stopHeartbeat();
    this._failPings(new Error('wirepipe: connection lost'));
    const action = this._core.closed(code);
    if (action === CloseAction.RETRY && this._attempt < this._maxRetries) {
      const delay = backoffDelay(this._attempt, this._backoff, this._random);
      this._attempt++;
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        if (!this._final) this._reconnect();
      }, delay);
      this._lastClose = { code, reason, willRetry: true, delay };
      this._enter(State.RECOVERING);
      this._announce(State.RECOVERING);
    } else if (action === CloseAction.REAUTH) {
      this._authWait = true;
      this._lastClose = { code, reason, willRetry: false };
      this._enter(State.CLOSED);
      this._announce(State.CLOSED);
    } else {
      this._finish(code, reason);
    }
  }

  /**
   * Emits `close`, then `state`, unless a close listener already moved on
   * (for example by calling close()).
   * @param {StateName} state
   */
  _announce(state) {
    const info = /** @type {CloseInfo} */ (this._lastClose); // set just before
    this._emit('close', info);
    if (this._state === state && this._lastClose === info) this._emit('state', state);
  }

  /**
   * Closed for good.
   * @param {number} code
   * @param {string} reason
   */
  _finish(code, reason) {
    this._final = true;
    this._authWait = false;
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._stopHeartbeat();
    this._failPings(new ClientClosedError());
    const err = new ClientClosedError(`wirepipe client closed (${code}${reason ? ` ${reason}` : ''})`);
    for (const p of this._pending.values()) p.reject(err);
    this._pending.clear();
    this._core.pending.clear();
    for (const it of this._iters) {
      it.done = true;
      for (const w of it.waiters.splice(0)) w({ value: undefined, done: true });
    }
    this._iters.clear();
    const changed = this._enter(State.CLOSED);
    this._lastClose = { code, reason, willRetry: false };
    this._emit('close', this._lastClose);
    if (changed) this._emit('state', State.CLOSED);
  }

  /**
   * A local failure before any socket exists (no WebSocket class, bad URL): retrying would not help.
   * @param {string} msg
   */
  _fail(msg) {
    this._emit('error', { code: 'connect_failed', msg, fatal: true });
    this._finish(CloseCode.ABNORMAL, msg);
  }

  /** @param {Frame} frame */
  _sendFrame(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WS_OPEN) return false;
    try {
      ws.send(encoder.encode(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---- incoming frames ----

  /** @param {unknown} data a message's data: bytes, or something else to report */
  _onMessage(data) {
    this._lastRecv = Date.now();
    this._pingOut = null;
    const bytes = asBytes(data);
    let frame;
    try {
      if (!bytes) throw new Error('not a binary message');
      frame = decoder.decode(bytes);
    } catch (err) {
      this._emit('error', { code: 'bad_frame', msg: `from server: ${messageOf(err)}`, fatal: false });
      return;
    }
    if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) {
      this._emit('error', { code: 'bad_frame', msg: 'from server: frame is not a map', fatal: false });
      return;
    }
    const outputs = this._core.receive(frame);
    let delivered = false;
    for (const out of outputs) {
      if (this._final) break;
      switch (out.type) {
        case 'welcome':
          this._onWelcome(out.welcome, out.reset);
          break;
        case 'event':
          // A listener may have closed the client, or the socket gone, mid-batch.
          if (!this._welcomed) break;
          this._deliver(out.ev);
          delivered = true;
          break;
        case 'replied':
          this._onReplied(out.frame);
          break;
        case 'pong':
          this._onPong(out.frame);
          break;
        case 'error': {
          const f = out.frame;
          this._emit('error', { code: f.code, msg: f.msg ?? '', fatal: f.fatal === true });
          break;
        }
      }
    }
    if (delivered) this._maybeAck();
    this._flush();
  }

  /**
   * @param {Welcome} w
   * @param {boolean} reset
   */
  _onWelcome(w, reset) {
    const firstOnSocket = !this._welcomed;
    this._grant = w.grant ?? null;
    if (reset || w.snapshot != null) this._snapshot = w.snapshot ?? null;
    this._welcomed = true;
    this._attempt = 0;
    this._startHeartbeat(w.heartbeat);

    this._emit('welcome', w);
    if (this._final || !this._welcomed) return;
    if (reset) this._emit('reset', { snapshot: this._snapshot, welcome: w });
    if (this._final || !this._welcomed) return;
    if (firstOnSocket) this._setState(State.OPEN);
  }

  /** @param {WirepipeEvent} ev */
  _deliver(ev) {
    const gen = this._core.generation;
    const n = ++this._delivered;
    this._emit('event', ev);
    for (const it of this._iters) {
      const waiter = it.waiters.shift();
      if (waiter) waiter({ value: ev, done: false });
      else it.queue.push({ ev, gen, n });
    }
  }

  /**
   * The last seq of the current epoch that every consumer has processed.
   * @returns {number | null}
   */
  _processedSeq() {
    /** @type {Queued | null} */
    let oldest = null;
    for (const it of this._iters) {
      const rec = it.queue[it.head];
      if (rec && (oldest === null || rec.n < oldest.n)) oldest = rec;
    }
    if (oldest === null) return this._core.lastSeq;
    // Events of an older generation (before the last welcome) are owed no ack.
    return oldest.gen === this._core.generation ? oldest.ev.seq - 1 : null;
  }

  _maybeAck() {
    const seq = this._processedSeq();
    if (seq === null) return;
    if (this._core.consumed(seq, this._core.generation)) this._flush();
  }

  /**
   * @param {Frame} frame
   * @returns {Promise<Replied>}
   */
  _request(frame) {
    if (this._final) return Promise.reject(new ClientClosedError());
    frame.rid = newRid();
    return new Promise((resolve, reject) => {
      this._pending.set(frame.rid, { resolve, reject });
      this._core.request(frame);
      this._flush();
    });
  }

  /** @param {Frame} frame */
  _onReplied(frame) {
    const p = this._pending.get(frame.rid);
    if (!p) return;
    this._pending.delete(frame.rid);
    /** @type {Replied} */
    const out = { rid: frame.rid, ok: frame.ok === true };
    if (frame.err != null) out.err = frame.err;
    p.resolve(out);
  }

  /** @param {Frame} frame */
  _onPong(frame) {
    const p = this._pings.get(frame.n);
    if (!p) return;
    this._pings.delete(frame.n);
    p.resolve();
  }

  /** @param {Error} err */
  _failPings(err) {
    for (const p of this._pings.values()) p.reject(err);
    this._pings.clear();
  }

  // ---- liveness ----

  /** @param {unknown} hb welcome.heartbeat, ms */
  _startHeartbeat(hb) {
    this._stopHeartbeat();
    this._heartbeat = typeof hb === 'number' && hb > 0 ? hb : 0;
    if (!this._heartbeat) return;
    this._lastRecv = Date.now();
    this._pingOut = null;
    this._hbTimer = setInterval(() => this._checkAlive(), Math.max(1, this._heartbeat / 2));
  }

  _stopHeartbeat() {
    if (this._hbTimer) clearInterval(this._hbTimer);
    this._hbTimer = null;
    this._pingOut = null;
  }

  _checkAlive() {
    const hb = this._heartbeat;
    const now = Date.now();
    if (this._pingOut === null) {
      if (now - this._lastRecv >= 2 * hb) {
        this._pingOut = now;
        this._sendFrame({ t: 'ping', n: `hb${++this._pingN}` });
      }
      return;
    }
    if (now - this._pingOut < hb) return;
    // Nothing came back: the connection is dead. Drop it without waiting for a
    // closing handshake that would never finish, and reconnect.
    const ws = this._ws;
    this._ws = null;
    try {
      if (typeof ws?.terminate === 'function') ws.terminate();
      else ws?.close();
    } catch {
      // already gone
    }
    this._dropped(CloseCode.ABNORMAL, 'no answer to ping');
  }
}

/**
 * Opens a wirepipe session. Returns at once; the connection is made in the background.
 *
 * @param {string} url ws:// or wss:// URL of the gateway
 * @param {ConnectOptions} opts
 * @returns {Client}
 * @throws {TypeError} if `opts.sid` is missing or invalid, or `opts.window` is not a positive integer
 */
export function connect(url, opts) {
  return new Client(url, opts);
}
