// The client side's protocol rules, without I/O: frames in, events and frames
// out. Mirrored from protocol/client.py `ClientProtocol` (its docstring is the
// theory of operation); tests/cases/client_cases.json keeps both in step.
// wirepipe.js drives it with a WebSocket, timers and listeners.
//
// Hello: resume/epoch/after once a welcome gave a position; live only while
// there is no position yet; start only on the first hello ever sent.
// Position: seq <= lastSeq is a duplicate (dropped, counted); a hole is a gap
// (counted, delivered). A welcome that is not recovered, changes the epoch or
// follows `lagged` resets lastSeq to first - 1 (head when the hello said live).
// Acks: with a window, cumulative, once max(1, floor(window / 2)) events were
// consumed since the last ack; every socket and welcome starts a new
// generation, and events of an older one are owed no ack.

import { closeAction } from './codes.js';

/**
 * @typedef {import('./wirepipe.d.ts').Welcome} Welcome
 * @typedef {import('./wirepipe.d.ts').WirepipeEvent} WirepipeEvent
 * @typedef {import('./wirepipe.d.ts').CoreOutput} CoreOutput
 * @typedef {import('./wirepipe.d.ts').CoreOptions} CoreOptions
 * @typedef {Record<string, any>} Frame
 */

export class ClientCore {
  /** @param {CoreOptions} opts */
  constructor(opts) {
    this.sid = opts.sid;
    this.auth = opts.auth;
    this.window = opts.window;
    this.start = opts.start;
    this.live = opts.live === true;
    this.client = opts.client;
    /** @type {Welcome | null} */
    this.welcome = null;
    /** @type {Welcome[]} every welcome after the first that reset */
    this.resets = [];
    /** @type {Frame[]} */
    this.errors = [];
    /** @type {string | null} */
    this.epoch = null;
    /** @type {string | null} */
    this.resume = null;
    this.lastSeq = 0;
    this.duplicates = 0;
    this.gaps = 0;
    this.connects = 0;
    this.welcomed = false;
    this.generation = 0;
    /** @type {Map<string, Frame>} requests waiting for their `replied`, by rid */
    this.pending = new Map();
    this._connected = false;
    this._liveHello = false;
    this._startSent = false;
    this._lagged = false;
    /** A bad_token error came on this socket: its 4401 means "retry without the token". */
    this._tokenRefused = false;
    this._ackEvery = 0;
    this._ackedSeq = 0;
    /** @type {Frame[]} */
    this._out = [];
  }

  /** The frames queued for the current socket, in order (then forgotten). */
  framesToSend() {
    const out = this._out;
    this._out = [];
    return out;
  }

  /** @param {Frame} frame */
  _send(frame) {
    if (this._connected) this._out.push(frame);
  }

  /** A new socket is open: queues (and returns) its hello. */
  opened() {
    this._connected = true;
    this.welcomed = false;
    this._out = [];
    this.generation++;
    this._ackEvery = 0;
    this.connects++;
    /** @type {Frame} */
    const hello = { t: 'hello', sid: this.sid };
    if (this.auth != null) hello.auth = this.auth;
    if (this.resume != null && this.epoch != null) {
      hello.resume = this.resume;
      hello.epoch = this.epoch;
      hello.after = this.lastSeq;
    }
    this._liveHello = this.live && this.welcome === null;
    if (this._liveHello) hello.live = true;
    if (this.window != null) hello.window = this.window;
    if (this.client != null) hello.client = this.client;
    if (this.start != null && !this._startSent) hello.start = this.start;
    if (this.start != null) this._startSent = true;
    this._out.push(hello);
    return hello;
  }

  /**
   * The socket is gone (1006 when no close frame came).
   * @param {number} code
   * @returns {'retry' | 'stop' | 'reauth'}
   */
  closed(code) {
    this._connected = false;
    this.welcomed = false;
    this._out = [];
    let action = closeAction(code);
    if (action === 'reauth') {
      this.resume = null; // the next welcome starts over
      // Only the resume token was refused (bad_token: expired, or a gateway
      // restarted with another secret), not the credential: retry without it.
      if (this._tokenRefused) action = 'retry';
    }
    this._tokenRefused = false;
    return action;
  }

