// wirepipe web UI: reads the session from the URL, connects with the JS
// client, and hands the stream to the View (render.js).
//
// URL: /?sid=run-1 watches run-1; /?app=demo&input=... starts a run of the
// registered app `demo` (input: JSON, else plain text) under ?sid= or a fresh
// sid, then rewrites the URL to ?sid=... so a reload resumes instead of
// starting again. Optional: auth=... (kept in sessionStorage, removed from the
// URL), live=1 (skip history), window=N (flow-control window).
//
// What tests read is on the page: #conn[data-history] (every connection
// state), body[data-resets] (how many times the view was rebuilt) and the
// feed's data-events/-duplicates/-gaps/-errors (render.js).
//
// Beside the run: the sessions list (GET api/v1/sessions, beside the page;
// a server without the REST API answers 404 and the list says it is not
// available), and "waiting for this session to start" while a sid has no
// run yet (the gateway holds the hello until one starts: no welcome comes).

import { SID_RE, isMap } from '@wirepipe/client/state.js';
import { child, el, errorMessage, str, token } from './dom.js';
import { View } from './render.js';

/**
 * @typedef {import('@wirepipe/client/wirepipe.js').Client} Client
 * @typedef {import('@wirepipe/client/wirepipe.js').ConnectOptions} ConnectOptions
 * @typedef {{label: string, run: () => void}} BannerAction
 */

/**
 * The page's element `id` (index.html has them all), as a `type`: a missing one is a bug, said as such.
 * @template {HTMLElement} T
 * @param {string} id
 * @param {{new (): T, prototype: T}} type
 * @returns {T}
 */
function $(id, type) {
  const node = document.getElementById(id);
  if (!(node instanceof type)) throw new Error(`wirepipe: index.html has no ${type.name} #${id}`);
  return node;
}

const ui = {
  sid: $('sid', HTMLElement),
  runApp: $('run-app', HTMLElement),
  waiting: $('waiting', HTMLElement),
  sessions: $('sessions', HTMLElement),
  sessionsNote: $('sessions-note', HTMLElement),
  sessionsPanel: $('sessions-panel', HTMLElement),
  sessionsToggle: $('sessions-toggle', HTMLButtonElement),
  sessionsRefresh: $('sessions-refresh', HTMLButtonElement),
  askJump: $('ask-jump', HTMLButtonElement),
  sendBox: $('send-box', HTMLDetailsElement),
  conn: $('conn', HTMLElement),
  runStatus: $('run-status', HTMLElement),
  grant: $('grant', HTMLElement),
  cancel: $('cancel', HTMLButtonElement),
  banner: $('banner', HTMLElement),
  controls: $('controls', HTMLDetailsElement),
  startForm: $('start-form', HTMLFormElement),
  watchForm: $('watch-form', HTMLFormElement),
  sendForm: $('send-form', HTMLFormElement),
  logLevel: $('log-level', HTMLSelectElement),
  logs: $('logs', HTMLElement),
};

const view = new View({
  feed: $('feed', HTMLElement),
  planGoal: $('plan-goal', HTMLElement),
  planTasks: $('plan-tasks', HTMLElement),
  planProgress: $('plan-progress', HTMLElement),
  logs: $('logs', HTMLElement),
  logsCount: $('logs-count', HTMLElement),
  runStatus: $('run-status', HTMLElement),
  activity: $('activity', HTMLElement),
}, { onReply: (askId, value) => reply(askId, value) });

/** @type {string[]} */
const states = [];
let resets = 0;

/** @type {Client | null} */
let client = null;
/** @type {'viewer' | 'operator' | null} */
let grant = null;
let welcomed = false;
let waitingShown = false;

function syncWaiting() {
  ui.waiting.hidden = !(waitingShown && !welcomed && client !== null && client.state === 'connecting');
}

/**
 * Storage can throw (disabled cookies, sandboxed frames): then it is just not remembered.
 * @param {'session' | 'local'} area
 * @param {string} key
 * @param {string} [value] absent: read
 * @returns {string | null}
 */
function stored(area, key, value) {
  try {
    const store = area === 'session' ? sessionStorage : localStorage;
    if (value === undefined) return store.getItem(key);
    store.setItem(key, value);
  } catch {
    // ignore
  }
  return null;
}

