"""A snapshot as HTML and Markdown, for notebooks (``Snapshot._repr_html_`` / ``_repr_markdown_``).

Pure string building: what a notebook shows for ``client.snapshot`` of a
finished (or running) run, and what a saved notebook keeps when no widget
can render.  Every value from the run is escaped: a payload is data, never
markup.  Long values are cut (``LIMIT`` characters) so that a run's final
message does not fill the page.
"""

from __future__ import annotations

import html
import json
from typing import Any, Protocol

#: Characters of one value shown before it is cut.
LIMIT = 300


class _Shown(Protocol):
    """What is read of a ``protocol.Snapshot``."""

    @property
    def status(self) -> dict[str, Any] | None: ...
    @property
    def plan(self) -> dict[str, Any] | None: ...
    @property
    def asks(self) -> dict[str, dict[str, Any]]: ...
    @property
    def texts(self) -> dict[str, list[str]]: ...


def _text(value: Any, limit: int = LIMIT) -> str:
    """``value`` as one line of text: strings as they are, anything else as JSON (repr if not JSON)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):  # a circular value
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tasks(snapshot: _Shown) -> list[dict[str, Any]]:
    plan = snapshot.plan
    tasks = plan.get("tasks") if isinstance(plan, dict) else None
    return [t for t in tasks if isinstance(t, dict)] if isinstance(tasks, list) else []


def _state(snapshot: _Shown) -> str:
    status = snapshot.status
    return _text(status.get("state"), 40) if isinstance(status, dict) and "state" in status else "no status yet"


def _progress(tasks: list[dict[str, Any]]) -> str:
    done = sum(1 for t in tasks if t.get("status") in ("done", "skipped"))
    return f"{done}/{len(tasks)} done"


def snapshot_html(snapshot: _Shown) -> str:
    """The snapshot as an HTML fragment: status, plan and tasks, open asks, open text streams."""
    e = html.escape
    out = [f'<div class="wirepipe-snapshot"><p><b>run</b>: <code>{e(_state(snapshot))}</code>']
    status = snapshot.status
    if isinstance(status, dict) and status.get("detail") not in (None, ""):
        out.append(f" — {e(_text(status['detail']))}")
    out.append("</p>")
    plan = snapshot.plan
    if isinstance(plan, dict):
        tasks = _tasks(snapshot)
        goal = _text(plan.get("goal")) if plan.get("goal") is not None else "(no goal)"
        out.append(f"<p><b>plan</b>: {e(goal)} <i>({e(_progress(tasks))})</i></p>")
        if tasks:
            out.append(
                "<table><thead><tr><th>task</th><th>status</th><th>instruction</th><th>result</th></tr></thead><tbody>"
            )
            for t in tasks:
                result = _text(t["result"]) if t.get("result") not in (None, "") else ""
                out.append(
                    f"<tr><td>{e(_text(t.get('id'), 40))}</td><td>{e(_text(t.get('status', 'pending'), 40))}</td>"
                    f"<td>{e(_text(t.get('instruction', '')))}</td><td>{e(result)}</td></tr>"
                )
            out.append("</tbody></table>")
    if snapshot.asks:
        out.append("<p><b>open asks</b></p><ul>")
        for ask_id, a in snapshot.asks.items():
            choices = a.get("choices")
            extra = f" — choices: {e(', '.join(_text(c, 60) for c in choices))}" if isinstance(choices, list) else ""
            out.append(f"<li><code>{e(_text(ask_id, 80))}</code> {e(_text(a.get('prompt', '')))}{extra}</li>")
        out.append("</ul>")
    if snapshot.texts:
        out.append("<p><b>open text streams</b></p><ul>")
        for tid, parts in snapshot.texts.items():
            out.append(f"<li><code>{e(_text(tid, 80))}</code> {e(_text(''.join(parts)))}</li>")
        out.append("</ul>")
    out.append("</div>")
    return "".join(out)


def _md(text: str) -> str:
    """``text`` safe inside a Markdown table cell or line: no markup, no raw HTML, one line."""
    text = " ".join(text.split())
    for ch in "\\`*_[]<>|#":
        text = text.replace(ch, "\\" + ch)
    return text


def snapshot_markdown(snapshot: _Shown) -> str:
    """The snapshot as Markdown (the same content as ``snapshot_html``)."""
    lines = [f"**run**: `{_state(snapshot).replace('`', '')}`"]
    status = snapshot.status
    if isinstance(status, dict) and status.get("detail") not in (None, ""):
        lines[0] += f" — {_md(_text(status['detail']))}"
    plan = snapshot.plan
    if isinstance(plan, dict):
        tasks = _tasks(snapshot)
        goal = _text(plan.get("goal")) if plan.get("goal") is not None else "(no goal)"
        lines += ["", f"**plan**: {_md(goal)} *({_progress(tasks)})*"]
        if tasks:
            lines += ["", "| task | status | instruction | result |", "|---|---|---|---|"]
            for t in tasks:
                result = _text(t["result"]) if t.get("result") not in (None, "") else ""
                cells = (_text(t.get("id"), 40), _text(t.get("status", "pending"), 40), _text(t.get("instruction", "")))
                lines.append("| " + " | ".join(_md(c) for c in (*cells, result)) + " |")
    if snapshot.asks:
        lines += ["", "**open asks**", ""]
        for ask_id, a in snapshot.asks.items():
            lines.append(f"- {_md(_text(ask_id, 80))}: {_md(_text(a.get('prompt', '')))}")
    if snapshot.texts:
        lines += ["", "**open text streams**", ""]
        for tid, parts in snapshot.texts.items():
            lines.append(f"- {_md(_text(tid, 80))}: {_md(_text(''.join(parts)))}")
    return "\n".join(lines) + "\n"
