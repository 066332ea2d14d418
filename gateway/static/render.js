// The run view: turns a snapshot and the event stream into DOM.
//
// Every event that reaches apply() ends up as exactly ONE element carrying
// data-seq and data-k (a text delta is a <span> inside its stream's raw text,
// an output chunk a <span> inside its code cell, a log a row in the log
// panel, an event with nothing to show of its own a hidden `.mark`,
// everything else an entry in the feed). Panels derived from events (the
// plan, the open-ask cards, the status badge) carry no data-seq, so
// `document.querySelectorAll('[data-seq]')` lists each event once.
// Things rebuilt from a snapshot carry data-snapshot instead.
//
// The state panels are a projection of the client's reducer (`Snapshot` of
// clients/js/src/state.js, the twin of protocol/state.py): every event with
// seq > the snapshot's head is folded into it, and the plan (in the side
// panel and the steps' status), the status badge and the open-ask cards show
// what it holds, nothing more. The feed, the logs and the text streams are
// the timeline: every event, history included.
//
// How the timeline reads:
// - the first message from a person is the request; a long message (an
//   agent's whole working context) is folded under its first line;
// - a plan task that runs opens a step (a <details>): what happens while it
//   runs goes inside, and the step folds when the task is done;
// - an LLM stream shows as markdown while it streams, and folds into what it
//   became: the code cell that follows (its prose becomes the cell's
//   caption), the plan, or the message with the same text;
// - an open ask is a compact card docked where it was asked (after the code
//   or plan it is about), choices first, the agent's full prompt folded;
//   answered, it is one line;
// - the final status is a result card (what the run produced: the last
//   agent message or task result) or a failure card (the exception's last
//   line, found in the detail or else in the error logs).
//
// The counters (events, duplicates, gaps, render errors) are published as
// data-* attributes of the feed, for tests and the curious.

import { Snapshot, isMap } from '@wirepipe/client/state.js';
import { child, clock, el, errorMessage, formatValue, shortValue, str, token } from './dom.js';
import { fenceJson, markdown, proseOf } from './markdown.js';

/**
 * @typedef {import('@wirepipe/client/wirepipe.js').WirepipeEvent} WirepipeEvent
 * @typedef {import('@wirepipe/client/wirepipe.js').SnapshotMap} SnapshotMap
 * @typedef {import('@wirepipe/client/wirepipe.js').Welcome} Welcome
 * @typedef {import('./dom.js').Child} Child
 * @typedef {Record<string, any>} Payload a decoded map: an event's d, a task, an ask
 * @typedef {{feed: HTMLElement, planGoal: HTMLElement, planTasks: HTMLElement, planProgress: HTMLElement,
 *   logs: HTMLElement, logsCount: HTMLElement, runStatus: HTMLElement, activity?: HTMLElement}} ViewElements
 * @typedef {{span: HTMLElement, text: string, replayed: number, moved?: boolean}} SnapshotText
 * @typedef {{id: string, block: HTMLElement, body: HTMLElement, md: HTMLElement, base?: SnapshotText,
 *   folded: boolean}} TextStream
 * @typedef {{cell: HTMLElement, outputs: HTMLElement}} CodeCell
 * @typedef {HTMLButtonElement | HTMLInputElement} Control
 * @typedef {{card: HTMLElement, controls: Control[]}} AskCard
 * @typedef {{el: HTMLDetailsElement, body: HTMLElement, pill: HTMLElement, sum: HTMLElement, touched: boolean}} Step
 * @typedef {{goal: unknown, tasks: Payload[], current: unknown, proposed: boolean}} ShownPlan
 * @typedef {{text: string, from: string, node?: HTMLElement}} Outcome
 * @typedef {{ok: boolean, err?: string}} ReplyResult
 */

/** Kinds whose events change the state panels. */
const STATE_KINDS = new Set(['plan', 'task', 'status', 'ask', 'answer']);

// Log level -> rank used by the level filter (CSS hides .lvl-N below the
// selected rank). Loguru (MetaGPT) and stdlib names, and stdlib numbers.
/** @type {Record<string, number>} */
const LEVEL_RANK = {
  TRACE: 0, DEBUG: 0, INFO: 1, SUCCESS: 1, NOTICE: 1,
  WARNING: 2, WARN: 2, ERROR: 3, CRITICAL: 3, FATAL: 3, EXCEPTION: 3,
};

/** @type {Record<string, string>} level names as the one-line log rows show them */
const SHORT_LEVEL = { WARNING: 'WARN', CRITICAL: 'CRIT', SUCCESS: 'OK' };

/** Roles that are a person (or stand for one), not an agent. */
const PERSON_ROLES = new Set(['user', 'human']);

/** A message longer than this (characters or lines) is folded under its first line. */
const LONG_CHARS = 700;
const LONG_LINES = 14;

/**
 * @param {unknown} level
 * @returns {number}
 */
export function levelRank(level) {
  if (typeof level === 'number') {
    if (level >= 40) return 3;
    if (level >= 30) return 2;
    if (level >= 20) return 1;
    return 0;
  }
  const rank = LEVEL_RANK[str(level).toUpperCase()];
  return rank === undefined ? 1 : rank;
}

const isObject = isMap;

let uid = 0;
/** @param {string} prefix */
const nextId = (prefix) => `${prefix}-${++uid}`;

/**
 * The first line worth showing of a long text: markdown heading marks and
 * blank lines skipped, cut at `max`.
 * @param {string} text
 * @param {number} [max]
 */
