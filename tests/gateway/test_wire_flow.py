"""Asks, replies, flow control and concurrency over real sockets (sections 3, 5, 6)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from support import TIMEOUT, MakeGateway, OpenRaw, answers, final, replied

from gateway import Gateway, WebPipe
from gateway.client import Client
from protocol import events_of

#: Every test here runs through both fronts (tests/conftest.py), native and ASGI.
pytestmark = pytest.mark.fronts


async def test_ask_answered_once_when_two_clients_reply_at_once(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("ask")
    asking = asyncio.ensure_future(pipe.ask("Proceed?", choices=["yes", "no"]))
    async with raw(gw.url) as a, raw(gw.url) as b:
        await a.hello("ask")
        await b.hello("ask")
        ev = (await a.events(lambda e: e.k == "ask"))[-1]
        await b.events(lambda e: e.k == "ask")
        ask_id = ev.d["id"]
        await asyncio.gather(
            a.send({"t": "reply", "ask": ask_id, "rid": "ra", "value": "yes"}),
            b.send({"t": "reply", "ask": ask_id, "rid": "rb", "value": "no"}),
        )

        # the replied frame and the answer event may come in either order
        def both(fs: list[Any]) -> bool:
            return bool(replied(fs)) and bool(answers(fs))

        fa, fb = await a.collect(both), await b.collect(both)
        (ra,), (rb,) = replied(fa), replied(fb)
        assert sorted([ra.ok, rb.ok]) == [False, True]
        loser = rb if ra.ok else ra
        assert loser.err == "ask_closed"
        value = await asyncio.wait_for(asking, TIMEOUT)
        assert value == ("yes" if ra.ok else "no")
        # every client sees one answer event, with the winning value
        for fs in (fa, fb):
            assert [e.d for e in answers(fs)] == [{"id": ask_id, "value": value, "by": "client"}]
        # the same rid again gets the first outcome, identically, and changes nothing
        await a.send({"t": "reply", "ask": ask_id, "rid": "ra", "value": "no"})
        assert await a.recv() == ra
        await a.send({"t": "ping", "n": "end"})
        rest = await a.collect(lambda fs: bool(fs) and fs[-1].t == "pong")
        assert answers(rest) == []


async def test_unknown_ask_and_bad_value(gw: Gateway) -> None:
    pipe = gw.pipe("ask2")
    asking = asyncio.ensure_future(pipe.ask("Pick", choices=[1, 2]))
    async with Client(gw.url, "ask2") as c:
        ev = (await c.until(lambda e: e.k == "ask"))[-1]
        assert (await c.reply("nope", 1)).err == "unknown_ask"
        assert (await c.reply(ev.d["id"], 3)).err == "bad_value"
        assert (await c.reply(ev.d["id"], 2)).ok
        assert await asyncio.wait_for(asking, TIMEOUT) == 2


async def test_ask_timeout_gives_the_default_and_is_settled_for_everyone(gw: Gateway) -> None:
    pipe = gw.pipe("ask3")
    async with Client(gw.url, "ask3") as c:
        value = await pipe.ask("Quick?", choices=["a", "b"], default="b", timeout=0.01)
        assert value == "b"
        evs = await c.until(lambda e: e.k == "answer")
        assert evs[-1].d["by"] == "timeout" and evs[-1].d["value"] == "b"
        assert (await c.reply(evs[0].d["id"], "a")).err == "ask_closed"


async def test_open_asks_are_in_the_snapshot_until_answered(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("ask4")
    asking = asyncio.ensure_future(pipe.ask("Still there?"))
    await pipe.drained()
    async with raw(gw.url) as r:
        w = await r.hello("ask4")
        assert [a["prompt"] for a in w.snapshot["asks"]] == ["Still there?"]
        await r.send({"t": "reply", "ask": w.snapshot["asks"][0]["id"], "rid": "x", "value": "yes"})
        await r.events(lambda e: e.k == "answer")
    assert await asyncio.wait_for(asking, TIMEOUT) == "yes"
    async with raw(gw.url) as r:
        assert (await r.hello("ask4")).snapshot["asks"] == []


async def test_ask_sync_from_an_agent_thread(gw: Gateway) -> None:
    pipe = gw.pipe("ask5")
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(pipe.ask_sync("From a thread?")))
    t.start()
    async with Client(gw.url, "ask5") as c:
        ev = (await c.until(lambda e: e.k == "ask"))[-1]
        assert (await c.reply(ev.d["id"], {"free": "form"})).ok
        await asyncio.to_thread(t.join, TIMEOUT)
    assert result == [{"free": "form"}]


async def test_window_never_exceeded_and_acks_open_it(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("win")
    for i in range(100):
        pipe.set_message(str(i))
    await pipe.drained()
    async with raw(gw.url) as r:
        w = await r.hello("win", window=10)
        assert w.window == 10
        got = await r.events(lambda e: e.seq == 10)
        await r.send({"t": "ping", "n": 1})
        pong = await r.recv()
        assert pong.t == "pong"  # the pump had every chance to overrun meanwhile
        (conn,) = [c for c in gw._conns if c.sid == "win"]
        assert conn.rules.flow.sent == 10 and conn.rules.cursor == 10
        await r.send({"t": "ack", "seq": 10})
        got += await r.events(lambda e: e.seq == 20)
        assert conn.rules.flow.sent - conn.rules.flow.acked <= 10
    assert [e.seq for e in got] == list(range(1, 21))


async def test_python_client_with_window_gets_everything(gw: Gateway) -> None:
    pipe = gw.pipe("win2")
    for i in range(500):
        pipe.set_message(str(i))
    pipe.close()
    async with Client(gw.url, "win2", window=16) as c:
        evs = await c.until(final)
    assert [e.seq for e in evs] == list(range(1, 503))


async def test_python_client_acks_what_its_consumer_took_so_the_window_bounds_its_buffer(gw: Gateway) -> None:
    pipe = gw.pipe("win3")
    for i in range(100):
        pipe.set_message(str(i))
    pipe.close()
    await pipe.drained()
    async with Client(gw.url, "win3", window=8) as c:
        (conn,) = [x for x in gw._conns if x.sid == "win3"]
        evs = [await anext(c) for _ in range(3)]
        # The consumer stops.  Acks travel in order with pings: after the pong
        # the gateway has seen every ack the client sent so far: none, since
        # 3 < window/2 were consumed, whatever the client received meanwhile.
        await c.ping()
        assert conn.rules.flow.acked == 0
        assert c.buffered <= 8 and c.last_seq <= 8
        evs.append(await anext(c))  # the 4th consumed: ack 4
        await c.ping()
        assert conn.rules.flow.acked == 4
        assert c.buffered <= 8 and c.last_seq <= 12
        while not final(evs[-1]):  # consuming again drains the run
            evs.append(await asyncio.wait_for(anext(c), TIMEOUT))
            assert c.last_seq - evs[-1].seq <= 8  # received, not consumed: within the window
    assert [e.seq for e in evs] == list(range(1, pipe.head + 1))


async def test_eight_producer_threads_keep_one_gap_free_order(gw: Gateway) -> None:
    pipe = gw.pipe("threads")
    n_threads, per = 8, 1500
    barrier = threading.Barrier(n_threads)

    def producer(i: int) -> None:
        barrier.wait()
        for j in range(per):
            pipe.emit("log", {"level": "INFO", "msg": f"{i}:{j}"})

    async with Client(gw.url, "threads") as c1, Client(gw.url, "threads", window=64) as c2:
        threads = [threading.Thread(target=producer, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            await asyncio.to_thread(t.join, TIMEOUT)
        pipe.close()
        a, b = await c1.until(final), await c2.until(final)
    total = n_threads * per + 1
    assert [e.seq for e in a] == list(range(1, total + 1))
    assert [(e.seq, e.d) for e in a] == [(e.seq, e.d) for e in b]
    for i in range(n_threads):  # each thread's own order is kept
        mine = [int(e.d["msg"].split(":")[1]) for e in a[:-1] if e.d["msg"].startswith(f"{i}:")]
        assert mine == list(range(per))


async def test_a_stalled_client_does_not_slow_the_others(gw: Gateway, raw: OpenRaw) -> None:
    import os

    pipe = gw.pipe("slow")
    n = 8_000
    async with raw(gw.url, max_queue=1, compression=None) as stalled, Client(gw.url, "slow", compression=False) as fast:
        await stalled.hello("slow")  # then never reads again
        for _i in range(n):
            pipe.emit("output", {"id": "c", "stream": "stdout", "text": os.urandom(1000).hex()})
        pipe.close()
        evs = await fast.until(final)
        assert len(evs) == n + 1
        (conn,) = [c for c in gw._conns if getattr(c.ws, "remote_address", None) == stalled.ws.local_address]
        # the stalled client's server side holds a cursor, not a queue of the rest
        assert conn.rules.cursor < n, conn.rules.cursor
        stalled.ws.transport.abort()  # a graceful close would wait on the stalled reader


async def test_send_reaches_get_message_and_cancel_stops_an_app_run(make_gw: MakeGateway) -> None:
    got: list[object] = []
    ready = asyncio.Event()

    async def app(pipe: WebPipe, value: Any) -> None:
        ready.set()
        got.append(await pipe.aget_message(timeout=TIMEOUT))
        await asyncio.Event().wait()  # run until cancelled

    g = await make_gw(apps={"waiter": app})
    async with Client(g.url, "cx", start={"app": "waiter", "input": None}) as c:
        await asyncio.wait_for(ready.wait(), TIMEOUT)
        assert (await c.send({"hello": "agent"})).ok
        evs = await c.until(lambda e: e.k == "status")
        assert evs[-1].d["state"] == "running"
        r = await c.cancel("enough")
        assert r.ok
        evs = await c.until(final)
        assert evs[-1].d == {"state": "cancelled", "detail": "enough"}
        assert (await c.cancel()).err == "ended"
    assert got == [{"hello": "agent"}]


async def test_a_failing_app_ends_failed(make_gw: MakeGateway) -> None:
    async def boom(pipe: WebPipe, value: Any) -> None:
        pipe.set_message("about to fail")
        raise ValueError("bad input\n  the full context: SECRET=hunter2")

    g = await make_gw(apps={"boom": boom})
    async with Client(g.url, "bm", start={"app": "boom", "input": 1}) as c:
        evs = await c.until(final)
    assert evs[-1].d["state"] == "failed"
    assert evs[-1].d["detail"] == "ValueError: bad input"  # the first line only: no internals


async def test_a_sync_app_runs_in_a_thread(make_gw: MakeGateway) -> None:
    def relay(pipe: WebPipe, value: int) -> None:  # the queue relay (docs/metagpt.md): plain blocking code
        for i in range(value):
            pipe.set_message(f"{i} ")
        answer = pipe.ask_sync("More?", choices=["no"])
        pipe.set_message(answer)

    g = await make_gw(apps={"relay": relay})
    async with Client(g.url, "sy", start={"app": "relay", "input": 50}) as c:
        ask = (await c.until(lambda e: e.k == "ask"))[-1]
        await c.reply(ask.d["id"], "no")
        evs = await c.until(final)
    assert evs[-1].d["state"] == "done"
    assert any(e.k == "text" and e.d["delta"] == "no" for e in evs)


async def test_cancel_flag_is_an_event_and_truthy_once_set(gw: Gateway) -> None:
    pipe = gw.pipe("flag")
    seen: list[object] = []
    pipe.on_cancel(seen.append)
    assert not pipe.cancelled and not pipe.cancelled.is_set()
    from gateway.client import connect

    async with connect(gw.url, "flag") as c:
        assert (await c.cancel("stop please")).ok
    assert pipe.cancelled and pipe.cancelled.is_set()
    assert pipe.cancel_reason == "stop please" and seen == ["stop please"]
    assert not pipe.closed  # a cancel asks; the agent decides when to close


BACKLOG = 100_000  # the default retention: every event stays readable


async def test_acking_every_half_window_never_trips_the_rate_limiter(make_gw: MakeGateway, raw: OpenRaw) -> None:
    # Section 6's rule on a fast backlog: 12,500 acks, far over the burst of
    # 400 frames; an ack that advances the window is flow control, not abuse.
    # (The limiter does not depend on the store: the memory one keeps it fast.)
    gw = await make_gw()
    pipe = gw.pipe("backlog")
    for i in range(BACKLOG):
        pipe.emit("log", {"level": "INFO", "msg": str(i)})
    await pipe.drained()
    async with raw(gw.url, compression=None) as r:
        w = await r.hello("backlog", window=16)
        assert w.window == 16
        seqs: list[int] = []
        acked = 0
        while not seqs or seqs[-1] < BACKLOG:
            frame = await r.recv()
            assert frame.t in ("ev", "batch"), frame  # never rate_limited
            seqs.extend(e.seq for e in events_of(frame))
            if seqs[-1] - acked >= 8:
                acked = seqs[-1]
                await r.send({"t": "ack", "seq": acked})
    assert seqs == list(range(1, BACKLOG + 1))


async def test_python_client_with_window_consumes_a_long_backlog(make_gw: MakeGateway) -> None:
    g = await make_gw()
    pipe = g.pipe("backlog2")
    for i in range(BACKLOG - 1):
        pipe.emit("log", {"level": "INFO", "msg": str(i)})
    pipe.close()
    n = 0
    async with Client(g.url, "backlog2", window=16, compression=False) as c:
        while True:  # each event within TIMEOUT: a stalled window fails, not hangs
            ev = await asyncio.wait_for(anext(c), TIMEOUT)
            n += 1
            assert ev.seq == n
            if final(ev):
                break
        assert c.errors == []
    assert n == BACKLOG
