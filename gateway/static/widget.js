// The notebook widget's view (anywidget): the front of gateway/notebook.py's RunWidget.
//
// Small on purpose: it imports the JS client and the web UI's View from the
// gateway it watches, so a notebook shows a run as the web page does, with
// the gateway's own version of both (never a copy that could drift from it).
// Jupyter's page has no import map, so the modules come from /esm/ (the
// same files with the web page's import map applied, gateway/http_front.py);
// the style is the web page's style.css, adopted in a shadow root with its
// :root read as the widget's :host, so neither page's style leaks into the
// other. The gateway must let Jupyter's origin in (--allow-origin), for
// these loads and for the WebSocket alike (docs/notebook.md).
//
// What this module needs of render.js (kept narrow: the web UI evolves on
// its own): `new View(elements, {onReply})`, `view.reset(snapshot, welcome)`,
// `view.apply(event)` and `view.setReadOnly(bool)`. The elements are those
// of its ViewElements (the widget hands over every one a View has asked
// for; each View takes what it needs); the runStatus element holds a <b>.
//
// The model (RunWidget's traitlets): url (the WebSocket), base (the HTTP
// root the modules come from), sid, needs_auth, and what the kernel's own
// follow of the run syncs: status, plan, asks, error. A view only reads the
// model; with needs_auth it asks the kernel for the credential by a custom
// message, so the credential is never widget state (which a notebook saves).
//
// What tests read is on the widget's root (.wp): data-conn and
// data-history (every connection state), data-resets; the feed's
// data-events/-duplicates/-gaps/-errors come from render.js.

/**
 * The part of anywidget's model this view uses.
 * @typedef {{
 *   get(name: string): any,
 *   on(name: string, fn: (...args: any[]) => void): void,
 *   off(name: string, fn: (...args: any[]) => void): void,
 *   send(content: unknown): void,
 * }} Model
 * @typedef {import('@wirepipe/client/wirepipe.js').Client} Client
 * @typedef {import('@wirepipe/client/wirepipe.js').ConnectOptions} ConnectOptions
 * @typedef {typeof import('@wirepipe/client/wirepipe.js')} ClientModule
 * @typedef {typeof import('./render.js')} RenderModule
 */

// What the web page's stylesheet is given for the widget: its layout sized
// for a notebook's output area instead of a whole window (the page's rules
// for widths are media queries on the window; these win, by specificity).
const WIDGET_CSS = `
:host { display: block; }
.wp {
  background: var(--bg); color: var(--ink); font: 14px/1.45 var(--sans);
  border: 1px solid var(--line); border-radius: var(--radius); overflow: hidden;
  container-type: inline-size;
}
.wp .topbar { position: static; min-height: 0; padding: 0.4rem 0.75rem; }
.wp .brand { font-size: 0.95rem; }
.wp .banner { margin: 0.5rem 0.75rem 0; }
.wp .layout {
  padding: 0.75rem; gap: 0.75rem; max-width: none; margin: 0;
  grid-template-columns: minmax(0, 1fr) minmax(220px, 300px);
}
.wp .side { position: static; height: auto; max-height: none; gap: 0.75rem; }
.wp .main-col { gap: 0.75rem; }
.wp .plan { max-height: 22rem; }
.wp .logs-panel { flex: none; min-height: 0; }
.wp .logs { max-height: 14rem; }
.wp .feed { max-height: 32rem; overflow: auto; }
.wp .asks-panel { position: static; max-height: none; box-shadow: none; }
/* The page's style could not load: the reason alone, in a style of its own. */
.wp.failed {
  font: 14px/1.45 system-ui, sans-serif; color: #1c2128; background: #ffebe9;
  border: 1px solid #c62828; border-radius: 8px; padding: 0.6rem 0.9rem;
}
.wp.failed .banner { margin: 0; overflow-wrap: anywhere; }
@container (max-width: 640px) {
  .wp .layout { grid-template-columns: minmax(0, 1fr); }
}
`;

/**
 * An element with a class and children, before the page's dom.js is loaded.
 * @param {string} tag
 * @param {string} cls
 * @param {...(Node | string)} children
 */
function make(tag, cls, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  node.append(...children);
  return node;
}

/**
 * The widget's elements: the web page's structure (index.html) in small.
 * @param {string} sid
 */