export function firstLine(text, max = 120) {
  for (const raw of text.split('\n')) {
    const line = raw.replace(/^\s*#+\s*/, '').trim();
    if (line) return line.length > max ? `${line.slice(0, max - 1)}…` : line;
  }
  return '';
}

/**
 * The last non-empty line of `text`.
 * @param {string} text
 */
function lastLine(text) {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines.length ? lines[lines.length - 1] : '';
}

const TRACEBACK = 'Traceback (most recent call last):';

/**
 * What a failed run's detail says went wrong, in one line: the exception's
 * last line. A detail that is only the head of a traceback (MetaGPT raises
 * `Exception(traceback text)`, and the gateway keeps the first line) says
 * nothing: then `fallback` (the last error the run logged or printed) does.
 * @param {unknown} detail
 * @param {string} fallback
 * @returns {string}
 */
export function failureCause(detail, fallback) {
  const text = detail === undefined || detail === null ? '' : formatValue(detail, 0).trim();
  const at = text.indexOf(TRACEBACK);
  if (at >= 0) {
    const after = text.slice(at + TRACEBACK.length).trim();
    if (after) return lastLine(after);
    return fallback ? causeIn(fallback) : 'The agent raised an exception (its traceback is in the logs).';
  }
  return text || (fallback ? causeIn(fallback) : '');
}

/**
 * The line of an error text that names the exception: the last `Name: message`
 * line (a traceback's last), else its last line.
 * @param {string} text
 */
function causeIn(text) {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  for (let i = lines.length - 1; i >= 0; i -= 1) {
    if (/^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b/.test(lines[i])) return lines[i];
  }
  return lines.length ? lines[lines.length - 1] : '';
}

/**
 * A Python repr of a one-line string ('x' or "x") as the string itself.
 * @param {string} text
 */
function unquote(text) {
  const t = text.trim();
  if (t.length >= 2 && !t.includes('\n') && (t[0] === '"' || t[0] === "'") && t.at(-1) === t[0]) return t.slice(1, -1);
  return t;
}

/**
 * A hidden element that stands for an event with nothing of its own to show.
 * @param {WirepipeEvent} ev
 * @param {string} k
 */
function mark(ev, k) {
  return el('span', { class: 'mark', hidden: true, dataset: { seq: ev.seq, k } });
}

export class View {
  // What a reset drops: clear() puts each of these back as it is here.
  /** what the state panels show */
  state = new Snapshot();
  /** @type {number | null} seq of the last event applied, null after a reset */
  lastSeq = null;
  /** @type {Map<string, TextStream>} stream id -> its block */
  texts = new Map();
  /** @type {TextStream | null} the latest stream not yet folded into what it became */
  unclaimed = null;
  /** @type {Set<TextStream>} streams whose markdown is to be drawn again */
  dirty = new Set();
  /** @type {Map<string, CodeCell>} code id -> {cell, outputs} */
  codes = new Map();
  /** @type {Map<string, AskCard>} ask id -> {card, controls}: a card per open ask of the state */
  asks = new Map();
  /** @type {Set<string>} ask ids whose reply said the ask is gone: no card */
  dismissed = new Set();
  /** @type {Map<string, HTMLElement>} ask id -> feed entry of its ask event (where its card docks) */
  askEntries = new Map();
  /** @type {Map<string, HTMLElement>} task id -> <li> */
  taskRows = new Map();
  /** @type {Map<string, Step>} task id -> its step in the feed */
  steps = new Map();
  /** @type {string | null} the task whose step takes what happens now */
  current = null;
  /** @type {string} the tasks of the plan card last shown (ids and instructions) */
  planShown = '';
  /** @type {HTMLElement | null} */
  planCard = null;
  /** @type {boolean} the latest plan event was a proposal (the next review ask is about it) */
  proposed = false;
  /** @type {boolean} the request (the first message from a person) is shown */
  requested = false;
  /** @type {Map<string, HTMLElement>} a message's role, name and content -> its card */
  messageCards = new Map();
  /** @type {Outcome | null} what the run produced so far */
  outcome = null;
  /** the last error the run logged or printed (a failure card's fallback cause) */
  lastError = '';
  logCount = 0;
  snapshotHead = 0;

  /**
   * elements: see ViewElements; onReply(askId, value) -> Promise<{ok, err}>.
   * @param {ViewElements} elements
   * @param {{onReply?: (askId: string, value: unknown) => Promise<ReplyResult>}} [options]
   */
  constructor(elements, { onReply } = {}) {
    this.e = elements;
    this.onReply = onReply || (async () => ({ ok: false, err: 'not_connected' }));
    this.readOnly = false;
    this.stats = { events: 0, duplicates: 0, gaps: 0, errors: 0 };
    /** @type {(status: Record<string, any> | null) => void} */
    this.onStatus = () => {};
    /** @type {() => void} called when the set of open-ask cards changes */
    this.onAsks = () => {};
    this.clear();
  }

  clear() {
    this.state = new Snapshot();
    this.lastSeq = null;
    this.texts = new Map();
    this.unclaimed = null;
    this.dirty = new Set();
    this.codes = new Map();
    this.asks = new Map();
    this.dismissed = new Set();
    this.askEntries = new Map();
    this.taskRows = new Map();
    this.steps = new Map();
    this.current = null;
    this.planShown = '';
    this.planCard = null;
    this.proposed = false;
    this.requested = false;
    this.messageCards = new Map();
    this.outcome = null;
    this.lastError = '';
    this.logCount = 0;
    this.snapshotHead = 0;
    this.e.feed.replaceChildren();
    this.e.logs.replaceChildren();
    this.e.logsCount.textContent = '';
    this.renderPlan();
    this.setStatus(null);
    this.onAsks();
    this.publish();
  }

  /** The latest status payload of the state, or null. */
  get status() {
    return this.state.status;
  }

  /** True until the first event or a snapshot with something in it. */
  get empty() {
    return this.stats.events === 0 && this.state.status === null && this.state.plan === null;
  }

  /** The counters, as data-* attributes of the feed. */
  publish() {
    for (const [key, value] of Object.entries(this.stats)) this.e.feed.dataset[key] = String(value);
  }

  /**
   * Show what the state holds in the panels of `k` (every panel without `k`).
   * @param {string} [k]
   */
  project(k) {
    if (!k || k === 'plan' || k === 'task') this.renderPlan();
    if (!k || k === 'status') this.setStatus(this.state.status);
    if (!k || k === 'ask' || k === 'answer') this.syncAsks();
  }

  /**
   * Drop everything and rebuild from a snapshot map (docs/protocol.md section 4).
   *
   * The snapshot is the state as of welcome.head, and unless the client
   * asked for `live` the events from welcome.first follow, so they overlap
   * it: those (seq <= head) are history, shown in the timeline but never
   * folded into the state a second time. Text deltas are timeline too: for a
   * stream the snapshot already holds, each replayed delta is taken off the
   * end of the snapshot's text instead, so what shows once the replay has
   * passed the head is the snapshot's text exactly, with the retained deltas
   * as their own spans.
   * @param {SnapshotMap | null} snapshot
   * @param {Welcome} welcome
   * @param {{live?: boolean}} [options] live: the client asked for no history
   */
  reset(snapshot, welcome, { live = false } = {}) {
    this.clear();
    this.snapshotHead = welcome && typeof welcome.head === 'number' ? welcome.head : 0;
    this.state = Snapshot.fromMap(snapshot);
    this.project();
    for (const id of this.state.texts.keys()) {
      const text = str(this.state.text(id));
      const stream = this.textStream(id);
      const span = el('span', { dataset: { snapshot: '' } }, text);
      stream.body.append(span);
      stream.base = { span, text, replayed: 0 };
      this.redraw(stream);
    }
    // A finished run whose final status will not be replayed (live, or no
    // longer in the log): its card from the snapshot. (The final status is
    // the log's last event, so any replay from `first` brings it.)
    const replays = !live && welcome && typeof welcome.first === 'number' && welcome.first <= this.snapshotHead;
    if (this.state.finished && this.state.status && !replays) {
      const card = this.outcomeCard(this.state.status, null);
      card.dataset.snapshot = '';
      this.e.feed.append(card);
    }
  }

  /**
   * Apply one event {seq, k, ts, d}. Never throws.
   * @param {WirepipeEvent} ev
   */
  apply(ev) {
    const seq = ev && typeof ev.seq === 'number' ? ev.seq : null;
    if (seq !== null && this.lastSeq !== null) {
      // The client delivers in order without duplicates; count (and skip) any
      // slip so the tests can see it, rather than show an event twice.
      if (seq <= this.lastSeq) { this.stats.duplicates += 1; return; }
      if (seq !== this.lastSeq + 1) this.stats.gaps += 1;
    }
    if (seq !== null) this.lastSeq = seq;
    this.stats.events += 1;
    const k = str(ev && ev.k, '?');
    const d = ev ? ev.d : undefined;
    const toState = seq === null || seq > this.snapshotHead;
    if (toState) this.state.apply(k, d);
    try {
      const handler = HANDLERS[k];
      if (handler && isObject(d)) handler.call(this, ev, d);
      else this.generic(ev, k, d);
    } catch (err) {
      // A payload of an unexpected shape: show it raw instead of failing.
      this.stats.errors += 1;
      console.warn('wirepipe: cannot render event', ev, err);
      if (seq !== null) {
        for (const node of document.querySelectorAll(`[data-seq="${seq}"]`)) node.remove();
      }
      this.generic(ev, k, d);
    }
    if (toState && STATE_KINDS.has(k)) this.project(k);
    this.publish();
  }

  // ---- building blocks -------------------------------------------------

  /**
   * @param {WirepipeEvent} ev
   * @param {string} k
   */
  marks(ev, k) {
    return { seq: ev.seq, k };
  }

  /** Where what happens now goes: the running task's step, else the feed. */
  where() {
    const step = this.current === null ? undefined : this.steps.get(this.current);
    return step ? step.body : this.e.feed;
  }

  /**
   * A feed entry (appended where(), or to `into`).
   * @param {WirepipeEvent} ev
   * @param {string} k
   * @param {string} cls
   * @param {...(Child | Child[])} children
   */
  entry(ev, k, cls, ...children) {
    this.unclaimed = null;  // something else came after the stream: it became nothing
    const node = el('article', { class: `ev ev-${token(k)} ${cls || ''}`.trim(), dataset: this.marks(ev, k) },
      ...children);
    this.where().append(node);
    return node;
  }

  /**
   * @param {string} label
   * @param {...Child} extra
   */
  head(label, ...extra) {
    return el('header', { class: 'ev-head' }, el('span', { class: 'ev-kind' }, label), ...extra);
  }

  /** @param {WirepipeEvent} ev */
  time(ev) {
    const t = clock(ev.ts);
    return t ? el('time', { class: 'ev-time' }, t) : null;
  }

  /**
   * A one-line entry.
   * @param {WirepipeEvent} ev
   * @param {string} k
   * @param {...Child} children
   */
  line(ev, k, ...children) {
    const node = el('div', { class: `ev line ev-${token(k)}`, dataset: this.marks(ev, k) },
      el('span', { class: 'line-body' }, ...children));
    this.where().append(node);
    return node;
  }

  /**
   * @param {WirepipeEvent} ev
   * @param {string} k
   * @param {unknown} d
   */
  generic(ev, k, d) {
    this.entry(ev, k, 'ev-generic card-ev',
      this.head(k, this.time(ev)),
      el('pre', { class: 'ev-value' }, formatValue(d)));
  }

  /**
   * Append a hidden mark for `ev` where() it happened.
   * @param {WirepipeEvent} ev
   * @param {string} k
   */
  mark(ev, k) {
    const node = mark(ev, k);
    this.where().append(node);
    return node;
  }

  // ---- text streams -----------------------------------------------------

  /**
   * @param {string} id
   * @returns {TextStream}
   */
  textStream(id) {
    let stream = this.texts.get(id);
    if (!stream) {
      // The raw deltas (one span each) stay in the DOM, hidden; what shows is
      // their markdown, drawn again when they change (redraw).
      const body = el('div', { class: 'text-body', hidden: true });
      const md = el('div', { class: 'text-md md' });
      const block = el('article', { class: 'ev ev-text stream card-ev', dataset: { stream: id } },
        this.head('LLM', el('span', { class: 'typing' }, 'writing…')), md, body);
      this.where().append(block);
      stream = { id, block, body, md, folded: false };
      this.texts.set(id, stream);
      this.unclaimed = stream;
    }
    return stream;
  }

  /**
   * Draw `stream`'s markdown again once the current batch of events is in.
   * @param {TextStream} stream
   */
  redraw(stream) {
    if (this.dirty.size === 0) queueMicrotask(() => this.flush());
    this.dirty.add(stream);
  }

  flush() {
    for (const stream of this.dirty) {
      const text = stream.body.textContent || '';
      stream.md.replaceChildren(markdown(text));
      stream.block.classList.toggle('blank', !text.trim());
    }
    this.dirty.clear();
  }

  /**
   * The latest stream not yet folded into anything (and no older than the
   * last thing shown), taken: it became what the caller is about to show.
   * @returns {TextStream | null}
   */
  claim() {
    const stream = this.unclaimed;
    this.unclaimed = null;
    return stream && !stream.folded ? stream : null;
  }

  /**
   * Fold `stream` into `card`: its block goes into a closed "LLM output"
   * details at the card's end (hidden when the card shows the same text).
   * @param {TextStream} stream
   * @param {HTMLElement} card
   * @param {{hidden?: boolean}} [options]
   */
  fold(stream, card, { hidden = false } = {}) {
    stream.folded = true;
    stream.block.classList.add('folded');
    const fold = el('details', { class: 'llm-fold', hidden },
      el('summary', {}, 'LLM output'), stream.block);
    card.append(fold);
  }

  // ---- steps (one per plan task that ran) ------------------------------------

  /**
   * The step of task `id`, made (where the feed is now) if it is new.
   * @param {string} id
   * @returns {Step}
   */
  step(id) {
    let step = this.steps.get(id);
    if (!step) {
      const plan = this.plan;
      const index = plan ? plan.tasks.findIndex((t) => t.id === id) : -1;
      const task = index >= 0 && plan ? plan.tasks[index] : null;
      const pill = el('span', { class: 'pill st-running' }, 'running');
      const body = el('div', { class: 'step-body' });
      const sum = el('span', { class: 'step-sum' });
      const details = el('details', { class: 'step', open: true, dataset: { taskId: id } },
        el('summary', { class: 'step-head' },
          el('span', { class: 'step-n' }, String(index >= 0 ? index + 1 : id)),
          el('span', { class: 'step-title' }, task ? str(task.instruction, `Step ${id}`) : `Step ${id}`, sum),
          pill),
        body);
      const made = { el: details, body, pill, sum, touched: false };
      // A reader who opens or closes a step keeps it so.
      child(details, 'summary', HTMLElement).addEventListener('click', () => { made.touched = true; });
      this.e.feed.append(details);
      this.steps.set(id, made);
      step = made;
    }
    return step;
  }

  /**
   * What the last code cell of `step` printed: its stdout and its value (the
   * `result` stream), without stderr; '' if none.
   * @param {Step} step
   */
  printed(step) {
    const cells = step.body.querySelectorAll('.ev-code');
    const last = cells.length ? cells[cells.length - 1] : null;
    if (!last) return '';
    return [...last.querySelectorAll('.out-stdout, .out-result')].map((b) => b.textContent || '').join('').trim();
  }

  /**
   * A step's pill says the status its task's latest event gave; a finished
   * step folds, unless a reader opened or closed it or it holds an open ask.
   * @param {Step} step
   * @param {string} status
   */
  setStepStatus(step, status) {
    step.pill.className = `pill st-${token(status)}`;
    step.pill.textContent = status;
    step.el.dataset.status = token(status);
    const finished = status === 'done' || status === 'skipped';
    if (finished && !step.touched && step.el.open && !step.body.querySelector('.ask-card')) step.el.open = false;
  }

  // ---- plan ---------------------------------------------------------------

  /**
   * The state's plan as shown: only the tasks that are maps.
   * @returns {ShownPlan | null}
   */
  get plan() {
    const d = this.state.plan;
    if (!d) return null;
    const tasks = Array.isArray(d.tasks) ? d.tasks.filter(isObject) : [];
    return { goal: d.goal, tasks, current: d.current, proposed: d.proposed === true };
  }

  renderPlan() {
    const { planGoal, planTasks, planProgress } = this.e;
    this.taskRows.clear();
    planTasks.replaceChildren();
    const plan = this.plan;
    if (!plan) {
      planGoal.textContent = 'No plan yet.';
      planGoal.classList.add('muted');
      planProgress.textContent = '';
      return;
    }
    planGoal.classList.remove('muted');
    planGoal.textContent = str(plan.goal, '(no goal)');
    if (plan.proposed) {
      planGoal.append(' ', el('span', { class: 'pill st-waiting', title: 'shown for review; not applied yet' },
        'proposed'));
    }
    plan.tasks.forEach((task, i) => this.renderTask(task, plan, i));
    this.updateProgress(plan);
  }

  /**
   * @param {Payload} task
   * @param {ShownPlan} plan
   * @param {number} index
   */
  renderTask(task, plan, index) {
    const id = str(task.id);
    // An unknown status shows as it is, in the neutral style.
    const status = token(str(task.status, 'pending'));
    const row = el('li', { class: 'task', dataset: { taskId: id, status } },
      el('span', { class: `task-n st-${token(status)}`, title: status }, String(index + 1)),
      el('div', { class: 'task-main' },
        el('span', { class: 'task-text' }, str(task.instruction, `Step ${index + 1}`),
          status === 'done' ? null : el('span', { class: `pill st-${token(status)}` }, status))));
    if (task.result !== undefined && task.result !== null && task.result !== '') {
      child(row, '.task-main', HTMLElement).append(this.resultDetails(task.result));
    }
    if (status === 'running' && plan.current !== undefined
        && plan.current !== null && str(plan.current) === id) {
      row.setAttribute('aria-current', 'step');
    }
    const old = this.taskRows.get(id);
    if (old) old.replaceWith(row); else this.e.planTasks.append(row);
    this.taskRows.set(id, row);
  }

  /** @param {unknown} result */
  resultDetails(result) {
    return el('details', { class: 'task-result' },
      el('summary', {}, 'result'), el('pre', {}, formatValue(result)));
  }

  /** @param {ShownPlan} plan */
  updateProgress(plan) {
    const total = plan.tasks.length;
    const done = plan.tasks.filter((t) => t.status === 'done' || t.status === 'skipped').length;
    this.e.planProgress.textContent = total ? `${done}/${total} done` : '';
  }

  // ---- asks -----------------------------------------------------------------

  /** One card per open ask of the state (and none for a dismissed one). */
  syncAsks() {
    let changed = false;
    for (const [id, d] of this.state.asks) {
      if (!this.asks.has(id) && !this.dismissed.has(id)) { this.openAsk(id, d); changed = true; }
    }
    for (const id of [...this.asks.keys()]) {
      if (!this.state.asks.has(id)) { this.closeAsk(id); changed = true; }
    }
    if (changed) this.onAsks();
  }

  /**
   * The one line an ask card leads with: what is asked, without the agent's boilerplate.
   * @param {Payload} d the ask's payload
   * @param {string} prompt
   */
  askTitle(d, prompt) {
    if (d.kind === 'review') {
      if (this.proposed) return 'Review the plan';
      const step = this.current === null ? null : this.plan?.tasks.find((t) => t.id === this.current);
      return step ? `Review this step: ${shortValue(step.instruction, 90)}` : 'Review the latest result';
    }
    return firstLine(prompt) || 'The agent asks';
  }

  /**
   * @param {string} id
   * @param {Payload} d the ask's payload
   */
  openAsk(id, d) {
    if (this.asks.has(id)) return;
    const prompt = str(d.prompt, '');
    const entry = this.askEntries.get(id);
    const shown = entry ? entry.querySelector('.ask-done-q') : null;
    const title = shown ? shown.textContent || '' : this.askTitle(d, prompt);
    const titleId = nextId('ask-title');
    const errorLine = el('p', { class: 'ask-error', role: 'alert' });
    const card = el('div', { class: 'ask-card', role: 'group', 'aria-labelledby': titleId,
      dataset: { askId: id } },
    el('p', { class: 'ask-title', id: titleId }, el('span', { class: 'ask-icon', 'aria-hidden': 'true' }, '?'), title));

    const hasDefault = d.default !== undefined && d.default !== null;
    /**
     * @param {unknown} value
     * @param {Control[]} controls
     */
    const send = async (value, controls) => {
      for (const c of controls) c.disabled = true;
      errorLine.textContent = '';
      card.classList.add('pending');
      /** @type {ReplyResult | undefined} */
      let result;
      try {
        result = await this.onReply(id, value);
      } catch (err) {
        result = { ok: false, err: errorMessage(err) };
      }
      card.classList.remove('pending');
      if (result && result.ok) return;  // the answer event removes the card
      const code = result && result.err;
      if (code === 'ask_closed' || code === 'unknown_ask') {
        // The answer event will say so too; until then, no card to click.
        this.dismissed.add(id);
        this.closeAsk(id);
        this.onAsks();
        return;
      }
      errorLine.textContent = code === 'forbidden'
        ? 'Read-only: this connection may not answer.'
        : `Reply failed: ${code || 'unknown error'}`;
      for (const c of controls) c.disabled = this.readOnly;
    };

    /** @type {Control[]} */
    const controls = [];
    const hasChoices = Array.isArray(d.choices) && d.choices.length > 0;
    if (hasChoices) {
      const row = el('div', { class: 'choices' });
      for (const choice of d.choices) {
        const isDefault = hasDefault && formatValue(choice) === formatValue(d.default);
        const button = el('button', { type: 'button', class: isDefault ? 'choice default' : 'choice',
          dataset: { value: formatValue(choice, 0) } }, shortValue(choice, 60));
        if (isDefault) button.append(el('span', { class: 'visually-hidden' }, ' (default)'));
        button.addEventListener('click', () => send(choice, controls));
        controls.push(button);
        row.append(button);
      }
      card.append(row);
    }
    // Free text: when there are no choices, or the ask also takes other answers.
    if (!hasChoices || d.other === true) {
      const inputId = nextId('ask-input');
      const input = el('input', { id: inputId, type: 'text', autocomplete: 'off',
        placeholder: hasChoices ? 'or say what to change…' : (hasDefault ? formatValue(d.default, 0) : ''),
        required: !hasDefault || hasChoices });
      const button = el('button', { type: 'submit', class: hasChoices ? '' : 'primary' }, 'Send');
      const form = el('form', { class: 'ask-form' },
        el('label', { for: inputId, class: hasChoices ? 'visually-hidden' : '' },
          hasChoices ? 'Or another answer' : 'Your answer'), input, button);
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        send(input.value === '' && hasDefault && !hasChoices ? d.default : input.value, controls);
      });
      controls.push(input, button);
      card.append(form);
    }
    const hints = [];
    if (hasDefault) hints.push(`Default: ${shortValue(d.default, 60)}`);
    if (typeof d.timeout === 'number' && d.timeout > 0) hints.push(`times out after ${d.timeout} s`);
    if (hints.length) card.append(el('p', { class: 'ask-hint' }, hints.join(' · ')));
    // The agent's own words, when they say more than the title: folded.
    if (prompt.trim() && prompt.trim() !== title) {
      card.append(el('details', { class: 'ask-prompt' },
        el('summary', {}, 'The agent’s full prompt'), el('pre', {}, prompt.trim())));
    }
    card.append(errorLine);
    for (const c of controls) c.disabled = this.readOnly;
    this.asks.set(id, { card, controls });
    // Docked where it was asked; until its ask event is shown (a snapshot's
    // open ask, before the replay reaches it), at the end of the feed.
    if (entry) entry.append(card); else this.e.feed.append(card);
  }

  /** @param {string} id */
  closeAsk(id) {
    const ask = this.asks.get(id);
    if (ask) {
      ask.card.remove();
      this.asks.delete(id);
    }
  }

  /** @param {boolean} readOnly */
  setReadOnly(readOnly) {
    this.readOnly = readOnly;
    for (const ask of this.asks.values()) for (const c of ask.controls) c.disabled = readOnly;
  }

  // ---- status and outcome -------------------------------------------------

  /** @param {Payload | null} d */
  setStatus(d) {
    const badge = this.e.runStatus;
    const state = d ? str(d.state, '?') : '';
    badge.dataset.state = d ? token(state) : 'none';
    child(badge, 'b', HTMLElement).textContent = d ? state : '—';
    badge.title = d && d.detail !== undefined ? formatValue(d.detail, 0) : '';
    // What a running run says it is doing (loading MetaGPT, a config
    // warning): one line, replaced by the next detail, gone at the end.
    const activity = this.e.activity;
    if (activity) {
      const detail = d && (state === 'running' || state === 'waiting') && d.detail !== undefined && d.detail !== null
        ? formatValue(d.detail, 0).trim() : '';
      activity.textContent = detail;
      activity.hidden = !detail;
    }
    this.onStatus(d);
  }

  get finished() {
    return this.state.finished;
  }

  /**
   * The card of a final status: the result, the failure, or the cancel.
   * @param {Payload} d
   * @param {WirepipeEvent | null} ev
   */
  outcomeCard(d, ev) {
    const state = str(d.state, '?');
    const marks = ev ? this.marks(ev, 'status') : {};
    const time = ev ? this.time(ev) : null;
    const detail = d.detail !== undefined && d.detail !== null && d.detail !== '' ? formatValue(d.detail) : '';
    if (state === 'done') {
      const outcome = this.outcome;
      // The result card says what that message said: one of them is enough.
      if (outcome && outcome.node) outcome.node.classList.add('absorbed');
      const body = outcome ? outcome.text : detail || 'The run finished.';
      return el('article', { class: 'ev outcome result-card', role: 'region', 'aria-label': 'Result', dataset: marks },
        el('header', { class: 'outcome-head' },
          el('span', { class: 'outcome-icon', 'aria-hidden': 'true' }, '✓'),
          el('h3', {}, 'Result'),
          outcome && outcome.from ? el('span', { class: 'outcome-from' }, outcome.from) : null,
          time),
        el('div', { class: 'result-body md' }, markdown(body)),
        outcome && detail ? el('p', { class: 'muted' }, detail) : null);
    }
    if (state === 'failed') {
      const cause = failureCause(d.detail, this.lastError) || 'The run failed.';
      const more = [detail, this.lastError && !detail.includes(this.lastError) ? this.lastError : '']
        .filter((t) => t && t.trim() !== cause).join('\n\n');
      return el('article', { class: 'ev outcome failure-card', role: 'alert', dataset: marks },
        el('header', { class: 'outcome-head' },
          el('span', { class: 'outcome-icon', 'aria-hidden': 'true' }, '!'),
          el('h3', {}, 'The run failed'), time),
        el('p', { class: 'failure-cause' }, el('code', {}, cause)),
        more ? el('details', { class: 'failure-more' }, el('summary', {}, 'Details'), el('pre', {}, more)) : null);
    }
    return el('article', { class: `ev outcome ${token(state)}-card`, dataset: marks },
      el('header', { class: 'outcome-head' },
        el('span', { class: 'outcome-icon', 'aria-hidden': 'true' }, '■'),
        el('h3', {}, state === 'cancelled' ? 'Cancelled' : state), time),
      detail ? el('p', { class: 'muted' }, detail) : null);
  }
}

