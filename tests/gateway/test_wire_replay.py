"""Replay and recovery over real sockets: docs/protocol.md sections 2 and 4."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from support import TIMEOUT, MakeGateway, OpenRaw, final

from gateway import Gateway
from gateway.client import Client
from protocol import Event, Welcome

#: Every test here runs through both fronts (tests/conftest.py), native and ASGI.
pytestmark = pytest.mark.fronts


def seqs_ok(seqs: list[int], start: int = 1) -> bool:
    return seqs == list(range(start, start + len(seqs)))


async def test_abrupt_drop_while_agent_writes_from_a_thread_recovers_gap_free(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("r1")
    go_on = threading.Event()
    stop = threading.Event()

    def agent() -> None:
        i = 0
        while not stop.is_set():
            pipe.set_message(f"token {i} ")
            i += 1
            if i == 200:
                go_on.wait(TIMEOUT)  # let the client drop mid-stream, then keep writing
            if i >= 3000:
                break
        pipe.close()

    t = threading.Thread(target=agent)
    t.start()
    try:
        async with raw(gw.url) as r:
            w = await r.hello("r1")
            assert isinstance(w, Welcome) and w.recovered is False
            got = await r.events(lambda ev: ev.seq >= 150)
            r.ws.transport.abort()  # an abrupt TCP drop, no close frame
        go_on.set()  # the agent writes on while the client is away
        last = got[-1].seq
        async with raw(gw.url) as r:
            w2 = await r.hello("r1", resume=w.resume, epoch=w.epoch, after=last)
            assert w2.recovered is True and w2.snapshot is None
            rest = await r.events(final)
        seqs = [e.seq for e in got] + [e.seq for e in rest]
        assert seqs_ok(seqs), "a gap or a duplicate across the reconnect"
        assert rest[0].seq == last + 1
        assert rest[-1].d == {"state": "done"}
    finally:
        stop.set()
        go_on.set()
        t.join(TIMEOUT)


async def test_server_side_drop_python_client_resumes_by_itself(gw: Gateway) -> None:
    from gateway.client import Client

    pipe = gw.pipe("r2")
    async with Client(gw.url, "r2", backoff=(0.001, 0.01)) as c:
        for i in range(100):
            pipe.set_message(f"a{i}")
        seen = [ev async for ev in _take(c, 100)]
        assert gw.drop_connections("r2") == 1
        for i in range(100):
            pipe.set_message(f"b{i}")
        pipe.close()
        seen += await c.until(final)
    assert seqs_ok([e.seq for e in seen])
    assert c.connects == 2 and c.resets == []


async def _take(c: Client, n: int) -> AsyncIterator[Event]:
    i = 0
    async for ev in c:
        yield ev
        i += 1
        if i == n:
            return


async def test_late_client_gets_whole_history_then_live(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("late")
    pipe.emit(
        "plan", {"goal": "g", "tasks": [{"id": "1", "instruction": "x", "deps": [], "type": "t", "status": "pending"}]}
    )
    for i in range(50):
        pipe.set_message(f"{i} ")
    await pipe.drained()
    async with raw(gw.url) as r:
        w = await r.hello("late")
        assert (w.recovered, w.first, w.head) == (False, 1, 51)
        assert w.snapshot["plan"]["goal"] == "g"
        hist = await r.events(lambda ev: ev.seq == 51)
        pipe.emit("task", {"id": "1", "status": "done"})
        live = await r.events(lambda ev: ev.k == "task")
    assert seqs_ok([e.seq for e in hist + live])
    assert hist[0].k == "plan"


async def test_epoch_mismatch_is_not_recovered_and_carries_the_snapshot(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("ep")
    pipe.emit("status", {"state": "running"})
    pipe.set_message("half a sentence")
    await pipe.drained()
    async with raw(gw.url) as r:
        w = await r.hello("ep")
    async with raw(gw.url) as r:
        w2 = await r.hello("ep", resume=w.resume, epoch="some-other-epoch", after=2)
        assert w2.recovered is False
        assert w2.epoch == w.epoch
        snap = w2.snapshot
        assert snap["status"] == {"state": "running"}
        assert snap["texts"] == [{"id": snap["texts"][0]["id"], "text": "half a sentence"}]
        assert snap["asks"] == [] and snap["plan"] is None
        evs = await r.events(lambda ev: ev.seq == 2)
        assert [e.seq for e in evs] == [1, 2]


async def test_after_beyond_head_or_without_token_is_not_recovered(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("nb")
    pipe.set_message("x")
    await pipe.drained()
    async with raw(gw.url) as r:
        w = await r.hello("nb")
    async with raw(gw.url) as r:
        assert (await r.hello("nb", resume=w.resume, epoch=w.epoch, after=99)).recovered is False
    async with raw(gw.url) as r:
        assert (await r.hello("nb", epoch=w.epoch, after=1)).recovered is False


async def test_live_skips_history(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("lv")
    for i in range(20):
        pipe.set_message(str(i))
    await pipe.drained()
    async with raw(gw.url) as r:
        w = await r.hello("lv", live=True)
        assert w.recovered is False and w.head == 20
        pipe.emit("log", {"level": "INFO", "msg": "after"})
        evs = await r.events(lambda ev: ev.k == "log")
    assert [e.seq for e in evs] == [21]


async def test_a_hello_before_the_run_waits_for_it(gw: Gateway, raw: OpenRaw) -> None:
    async with raw(gw.url) as r:
        await r.send({"t": "hello", "sid": "early"})
        ping_wait = asyncio.ensure_future(r.recv())
        done, _ = await asyncio.wait({ping_wait}, timeout=0)
        assert not done  # nothing yet: the run does not exist
        pipe = gw.pipe("early")
        pipe.set_message("hi")
        w = await ping_wait
        assert isinstance(w, Welcome) and w.sid == "early"
        evs = await r.events(lambda ev: ev.seq == 1)
    assert evs[0].d["delta"] == "hi"


async def test_lagged_client_gets_error_then_a_fresh_welcome(make_gw: MakeGateway, raw: OpenRaw) -> None:
    from gateway import MemoryStore, Retention

    g = await make_gw(store=MemoryStore(Retention(max_events=50)))
    pipe = g.pipe("lag")
    async with raw(g.url) as r:
        w = await r.hello("lag", window=10)
        for i in range(10):
            pipe.set_message(str(i))
        first = await r.events(lambda ev: ev.seq == 10)
        for i in range(190):  # the client holds its window closed meanwhile
            pipe.set_message(str(i))
        await pipe.drained()
        await r.send({"t": "ack", "seq": 10})
        err = await r.recv()
        assert (err.t, err.code, err.fatal) == ("error", "lagged", False)
        w2 = await r.recv()
        assert isinstance(w2, Welcome) and w2.recovered is False and w2.first == 151
        assert w2.epoch == w.epoch
        evs = await r.events(lambda ev: True)
        assert evs[0].seq == 151
    assert [e.seq for e in first] == list(range(1, 11))


async def test_new_run_under_same_sid_moves_clients_to_the_new_epoch(gw: Gateway, raw: OpenRaw) -> None:
    p1 = gw.pipe("again")
    p1.set_message("one")
    p1.close()
    async with raw(gw.url) as r:
        w = await r.hello("again")
        await r.events(final)
        p2 = gw.pipe("again")
        assert p2.epoch != p1.epoch
        p2.set_message("two")
        w2 = await r.recv()
        assert isinstance(w2, Welcome) and w2.epoch == p2.epoch and w2.recovered is False
        evs = await r.events(lambda ev: True)
    assert evs[0].seq == 1 and evs[0].d["delta"] == "two" and w.epoch == p1.epoch


async def test_a_new_run_right_after_close_never_inherits_the_old_tail(gw: Gateway, raw: OpenRaw) -> None:
    p1 = gw.pipe("quick")
    for i in range(2500):  # more than one flush slice is still pending at close
        p1.set_message(f"{i} ")
    p1.close()
    p2 = gw.pipe("quick")  # at once: p1's tail is not in the store yet
    p2.set_message("fresh")
    await p2.drained()
    async with raw(gw.url) as r:
        w = await r.hello("quick")
        assert w.epoch == p2.epoch and w.head == 1
        evs = await r.events(lambda ev: ev.seq == 1)
    assert [(e.seq, e.d["delta"]) for e in evs] == [(1, "fresh")]
    info = await gw.store.info("quick")
    assert info is not None and info.ended is False  # p1's end did not end p2's log


async def test_ended_runs_are_forgotten_once_their_logs_expire(make_gw: MakeGateway) -> None:
    from gateway import MemoryStore, Retention

    # a negative ttl: expired the moment it ended, whatever the clock resolution
    g = await make_gw(store=MemoryStore(Retention(ttl_after_end=-1.0)))
    live, done = g.pipe("still-running"), g.pipe("finished")
    done.close()
    await done.drained()
    assert await g.sweep() == 1
    assert set(g.runs.sessions) == {"still-running"} and live.closed is False
    again = g.pipe("finished")  # the sid is free for a new run
    assert again.epoch != done.epoch


async def test_a_waiting_client_that_leaves_leaves_nothing_behind(gw: Gateway, raw: OpenRaw) -> None:
    async with raw(gw.url) as r:
        await r.send({"t": "hello", "sid": "never"})
        await r.send({"t": "ping", "n": 1})  # processed only after the welcome: none comes
    # the server notices the close (its handler ends) and forgets the sid it waited for
    await asyncio.wait_for(gw.wait_connections(lambda n: n == 0), TIMEOUT)
    assert gw.runs._born == {} and gw.runs._born_waiters == {}
