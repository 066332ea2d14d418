"""Writer leases: one live writer per sid across every node sharing a Redis.

Real gateways (in-process ``Gateway`` objects and ``wirepipe serve``
subprocesses) on real Redis servers; every wait is on an event, with the
suite's TIMEOUT only as a failure guard.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from servers import PrivateRedis, free_port
from store_factories import require_redis
from support import TIMEOUT, MakeGateway, OpenRaw, ev, final

from gateway import Gateway
from gateway.runs import LAPSED_DETAIL
from gateway.stores.redis import RedisStore
from protocol import LeaseLost, decode_event

pytestmark = pytest.mark.redis

SECRET = "fault-suite-secret"


async def _two_nodes(make_gw: MakeGateway, url: str, prefix: str, **store_kw: Any) -> tuple[Gateway, Gateway]:
    a = await make_gw(store=RedisStore(url, prefix=prefix, **store_kw), apps={"slow": _slow()})
    b = await make_gw(store=RedisStore(url, prefix=prefix, **store_kw), apps={"slow": _slow()})
    return a, b


def _slow() -> Any:
    from faultapps import slow

    return slow


async def test_a_sid_running_on_one_node_is_taken_on_every_node(
    make_gw: MakeGateway, raw: OpenRaw, prefix: str
) -> None:
    """Before: hello.start on B replaced A's log (A's run then stopped, its clients moved)."""
    a, b = await _two_nodes(make_gw, require_redis(), prefix)
    async with raw(a.url) as ra:
        first = await ra.hello("dup", start={"app": "slow", "input": {"n": 3}})
        assert first.t == "welcome"
        await ra.events(lambda e: e.k == "ask")
        async with raw(b.url) as rb:
            err = await rb.hello("dup", start={"app": "slow", "input": {"n": 1}})
            assert (err.t, err.code) == ("error", "sid_taken")
            code, _ = await rb.closed()
            assert code == 4409
        refused = b.runs.sessions["dup"]
        assert refused.refused and refused.task is not None
        await asyncio.wait_for(refused.task, TIMEOUT)  # it ends without calling the app
        assert refused.head == 0  # not even its `running` status was written
        # A's run and its client are undisturbed: same epoch, the ask is answered there.
        info = await a.store.info("dup")
        assert info is not None and info.epoch == first.epoch and not info.ended and info.head == 5
        await ra.send({"t": "reply", "ask": "a1", "rid": "r1", "value": "yes"})
        rest = await ra.events(final)
        assert rest[-1].d["state"] == "done"
        assert [e.seq for e in rest] == list(range(6, rest[-1].seq + 1))
    # Once A's run ended (and its writer gave the sid up), B may start it.
    await asyncio.wait_for(a.runs.sessions["dup"].writer, TIMEOUT)
    async with raw(b.url) as rb:
        welcome = await rb.hello("dup", start={"app": "slow", "input": {"n": 1}})
        assert welcome.t == "welcome" and welcome.epoch != first.epoch
        await rb.events(lambda e: e.k == "ask")


async def test_a_killed_writer_node_is_finalised_by_another(
    private_redis: PrivateRedis, gateway_process: Any, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """Before: the run stayed `running` with an open ask nobody could answer, forever."""
    gp = gateway_process(free_port(), private_redis.url, SECRET, "--lease-ttl", "1")
    b = await make_gw(store=RedisStore(private_redis.url, lease_ttl=1.0), secret=SECRET)
    async with raw(gp.url) as ra:
        await ra.hello("orphan", start={"app": "slow", "input": {"n": 3}})
        await ra.events(lambda e: e.k == "ask")
    async with raw(b.url) as rb:
        welcome = await rb.hello("orphan")
        assert welcome.t == "welcome" and welcome.snapshot["asks"][0]["id"] == "a1"
        gp.kill()  # SIGKILL: no final status, no release
        tail = await rb.events(final)
    answer, status = tail[-2], tail[-1]
    assert (answer.k, answer.d["id"], answer.d["by"]) == ("answer", "a1", "closed")
    assert status.d == {"state": "failed", "detail": LAPSED_DETAIL}
    assert status.seq == welcome.head + 2
    info = await b.store.info("orphan")
    assert info is not None and info.ended and info.epoch == welcome.epoch


async def test_a_writer_whose_lease_was_taken_cannot_write(prefix: str) -> None:
    url = require_redis()
    a = RedisStore(url, prefix=prefix, lease_ttl=30.0)
    b = RedisStore(url, prefix=prefix, lease_ttl=30.0)
    raw_client = Redis.from_url(url)
    try:
        assert await a.claim("s", "A")
        assert not await b.claim("s", "B")  # held by a live writer
        await a.create("s", "e1", holder="A")
        await a.append("s", [ev(1), ev(2)], epoch="e1", holder="A")
        # A's lease lapses (as if its node stalled past the TTL) and B takes the sid.
        await raw_client.delete(f"{prefix}{{s}}:lease")
        assert await b.claim("s", "B")
        with pytest.raises(LeaseLost):
            await a.append("s", [ev(3)], epoch="e1", holder="A")
        with pytest.raises(LeaseLost):
            await a.end("s", holder="A")
        with pytest.raises(LeaseLost):
            await a.create("s", "e2", holder="A")
        assert not await a.renew("s", "A", "e1")
        info = await b.info("s")
        assert info is not None and (info.epoch, info.head, info.ended) == ("e1", 2, False)
        # B, the holder, writes; a retry of its append stores nothing twice.
        await b.append("s", [ev(3)], epoch="e1", holder="B")
        await b.append("s", [ev(3)], epoch="e1", holder="B")
        assert [decode_event(r).seq for r in await b.read("s", 0)] == [1, 2, 3]
        # A finalised run's lease, once released, is not taken back by its old writer.
        await b.end("s", holder="B")
        await b.release("s", "B")
        assert not await a.renew("s", "A", "e1")
        with pytest.raises(LeaseLost):
            await a.append("s", [ev(4)], epoch="e1", holder="A")
        assert await a.lapsed() == []
    finally:
        await raw_client.aclose()
        await a.close()
        await b.close()


async def test_a_healthy_run_is_never_finalised_by_another_node(
    make_gw: MakeGateway, raw: OpenRaw, prefix: str
) -> None:
    """Another node's janitor leaves a run alone while its writer renews, period after period."""
    a, b = await _two_nodes(make_gw, require_redis(), prefix, lease_ttl=1.5)
    async with raw(a.url) as ra:
        await ra.hello("alive", start={"app": "slow", "input": {"n": 2}})
        await ra.events(lambda e: e.k == "ask")
        s = a.runs.sessions["alive"]
        for n in range(1, 7):  # six renewals: two lease periods
            await asyncio.wait_for(s.renewed(n), TIMEOUT)
            assert await b.reap() == 0
        info = await b.store.info("alive")
        assert info is not None and not info.ended and info.head == 4
        await ra.send({"t": "reply", "ask": "a1", "rid": "r1", "value": "no"})
        done = await ra.events(final)
        assert done[-1].d["state"] == "done" and [e.k for e in done[:-1]] == ["answer", "log"]