function skeleton(sid) {
  const sidCode = make('code', 'run-sid', sid);
  const connText = make('b', '', 'idle');
  const conn = make('span', 'badge conn', make('span', 'dot'),
    make('span', 'label visually-hidden', 'connection'), ' ', connText);
  conn.setAttribute('role', 'status');
  conn.title = 'connection';
  const runStatus = make('span', 'badge run', make('span', 'label visually-hidden', 'run'), ' ', make('b', '', '—'));
  runStatus.setAttribute('role', 'status');
  const grant = make('span', 'badge grant');
  grant.hidden = true;
  const top = make('header', 'topbar', make('span', 'brand', 'wirepipe'),
    make('span', 'run-title', make('span', 'label visually-hidden', 'session'), ' ', sidCode),
    make('span', 'badges', runStatus, conn, grant));

  const bannerText = make('span', 'banner-text');
  const bannerAction = make('button', 'banner-action');
  bannerAction.setAttribute('type', 'button');
  const banner = make('div', 'banner', bannerText, bannerAction);
  banner.setAttribute('role', 'alert');
  banner.hidden = true;

  const feed = make('div', 'feed');
  const feedPanel = make('section', 'feed-panel', feed);
  // Where a View that keeps its ask cards apart shows them (one that docks
  // them in the feed leaves this hidden).
  const asks = make('div', 'asks');
  asks.setAttribute('aria-live', 'polite');
  const asksPanel = make('section', 'panel asks-panel', make('h2', '', 'The agent is asking'), asks);
  asksPanel.hidden = true;

  const planProgress = make('span', 'muted');
  const planGoal = make('p', 'goal muted', 'No plan yet.');
  const planTasks = make('ol', 'tasks');
  const plan = make('section', 'panel plan', make('h2', '', 'Plan ', planProgress), planGoal, planTasks);

  const level = /** @type {HTMLSelectElement} */ (make('select', ''));
  for (const [value, name] of [['0', 'DEBUG'], ['1', 'INFO'], ['2', 'WARNING'], ['3', 'ERROR']]) {
    level.append(Object.assign(document.createElement('option'), { value, textContent: name }));
  }
  level.setAttribute('aria-label', 'Log level');
  const logs = make('div', 'logs');
  logs.dataset.min = '0';
  level.addEventListener('change', () => { logs.dataset.min = level.value; });
  const logsCount = make('span', 'muted');
  const logsPanel = make('section', 'panel logs-panel',
    make('div', 'panel-head', make('h2', '', 'Logs ', logsCount), level), logs);

  const root = make('div', 'wp', top, banner,
    make('main', 'layout', make('div', 'main-col', feedPanel, asksPanel), make('aside', 'side', plan, logsPanel)));
  root.dataset.conn = 'idle';
  return {
    root, conn, connText, grant, banner, bannerText, bannerAction,
    // Every element a View of render.js has asked for: its current one takes
    // what it needs (asks and asksPanel were an earlier View's).
    view: { feed, planGoal, planTasks, planProgress, logs, logsCount, runStatus, asks, asksPanel },
  };
}

/**
 * The web page's stylesheet for a shadow root: its :root rules apply to the widget's host.
 * @param {string} base
 * @returns {Promise<CSSStyleSheet>}
 */
async function pageSheet(base) {
  const response = await fetch(new URL('esm/style.css', base), { mode: 'cors', credentials: 'omit' });
  if (!response.ok) throw new Error(`style.css: HTTP ${response.status}`);
  const sheet = new CSSStyleSheet();
  sheet.replaceSync((await response.text()).replaceAll(':root', ':host'));
  return sheet;
}

/**
 * The credential, from the kernel (a custom message; never widget state).
 * @param {Model} model
 * @returns {Promise<string>}
 */
function askKernelForAuth(model) {
  return new Promise((resolve) => {
    /** @param {any} msg */
    const onMsg = (msg) => {
      if (!msg || msg.type !== 'auth') return;
      model.off('msg:custom', onMsg);
      resolve(typeof msg.auth === 'string' ? msg.auth : '');
    };
    model.on('msg:custom', onMsg);
    model.send({ type: 'auth' });
  });
}

/** @param {unknown} err */
function messageOf(err) {
  const message = err ? /** @type {{message?: unknown}} */ (err).message : undefined;
  return message ? String(message) : String(err);
}

/**
 * @param {{model: Model, el: HTMLElement}} ctx
 * @returns {Promise<() => void>}
 */
