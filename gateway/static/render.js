// The run view: turns a snapshot and the event stream into DOM.
//
// Every event that reaches apply() ends up as exactly ONE element carrying
// data-seq and data-k (a text delta is a <span> inside its stream's block, an
// output chunk a <span> inside its code cell, a log a row in the log panel,
// everything else an entry in the feed). Panels derived from events (the plan,
// the open-ask cards, the status badge) carry no data-seq, so
// `document.querySelectorAll('[data-seq]')` lists each event once.
// Things rebuilt from a snapshot carry data-snapshot instead.
//
// The state panels are a projection of the client's reducer (`Snapshot` of
// clients/js/src/state.js, the twin of protocol/state.py): every event with
// seq > the snapshot's head is folded into it, and the plan, the status badge
// and the open-ask cards show what it holds, nothing more. The feed, the logs
// and the text streams are the timeline: every event, history included.
//
// The counters (events, duplicates, gaps, render errors) are published as
// data-* attributes of the feed, for tests and the curious.

import { Snapshot, isMap } from '@wirepipe/client/state.js';
import { child, clock, el, errorMessage, formatValue, shortValue, str, token } from './dom.js';

/**
 * @typedef {import('@wirepipe/client/wirepipe.js').WirepipeEvent} WirepipeEvent
 * @typedef {import('@wirepipe/client/wirepipe.js').SnapshotMap} SnapshotMap
 * @typedef {import('@wirepipe/client/wirepipe.js').Welcome} Welcome
 * @typedef {import('./dom.js').Child} Child
 * @typedef {Record<string, any>} Payload a decoded map: an event's d, a task, an ask
 * @typedef {{feed: HTMLElement, planGoal: HTMLElement, planTasks: HTMLElement, planProgress: HTMLElement,
 *   asks: HTMLElement, asksPanel: HTMLElement, logs: HTMLElement, runStatus: HTMLElement}} ViewElements
 * @typedef {{span: HTMLElement, text: string, replayed: number, moved?: boolean}} SnapshotText
 * @typedef {{block: HTMLElement, body: HTMLElement, base?: SnapshotText}} TextStream
 * @typedef {{cell: HTMLElement, outputs: HTMLElement}} CodeCell
 * @typedef {HTMLButtonElement | HTMLInputElement} Control
 * @typedef {{card: HTMLElement, controls: Control[]}} AskCard
 * @typedef {{goal: unknown, tasks: Payload[], current: unknown, proposed: boolean}} ShownPlan
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

export class View {
  // What a reset drops: clear() puts each of these back as it is here.
  /** what the state panels show */
  state = new Snapshot();
  /** @type {number | null} seq of the last event applied, null after a reset */
  lastSeq = null;
  /** @type {Map<string, TextStream>} stream id -> {block, body} */
  texts = new Map();
  /** @type {Map<string, CodeCell>} code id -> {cell, outputs} */
  codes = new Map();
  /** @type {Map<string, AskCard>} ask id -> {card, controls}: a card per open ask of the state */
  asks = new Map();
  /** @type {Set<string>} ask ids whose reply said the ask is gone: no card */
  dismissed = new Set();
  /** @type {Map<string, HTMLElement>} ask id -> feed entry of its ask event */
  askEntries = new Map();
  /** @type {Map<string, HTMLElement>} task id -> <li> */
  taskRows = new Map();
  snapshotHead = 0;

  /**
   * elements: {feed, planGoal, planTasks, planProgress, asks, asksPanel, logs,
   * runStatus}; onReply(askId, value) -> Promise<{ok, err}>.
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
    this.clear();
  }

  clear() {
    this.state = new Snapshot();
    this.lastSeq = null;
    this.texts = new Map();
    this.codes = new Map();
    this.asks = new Map();
    this.dismissed = new Set();
    this.askEntries = new Map();
    this.taskRows = new Map();
    this.snapshotHead = 0;
    this.e.feed.replaceChildren();
    this.e.logs.replaceChildren();
    this.e.asks.replaceChildren();
    this.renderPlan();
    this.setStatus(null);
    this.syncAsksPanel();
    this.publish();
  }

  /** The latest status payload of the state, or null. */
  get status() {
    return this.state.status;
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
   */
  reset(snapshot, welcome) {
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

  /**
   * @param {WirepipeEvent} ev
   * @param {string} k
   * @param {string} cls
   * @param {...(Child | Child[])} children
   */
  entry(ev, k, cls, ...children) {
    const node = el('article', { class: `ev ev-${token(k)} ${cls || ''}`.trim(), dataset: this.marks(ev, k) },
      ...children);
    this.e.feed.append(node);
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
   * @param {WirepipeEvent} ev
   * @param {string} k
   * @param {...Child} children
   */
  line(ev, k, ...children) {
    const node = el('div', { class: `ev line ev-${token(k)}`, dataset: this.marks(ev, k) },
      el('span', { class: 'ev-kind' }, k), el('span', { class: 'line-body' }, ...children),
      this.time(ev));
    this.e.feed.append(node);
    return node;
  }

  /**
   * @param {WirepipeEvent} ev
   * @param {string} k
   * @param {unknown} d
   */
  generic(ev, k, d) {
    this.entry(ev, k, 'ev-generic',
      this.head(k, this.time(ev)),
      el('pre', { class: 'ev-value' }, formatValue(d)));
  }

  // ---- text streams -----------------------------------------------------

  /**
   * @param {string} id
   * @returns {TextStream}
   */
  textStream(id) {
    let stream = this.texts.get(id);
    if (!stream) {
      const body = el('div', { class: 'text-body' });
      const block = el('article', { class: 'ev ev-text stream', dataset: { stream: id } },
        this.head('LLM', el('span', { class: 'ev-id' }, id)), body);
      this.e.feed.append(block);
      stream = { block, body };
      this.texts.set(id, stream);
    }
    return stream;
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
    for (const task of plan.tasks) this.renderTask(task, plan);
    this.updateProgress(plan);
  }

  /**
   * @param {Payload} task
   * @param {ShownPlan} plan
   */
  renderTask(task, plan) {
    const id = str(task.id);
    // An unknown status shows as it is, in the neutral style.
    const status = token(str(task.status, 'pending'));
    const deps = Array.isArray(task.deps) && task.deps.length
      ? el('span', { class: 'task-deps' }, `after ${task.deps.map((/** @type {unknown} */ x) => str(x)).join(', ')}`) : null;
    const row = el('li', { class: 'task', dataset: { taskId: id, status } },
      el('span', { class: `pill st-${token(status)}` }, status),
      el('div', { class: 'task-main' },
        el('span', { class: 'task-text' }, str(task.instruction, `task ${id}`)),
        el('span', { class: 'task-meta' },
          el('span', { class: 'task-id' }, `#${id}`),
          task.type ? el('span', { class: 'task-type' }, str(task.type)) : null,
          deps)));
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
    for (const [id, d] of this.state.asks) {
      if (!this.asks.has(id) && !this.dismissed.has(id)) this.openAsk(id, d);
    }
    for (const id of [...this.asks.keys()]) if (!this.state.asks.has(id)) this.closeAsk(id);
    this.syncAsksPanel();
  }

  /**
   * @param {string} id
   * @param {Payload} d the ask's payload
   */
  openAsk(id, d) {
    if (this.asks.has(id)) return;
    const promptId = nextId('ask-prompt');
    const errorLine = el('p', { class: 'ask-error', role: 'alert' });
    const card = el('div', { class: 'ask-card', role: 'group', 'aria-labelledby': promptId,
      dataset: { askId: id } },
    el('p', { class: 'ask-prompt', id: promptId }, str(d.prompt, '(no prompt)')));

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
        placeholder: hasDefault && !hasChoices ? formatValue(d.default, 0) : '',
        required: !hasDefault || hasChoices });
      const button = el('button', { type: 'submit' }, 'Send');
      const form = el('form', { class: 'ask-form' },
        el('label', { for: inputId }, hasChoices ? 'Or another answer' : 'Your answer'), input, button);
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
    card.append(errorLine);
    for (const c of controls) c.disabled = this.readOnly;
    this.asks.set(id, { card, controls });
    this.e.asks.append(card);
    this.syncAsksPanel();
  }

  /** @param {string} id */
  closeAsk(id) {
    const ask = this.asks.get(id);
    if (ask) {
      ask.card.remove();
      this.asks.delete(id);
    }
    this.syncAsksPanel();
  }

  syncAsksPanel() {
    this.e.asksPanel.hidden = this.asks.size === 0;
  }

  /** @param {boolean} readOnly */
  setReadOnly(readOnly) {
    this.readOnly = readOnly;
    for (const ask of this.asks.values()) for (const c of ask.controls) c.disabled = readOnly;
  }

  // ---- status -----------------------------------------------------------

  /** @param {Payload | null} d */
  setStatus(d) {
    const badge = this.e.runStatus;
    const state = d ? str(d.state, '?') : '';
    badge.dataset.state = d ? token(state) : 'none';
    child(badge, 'b', HTMLElement).textContent = d ? state : '—';
    badge.title = d && d.detail !== undefined ? formatValue(d.detail, 0) : '';
    this.onStatus(d);
  }

  get finished() {
    return this.state.finished;
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
      if (base.replayed === 0 && !base.moved) this.e.feed.append(stream.block);
      base.moved = true;
      base.replayed += delta.length;
      base.span.textContent = base.text.slice(0, Math.max(0, base.text.length - base.replayed));
    }
    stream.body.append(el('span', { dataset: this.marks(ev, 'text') }, delta));
    if (d.end) stream.block.classList.add('ended');
  },

  message(ev, d) {
    const role = str(d.role, 'message');
    const node = this.entry(ev, 'message', `role-${token(role)}`,
      this.head(role, d.name ? el('span', { class: 'ev-id' }, str(d.name)) : null, this.time(ev)),
      messageBody(formatValue(d.content)));
    if (d.cause !== undefined && d.cause !== null && d.cause !== '') {
      node.append(el('p', { class: 'ev-cause' }, `cause: ${shortValue(d.cause)}`));
    }
  },

  plan(ev, d) {
    const n = Array.isArray(d.tasks) ? d.tasks.filter(isObject).length : 0;
    this.line(ev, 'plan', `${d.proposed === true ? 'proposed: ' : ''}${str(d.goal, '(no goal)')} — ${n} task${n === 1 ? '' : 's'}`);
  },

  task(ev, d) {
    // The plan panel shows the state (a task the plan does not have is not
    // added to it); the timeline shows the update as it came.
    const id = str(d.id);
    const status = str(d.status, '?');
    const plan = this.plan;
    const task = plan && typeof d.id === 'string' ? plan.tasks.find((t) => t.id === d.id) : undefined;
    const node = this.line(ev, 'task', `#${id} `, el('span', { class: `pill st-${token(status)}` }, status),
      task && task.instruction ? el('span', { class: 'muted' }, ` ${shortValue(task.instruction, 80)}`) : null);
    if (d.result !== undefined && d.result !== null && d.result !== '') {
      node.append(this.resultDetails(d.result));
    }
  },

  code(ev, d) {
    const id = str(d.id);
    const lang = str(d.lang, 'code');
    const outputs = el('div', { class: 'outputs' });
    const cell = this.entry(ev, 'code', '',
      this.head('code', el('span', { class: 'ev-id' }, `${lang} · ${id}`), this.time(ev)),
      el('pre', { class: 'source', dataset: { lang: token(lang) } }, el('code', {}, str(d.source))),
      outputs);
    cell.dataset.codeId = id;
    this.codes.set(id, { cell, outputs });  // a re-run with the same id takes over
  },

  output(ev, d) {
    const id = str(d.id);
    let code = this.codes.get(id);
    if (!code) {
      // Output of code we never saw (before a snapshot): a cell without source.
      const outputs = el('div', { class: 'outputs' });
      const cell = el('article', { class: 'ev ev-code orphan', dataset: { codeId: id } },
        this.head('output', el('span', { class: 'ev-id' }, id)), outputs);
      this.e.feed.append(cell);
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
    block.append(el('span', { dataset: this.marks(ev, 'output') }, str(d.text)));
  },

  tool(ev, d) {
    const type = d.type !== undefined && d.type !== null ? ` (${str(d.type)})` : '';
    this.entry(ev, 'tool', '',
      this.head('tool', el('span', { class: 'ev-id' }, `${str(d.name, '?')}${type}`), this.time(ev)),
      el('pre', { class: 'ev-value' }, formatValue(d.value)));
  },

  log(ev, d) {
    const level = str(d.level, 'INFO').toUpperCase();
    const row = el('div', { class: `log lvl-${levelRank(d.level)}`,
      dataset: { ...this.marks(ev, 'log'), level: token(level) } },
    el('time', {}, clock(ev.ts)),
    el('span', { class: 'log-level' }, level),
    d.logger ? el('span', { class: 'log-logger' }, str(d.logger)) : null,
    el('span', { class: 'log-msg' }, str(d.msg)));
    this.e.logs.append(row);
  },

  ask(ev, d) {
    const entry = this.line(ev, 'ask', str(d.prompt, '(no prompt)'));
    entry.classList.add('open');
    this.askEntries.set(str(d.id), entry);
  },

  answer(ev, d) {
    const id = str(d.id);
    const entry = this.askEntries.get(id);
    if (entry) entry.classList.replace('open', 'answered');
    const by = str(d.by, '?');
    if (by === 'closed') {
      // The run ended (or the asking code stopped) before anyone answered.
      this.line(ev, 'answer', el('span', { class: 'muted' }, 'closed without an answer'));
    } else {
      this.line(ev, 'answer', el('b', {}, shortValue(d.value, 200)),
        el('span', { class: 'muted' }, ` by ${by}`));
    }
  },

  status(ev, d) {
    const state = str(d.state, '?');
    this.line(ev, 'status',
      el('span', { class: `pill st-${token(state)}` }, state),
      d.detail !== undefined && d.detail !== null ? el('span', { class: 'muted' }, ` ${shortValue(d.detail)}`) : null);
  },
};

// A very long message (MetaGPT's final one is its whole plan context) is
// folded: its start shows, the rest is one click away.
/** @param {string} text */
function messageBody(text) {
  if (text.length <= 1200) return el('div', { class: 'message-body' }, text);
  return el('details', { class: 'message-body message-long' },
    el('summary', {}, `${text.slice(0, 300).trimEnd()}… (${text.length} characters)`),
    el('div', {}, text));
}