// ---- URL -> what to do ------------------------------------------------------

function newSid() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));  // works without a secure context
  const rand = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `run-${rand}`;
}

/**
 * JSON if it parses, else the text itself; empty means nil.
 * @param {string} text
 * @returns {unknown}
 */
function parseInput(text) {
  const trimmed = text.trim();
  if (trimmed === '') return null;
  try {
    return JSON.parse(trimmed);
  } catch {
    return text;
  }
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  const auth = params.get('auth');
  if (auth) stored('session', 'wirepipe.auth', auth);
  const plan = {
    sid: params.get('sid') || '',
    app: params.get('app') || '',
    input: params.get('input') ?? '',
    live: ['1', 'true', 'yes'].includes(params.get('live') || ''),
    window: Number.parseInt(params.get('window') || '', 10),
    auth: auth || stored('session', 'wirepipe.auth') || '',
  };
  if (plan.app && !plan.sid) plan.sid = newSid();
  if (plan.sid || auth) {
    // Keep only what a reload needs: starting twice would be `sid_taken`,
    // and a credential has no business in the address bar or the history.
    const url = new URL(location.href);
    for (const key of ['app', 'input', 'auth']) url.searchParams.delete(key);
    if (plan.sid) url.searchParams.set('sid', plan.sid);
    history.replaceState(null, '', url);
  }
  return plan;
}

// ---- header widgets -------------------------------------------------------------

/** @param {string} state */
function setConn(state) {
  states.push(state);
  ui.conn.dataset.state = state;
  ui.conn.dataset.history = states.join(' ');
  child(ui.conn, 'b', HTMLElement).textContent = state;
  document.body.dataset.conn = state;
  syncControls();
}

function syncControls() {
  const operator = grant === 'operator';
  const open = client !== null && client.state !== 'closed';
  ui.cancel.disabled = !(open && operator && !view.finished);
  ui.cancel.hidden = view.finished || !view.status;
  // Notes go to the agent's inbox; not beside an open ask (whose own Send is the answer).
  ui.sendBox.hidden = !(open && operator && !view.finished && view.asks.size === 0);
  view.setReadOnly(!operator);
}

function syncTitle() {
  const parts = ['wirepipe'];
  if (client) parts.push(client.sid || '');
  if (view.status && view.status.state) parts.push(String(view.status.state));
  const asks = view.asks.size;
  document.title = `${asks ? `(${asks}) ` : ''}${parts.join(' · ')}`;
}

view.onStatus = () => { syncControls(); syncTitle(); queueSessions(); };
view.onAsks = () => { syncControls(); syncTitle(); syncAskJump(); };

// ---- the open ask, when it is out of sight --------------------------------------

// A small button (not the card over the page) says a question waits below or
// above, and takes the reader to it.
/** @type {Set<Element>} */
const unseen = new Set();
const askObserver = 'IntersectionObserver' in window
  ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (e.isIntersecting) unseen.delete(e.target); else unseen.add(e.target);
    }
    ui.askJump.hidden = unseen.size === 0;
  })
  : null;
function syncAskJump() {
  if (!askObserver) return;
  askObserver.disconnect();
  unseen.clear();
  for (const ask of view.asks.values()) askObserver.observe(ask.card);
  ui.askJump.hidden = true;
}
ui.askJump.addEventListener('click', () => {
  const card = [...view.asks.values()][0];
  if (!card) return;
  const details = card.card.closest('details.step');
  if (details instanceof HTMLDetailsElement) details.open = true;
  card.card.scrollIntoView({ block: 'center', behavior: 'smooth' });
  const first = card.controls.find((c) => !c.disabled);
  if (first) first.focus({ preventScroll: true });
});

/** @type {BannerAction | null} */
let bannerAction = null;
/**
 * @param {string} text
 * @param {{kind?: string, action?: BannerAction | null}} [options]
 */
