// Small promise helpers for the client tests: wait on client events, never on time.

/**
 * @typedef {import('../src/index.js').Client} Client
 * @typedef {import('../src/index.js').ClientEvents} ClientEvents
 * @typedef {import('../src/index.js').WirepipeEvent} WirepipeEvent
 */

/**
 * Resolves with the first argument of the next `name` event that matches `pred`.
 * @template {keyof ClientEvents} K
 * @param {Client} client
 * @param {K} name
 * @param {(arg: ClientEvents[K]) => boolean} [pred]
 * @returns {Promise<ClientEvents[K]>}
 */
export function next(client, name, pred = () => true) {
  return new Promise((resolve) => {
    const off = client.on(name, (arg) => {
      if (pred(arg)) {
        off();
        resolve(arg);
      }
    });
  });
}

/**
 * Collects `event`s from now on; `.until(seq)` resolves with all of them once `seq` was seen.
 * @param {Client} client
 */
export function recorder(client) {
  /** @type {WirepipeEvent[]} */
  const events = [];
  /** @type {{pred: (ev: WirepipeEvent) => boolean, resolve: (events: WirepipeEvent[]) => void}[]} */
  const waiters = [];
  client.on('event', (ev) => {
    events.push(ev);
    for (const w of [...waiters]) {
      if (w.pred(ev)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(events);
      }
    }
  });
  return {
    events,
    seqs: () => events.map((e) => e.seq),
    /**
     * @param {number | ((ev: WirepipeEvent) => boolean)} pred a seq, or a test of each event
     * @returns {Promise<WirepipeEvent[]>}
     */
    until(pred) {
      const p = typeof pred === 'number' ? (/** @type {WirepipeEvent} */ ev) => ev.seq === pred : pred;
      if (events.some(p)) return Promise.resolve(events);
      return new Promise((resolve) => waiters.push({ pred: p, resolve }));
    },
  };
}

/**
 * Records every `state` event of a client.
 * @param {Client} client
 */
export function stateLog(client) {
  /** @type {string[]} */
  const states = [];
  client.on('state', (s) => states.push(s));
  return states;
}