async function render({ model, el }) {
  const sid = String(model.get('sid') || '');
  const base = String(model.get('base') || '');
  const url = String(model.get('url') || '');
  const ui = skeleton(sid);
  const shadow = el.shadowRoot || el.attachShadow({ mode: 'open' });
  shadow.replaceChildren(ui.root);
  const own = new CSSStyleSheet();
  own.replaceSync(WIDGET_CSS);
  shadow.adoptedStyleSheets = [own];

  let closed = false;
  /** @type {Client | null} */
  let client = null;
  /** @type {string[]} */
  const states = [];
  let resets = 0;

  /**
   * @param {string} text
   * @param {{kind?: string, action?: {label: string, run: () => void} | null}} [options]
   */
  const showBanner = (text, { kind = 'error', action = null } = {}) => {
    ui.banner.hidden = false;
    ui.banner.dataset.kind = kind;
    ui.bannerText.textContent = text;
    ui.bannerAction.hidden = !action;
    ui.bannerAction.textContent = action ? action.label : '';
    ui.bannerAction.onclick = action ? action.run : null;
  };
  /** @param {string} state */
  const setConn = (state) => {
    states.push(state);
    ui.root.dataset.conn = state;
    ui.root.dataset.history = states.join(' ');
    ui.conn.dataset.state = state;
    ui.connText.textContent = state;
  };
  // The kernel's own follow of the run: when it stops, say why.
  const showKernelError = () => {
    const error = String(model.get('error') || '');
    if (error) showBanner(`The kernel stopped following the run: ${error}`, { kind: 'warning' });
  };
  model.on('change:error', showKernelError);

  /** @type {[ClientModule, RenderModule, CSSStyleSheet]} */
  let loaded;
  try {
    loaded = await Promise.all([
      import(new URL('esm/client/wirepipe.js', base).href),
      import(new URL('esm/render.js', base).href),
      pageSheet(base),
    ]);
  } catch (err) {
    showBanner(`Could not load the wirepipe view from ${base} (${messageOf(err)}). Is the gateway running there, `
      + `and does it let this page's origin (${location.origin}) in? Start it with --allow-origin ${location.origin} `
      + '(docs/notebook.md).');
    ui.root.classList.add('failed');
    ui.root.replaceChildren(ui.banner);  // without the page's style, the rest is only noise
    setConn('closed');
    return () => model.off('change:error', showKernelError);
  }
  const [{ connect }, { View }, sheet] = loaded;
  shadow.adoptedStyleSheets = [sheet, own];
  if (closed) return () => {};

  const view = new View(ui.view, {
    onReply: async (askId, value) => (client ? client.reply(askId, value) : { ok: false, err: 'not_connected' }),
  });
  showKernelError();

  // Follow the bottom of the feed while output arrives, unless the reader scrolled up.
  const feed = ui.view.feed;
  let follow = true;
  feed.addEventListener('scroll', () => {
    follow = feed.scrollTop + feed.clientHeight >= feed.scrollHeight - 40;
  }, { passive: true });
  const keepFollowing = () => { if (follow) feed.scrollTop = feed.scrollHeight; };

  const start = async () => {
    /** @type {ConnectOptions} */
    const options = { sid };
    if (model.get('needs_auth')) {
      setConn('waiting for the kernel');
      options.auth = await askKernelForAuth(model);
      if (closed) return;
    }
    const c = connect(url, options);
    client = c;
    c.on('state', (state) => setConn(state));
    c.on('welcome', (welcome) => {
      const grant = welcome.grant || null;
      ui.grant.hidden = grant === 'operator' || !grant;
      ui.grant.textContent = grant === 'viewer' ? 'viewer · read-only' : grant || '';
      ui.grant.dataset.grant = grant || '';
      view.setReadOnly(grant !== 'operator');
    });
    c.on('reset', ({ snapshot, welcome }) => {
      resets += 1;
      ui.root.dataset.resets = String(resets);
      view.reset(snapshot, welcome);
      keepFollowing();
    });
    c.on('event', (ev) => { view.apply(ev); keepFollowing(); });
    c.on('error', (error) => showBanner(`${error.code}: ${error.msg}`, { kind: error.fatal ? 'error' : 'warning' }));
    c.on('close', ({ code, reason, willRetry }) => {
      if (willRetry || closed) return;  // the connection badge says recovering
      const why = reason ? `${code} ${reason}` : `${code}`;
      const text = ui.banner.hidden ? `Disconnected (${why}).` : ui.bannerText.textContent || '';
      showBanner(text, { action: { label: 'Reconnect', run: () => { ui.banner.hidden = true; start(); } } });
    });
    setConn(c.state || 'connecting');
  };
  start();

  return () => {
    closed = true;
    model.off('change:error', showKernelError);
    if (client) client.close();
  };
}

export default { render };