function showBanner(text, { kind = 'error', action = null } = {}) {
  ui.banner.hidden = false;
  ui.banner.dataset.kind = kind;
  child(ui.banner, '.banner-text', HTMLElement).textContent = text;
  const button = child(ui.banner, '.banner-action', HTMLButtonElement);
  bannerAction = action;
  button.hidden = !action;
  if (action) button.textContent = action.label;
}
function hideBanner() { ui.banner.hidden = true; bannerAction = null; }
child(ui.banner, '.banner-close', HTMLButtonElement).addEventListener('click', hideBanner);
child(ui.banner, '.banner-action', HTMLButtonElement).addEventListener('click', () => bannerAction && bannerAction.run());

// ---- actions ------------------------------------------------------------------

/**
 * @param {string} askId
 * @param {unknown} value
 * @returns {Promise<{ok: boolean, err?: string}>}
 */
async function reply(askId, value) {
  if (!client) return { ok: false, err: 'not_connected' };
  return client.reply(askId, value);
}

// Cancel asks once more instead of a modal confirm(): a stray tap on a phone
// should not stop a long run.
/** @type {ReturnType<typeof setTimeout> | null} */
let cancelArmed = null;
ui.cancel.addEventListener('click', async () => {
  if (!client) return;
  if (!cancelArmed) {
    ui.cancel.textContent = 'Really cancel?';
    ui.cancel.classList.add('armed');
    cancelArmed = setTimeout(disarmCancel, 4000);
    return;
  }
  disarmCancel();
  ui.cancel.disabled = true;
  try {
    const result = await client.cancel('cancelled from the web UI');
    if (result && !result.ok) showBanner(`Cancel failed: ${result.err || 'unknown error'}`);
  } catch (err) {
    showBanner(`Cancel failed: ${errorMessage(err)}`);
  }
  syncControls();
});
function disarmCancel() {
  if (cancelArmed !== null) clearTimeout(cancelArmed);
  cancelArmed = null;
  ui.cancel.textContent = 'Cancel run';
  ui.cancel.classList.remove('armed');
}

ui.sendForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $('send-text', HTMLInputElement);
  if (!client || input.value === '') return;
  const button = child(ui.sendForm, 'button', HTMLButtonElement);
  button.disabled = true;
  try {
    const result = await client.send(input.value);
    if (result && result.ok) {
      input.value = '';
      showBanner('Note sent to the agent’s inbox (apps that read notes act on it).', { kind: 'info' });
    } else showBanner(`Send failed: ${(result && result.err) || 'unknown error'}`);
  } catch (err) {
    showBanner(`Send failed: ${errorMessage(err)}`);
  } finally {
    button.disabled = false;
  }
});

ui.startForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  params.set('app', $('start-app', HTMLInputElement).value.trim());
  params.set('input', $('start-input', HTMLTextAreaElement).value);
  location.assign(`?${params}`);
});

ui.watchForm.addEventListener('submit', (event) => {
  event.preventDefault();
  location.assign(`?sid=${encodeURIComponent($('watch-sid', HTMLInputElement).value.trim())}`);
});

// The level filter is CSS (.logs[data-min=N] hides .lvl-M for M < N), so
// switching it never walks the log rows.
const savedLevel = stored('local', 'wirepipe.logLevel');
if (savedLevel && ['0', '1', '2', '3'].includes(savedLevel)) ui.logLevel.value = savedLevel;
ui.logs.dataset.min = ui.logLevel.value;
ui.logLevel.addEventListener('change', () => {
  ui.logs.dataset.min = ui.logLevel.value;
  stored('local', 'wirepipe.logLevel', ui.logLevel.value);
});

// Keep following the bottom of the page while new output arrives, unless the
// reader has scrolled up.
let follow = true;
let scrollQueued = false;
addEventListener('scroll', () => {
  follow = innerHeight + scrollY >= document.documentElement.scrollHeight - 80;
}, { passive: true });
function queueScroll() {
  if (scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    if (follow) scrollTo(0, document.documentElement.scrollHeight);
  });
}

// ---- connection --------------------------------------------------------------

