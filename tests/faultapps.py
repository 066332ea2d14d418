"""Apps the gateway subprocesses of the fault suite run (``--app slow=faultapps:slow``)."""

from __future__ import annotations

from typing import Any


async def slow(pipe: Any, input: Any) -> None:
    """Write ``input["n"]`` log events (default 100), then ask and wait for the answer."""
    n = int((input or {}).get("n", 100))
    for i in range(1, n + 1):
        pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": f"line {i}"}})
    await pipe.drained()
    answer = await pipe.ask("go on?", ["yes", "no"])
    pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": f"answer {answer}"}})