// One handler per known kind; `this` is the View, d is a plain object.
/** @type {Record<string, (this: View, ev: WirepipeEvent, d: Payload) => void>} */
const HANDLERS = {
  text(ev, d) {
    const stream = this.textStream(str(d.id));
    const delta = str(d.delta);
    const base = stream.base;
    if (base && ev.seq <= this.snapshotHead) {
      // Already inside the snapshot's text (see reset): move it out of there,
      // and the block to where its first retained delta belongs in the feed.
      if (base.replayed === 0 && !base.moved && !stream.folded) this.where().append(stream.block);
      base.moved = true;
      base.replayed += delta.length;
      base.span.textContent = base.text.slice(0, Math.max(0, base.text.length - base.replayed));
    }
    stream.body.append(el('span', { dataset: this.marks(ev, 'text') }, delta));
    if (!stream.folded) this.unclaimed = stream;  // the latest stream written: what the next code, plan or message may have come from
    if (d.end) stream.block.classList.add('ended');
    this.redraw(stream);
  },

  message(ev, d) {
    const role = str(d.role, 'message');
    const content = formatValue(d.content);
    const name = d.name ? str(d.name) : '';
    const person = PERSON_ROLES.has(role.toLowerCase());
    const stream = this.unclaimed;
    // The same message again (an agent that re-sends it): one card, counted.
    const key = `${role}\u0000${name}\u0000${content}`;
    const seen = this.messageCards.get(key);
    if (seen) {
      seen.dataset.repeats = String(Number(seen.dataset.repeats || '1') + 1);
      this.mark(ev, 'message');
      return;
    }
    if (person && !name && !this.requested) {
      // The request the run started from.
      this.requested = true;
      const node = this.entry(ev, 'message', 'request',
        el('span', { class: 'request-label' }, 'Request'),
        el('div', { class: 'request-body md' }, markdown(content)));
      this.messageCards.set(key, node);
      return;
    }
    const long = content.length > LONG_CHARS || content.split('\n').length > LONG_LINES;
    // A person's message after the plan is no request: it is the agent
    // handing back its working context (MetaGPT's DataInterpreter ends with
    // one, role user, that repeats the request, the plan and the results).
    const report = person && this.planCard !== null;
    const who = report ? name || 'Agent' : name || role;
    const roleLabel = report ? 'final report' : name && role ? role : '';
    const shown = markdown(fenceJson(content));
    const node = this.entry(ev, 'message', `card-ev role-${token(role)}${long ? ' long' : ''}${report ? ' report' : ''}`,
      el('header', { class: 'ev-head' },
        el('span', { class: 'avatar', 'aria-hidden': 'true' }, who.slice(0, 1).toUpperCase()),
        el('b', { class: 'who' }, who),
        roleLabel ? el('span', { class: 'role' }, roleLabel) : null,
        this.time(ev)),
      long
        ? el('details', { class: 'message-body message-long' },
          el('summary', {}, `${report ? 'Agent’s final report' : firstLine(content, 90) || 'Message'} · ${content.length} characters`),
          el('div', { class: 'md' }, shown))
        : el('div', { class: 'message-body md' }, shown));
    if (d.cause !== undefined && d.cause !== null && d.cause !== '') node.title = `cause: ${shortValue(d.cause)}`;
    this.messageCards.set(key, node);
    if (stream && !stream.folded && (stream.body.textContent || '').trim() === content.trim()) {
      this.fold(stream, node, { hidden: true });  // the card says the same
    }
    if (!person && content.trim()) this.outcome = { text: content, from: name ? `${name} (${role})` : role, node };
  },

  plan(ev, d) {
    const tasks = Array.isArray(d.tasks) ? d.tasks.filter(isObject) : [];
    const shape = JSON.stringify(tasks.map((t) => [t.id, t.instruction]));
    const proposed = d.proposed === true;
    const stream = this.claim();
    this.proposed = proposed;
    if (shape === this.planShown && this.planCard && !stream) {
      // The same plan again (MetaGPT sends it after every task): the card already says it.
      if (!proposed) this.planCard.classList.remove('proposed');
      this.mark(ev, 'plan');
      return;
    }
    const card = el('article', { class: `ev ev-plan card-ev${proposed ? ' proposed' : ''}`,
      dataset: this.marks(ev, 'plan') },
    el('header', { class: 'ev-head' },
      el('span', { class: 'ev-kind' }, this.planCard ? 'Plan updated' : 'Plan'),
      el('span', { class: 'pill st-waiting proposed-pill' }, 'proposed'),
      el('span', { class: 'muted' }, `${tasks.length} step${tasks.length === 1 ? '' : 's'}`),
      this.time(ev)),
    d.goal ? el('p', { class: 'plan-goal' }, str(d.goal)) : null,
    el('ol', { class: 'plan-list' }, tasks.map((t) => el('li', {}, str(t.instruction, str(t.id))))));
    this.e.feed.append(card);  // a plan is never inside a step
    if (stream) this.fold(stream, card);
    const old = this.planCard;
    if (old) {
      // The new card replaces it: no longer proposed, nor the plan.
      old.classList.remove('proposed');
      old.classList.add('replaced');
      const kind = old.querySelector('.ev-kind');
      if (kind) kind.after(el('span', { class: 'pill st-replaced replaced-pill' }, 'replaced'));
    }
    this.planShown = shape;
    this.planCard = card;
  },

  task(ev, d) {
    const id = str(d.id);
    const status = str(d.status, '?');
    const plan = this.plan;
    const known = plan !== null && typeof d.id === 'string' && plan.tasks.some((t) => t.id === d.id);
    if (!known) {
      // A task the plan does not have: the update as it came.
      const node = this.line(ev, 'task', `Task ${id} `, el('span', { class: `pill st-${token(status)}` }, status));
      if (d.result !== undefined && d.result !== null && d.result !== '') node.append(this.resultDetails(d.result));
      return;
    }
    const step = this.step(id);
    if (status === 'running') {
      this.current = id;
      this.unclaimed = null;
      step.body.append(mark(ev, 'task'));
      this.setStepStatus(step, status);
      return;
    }
    const hasResult = d.result !== undefined && d.result !== null && d.result !== '';
    if (hasResult) {
      const text = formatValue(d.result).trim();
      step.body.append(el('div', { class: `ev step-result st-line-${token(status)}`, dataset: this.marks(ev, 'task') },
        el('span', { class: 'step-result-label' }, status === 'done' ? 'Result' : status),
        el('pre', {}, text)));
      // What the step printed (its last code cell's stdout or value) says
      // what it found; the result may have stderr joined in (MetaGPT's does).
      const said = unquote(this.printed(step) || text);
      step.sum.textContent = shortValue(said, 140);
      if (status === 'done') {
        const task = plan && plan.tasks.find((t) => t.id === id);
        const index = plan ? plan.tasks.findIndex((t) => t.id === id) : -1;
        this.outcome = { text: said, from: `step ${index + 1}${task ? ` · ${shortValue(task.instruction, 70)}` : ''}` };
      }
    } else {
      step.body.append(mark(ev, 'task'));
    }
    if (status === 'failed' && hasResult) this.lastError = formatValue(d.result);
    if (this.current === id) this.current = null;
    this.setStepStatus(step, status);
  },

  code(ev, d) {
    const id = str(d.id);
    const lang = str(d.lang, 'code');
    const outputs = el('div', { class: 'outputs' });
    const taskId = typeof d.task === 'string' && this.steps.has(d.task) ? d.task : null;
    const stream = this.claim();
    const prose = stream ? proseOf(stream.body.textContent || '') : '';
    const cell = el('article', { class: 'ev ev-code card-ev', dataset: this.marks(ev, 'code') },
      prose ? el('div', { class: 'code-caption md' }, markdown(prose)) : null,
      el('div', { class: 'code-frame' },
        el('div', { class: 'code-lang' }, lang),
        el('pre', { class: 'source', dataset: { lang: token(lang) } }, el('code', {}, str(d.source)))),
      outputs);
    cell.dataset.codeId = id;
    const step = taskId === null ? undefined : this.steps.get(taskId);
    (step ? step.body : this.where()).append(cell);
    if (stream) this.fold(stream, cell);
    this.codes.set(id, { cell, outputs });  // a re-run with the same id takes over
  },

  output(ev, d) {
    const id = str(d.id);
    let code = this.codes.get(id);
    if (!code) {
      // Output of code we never saw (before a snapshot): a cell without source.
      const outputs = el('div', { class: 'outputs' });
      const cell = el('article', { class: 'ev ev-code card-ev orphan', dataset: { codeId: id } },
        this.head('output'), outputs);
      this.where().append(cell);
      code = { cell, outputs };
      this.codes.set(id, code);
    }
    const stream = token(d.stream || 'stdout');
    // The outputs hold only the <pre> blocks made here.
    let block = /** @type {HTMLElement | null} */ (code.outputs.lastElementChild);
    if (!block || block.dataset.stream !== stream) {
      block = el('pre', { class: `out out-${stream}`, dataset: { stream } });
      code.outputs.append(block);
    }
    const text = str(d.text);
    block.append(el('span', { dataset: this.marks(ev, 'output') }, text));
    if (stream === 'error') this.lastError = text;
  },

  tool(ev, d) {
    const type = d.type !== undefined && d.type !== null ? ` (${str(d.type)})` : '';
    this.entry(ev, 'tool', 'card-ev',
      this.head('tool', el('span', { class: 'muted' }, `${str(d.name, '?')}${type}`), this.time(ev)),
      el('pre', { class: 'ev-value' }, formatValue(d.value)));
  },

  log(ev, d) {
    const level = str(d.level, 'INFO').toUpperCase();
    const rank = levelRank(d.level);
    const msg = str(d.msg);
    const oneLine = msg.replace(/\s*\n\s*/g, ' ⏎ ');
    const text = el('span', { class: 'log-msg' }, oneLine);
    const row = el('div', { class: `log lvl-${rank}${msg.trim() ? '' : ' empty'}`,
      dataset: { ...this.marks(ev, 'log'), level: token(level) }, title: d.logger ? `${str(d.logger)}: ${msg}` : msg,
      tabindex: '0', role: 'button', 'aria-expanded': 'false' },
    el('time', {}, clock(ev.ts)),
    el('span', { class: 'log-level' }, SHORT_LEVEL[level] || level.slice(0, 5)),
    text);
    // A click, or Enter or Space on the focused row, shows its whole text (lines and all), and again one line.
    const toggle = () => {
      const open = row.classList.toggle('expanded');
      row.setAttribute('aria-expanded', String(open));
      text.textContent = open ? `${d.logger ? `${str(d.logger)}: ` : ''}${msg}` : oneLine;
    };
    row.addEventListener('click', () => {
      const selection = window.getSelection();  // selecting text in a row is no click on it
      if (selection && !selection.isCollapsed && row.contains(selection.anchorNode)) return;
      toggle();
    });
    row.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); toggle(); }
    });
    this.e.logs.append(row);
    if (msg.trim()) this.logCount += 1;
    this.e.logsCount.textContent = this.logCount ? String(this.logCount) : '';
    if (rank >= 3 && msg.trim()) this.lastError = msg;
  },

  ask(ev, d) {
    const id = str(d.id);
    const prompt = str(d.prompt, '');
    const entry = el('div', { class: 'ev ev-ask open', dataset: this.marks(ev, 'ask') },
      el('div', { class: 'ask-done' },
        el('span', { class: 'ask-done-q' }, this.askTitle(d, prompt))));
    this.where().append(entry);
    this.askEntries.set(id, entry);
    this.unclaimed = null;
    const card = this.asks.get(id);
    if (card) {
      // Opened from the snapshot before its event came: docked here now, under this title.
      entry.append(card.card);
      const title = card.card.querySelector('.ask-title');
      if (title) title.replaceChildren(el('span', { class: 'ask-icon', 'aria-hidden': 'true' }, '?'), this.askTitle(d, prompt));
    }
  },

  answer(ev, d) {
    const id = str(d.id);
    const entry = this.askEntries.get(id);
    if (entry) entry.classList.replace('open', 'answered');
    const by = str(d.by, '?');
    const line = by === 'closed'
      ? el('span', { class: 'ev ev-answer', dataset: this.marks(ev, 'answer') },
        el('span', { class: 'muted' }, 'closed without an answer'))
      : el('span', { class: 'ev ev-answer', dataset: this.marks(ev, 'answer') },
        el('span', { class: 'answer-arrow', 'aria-hidden': 'true' }, '→ '),
        el('b', {}, shortValue(d.value, 200)),
        by === 'timeout' ? el('span', { class: 'muted' }, ' (no answer in time: the default)') : null);
    const into = entry ? entry.querySelector('.ask-done') : null;
    if (into) into.append(' ', line);
    else this.where().append(el('div', { class: 'ev line ev-ask answered' }, el('div', { class: 'ask-done' }, line)));
  },

  status(ev, d) {
    const state = str(d.state, '?');
    if (state === 'done' || state === 'failed' || state === 'cancelled') {
      // Nothing streams after the end: no stream still looks like it is being written.
      for (const stream of this.texts.values()) stream.block.classList.add('ended');
      // Nor does a step still look like it runs.
      if (state !== 'done') {
        for (const step of this.steps.values()) {
          if (step.el.dataset.status === 'running') this.setStepStatus(step, 'stopped');
        }
      }
      for (const old of this.e.feed.querySelectorAll('.outcome[data-snapshot]')) old.remove();
      this.current = null;
      this.e.feed.append(this.outcomeCard(d, ev));
      return;
    }
    // running / waiting: the badge says it; an unknown state shows as a line.
    if (state === 'running' || state === 'waiting') this.mark(ev, 'status');
    else this.line(ev, 'status', el('span', { class: `pill st-${token(state)}` }, state),
      d.detail !== undefined && d.detail !== null ? el('span', { class: 'muted' }, ` ${shortValue(d.detail)}`) : null);
  },
};