async function start() {
  const plan = readUrl();
  $('start-app', HTMLInputElement).value = plan.app;
  $('start-input', HTMLTextAreaElement).value = plan.input;
  if (!plan.sid) {
    ui.controls.open = true;
    setConn('idle');
    return;
  }
  ui.sid.textContent = plan.sid;
  child(ui.waiting, '.waiting-sid', HTMLElement).textContent = plan.sid;
  $('watch-sid', HTMLInputElement).value = plan.sid;
  if (!SID_RE.test(plan.sid)) {
    showBanner('That session id is not valid: use 1-128 letters, digits, ".", "_", ":" or "-".');
    ui.controls.open = true;
    return;
  }

  let connect;
  try {
    ({ connect } = await import('@wirepipe/client/wirepipe.js'));
  } catch (err) {
    showBanner(`Could not load the wirepipe client (client/wirepipe.js): ${errorMessage(err)}`);
    return;
  }

  // The WebSocket is where the page is: the gateway's root, or the mount of
  // gw.asgi() in a host app (/agents/): its directory, as ws: or wss:.
  const wsUrl = new URL('.', location.href);
  wsUrl.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  /** @type {ConnectOptions} */
  const options = { sid: plan.sid };  // only keys with a value: nil is not a str on the wire
  if (plan.auth) options.auth = plan.auth;
  if (plan.live) options.live = true;
  if (Number.isInteger(plan.window) && plan.window > 0) options.window = plan.window;
  if (plan.app) {
    options.start = { app: plan.app, input: parseInput(plan.input) };
    ui.runApp.textContent = plan.app;
  }

  client = connect(wsUrl.href, options);

  client.on('state', (state) => { setConn(state); syncWaiting(); });
  // No welcome soon after the socket opened: the gateway holds the hello
  // until a run starts under this sid (docs/protocol.md section 4).
  const waitingTimer = setTimeout(() => { waitingShown = true; syncWaiting(); }, 700);
  client.on('welcome', (welcome) => {
    welcomed = true;
    clearTimeout(waitingTimer);
    syncWaiting();
    grant = welcome.grant || null;
    // Only worth a badge when it takes something away.
    ui.grant.hidden = grant === 'operator' || !grant;
    ui.grant.textContent = grant === 'viewer' ? 'viewer · read-only' : grant || '';
    ui.grant.dataset.grant = grant || '';
    syncControls();
  });
  client.on('reset', ({ snapshot, welcome }) => {
    resets += 1;
    document.body.dataset.resets = String(resets);
    view.reset(snapshot, welcome, { live: plan.live });
    syncControls();
    syncTitle();
    queueScroll();
  });
  client.on('event', (ev) => {
    view.apply(ev);
    if (ev.k === 'ask' || ev.k === 'answer') syncTitle();
    queueScroll();
  });
  client.on('error', (error) => {
    const text = `${error.code}: ${error.msg}`;
    if (error.fatal) showBanner(text);
    else showBanner(text, { kind: 'warning' });
  });
  client.on('close', ({ code, reason, willRetry }) => {
    if (willRetry) return;  // the 'state' badge says recovering
    const why = reason ? `${code} ${reason}` : `${code}`;
    if (ui.banner.hidden || ui.banner.dataset.kind !== 'error') {
      showBanner(`Disconnected (${why}).`, { action: { label: 'Reconnect', run: () => location.reload() } });
    } else {
      // Keep the error text (it says why) and offer the way back.
      showBanner(child(ui.banner, '.banner-text', HTMLElement).textContent ?? '',
        { action: { label: 'Reconnect', run: () => location.reload() } });
    }
    syncControls();
  });
  setConn(client.state || 'connecting');

  // Leaving the page detaches (never cancels); coming back from the
  // back/forward cache starts afresh.
  addEventListener('pagehide', () => client && client.close());
  addEventListener('pageshow', (event) => { if (event.persisted) location.reload(); });
}

start();

// Offer the gateway's registered apps in the start form (GET apps, beside the page).
fetch('apps').then((r) => (r.ok ? r.json() : null)).then((body) => {
  if (!body || !Array.isArray(body.apps)) return;
  const list = $('start-apps', HTMLDataListElement);
  list.replaceChildren(...body.apps.map((/** @type {unknown} */ name) => Object.assign(document.createElement('option'), { value: String(name) })));
  const input = $('start-app', HTMLInputElement);
  if (!input.value && body.apps.length) input.placeholder = body.apps.join(', ');
}).catch(() => {});