async def test_a_sid_may_start_again_on_any_node_as_soon_as_its_end_is_seen(
    make_gw: MakeGateway, raw: OpenRaw, prefix: str
) -> None:
    """Before: the writer gave the sid up a round trip after its final status, so a start right then got sid_taken."""
    a, b = await _two_nodes(make_gw, require_redis(), prefix)
    for _ in range(3):
        async with raw(a.url) as ra:
            first = await ra.hello("again", start={"app": "slow", "input": {"n": 1}})
            assert first.t == "welcome"
            await ra.events(lambda e: e.k == "ask")
            await ra.send({"t": "reply", "ask": "a1", "rid": "r1", "value": "yes"})
            await ra.events(final)
        async with raw(b.url) as rb:  # at once, on the other node
            second = await rb.hello("again", start={"app": "slow", "input": {"n": 1}})
            assert second.t == "welcome" and second.epoch != first.epoch
            await rb.events(lambda e: e.k == "ask")
            await rb.send({"t": "reply", "ask": "a1", "rid": "r1", "value": "yes"})
            await rb.events(final)


async def test_ending_a_log_with_release_gives_the_sid_up_in_the_same_step(prefix: str) -> None:
    url = require_redis()
    store = RedisStore(url, prefix=prefix, lease_ttl=30.0)
    client = Redis.from_url(url)
    try:
        assert await store.claim("s", "A")
        await store.create("s", "e1", holder="A")
        await store.end("s", holder="A", release=True)
        assert await client.exists(f"{prefix}{{s}}:lease") == 0
        assert await store.claim("s", "B")  # free at once
    finally:
        await client.aclose()
        await store.close()
