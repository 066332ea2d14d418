// The session snapshot reducer (docs/protocol.md section 4), mirrored from
// protocol/state.py `Snapshot`: fold events in, in order, and asMap() is what
// a welcome's `snapshot` holds. tests/cases/client_cases.json keeps both in
// step; the web UI renders what this holds (gateway/static/render.js).

/** Session ids: 1-128 chars of [A-Za-z0-9._:-] (protocol/codec.py SID_RE). */
export const SID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

/** Run states after which no event follows (protocol/events.py FINAL_STATES). */
export const FINAL_STATES = Object.freeze(new Set(['done', 'failed', 'cancelled']));

/** Every run state a `status` event may carry. */
export const RUN_STATES = Object.freeze(new Set(['running', 'waiting', 'done', 'failed', 'cancelled']));

/**
 * True for the `status` event that ends a run.
 * @param {string} k
 * @param {unknown} d
 * @returns {boolean}
 */
export function isFinal(k, d) {
  return k === 'status' && isMap(d) && typeof d.state === 'string' && FINAL_STATES.has(d.state);
}

/**
 * A decoded MessagePack map (a plain object; not an array, not bytes).
 * @param {unknown} value
 * @returns {value is Record<string, any>}
 */
export function isMap(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

/**
 * Python's truth value of a decoded value, so that `end: []` means what it means there.
 * @param {unknown} value
 */
function truthy(value) {
  if (Array.isArray(value)) return value.length > 0;
  if (isMap(value)) return Object.keys(value).length > 0;
  return Boolean(value);
}

/**
 * @template T
 * @param {T} value
 * @returns {T}
 */
const copy = (value) => structuredClone(value);

/** The compacted state of a session: status, plan, open asks, open texts. */
export class Snapshot {
  constructor() {
    /** @type {Record<string, any> | null} */
    this.status = null;
    /** @type {Record<string, any> | null} */
    this.plan = null;
    /** @type {Map<string, Record<string, any>>} open asks by id, in the order they were asked */
    this.asks = new Map();
    /** @type {Map<string, string[]>} open text streams by id: their deltas */
    this.texts = new Map();
  }

  /**
   * Fold one event in. Malformed payloads are ignored, never thrown.
   * @param {string} k
   * @param {unknown} d
   */
  apply(k, d) {
    if (!isMap(d)) return;
    switch (k) {
      case 'text': {
        if (typeof d.id !== 'string') return;
        if (truthy(d.end)) this.texts.delete(d.id);
        else if (typeof d.delta === 'string') {
          const parts = this.texts.get(d.id);
          if (parts) parts.push(d.delta);
          else this.texts.set(d.id, [d.delta]);
        }
        return;
      }
      case 'status':
        if (typeof d.state === 'string' && RUN_STATES.has(d.state)) this.status = copy(d);
        return;
      case 'plan': {
        const plan = copy(d);
        if (!Array.isArray(plan.tasks)) plan.tasks = [];
        this.plan = plan;
        return;
      }
      case 'task':
        this._applyTask(d);
        return;
      case 'ask':
        if (typeof d.id === 'string') this.asks.set(d.id, copy(d));
        return;
      case 'answer':
        if (typeof d.id === 'string') this.asks.delete(d.id);
        return;
      default:
        // Kinds the snapshot does not track (and unknown ones) change nothing.
        return;
    }
  }

  /** @param {Record<string, any>} d a `task` payload */
  _applyTask(d) {
    const { id, status } = d;
    // Without a string id an update would match a plan task that has no id;
    // an update for a task the plan does not have is ignored.
    if (this.plan === null || typeof id !== 'string' || typeof status !== 'string') return;
    for (const task of this.plan.tasks) {
      if (isMap(task) && task.id === id) {
        task.status = status;
        if (Object.hasOwn(d, 'result')) task.result = copy(d.result);
        if (status === 'running') this.plan.current = task.id;
        return;
      }
    }
  }

  /**
   * The reducer whose asMap() is `m` (a welcome's snapshot).
   * @param {unknown} m
   * @returns {Snapshot}
   */
  static fromMap(m) {
    const s = new Snapshot();
    if (!isMap(m)) return s;
    s.status = m.status == null ? null : copy(m.status);
    s.plan = m.plan == null ? null : copy(m.plan);
    for (const a of Array.isArray(m.asks) ? m.asks : []) {
      if (isMap(a) && Object.hasOwn(a, 'id')) s.asks.set(a.id, copy(a));
    }
    for (const t of Array.isArray(m.texts) ? m.texts : []) {
      if (isMap(t) && Object.hasOwn(t, 'id')) s.texts.set(t.id, [t.text ?? '']);
    }
    return s;
  }

  /** The `snapshot` map of a welcome. */
  asMap() {
    return {
      status: this.status,
      plan: this.plan,
      asks: [...this.asks.values()],
      texts: [...this.texts].map(([id, parts]) => ({ id, text: parts.join('') })),
    };
  }

  /**
   * The text of the open stream `id`, or undefined.
   * @param {string} id
   */
  text(id) {
    return this.texts.get(id)?.join('');
  }

  /** True once the status is final (done, failed, cancelled). */
  get finished() {
    return this.status !== null && isFinal('status', this.status);
  }
}
