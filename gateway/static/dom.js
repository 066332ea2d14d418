// Small DOM and formatting helpers for the web UI.
//
// Event data only ever reaches the page through textContent, text nodes and
// attribute values set with setAttribute: never innerHTML. That is the whole
// XSS story, so keep it that way.

/**
 * Build an element. attrs: `class`, `text` (textContent), `on<event>`
 * (listener), `dataset` (object), anything else via setAttribute; null,
 * undefined and false skip the attribute, true sets it empty. Children may be
 * nodes or strings (strings become text nodes).
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'dataset') {
      for (const [dk, dv] of Object.entries(value)) {
        if (dv !== undefined && dv !== null) node.dataset[dk] = String(dv);
      }
    } else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) node.append(child);
  }
  return node;
}

function jsonReplacer(_key, value) {
  if (typeof value === 'bigint') return `${value}n`;
  if (value instanceof Uint8Array) return `<${value.byteLength} bytes>`;
  if (value instanceof Map) return Object.fromEntries(value);
  if (value instanceof Date) return value.toISOString();
  return value;
}

/** Any decoded MessagePack value as readable text (strings as they are). */
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

/** A one-line form of a value, cut at `max` characters. */
export function shortValue(value, max = 120) {
  const text = formatValue(value, 0).replace(/\s+/g, ' ');
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** A string from an event field that should be a string (ids, names). */
export function str(value, fallback = '') {
  if (value === undefined || value === null) return fallback;
  return typeof value === 'string' ? value : formatValue(value, 0);
}

/** hh:mm:ss of a float epoch-seconds timestamp, '' if it is not one. */
export function clock(ts) {
  if (typeof ts !== 'number' || !Number.isFinite(ts)) return '';
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

/** CSS-safe token: event data used in class names or data-* selectors. */
export function token(value) {
  return str(value).toLowerCase().replace(/[^a-z0-9_-]/g, '_').slice(0, 40) || 'unknown';
}
