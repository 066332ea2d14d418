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

import { SID_RE } from '@wirepipe/client/state.js';
import { View } from './render.js';
/** @type {(id: string) => any} the page's elements, by id (they are in index.html) */
const $ = (id) => document.getElementById(id);

const ui = {
  sid: $('sid'),
  conn: $('conn'),
  runStatus: $('run-status'),
  grant: $('grant'),
  cancel: $('cancel'),
  banner: $('banner'),
  controls: $('controls'),
  startForm: $('start-form'),
  watchForm: $('watch-form'),
  sendForm: $('send-form'),
  logLevel: $('log-level'),
  logs: $('logs'),
};

const view = new View({
  feed: $('feed'),
  planGoal: $('plan-goal'),
  planTasks: $('plan-tasks'),
  planProgress: $('plan-progress'),
  asks: $('asks'),
  asksPanel: $('asks-panel'),
  logs: $('logs'),
  runStatus: $('run-status'),
}, { onReply: (askId, value) => reply(askId, value) });

const states = [];
let resets = 0;

let client = null;
let grant = null;

// Storage can throw (disabled cookies, sandboxed frames): then it is just not remembered.
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

/** JSON if it parses, else the text itself; empty means nil. */
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
  const plan = {
    sid: params.get('sid') || '',
    app: params.get('app') || '',
    input: params.get('input') ?? '',
    live: ['1', 'true', 'yes'].includes(params.get('live') || ''),
    window: Number.parseInt(params.get('window') || '', 10),
  };
  const auth = params.get('auth');
  if (auth) stored('session', 'wirepipe.auth', auth);
  plan.auth = auth || stored('session', 'wirepipe.auth') || '';
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

function setConn(state) {
  states.push(state);
  ui.conn.dataset.state = state;
  ui.conn.dataset.history = states.join(' ');
  ui.conn.querySelector('b').textContent = state;
  document.body.dataset.conn = state;
  syncControls();
}

function syncControls() {
  const operator = grant === 'operator';
  const open = client !== null && client.state !== 'closed';
  ui.cancel.disabled = !(open && operator && !view.finished);
  ui.sendForm.hidden = !(open && operator && !view.finished);
  view.setReadOnly(!operator);
}

function syncTitle() {
  const parts = ['wirepipe'];
  if (client) parts.push(client.sid || '');
  if (view.status && view.status.state) parts.push(String(view.status.state));
  const asks = view.asks.size;
  document.title = `${asks ? `(${asks}) ` : ''}${parts.join(' · ')}`;
}

view.onStatus = () => { syncControls(); syncTitle(); };

let bannerAction = null;
function showBanner(text, { kind = 'error', action = null } = {}) {
  ui.banner.hidden = false;
  ui.banner.dataset.kind = kind;
  ui.banner.querySelector('.banner-text').textContent = text;
  const button = ui.banner.querySelector('.banner-action');
  bannerAction = action;
  button.hidden = !action;
  if (action) button.textContent = action.label;
}
function hideBanner() { ui.banner.hidden = true; bannerAction = null; }
ui.banner.querySelector('.banner-close').addEventListener('click', hideBanner);
ui.banner.querySelector('.banner-action').addEventListener('click', () => bannerAction && bannerAction.run());

// ---- actions ------------------------------------------------------------------

async function reply(askId, value) {
  if (!client) return { ok: false, err: 'not_connected' };
  return client.reply(askId, value);
}

// Cancel asks once more instead of a modal confirm(): a stray tap on a phone
// should not stop a long run.
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
    showBanner(`Cancel failed: ${err && err.message ? err.message : err}`);
  }
  syncControls();
});
function disarmCancel() {
  clearTimeout(cancelArmed);
  cancelArmed = null;
  ui.cancel.textContent = 'Cancel run';
  ui.cancel.classList.remove('armed');
}

ui.sendForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $('send-text');
  if (!client || input.value === '') return;
  const button = ui.sendForm.querySelector('button');
  button.disabled = true;
  try {
    const result = await client.send(input.value);
    if (result && result.ok) input.value = '';
    else showBanner(`Send failed: ${(result && result.err) || 'unknown error'}`);
  } catch (err) {
    showBanner(`Send failed: ${err && err.message ? err.message : err}`);
  } finally {
    button.disabled = false;
  }
});

ui.startForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  params.set('app', $('start-app').value.trim());
  params.set('input', $('start-input').value);
  location.assign(`?${params}`);
});

ui.watchForm.addEventListener('submit', (event) => {
  event.preventDefault();
  location.assign(`?sid=${encodeURIComponent($('watch-sid').value.trim())}`);
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
  $('start-app').value = plan.app;
  $('start-input').value = plan.input;
  if (!plan.sid) {
    ui.controls.open = true;
    setConn('idle');
    return;
  }
  ui.sid.textContent = plan.sid;
  $('watch-sid').value = plan.sid;
  if (!SID_RE.test(plan.sid)) {
    showBanner('That session id is not valid: use 1-128 letters, digits, ".", "_", ":" or "-".');
    ui.controls.open = true;
    return;
  }

  let connect;
  try {
    ({ connect } = await import('@wirepipe/client/wirepipe.js'));
  } catch (err) {
    showBanner(`Could not load the wirepipe client (/client/wirepipe.js): ${err.message || err}`);
    return;
  }

  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const options = { sid: plan.sid };  // only keys with a value: nil is not a str on the wire
  if (plan.auth) options.auth = plan.auth;
  if (plan.live) options.live = true;
  if (Number.isInteger(plan.window) && plan.window > 0) options.window = plan.window;
  if (plan.app) options.start = { app: plan.app, input: parseInput(plan.input) };

  client = connect(`${scheme}//${location.host}/`, options);

  client.on('state', (state) => setConn(state));
  client.on('welcome', (welcome) => {
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
    view.reset(snapshot, welcome);
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
      showBanner(ui.banner.querySelector('.banner-text').textContent,
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

// Offer the gateway's registered apps in the start form (GET /apps).
fetch('/apps').then((r) => (r.ok ? r.json() : null)).then((body) => {
  if (!body || !Array.isArray(body.apps)) return;
  const list = $('start-apps');
  list.replaceChildren(...body.apps.map((name) => Object.assign(document.createElement('option'), { value: String(name) })));
  const input = $('start-app');
  if (!input.value && body.apps.length) input.placeholder = body.apps.join(', ');
}).catch(() => {});