// ---- the sessions list ------------------------------------------------------------

const STATE_ORDER = ['waiting', 'running', 'failed', 'cancelled', 'done'];
/** @type {ReturnType<typeof setTimeout> | null} */
let sessionsTimer = null;
/** The server has no REST API (404): asked again only by the Refresh button. */
let sessionsMissing = false;
let currentSid = '';

/**
 * How long ago a Unix time was, said briefly ('12 s ago', '5 min ago').
 * @param {unknown} ts
 */
function ago(ts) {
  if (typeof ts !== 'number' || !Number.isFinite(ts)) return '';
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ts * 1000).toLocaleDateString();
}

/** @param {string} text */
function sessionsNote(text) {
  ui.sessionsNote.hidden = !text;
  ui.sessionsNote.textContent = text;
}

async function loadSessions() {
  /** @type {Response} */
  let response;
  try {
    const auth = stored('session', 'wirepipe.auth');
    response = await fetch('api/v1/sessions', {
      headers: auth ? { Authorization: `Bearer ${auth}` } : {},
      cache: 'no-store',
    });
  } catch {
    sessionsNote('The session list could not be loaded (network).');
    return;
  }
  if (response.status === 404) {
    sessionsMissing = true;
    ui.sessions.replaceChildren();
    sessionsNote('The session list is not available on this server (no REST API). Open a run by its id: Start or watch a run.');
    return;
  }
  if (!response.ok) {
    sessionsNote(`The session list could not be loaded (HTTP ${response.status}).`);
    return;
  }
  /** @type {{sessions?: unknown}} */
  let body;
  try {
    body = await response.json();
  } catch {
    sessionsNote('The session list could not be read.');
    return;
  }
  const rows = Array.isArray(body.sessions) ? body.sessions.filter(isMap) : [];
  // Newest first; among those without a start time, those that need someone first.
  rows.sort((a, b) => (Number(b.started) || 0) - (Number(a.started) || 0)
    || STATE_ORDER.indexOf(str(a.state)) - STATE_ORDER.indexOf(str(b.state)));
  sessionsNote(rows.length ? '' : 'No sessions yet.');
  ui.sessions.replaceChildren(...rows.map((s) => {
    const sid = str(s.sid);
    const state = s.state ? str(s.state) : 'starting';
    const asks = Array.isArray(s.asks) ? s.asks.length : 0;
    if (sid === currentSid && s.app) ui.runApp.textContent = str(s.app);
    return el('li', {},
      el('a', { class: 'session-row', href: `?sid=${encodeURIComponent(sid)}`, dataset: { sid, state: token(state) },
        'aria-current': sid === currentSid ? 'page' : null },
      el('span', { class: 'session-top' },
        el('span', { class: 'session-app' }, s.app ? str(s.app) : 'run'),
        el('span', { class: `pill st-${token(state)}` }, state)),
      el('span', { class: 'session-bottom' },
        el('span', { class: 'session-sid' }, sid),
        asks ? el('span', { class: 'session-asks' }, `${asks} question${asks === 1 ? '' : 's'}`) : null,
        el('span', { class: 'session-ago' }, ago(s.started)))));
  }));
}

/** Reload the list once things have settled (300 ms after the last call). */
function queueSessions() {
  if (sessionsMissing) return;
  if (sessionsTimer !== null) clearTimeout(sessionsTimer);
  sessionsTimer = setTimeout(() => { sessionsTimer = null; loadSessions(); }, 300);
}

ui.sessionsRefresh.addEventListener('click', () => loadSessions());
// A glance every 15 s while the page is in sight keeps states and asks current.
setInterval(() => { if (document.visibilityState === 'visible' && !sessionsMissing) loadSessions(); }, 15000);

// On a phone the list is a drawer the ☰ button opens.
ui.sessionsToggle.addEventListener('click', () => {
  const open = document.body.dataset.sessions !== 'open';
  document.body.dataset.sessions = open ? 'open' : '';
  ui.sessionsToggle.setAttribute('aria-expanded', String(open));
  if (open) loadSessions();
});

currentSid = new URLSearchParams(location.search).get('sid') || '';
if (!currentSid) document.body.dataset.home = '';
loadSessions();