  /**
   * Handles one decoded server frame; what it means, in order.
   * @param {Frame} frame
   * @returns {CoreOutput[]}
   */
  receive(frame) {
    /** @type {CoreOutput[]} */
    const out = [];
    switch (frame.t) {
      case 'welcome':
        out.push(this._onWelcome(/** @type {Welcome} */ (frame)));
        break;
      case 'ev':
        this._events([frame], out);
        break;
      case 'batch':
        if (Array.isArray(frame.evs)) this._events(frame.evs, out);
        break;
      case 'replied':
        if (this.pending.delete(frame.rid)) out.push({ type: 'replied', frame });
        break;
      case 'pong':
        out.push({ type: 'pong', frame });
        break;
      case 'error':
        if (frame.code === 'lagged') this._lagged = true;
        else if (frame.code === 'bad_token') this._tokenRefused = true;
        this.errors.push(frame);
        out.push({ type: 'error', frame });
        break;
      default:
        // Unknown frame types are a later, additive protocol change: ignore them.
        break;
    }
    return out;
  }

  /**
   * @param {unknown[]} evs
   * @param {CoreOutput[]} out
   */
  _events(evs, out) {
    for (const raw of evs) {
      if (raw === null || typeof raw !== 'object') continue;
      const { seq, k, ts, d } = /** @type {Frame} */ (raw);
      if (typeof seq !== 'number') continue;
      if (seq <= this.lastSeq) {
        this.duplicates++;
        continue;
      }
      if (seq !== this.lastSeq + 1) this.gaps++;
      this.lastSeq = seq;
      out.push({ type: 'event', ev: { seq, k, ts, d } });
    }
  }

  /** @param {Welcome} w */
  _onWelcome(w) {
    const first = this.welcome === null;
    const reset = first || w.recovered !== true || w.epoch !== this.epoch || this._lagged;
    const firstOnSocket = !this.welcomed;
    if (reset) {
      const base = this._liveHello ? w.head : w.first - 1;
      this.lastSeq = Number.isInteger(base) && base > 0 ? base : 0;
      if (!first) this.resets.push(w);
    }
    this._liveHello = false;
    this._lagged = false;
    this.welcome = w;
    this.epoch = w.epoch ?? null;
    this.resume = w.resume ?? null;
    this.welcomed = true;
    this.generation++;
    this._ackedSeq = this.lastSeq;
    const size = w.window ?? 0; // null (no window in force): no acks
    this._ackEvery = size > 0 ? Math.max(1, Math.floor(size / 2)) : 0;
    if (firstOnSocket) for (const frame of this.pending.values()) this._send(frame);
    return /** @type {CoreOutput} */ ({ type: 'welcome', welcome: w, reset, first });
  }

  /**
   * The application took event `seq`, delivered in `generation`; returns (and
   * queues) the cumulative ack the rule asks for, or null.
   * @param {number} seq
   * @param {number} generation
   */
  consumed(seq, generation) {
    if (generation !== this.generation || !this._ackEvery || !this.welcomed) return null;
    if (seq - this._ackedSeq < this._ackEvery) return null;
    this._ackedSeq = seq;
    const ack = { t: 'ack', seq };
    this._send(ack);
    return ack;
  }

  /**
   * Keeps a reply/send/cancel frame pending until its `replied`; queues it now if welcomed.
   * @param {Frame} frame with its rid
   */
  request(frame) {
    this.pending.set(frame.rid, frame);
    if (this.welcomed) this._send(frame);
  }

  /**
   * Queues a ping frame (nothing when no socket is open).
   * @param {unknown} n
   */
  ping(n) {
    const frame = { t: 'ping', n };
    this._send(frame);
    return frame;
  }
}
