// tests/cases/client_cases.json against the JavaScript client's rules
// (ClientCore) and reducer (Snapshot). The same file runs against the Python
// client (tests/protocol/test_client_cases.py): both clients send the same
// hellos and acks, deliver and drop the same events, reset at the same
// welcomes and fold events into the same snapshot.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { ClientCore, Snapshot } from '../src/index.js';

const CASES = JSON.parse(readFileSync(new URL('../../../tests/cases/client_cases.json', import.meta.url), 'utf8'));

/**
 * @typedef {Record<string, any>} Frame
 * @typedef {import('../src/index.js').CoreOutput} CoreOutput
 */

/** @param {Frame} raw */
function serverFrame(raw) {
  const frame = structuredClone(raw);
  if (frame.t === 'welcome') return { ...CASES.welcome_defaults, ...frame };
  if (frame.t === 'ev') return { ...CASES.event_defaults, ...frame };
  if (frame.t === 'batch') frame.evs = frame.evs.map((/** @type {Frame} */ e) => ({ ...CASES.event_defaults, ...e }));
  return frame;
}

// A client frame as the cases write it: absent, nil and `live: false` are the same.
/** @param {Frame} frame */
function asSent(frame) {
  return Object.fromEntries(
    Object.entries(frame).filter(([k, v]) => v !== undefined && v !== null && !(k === 'live' && v === false)),
  );
}

describe('client cases', () => {
  for (const c of CASES.protocol) {
    it(c.name, () => {
      const core = new ClientCore({ ...CASES.options, ...c.options });
      /** @type {{gen: number, ev: import('../src/index.js').WirepipeEvent}[]} */
      const delivered = [];
      c.steps.forEach((/** @type {Frame} */ step, /** @type {number} */ i) => {
        const where = `step ${i}: ${JSON.stringify(step)}`;
        /** @type {CoreOutput[]} */
        let outs = [];
        if (step.open) core.opened();
        else if ('recv' in step) outs = core.receive(serverFrame(step.recv));
        else if ('consume' in step) {
          for (;;) {
            const { gen, ev } = /** @type {{gen: number, ev: import('../src/index.js').WirepipeEvent}} */ (delivered.shift());
            core.consumed(ev.seq, gen);
            if (ev.seq === step.consume) break;
          }
        } else if ('request' in step) core.request(structuredClone(step.request));
        else if ('close' in step) assert.equal(core.closed(step.close), step.action, where);
        else if ('auth' in step) core.auth = step.auth;
        else assert.fail(`unknown step ${where}`);
        const events = outs.filter((o) => o.type === 'event').map((o) => o.ev);
        for (const ev of events) delivered.push({ gen: core.generation, ev });
        assert.deepEqual(events.map((ev) => ev.seq), step.events ?? [], where);
        assert.deepEqual(outs.filter((o) => o.type === 'replied').map((o) => o.frame.rid), step.replied ?? [], where);
        assert.deepEqual(outs.filter((o) => o.type === 'error').map((o) => o.frame.code), step.errors ?? [], where);
        assert.deepEqual(outs.filter((o) => o.type === 'pong').map((o) => o.frame.n), step.pongs ?? [], where);
        if ('welcome' in step) {
          const welcomes = outs.filter((o) => o.type === 'welcome').map((o) => ({ reset: o.reset, first: o.first }));
          assert.deepEqual(welcomes, [step.welcome], where);
        }
        assert.deepEqual(core.framesToSend().map(asSent), step.sends ?? [], where);
        /** @type {Record<string, unknown>} */
        const state = {
          last_seq: core.lastSeq,
          epoch: core.epoch,
          duplicates: core.duplicates,
          gaps: core.gaps,
          resets: core.resets.length,
          errors: core.errors.length,
          connects: core.connects,
        };
        for (const [key, want] of Object.entries(step.state ?? {})) assert.deepEqual(state[key], want, `${where}: ${key}`);
      });
    });
  }
});

describe('snapshot cases', () => {
  for (const c of CASES.snapshot) {
    it(c.name, () => {
      const snap = 'from' in c ? Snapshot.fromMap(c.from) : new Snapshot();
      for (const [k, d] of c.events) snap.apply(k, d);
      assert.deepEqual(snap.asMap(), c.expect);
    });
  }
});
