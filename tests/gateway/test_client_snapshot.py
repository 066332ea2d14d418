"""``Client.snapshot``: the run's state as received, by the rule of docs/protocol.md section 4.

Rebuilt from each welcome that resets, then every event past the welcome's
``head`` folded in: a client that saw the whole history, one that came late
with ``live`` (the snapshot covers what it skipped), and one moved to a new
run under the same sid all end with the state the events say.
"""

from __future__ import annotations

from typing import Any

from support import final

from gateway import Gateway
from gateway.client import Client
from protocol import Snapshot


def plan(*ids: str) -> dict[str, Any]:
    tasks = [{"id": i, "instruction": f"do {i}", "deps": [], "type": "t", "status": "pending"} for i in ids]
    return {"goal": "g", "tasks": tasks, "current": None}


async def test_history_and_live_clients_end_with_the_same_state(gw: Gateway) -> None:
    pipe = gw.pipe("snap")
    pipe.emit("plan", plan("1", "2"))
    pipe.emit("task", {"id": "1", "status": "done", "result": "ok"})
    pipe.emit("ask", {"id": "a1", "prompt": "go?", "choices": ["yes", "no"]})
    pipe.text("half a thought", id="t1")
    await pipe.drained()
    async with Client(gw.url, "snap") as whole, Client(gw.url, "snap", live=True) as late:
        assert late.welcome is not None and late.welcome.head == 4
        # The late client skipped seqs 1-4: its state is the welcome's snapshot.
        assert late.snapshot.plan is not None and late.snapshot.plan["tasks"][0]["status"] == "done"
        assert list(late.snapshot.asks) == ["a1"] and late.snapshot.texts == {"t1": ["half a thought"]}
        pipe.emit("answer", {"id": "a1", "value": "yes", "by": "test"})
        pipe.emit("task", {"id": "2", "status": "done"})
        pipe.close()
        seen = await whole.until(final)
        await late.until(final)
    folded = Snapshot()
    for ev in seen:
        folded.apply(ev.k, ev.d)
    assert whole.snapshot.as_map() == late.snapshot.as_map() == folded.as_map()
    assert whole.snapshot.status == {"state": "done"}
    assert [t["status"] for t in whole.snapshot.plan["tasks"]] == ["done", "done"]  # type: ignore[index]
    assert whole.snapshot.asks == {}


async def test_a_new_run_under_the_sid_starts_a_new_state(gw: Gateway) -> None:
    p1 = gw.pipe("again")
    p1.emit("plan", plan("1"))
    p1.close()
    async with Client(gw.url, "again") as c:
        await c.until(final)
        first = c.snapshot
        assert first.plan is not None and first.status == {"state": "done"}
        p2 = gw.pipe("again")
        p2.set_message("two")
        await c.until(lambda ev: ev.k == "text")
        assert c.resets and c.snapshot is not first
        assert c.snapshot.plan is None and list(c.snapshot.texts.values()) == [["two"]]
