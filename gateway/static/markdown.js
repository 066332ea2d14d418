// Markdown from an agent (LLM output, messages, results) as DOM, safely.
//
// Two locks, either of which is enough on its own:
// 1. marked (vendor/marked, MIT) parses with raw HTML turned into text: a
//    `<img onerror=...>` in the markdown comes out as the characters
//    `<img onerror=...>`, never as a tag.
// 2. DOMPurify (vendor/dompurify, Apache-2.0) then keeps only the tags and
//    attributes of the allowlists below (no images, no styles, no event
//    handlers, no `javascript:` links) and hands back a DocumentFragment, so
//    no string of HTML is ever assigned to the page.
// Both are served by the gateway (scripts/vendor_ui.sh), never from a CDN;
// the page's CSP (index.html) allows scripts from 'self' only.

import { Marked } from './vendor/marked/marked.esm.js';
import DOMPurify from './vendor/dompurify/purify.es.mjs';

const ALLOWED_TAGS = [
  'p', 'br', 'hr', 'strong', 'b', 'em', 'del', 's', 'code', 'pre', 'blockquote',
  'ul', 'ol', 'li', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'a',
  'table', 'thead', 'tbody', 'tr', 'th', 'td',
];
const ALLOWED_ATTR = ['href', 'title', 'class', 'start', 'align'];

/** @param {string} text */
function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  async: false,
  renderer: {
    // Raw HTML, block or inline, is shown as the text it is.
    html({ text }) { return escapeHtml(text); },
  },
});

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
  // Only marked's own classes: `language-x` on a fenced code block.
  const cls = node.getAttribute('class');
  if (cls !== null && !/^language-[\w+#.-]{1,40}$/.test(cls)) node.removeAttribute('class');
});

/**
 * `text` as sanitized markdown: a fragment to append, never an HTML string.
 * @param {string} text
 * @returns {DocumentFragment}
 */
export function markdown(text) {
  let html;
  try {
    html = /** @type {string} */ (marked.parse(text));
  } catch {
    const fragment = document.createDocumentFragment();
    fragment.append(text);
    return fragment;
  }
  return DOMPurify.sanitize(html, {
    ALLOWED_TAGS, ALLOWED_ATTR, ALLOW_DATA_ATTR: false, RETURN_DOM_FRAGMENT: true,
  });
}

/**
 * The prose of `text` with its fenced code blocks taken out (what an LLM said
 * around the code it wrote), trimmed.
 * @param {string} text
 */
export function proseOf(text) {
  return text.replace(/(^|\n)(```|~~~)[^\n]*\n[\s\S]*?(\n\2[^\n]*(?=\n|$)|$)/g, '$1').trim();
}

// fenceJson's bounds: a longer text is left as it is, a JSON value may span
// this many lines, and this many parses are tried in all.
const JSON_MAX_CHARS = 100_000;
const JSON_MAX_LINES = 2_000;
const JSON_MAX_PARSES = 2_000;

/**
 * `text` with each JSON array or object that stands on lines of its own (an
 * agent's plan pasted into a message) as a fenced `json` code block,
 * pretty-printed, so markdown shows it as code and not as prose with a `[`
 * per paragraph. Fenced code is left as it is; so is a text over
 * JSON_MAX_CHARS.
 * @param {string} text
 * @returns {string}
 */
export function fenceJson(text) {
  if (text.length > JSON_MAX_CHARS || !/^\s*[[{]/m.test(text)) return text;
  const lines = text.split('\n');
  /** @type {string[]} */
  const out = [];
  let fence = '';
  let parses = 0;
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    const t = line.trim();
    const opens = /^(```|~~~)/.exec(t);
    if (fence) {
      if (t.startsWith(fence) && t.replace(/[`~]/g, '') === '') fence = '';
      out.push(line);
      continue;
    }
    if (opens) { fence = opens[1]; out.push(line); continue; }
    if ((t.startsWith('[') || t.startsWith('{')) && parses < JSON_MAX_PARSES) {
      let chunk = '';
      let found = -1;
      /** @type {unknown} */
      let value;
      for (let j = i; j < lines.length && j < i + JSON_MAX_LINES && parses < JSON_MAX_PARSES; j += 1) {
        chunk += (j > i ? '\n' : '') + lines[j];
        const end = lines[j].trim();
        if (!end.endsWith(']') && !end.endsWith('}')) continue;
        parses += 1;
        try { value = JSON.parse(chunk); found = j; break; } catch { /* not yet, or not JSON */ }
      }
      if (found >= 0 && value !== null && typeof value === 'object') {
        const pretty = JSON.stringify(value, null, 2);
        const run = Math.max(2, ...(pretty.match(/`+/g) || []).map((m) => m.length));
        const marks = '`'.repeat(run + 1);  // longer than any run of backticks inside
        out.push(`${marks}json`, pretty, marks);
        i = found;
        continue;
      }
    }
    out.push(line);
  }
  return out.join('\n');
}
