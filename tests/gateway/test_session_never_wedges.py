"""A session's log never wedges: bad values, bad writes and full inboxes are
refused where they happen, and the run carries on for every client.

Each test here failed before the writer was rebuilt (issue "Nothing lost,
ever", part A): a burnt seq stopped the log for good.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from support import TIMEOUT, final, replied

from gateway import Gateway, MemoryStore, Retention
from gateway.client import Client
from protocol import MAX_DEPTH, check_value, decode_event, packb


def nested(depth: int) -> Any:
    """A list nested ``depth`` deep: ``[[...[1]...]]``."""
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


def seqs_in_order(evs: list[Any]) -> None:
    got = [e.seq for e in evs]
    assert got == list(range(got[0], got[0] + len(got))), got


# --- the depth limit, both ways -------------------------------------------------------


def test_check_value_limits_depth_and_keys() -> None:
    assert check_value(nested(MAX_DEPTH)) is None
    assert check_value(nested(MAX_DEPTH + 1)) is not None
    assert check_value({"a": {1: "int keys are fine", 2.5: None}}) is None
    assert check_value({(1, 2): "x"}) is not None  # a tuple key would come back as a list
    assert check_value("text") is None


async def test_a_reply_too_deep_is_bad_value_and_the_ask_stays_open(gw: Gateway, raw: Any) -> None:
    pipe = gw.pipe("deep-reply")
    asked = asyncio.ensure_future(pipe.ask("Value?", other=True))
    async with raw(gw.url) as r:
        await r.hello("deep-reply")
        await r.events(lambda e: e.k == "ask")
        # decodes (msgpack takes ~1000 levels) but could never be written back
        await r.send({"t": "reply", "ask": "a1", "rid": "deep", "value": nested(1000)})
        frames = await r.collect(lambda fs: bool(replied(fs)))
        assert replied(frames)[0].ok is False and replied(frames)[0].err == "bad_value"
        assert not [f for f in frames if f.t == "error"]  # non-fatal: nothing but the reply
        # the connection, the ask and the log all still work
        await r.send({"t": "reply", "ask": "a1", "rid": "ok", "value": nested(MAX_DEPTH)})
        evs = await r.events(lambda e: e.k == "answer")
        assert evs[-1].d["value"] == nested(MAX_DEPTH)
        assert await asyncio.wait_for(asked, TIMEOUT) == nested(MAX_DEPTH)
        pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "after"}})
        pipe.close()
        evs = await r.events(final)
        assert [e.k for e in evs] == ["log", "status"]


async def test_a_send_too_deep_is_bad_value(gw: Gateway, raw: Any) -> None:
    pipe = gw.pipe("deep-send")
    async with raw(gw.url) as r:
        await r.hello("deep-send")
        await r.send({"t": "send", "rid": "s1", "data": nested(MAX_DEPTH + 1)})
        frames = await r.collect(lambda fs: bool(replied(fs)))
        assert (replied(frames)[0].ok, replied(frames)[0].err) == (False, "bad_value")
        await r.send({"t": "send", "rid": "s2", "data": {"fine": True}})
        frames = await r.collect(lambda fs: bool(replied(fs)))
        assert replied(frames)[0].ok is True
    assert await pipe.aget_message(TIMEOUT) == {"fine": True}
    pipe.close()


@pytest.mark.parametrize(
    "bad",
    [
        nested(600),  # past msgpack's own limit
        nested(MAX_DEPTH + 1),  # past ours
        {(1, 2): "tuple key"},
    ],
    ids=["deep-600", "deep-limit", "tuple-key"],
)
async def test_an_agent_bad_write_raises_at_the_call_and_burns_no_seq(gw: Gateway, bad: Any) -> None:
    pipe = gw.pipe("bad-write")
    async with Client(gw.url, "bad-write") as c:
        first = pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "before"}})
        with pytest.raises(ValueError):
            pipe.set_message({"k": "tool", "d": {"name": "t", "type": "x", "value": bad}})
        with pytest.raises(ValueError):  # a kept kind (the snapshot holds it) too
            pipe.set_message({"k": "plan", "d": {"goal": "g", "tasks": [], "extra": bad}})
        second = pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "after"}})
        assert second == first + 1  # the refused writes took no seq
        pipe.close()
        evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    seqs_in_order(evs)
    assert [e.d.get("msg") for e in evs if e.k == "log"] == ["before", "after"]


async def test_int_keys_travel_in_every_kind(gw: Gateway) -> None:
    pipe = gw.pipe("int-keys")
    plan = {"goal": "g", "tasks": [{"id": "1", "status": "pending", "scores": {1: 0.5, 2: 0.25}}]}
    async with Client(gw.url, "int-keys") as c:
        pipe.set_message({"k": "plan", "d": plan})
        pipe.set_message({"k": "tool", "d": {"name": "t", "type": "table", "value": {0: "a", 1: "b"}}})
        pipe.close()
        evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    assert evs[0].d["tasks"][0]["scores"] == {1: 0.5, 2: 0.25}
    assert evs[1].d["value"] == {0: "a", 1: "b"}
    # a late client's snapshot carries the plan too
    async with Client(gw.url, "int-keys") as late:
        assert late.welcome is not None and late.welcome.snapshot is not None
        assert late.welcome.snapshot["plan"]["tasks"][0]["scores"] == {1: 0.5, 2: 0.25}


async def test_a_bad_ask_payload_raises_and_leaves_no_ask(gw: Gateway) -> None:
    pipe = gw.pipe("bad-ask")
    with pytest.raises(ValueError):
        await pipe.ask("deep?", ["a"], extra=nested(MAX_DEPTH + 5))
    assert pipe._s.asks == {}
    assert await pipe.ask("fine?", ["a"], default="a", timeout=0) == "a"
    pipe.close()
    await pipe.drained()
    info = await gw.store.info("bad-ask")
    assert info is not None and info.ended and info.head == pipe.head


async def test_close_is_prompt_after_a_bad_write(gw: Gateway) -> None:
    """Before, a burnt seq made Gateway.close() wait forever for a drain."""
    pipe = gw.pipe("close-after-bad")

    def agent() -> None:
        pipe.set_message("tokens ")
        try:
            pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": nested(700)}})
        except ValueError:
            pass
        pipe.set_message("more")

    t = threading.Thread(target=agent)
    t.start()
    await asyncio.to_thread(t.join)
    await asyncio.wait_for(pipe.drained(), TIMEOUT)
    info = await gw.store.info("close-after-bad")
    assert info is not None and info.head == pipe.head == 2


# --- bounds ---------------------------------------------------------------------------


async def test_the_inbox_is_bounded_and_says_so(make_gw: Any, raw: Any) -> None:
    gw = await make_gw(inbox_messages=3, inbox_bytes=1 << 20)
    pipe = gw.pipe("inbox")
    async with raw(gw.url) as r:
        await r.hello("inbox")
        outcomes = []
        for i in range(5):
            await r.send({"t": "send", "rid": f"s{i}", "data": i})
            outcomes.append((await r.collect(lambda fs: bool(replied(fs))))[-1])
        assert [(o.ok, o.err) for o in outcomes] == [(True, None)] * 3 + [(False, "inbox_full")] * 2
        assert await pipe.aget_message(TIMEOUT) == 0  # the agent takes one: room for one more
        await r.send({"t": "send", "rid": "s3", "data": 3})  # the same rid, re-sent, now fits
        assert (await r.collect(lambda fs: bool(replied(fs))))[-1].ok is True
    assert [await pipe.aget_message(TIMEOUT) for _ in range(3)] == [1, 2, 3]
    pipe.close()


async def test_the_inbox_bounds_bytes(make_gw: Any, raw: Any) -> None:
    gw = await make_gw(inbox_messages=1000, inbox_bytes=100_000)
    gw.pipe("inbox-bytes")
    async with raw(gw.url) as r:
        await r.hello("inbox-bytes")
        errs = []
        for i in range(4):
            await r.send({"t": "send", "rid": f"b{i}", "data": "x" * 40_000})
            errs.append((await r.collect(lambda fs: bool(replied(fs))))[-1].err)
        assert errs == [None, None, "inbox_full", "inbox_full"]


# --- the memory store reclaims every ended log ------------------------------------------


async def test_runs_ended_in_the_tick_they_start_are_all_reclaimed() -> None:
    store = MemoryStore(Retention(ttl_after_end=0.0))
    async with Gateway(port=0, store=store) as gw:
        pipes = []
        for i in range(2000):
            p = gw.pipe(f"blink-{i}")
            p.close()  # in the same tick: the log does not exist yet
            pipes.append(p)
        await gw.sweep()  # before the logs exist: nothing may be forgotten yet
        await asyncio.gather(*(p.drained() for p in pipes))
        await gw.sweep()
        assert len(gw.runs.sessions) == 0
        assert len(store) == 0, "ended logs were left behind"


async def test_a_client_can_send_ints_and_big_frames_without_harm(gw: Gateway, raw: Any) -> None:
    """An int-keyed map in a reply (refused before as a bad frame) is a fine value now."""
    pipe = gw.pipe("int-reply")
    asked = asyncio.ensure_future(pipe.ask("map?", other=True))
    async with raw(gw.url) as r:
        await r.hello("int-reply")
        await r.events(lambda e: e.k == "ask")
        await r.ws.send(packb({"t": "reply", "ask": "a1", "rid": "r", "value": {1: "one"}}))
        frames = await r.collect(lambda fs: bool(replied(fs)))
        assert replied(frames)[0].ok is True
    assert await asyncio.wait_for(asked, TIMEOUT) == {1: "one"}
    pipe.close()


# --- a store that fails for good ------------------------------------------------------------


async def test_a_store_that_keeps_failing_ends_the_run_failed_for_everyone() -> None:
    """Not a connection problem but a broken batch (a bug): after a few tries the run
    ends ``failed`` with a reason every client sees, its app is cancelled, its ask
    closed, and what was stored before stays."""

    class Allergic(MemoryStore):
        """Refuses any batch with a poisoned event, the way a buggy backend would."""

        async def append(self, sid: str, events: Any, *, epoch: str | None = None) -> None:
            if any(e.k == "log" and e.d.get("msg") == "poison" for e in events):
                raise RuntimeError("the backend choked")
            await super().append(sid, events, epoch=epoch)

    reached: list[str] = []

    async def app(pipe: Any, value: Any) -> None:
        pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "fine"}})
        await pipe.drained()
        reached.append("drained")
        pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "poison"}})
        try:
            await pipe.ask("still there?", ["yes"])
        except asyncio.CancelledError:
            reached.append("cancelled")
            raise

    async with Gateway(port=0, store=Allergic(), apps={"app": app}) as gw:
        async with Client(gw.url, "allergic", start={"app": "app"}) as c:
            evs = await asyncio.wait_for(c.until(final), TIMEOUT)
        assert evs[-1].d["state"] == "failed"
        assert "RuntimeError" in evs[-1].d["detail"] and "lost" in evs[-1].d["detail"]
        assert [e.k for e in evs[-2:]] == ["answer", "status"] and evs[-2].d["by"] == "closed"
        assert c.resets == []  # the same log: what was stored stays
        assert reached == ["drained", "cancelled"]
        # a client that comes later sees the whole history and the same end
        async with Client(gw.url, "allergic") as late:
            assert late.welcome is not None and late.welcome.first == 1
            history = await asyncio.wait_for(late.until(final), TIMEOUT)
        assert [e.seq for e in history] == [e.seq for e in evs] == [1, 2, 3, 4]
        assert [e.k for e in history] == ["status", "log", "answer", "status"]
        await gw.close()  # prompt, nothing left to drain


async def test_objects_expanded_by_the_encoder_obey_the_depth_limit_too(gw: Gateway) -> None:
    """A dataclass nested 150 deep is a leaf to the first check, a deep map once encoded."""
    from dataclasses import dataclass

    @dataclass
    class Node:
        child: Any

    deep: Any = 1
    for _ in range(150):
        deep = Node(deep)
    shallow = Node(Node(1))
    pipe = gw.pipe("opaque")
    with pytest.raises(ValueError):
        pipe.set_message({"k": "tool", "d": {"name": "t", "type": "x", "value": deep}})
    assert pipe.set_message({"k": "tool", "d": {"name": "t", "type": "x", "value": shallow}}) == 1
    pipe.close()
    await pipe.drained()
    raws = await gw.store.read("opaque", 0)
    assert decode_event(raws[0]).d["value"] == {"child": {"child": 1}}
