"""Any node takes any request: reply, send and cancel reach the writer through Redis.

Two gateways share a Redis; the agent runs on one of them (in process, or a
``wirepipe serve`` subprocess that the test kills or stops), and clients on
the other send requests.  Every wait is on an event, with the suite's
TIMEOUT only as a failure guard.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from redis.asyncio import Redis
from servers import PrivateRedis, free_port
from store_factories import require_redis
from support import TIMEOUT, MakeGateway, OpenRaw, final, replied, request

from gateway import Gateway
from gateway.stores.redis import RedisStore
from protocol import Grant

pytestmark = pytest.mark.redis

SECRET = "requests-suite-secret"


async def _nodes(make_gw: MakeGateway, prefix: str, **b_kw: Any) -> tuple[Gateway, Gateway]:
    url = require_redis()
    a = await make_gw(store=RedisStore(url, prefix=prefix), secret=SECRET)
    b = await make_gw(store=RedisStore(url, prefix=prefix), secret=SECRET, **b_kw)
    return a, b


async def test_reply_send_and_cancel_through_a_node_that_does_not_run_the_agent(
    make_gw: MakeGateway, raw: OpenRaw, prefix: str
) -> None:
    """Before: each got ``replied ok:false err:"not_here"`` on node B."""
    a, b = await _nodes(make_gw, prefix)
    pipe = a.pipe("split")
    asking = asyncio.ensure_future(pipe.ask("Which node?", choices=["a", "b"]))
    cancelled = asyncio.Event()
    pipe.on_cancel(lambda reason: cancelled.set())
    async with raw(b.url) as rb, raw(a.url) as ra:
        await rb.hello("split")
        ask = (await rb.events(lambda e: e.k == "ask"))[-1]
        await ra.hello("split")

        # reply through B: the agent on A gets it
        r = await request(rb, {"t": "reply", "ask": ask.d["id"], "rid": "r1", "value": "b"})
        assert (r.rid, r.ok) == ("r1", True)
        assert await asyncio.wait_for(asking, TIMEOUT) == "b"
        answer = (await rb.events(lambda e: e.k == "answer"))[-1]
        assert answer.d == {"id": ask.d["id"], "value": "b", "by": "client"}
        # the same rid again, through either node: the first outcome, nothing appended
        r = await request(rb, {"t": "reply", "ask": ask.d["id"], "rid": "r1", "value": "b"})
        assert (r.ok, r.err) == (True, None)
        r = await request(ra, {"t": "reply", "ask": ask.d["id"], "rid": "r1", "value": "a"})
        assert (r.ok, r.err) == (True, None)
        # another rid for the closed ask: the writer says so
        r = await request(rb, {"t": "reply", "ask": ask.d["id"], "rid": "r2", "value": "a"})
        assert (r.ok, r.err) == (False, "ask_closed")
        r = await request(rb, {"t": "reply", "ask": "a99", "rid": "r3", "value": "a"})
        assert (r.ok, r.err) == (False, "unknown_ask")

        # send through B: the agent's inbox on A
        r = await request(rb, {"t": "send", "data": {"hello": "from b"}, "rid": "s1"})
        assert (r.ok, r.err) == (True, None)
        assert await pipe.aget_message(TIMEOUT) == {"hello": "from b"}

        # cancel through B: A's run is flagged, and ends cancelled for everyone
        r = await request(rb, {"t": "cancel", "rid": "c1", "reason": "enough"})
        assert (r.ok, r.err) == (True, None)
        await asyncio.wait_for(cancelled.wait(), TIMEOUT)
        assert pipe.cancel_reason == "enough"
        pipe.close("cancelled", detail=pipe.cancel_reason)
        status = (await rb.events(final))[-1]
        assert status.d == {"state": "cancelled", "detail": "enough"}
    # once the run ended and its writer gave the sid up, B answers as any node would
    await asyncio.wait_for(a.runs.sessions["split"].writer, TIMEOUT)
    async with raw(b.url) as rb:
        await rb.hello("split")
        r = await request(rb, {"t": "send", "data": 1, "rid": "s2"})
        assert (r.ok, r.err) == (False, "ended")


async def test_two_clients_on_two_nodes_answer_one_ask_at_once(make_gw: MakeGateway, raw: OpenRaw, prefix: str) -> None:
    a, b = await _nodes(make_gw, prefix)
    c = await make_gw(store=RedisStore(require_redis(), prefix=prefix), secret=SECRET)
    pipe = a.pipe("race")
    asking = asyncio.ensure_future(pipe.ask("Who?", choices=["b", "c"]))
    async with raw(b.url) as rb, raw(c.url) as rc:
        await rb.hello("race")
        await rc.hello("race")
        ask = (await rb.events(lambda e: e.k == "ask"))[-1]
        await rc.events(lambda e: e.k == "ask")
        # both sent before either outcome is read: they race to the writer
        await rb.send({"t": "reply", "ask": ask.d["id"], "rid": "rb", "value": "b"})
        await rc.send({"t": "reply", "ask": ask.d["id"], "rid": "rc", "value": "c"})
        got_b = replied(await rb.collect(lambda fs: any(getattr(f, "t", None) == "replied" for f in fs)))[-1]
        got_c = replied(await rc.collect(lambda fs: any(getattr(f, "t", None) == "replied" for f in fs)))[-1]
        winner = await asyncio.wait_for(asking, TIMEOUT)
        outcomes = {"b": got_b, "c": got_c}
        loser = "c" if winner == "b" else "b"
        assert (outcomes[winner].ok, outcomes[winner].err) == (True, None)
        assert (outcomes[loser].ok, outcomes[loser].err) == (False, "ask_closed")
        pipe.close()
        history = await rb.events(final)
    answers = [e for e in history if e.k == "answer"]
    assert [e.d["value"] for e in answers] == [winner]  # one answer, the winner's


async def test_a_viewer_is_refused_on_a_node_without_the_agent(make_gw: MakeGateway, raw: OpenRaw, prefix: str) -> None:
    a, b = await _nodes(make_gw, prefix, default_grant=Grant.VIEWER)
    pipe = a.pipe("watched")
    asking = asyncio.ensure_future(pipe.ask("Go?", choices=["yes"]))
    async with raw(b.url) as rb:
        await rb.hello("watched")
        ask = (await rb.events(lambda e: e.k == "ask"))[-1]
        r = await request(rb, {"t": "reply", "ask": ask.d["id"], "rid": "v1", "value": "yes"})
        assert (r.ok, r.err) == (False, "forbidden")
    assert not asking.done()  # the ask is still open
    assert pipe.loop is asyncio.get_running_loop()
    asking.cancel()


async def test_a_stopped_writer_gets_unavailable_then_answers_the_same_rid_once(
    private_redis: PrivateRedis, gateway_process: Any, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """A writer that does not answer in time: ``unavailable``; the same rid later gets the first outcome."""
    gp = gateway_process(free_port(), private_redis.url, SECRET, "--lease-ttl", "60")
    store = RedisStore(private_redis.url, request_timeout=0.5, lease_ttl=60.0)
    b = await make_gw(store=store, secret=SECRET)
    async with raw(gp.url) as ra:
        await ra.hello("frozen", start={"app": "slow", "input": {"n": 1}})
        await ra.events(lambda e: e.k == "ask")
    assert gp.proc is not None
    async with raw(b.url) as rb:
        await rb.hello("frozen")
        await rb.events(lambda e: e.k == "ask")
        os.kill(gp.proc.pid, signal.SIGSTOP)  # the writer's process stops answering
        try:
            r = await request(rb, {"t": "reply", "ask": "a1", "rid": "late", "value": "yes"})
            assert (r.ok, r.err) == (False, "unavailable")
        finally:
            os.kill(gp.proc.pid, signal.SIGCONT)
        # The request waited in Redis: the writer carried it out when it woke,
        # and the run went on to its end.
        tail = await rb.events(final)
        r = await request(rb, {"t": "reply", "ask": "a1", "rid": "late", "value": "yes"})
        assert (r.ok, r.err) == (True, None)  # the same rid, after the run ended: its first outcome
    assert tail[-1].d == {"state": "done"}
    answers = [e.d for e in tail if e.k == "answer"]
    assert answers == [{"id": "a1", "value": "yes", "by": "client"}]  # answered once


async def test_with_the_writer_dead_a_request_gets_not_here_until_its_run_is_ended(
    private_redis: PrivateRedis, gateway_process: Any, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """``not_here`` remains only for a run whose writer is gone and that nobody has ended yet."""
    gp = gateway_process(free_port(), private_redis.url, SECRET, "--lease-ttl", "60")
    b = await make_gw(store=RedisStore(private_redis.url, lease_ttl=60.0), secret=SECRET)
    async with raw(gp.url) as ra:
        await ra.hello("gone", start={"app": "slow", "input": {"n": 1}})
        await ra.events(lambda e: e.k == "ask")
    async with raw(b.url) as rb:
        await rb.hello("gone")
        await rb.events(lambda e: e.k == "ask")
        gp.kill()  # SIGKILL: the lease stays until it lapses (60 s): make it lapse now
        client = Redis.from_url(private_redis.url)
        try:
            assert await client.delete("wirepipe:{gone}:lease") == 1
            await client.zadd("wirepipe:live", {"gone": 0})
        finally:
            await client.aclose()
        r = await request(rb, {"t": "reply", "ask": "a1", "rid": "x1", "value": "yes"})
        assert (r.ok, r.err) == (False, "not_here")
        # another node ends the dead writer's run: then the ask is closed
        assert await b.reap() == 1
        await rb.events(final)
        r = await request(rb, {"t": "reply", "ask": "a1", "rid": "x2", "value": "yes"})
        assert (r.ok, r.err) == (False, "ask_closed")


async def test_a_pubsub_reconnect_loses_no_outcome(
    private_redis: PrivateRedis, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """The pub/sub connections drop between requests: outcomes still arrive."""
    a = await make_gw(store=RedisStore(private_redis.url), secret=SECRET)
    b = await make_gw(store=RedisStore(private_redis.url), secret=SECRET)
    pipe = a.pipe("blip")
    asking = asyncio.ensure_future(pipe.ask("Go?", choices=["yes"]))
    store = b.store
    assert isinstance(store, RedisStore)
    async with raw(b.url) as rb:
        await rb.hello("blip")
        ask = (await rb.events(lambda e: e.k == "ask"))[-1]
        r = await request(rb, {"t": "send", "data": "warm-up", "rid": "w"})  # B's outcome channel is live
        assert r.ok
        before = store.pubsub.live
        # every pub/sub connection (A's and B's) is killed from the server side
        client = Redis.from_url(private_redis.url)
        try:
            killed = await client.client_kill_filter(_type="pubsub", skipme=True, laddr=None, user=None)
        finally:
            await client.aclose()
        assert killed >= 1
        r = await request(rb, {"t": "reply", "ask": ask.d["id"], "rid": "r", "value": "yes"})
        assert (r.ok, r.err) == (True, None)
        assert await asyncio.wait_for(asking, TIMEOUT) == "yes"
        await asyncio.wait_for(store.pubsub.until(lambda h: h.live > before), TIMEOUT)


async def test_a_python_client_follows_a_gateway_that_shuts_down_to_another(make_gw: MakeGateway, prefix: str) -> None:
    """Before: the 1001 of a graceful shutdown (a rolling restart) stopped the Python client for good."""
    from gateway.client import Client

    a, b = await _nodes(make_gw, prefix)
    pipe = b.pipe("rolling")
    pipe.set_message("before the restart")
    async with Client(a.url, "rolling", backoff=(0.001, 0.01)) as c:
        await asyncio.wait_for(c.until(lambda e: e.k == "text"), TIMEOUT)
        c.url = b.url  # what a load balancer does once node A is gone
        await a.close()  # graceful: shutdown, then close 1001
        pipe.set_message("after the restart")
        pipe.close()
        rest = await asyncio.wait_for(c.until(final), TIMEOUT)
    assert rest[-1].d == {"state": "done"}
    assert c.connects == 2  # it came back, to node B
