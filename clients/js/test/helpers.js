// Small promise helpers for the client tests: wait on client events, never on time.

/** Resolves with the first argument of the next `name` event that matches `pred`. */
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

/** Collects `event`s from now on; `.until(seq)` resolves with all of them once `seq` was seen. */
export function recorder(client) {
  const events = [];
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
    until(pred) {
      const p = typeof pred === 'number' ? (ev) => ev.seq === pred : pred;
      if (events.some(p)) return Promise.resolve(events);
      return new Promise((resolve) => waiters.push({ pred: p, resolve }));
    },
  };
}

/** Records every `state` event of a client. */
export function stateLog(client) {
  const states = [];
  client.on('state', (s) => states.push(s));
  return states;
}
