"""Helpers for the MetaGPT tests: drive a client through a run, look at its events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from support import final

Answer = Callable[[Any], Any]


async def drive(client: Any, answer: Answer | None = None) -> list[Any]:
    """Every event until the run's final status; ``answer(ask_event)`` replies (None: no reply)."""
    events: list[Any] = []
    async for ev in client:
        events.append(ev)
        if ev.k == "ask" and answer is not None:
            value = answer(ev)
            if value is not None:
                replied = await client.reply(ev.d["id"], value)
                assert replied.ok, replied
        if final(ev):
            break
    return events


def kinds(events: list[Any]) -> set[str]:
    return {ev.k for ev in events}


def of(events: list[Any], k: str) -> list[dict[str, Any]]:
    return [ev.d for ev in events if ev.k == k]


def final_status(events: list[Any]) -> dict[str, Any]:
    """The payload of the run's final status, which must be the last event."""
    assert events and final(events[-1]), events[-1:]
    d: dict[str, Any] = events[-1].d
    return d


def texts(events: list[Any]) -> dict[str, str]:
    """Each text stream's whole text; asserts every stream ended."""
    out: dict[str, str] = {}
    ended: set[str] = set()
    for d in of(events, "text"):
        out[d["id"]] = out.get(d["id"], "") + d["delta"]
        if d.get("end"):
            ended.add(d["id"])
    assert set(out) == ended, f"text streams never ended: {set(out) - ended}"
    return out
