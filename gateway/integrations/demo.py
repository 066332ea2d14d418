"""A small offline agent that exercises every event kind, for the demo and tests.

It needs no agent framework: ``wirepipe demo`` serves it as ``demo`` (beside
the MetaGPT apps, when MetaGPT is installed); ``--app demo=gateway.integrations.demo:app``
serves it anywhere.

``app(pipe, input)`` with ``input`` a map (every key optional):
``steps`` (tasks in the plan, default 3), ``ask`` (ask a human before
finishing, default true), ``delay`` (seconds between tokens, default 0.02),
``goal`` (the plan's goal).  A plain string input is taken as the goal.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..pipe import WebPipe

_WORDS = (
    "Reading the data set, then computing the summary statistics the task asks for, "
    "and checking the result before moving on."
).split()


async def app(pipe: WebPipe, input: Any = None) -> None:
    """Run the scripted agent on ``pipe``; see the module docstring for ``input``."""
    opts: dict[str, Any] = input if isinstance(input, dict) else {"goal": input}
    steps = max(1, min(int(opts.get("steps") or 3), 50))
    delay = float(opts.get("delay", 0.02) or 0)
    ask = opts.get("ask", True)
    goal = str(opts.get("goal") or "Summarise a small data set")
    tasks: list[dict[str, Any]] = [
        {
            "id": str(i),
            "instruction": f"Step {i}: " + ("load the data" if i == 1 else f"analyse part {i}"),
            "deps": [str(i - 1)] if i > 1 else [],
            "type": "data analysis",
            "status": "pending",
        }
        for i in range(1, steps + 1)
    ]
    pipe.emit("plan", {"goal": goal, "tasks": tasks, "current": "1"})
    for task in tasks:
        tid = task["id"]
        pipe.emit("task", {"id": tid, "status": "running"})
        pipe.emit("log", {"level": "INFO", "msg": f"task {tid} started", "logger": "demo"})
        for word in _WORDS:
            pipe.set_message(word + " ")
            if delay:
                await asyncio.sleep(delay)
        pipe.end_text()
        code_id = f"c{tid}"
        source = f"total = sum(range({int(tid) * 10}))\nprint(total)"
        pipe.emit("code", {"id": code_id, "lang": "python", "source": source})
        pipe.emit("output", {"id": code_id, "stream": "stdout", "text": f"{sum(range(int(tid) * 10))}\n"})
        pipe.emit("log", {"level": "DEBUG", "msg": f"task {tid} checked", "logger": "demo"})
        pipe.emit("task", {"id": tid, "status": "done", "result": f"step {tid} ok"})
    if ask:
        pipe.emit("status", {"state": "waiting", "detail": "waiting for a human"})
        value = await pipe.ask("Ship the result?", choices=["yes", "no"], default="no")
        pipe.emit("status", {"state": "running"})
        pipe.emit("message", {"role": "assistant", "content": f"The human said {value!r}.", "name": "demo"})
    else:
        pipe.emit("message", {"role": "assistant", "content": "Done.", "name": "demo"})
