"""MetaGPT objects -> wirepipe events (docs/protocol.md section 5): pure functions.

Each function takes what MetaGPT hands a hook (a plan, a message, a cell's
outputs, a loguru record, tool output) and returns the event's ``d`` map(s);
the hooks emit them on the run's pipe.  Nothing here imports MetaGPT: the
objects are read by attribute, so these work on any object of that shape.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = [
    "code_event",
    "log_event",
    "message_event",
    "output_events",
    "plain",
    "plan_event",
    "tool_events",
]

_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain(value: Any) -> Any:
    """``value`` if MessagePack can carry it as is, else its ``str``."""
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def plan_event(plan: Any, running: str | None) -> dict[str, Any]:
    """A ``plan`` event from a MetaGPT ``Plan``; ``running`` is the task being worked on."""
    tasks = []
    for t in plan.tasks:
        if t.is_finished:
            status = "done"
        elif t.task_id == running:
            status = "running"
        else:
            status = "pending"
        tasks.append(
            {
                "id": str(t.task_id),
                "instruction": t.instruction,
                "deps": [str(x) for x in t.dependent_task_ids],
                "type": t.task_type,
                "status": status,
            }
        )
    return {"goal": plan.goal, "tasks": tasks, "current": plan.current_task_id or None}


def message_event(msg: Any, name: str | None = None) -> dict[str, Any]:
    """A ``message`` event from a MetaGPT ``Message``; ``name`` is the sending role's, if known."""
    content = getattr(msg, "content", "")
    d: dict[str, Any] = {"role": str(getattr(msg, "role", "") or ""), "content": plain(content)}
    sent_from = getattr(msg, "sent_from", "") or ""
    name = name or (str(sent_from).rsplit(".", 1)[-1] if sent_from else None)
    if name:
        d["name"] = name
    cause = getattr(msg, "cause_by", "") or ""
    if cause:
        d["cause"] = str(cause).rsplit(".", 1)[-1]
    return d


def code_event(cid: str, language: str, source: str, task: str | None) -> dict[str, Any]:
    """A ``code`` event: a cell ``ExecuteNbCode.run`` is about to run (in ``task``, if any)."""
    d: dict[str, Any] = {"id": cid, "lang": language, "source": source}
    if task:
        d["task"] = task
    return d


def output_events(cid: str, outputs: list[Any]) -> tuple[list[dict[str, Any]], int]:
    """One ``output`` event per Jupyter cell output of cell ``cid``, and how many were errors."""
    events: list[dict[str, Any]] = []
    errors = 0
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            stream, text = out.get("name", "stdout"), out.get("text", "")
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            text = data.get("text/plain", "")
            if not text:
                text = "[" + ", ".join(sorted(data)) + "]"
            stream = "result"
        elif kind == "error":
            errors += 1
            stream = "error"
            text = _ANSI.sub("", "\n".join(out.get("traceback", [])) or f"{out.get('ename')}: {out.get('evalue')}")
        else:
            continue
        if isinstance(text, list):
            text = "".join(text)
        events.append({"id": cid, "stream": stream, "text": str(text)})
    return events, errors


def tool_events(output: Any, tool_name: str) -> list[dict[str, Any]]:
    """``tool`` events from newer MetaGPT's tool output (one item, or a list of them)."""
    events = []
    items = output if isinstance(output, list) else [output]
    for item in items:
        if item is None:
            continue
        if isinstance(item, dict):
            name, typ, value = item.get("name", tool_name), item.get("type", "str"), item.get("value")
        elif hasattr(item, "name") and hasattr(item, "value"):
            name, typ, value = item.name, getattr(item, "type_", "str"), item.value
        else:
            name, typ, value = tool_name or "tool", "str", item
        if name == "end_marker":  # MetaGPT's TOOL_LOG_END_MARKER
            continue
        events.append({"name": str(name or tool_name or "tool"), "type": str(typ), "value": plain(value)})
    return events


def log_event(record: Any) -> dict[str, Any]:
    """A ``log`` event from a loguru record."""
    return {"level": record["level"].name, "msg": str(record["message"]), "logger": str(record["name"] or "")}
