// Small DOM and formatting helpers for the web UI.
//
// Event data only ever reaches the page through textContent, text nodes and
// attribute values set with setAttribute: never innerHTML. That is the whole
// XSS story, so keep it that way.

/**
 * @typedef {Node | string | null | undefined | false} Child a child of el(); null, undefined and false add nothing
 */

/**
 * Build an element. attrs: `class`, `text` (textContent), `on<event>`
 * (listener), `dataset` (object), anything else via setAttribute; null,
 * undefined and false skip the attribute, true sets it empty. Children may be
 * nodes or strings (strings become text nodes).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, unknown>} [attrs]
 * @param {...(Child | Child[])} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = String(value);
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'dataset') {
      for (const [dk, dv] of Object.entries(/** @type {Record<string, unknown>} */ (value))) {
        if (dv !== undefined && dv !== null) node.dataset[dk] = String(dv);
      }
    } else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), /** @type {EventListener} */ (value));
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) node.append(child);
  }
  return node;
}

/**
 * @param {string} _key
 * @param {unknown} value
 */
function jsonReplacer(_key, value) {
  if (typeof value === 'bigint') return `${value}n`;
  if (value instanceof Uint8Array) return `<${value.byteLength} bytes>`;
  if (value instanceof Map) return Object.fromEntries(value);
  if (value instanceof Date) return value.toISOString();
  return value;
}

/**
 * Any decoded MessagePack value as readable text (strings as they are).
 * @param {unknown} value
 * @param {number} [indent]
 * @returns {string}
 */
export function formatValue(value, indent = 2) {
  if (value === undefined) return '';
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) return `<${value.byteLength} bytes>`;
  try {
    const text = JSON.stringify(value, jsonReplacer, indent);
    return text === undefined ? String(value) : text;
  } catch {
    return String(value);
  }
}

/**
 * A one-line form of a value, cut at `max` characters.
 * @param {unknown} value
 * @param {number} [max]
 */
export function shortValue(value, max = 120) {
  const text = formatValue(value, 0).replace(/\s+/g, ' ');
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * A string from an event field that should be a string (ids, names).
 * @param {unknown} value
 * @param {string} [fallback]
 * @returns {string}
 */
export function str(value, fallback = '') {
  if (value === undefined || value === null) return fallback;
  return typeof value === 'string' ? value : formatValue(value, 0);
}

/**
 * hh:mm:ss of a float epoch-seconds timestamp, '' if it is not one.
 * @param {unknown} ts
 */
export function clock(ts) {
  if (typeof ts !== 'number' || !Number.isFinite(ts)) return '';
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

/**
 * CSS-safe token: event data used in class names or data-* selectors.
 * @param {unknown} value
 */
export function token(value) {
  return str(value).toLowerCase().replace(/[^a-z0-9_-]/g, '_').slice(0, 40) || 'unknown';
}

/**
 * The element `selector` matches in `root`, one the page (or the code that
 * built `root`) always has, as a `type`: a missing one is a bug, said as such.
 * @template {Element} T
 * @param {ParentNode} root
 * @param {string} selector
 * @param {{new (): T, prototype: T}} type
 * @returns {T}
 */
export function child(root, selector, type) {
  const node = root.querySelector(selector);
  if (!(node instanceof type)) throw new Error(`wirepipe: no ${type.name} ${selector} in its container`);
  return node;
}

/**
 * The message of a thrown value: its `message` when it has one, else the value as text.
 * @param {unknown} err
 * @returns {string}
 */
export function errorMessage(err) {
  const message = err ? /** @type {{message?: unknown}} */ (err).message : undefined;
  return message ? String(message) : String(err);
}
