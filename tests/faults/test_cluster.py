"""wirepipe on a real Redis Cluster: three masters (``redis-server --cluster-enabled yes``) on loopback.

The shared store suite and the ``gw`` gateway tests run on the session's
cluster too (the ``cluster`` backend of ``tests/store_factories.py``); here are
the tests that need several gateways, a node to die, or the cluster's own
limits.  Sids are picked so that their keys land on each master in turn,
and the ``live`` set on another master than a sid's lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from servers import PrivateCluster, free_port
from store_factories import delete_prefix, new_cluster, redis_prefix
from support import TIMEOUT, MakeGateway, OpenRaw, ev, final, request, seqs

from gateway.runs import LAPSED_DETAIL
from gateway.stores.redis import RedisStore

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

SECRET = "cluster-suite-secret"


def _slow() -> Any:
    from faultapps import slow

    return slow


def _tag(prefix: str, sid: str) -> str:
    return f"{prefix}{{{sid}}}:log"


def one_sid_per_master(cluster: PrivateCluster, prefix: str, stem: str) -> list[str]:
    """Sids whose keys (``<prefix>{sid}:...``) land on each master of ``cluster`` in turn."""
    by_port: dict[int, str] = {}
    for i in itertools.count():
        sid = f"{stem}-{i}"
        by_port.setdefault(cluster.master_of(_tag(prefix, sid)).port, sid)
        if len(by_port) == len(cluster.nodes):
            return [by_port[n.port] for n in cluster.nodes]
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture
async def prefix(redis_cluster: PrivateCluster) -> AsyncIterator[str]:
    """A key prefix of the test's own on the session's cluster; its keys are deleted afterwards."""
    p = redis_prefix()
    try:
        yield p
    finally:
        await delete_prefix(p, cluster=redis_cluster)


@pytest.fixture
def degradable_cluster(tmp_path: Path) -> Iterator[PrivateCluster]:
    """A cluster of the test's own whose masters go on serving their slots when one of them dies."""
    cluster = new_cluster(tmp_path, extra=("--cluster-require-full-coverage", "no"))
    try:
        yield cluster
    finally:
        cluster.kill()


async def test_a_client_resumes_on_another_gateway_for_sids_on_every_master(
    redis_cluster: PrivateCluster, make_gw: MakeGateway, raw: OpenRaw, prefix: str
) -> None:
    """Start on A, read some, leave; resume on B with A's token: every seq once, in order, to the end."""

    def store() -> RedisStore:
        return RedisStore(redis_cluster.url, cluster=True, prefix=prefix)

    a = await make_gw(store=store(), apps={"slow": _slow()}, secret=SECRET)
    b = await make_gw(store=store(), apps={"slow": _slow()}, secret=SECRET)
    sids = one_sid_per_master(redis_cluster, prefix, "resume")
    masters = {redis_cluster.master_of(_tag(prefix, sid)).port for sid in sids}
    assert len(masters) == 3  # one sid's keys on each master
    for sid in sids:
        async with raw(a.url) as ra:
            welcome = await ra.hello(sid, start={"app": "slow", "input": {"n": 30}})
            assert welcome.t == "welcome"
            seen = await ra.events(lambda e: e.seq >= 7)
        async with raw(b.url) as rb:
            back = await rb.hello(sid, resume=welcome.resume, epoch=welcome.epoch, after=seen[-1].seq)
            assert back.t == "welcome" and back.recovered is True and back.epoch == welcome.epoch
            rest = await rb.events(lambda e: e.k == "ask")
            # The writer's node takes the answer; B streams what the run then writes, live.
            async with raw(a.url) as answerer:
                await answerer.hello(sid, live=True)
                await answerer.send({"t": "reply", "ask": rest[-1].d["id"], "rid": "r1", "value": "yes"})
                rest += await rb.events(final)
        got = [e.seq for e in seen + rest]
        assert got == list(range(1, rest[-1].seq + 1)), f"{sid}: a gap or a duplicate across gateways"
        assert rest[-1].d == {"state": "done"} and rest[-3].k == "answer"
        # The writer ends the log just after its final status is stored (and seen).
        await asyncio.wait_for(a.runs.sessions[sid].writer, TIMEOUT)
        info = await b.store.info(sid)
        assert info is not None and info.ended and info.head == rest[-1].seq


async def test_a_killed_writer_node_is_finalised_by_another_on_the_cluster(
    redis_cluster: PrivateCluster, gateway_process: Any, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """A ``wirepipe serve --redis-cluster`` process dies mid-run; an in-process gateway reaps its runs.

    One run per master: their leases are on every master, the ``live`` set
    (touched by the claims, the renewals and the janitor with separate
    commands) on one of them.
    """
    prefix = "wirepipe:"  # the serve process's default
    sids = one_sid_per_master(redis_cluster, prefix, f"orphan-{uuid.uuid4().hex[:8]}")
    live_on = redis_cluster.master_of(f"{prefix}live").port
    assert sum(redis_cluster.master_of(f"{prefix}{{{sid}}}:lease").port != live_on for sid in sids) == 2
    try:
        gp = gateway_process(free_port(), redis_cluster.url, SECRET, "--lease-ttl", "1", cluster=True)
        b_store = RedisStore(redis_cluster.url, cluster=True, lease_ttl=1.0)
        b = await make_gw(store=b_store, secret=SECRET)
        for sid in sids:
            async with raw(gp.url) as ra:
                await ra.hello(sid, start={"app": "slow", "input": {"n": 3}})
                await ra.events(lambda e: e.k == "ask")
        async with contextlib.AsyncExitStack() as stack:
            watchers = [await stack.enter_async_context(raw(b.url)) for _ in sids]
            welcomes = [await rb.hello(sid) for rb, sid in zip(watchers, sids, strict=True)]
            for w in welcomes:
                assert w.t == "welcome" and w.snapshot["asks"][0]["id"] == "a1"
            gp.kill()  # SIGKILL: no final status, no release
            tails = await asyncio.gather(*(rb.events(final) for rb in watchers))
        for sid, welcome, tail in zip(sids, welcomes, tails, strict=True):
            answer, status = tail[-2], tail[-1]
            assert (answer.k, answer.d["id"], answer.d["by"]) == ("answer", "a1", "closed")
            assert status.d == {"state": "failed", "detail": LAPSED_DETAIL}
            assert status.seq == welcome.head + 2
            info = await b.store.info(sid)
            assert info is not None and info.ended and info.epoch == welcome.epoch
        assert await b_store.lapsed() == []  # reaped and released: none left in the live set
    finally:
        await delete_prefix(prefix, cluster=redis_cluster)


async def test_sessions_on_the_other_masters_carry_on_when_a_master_dies(
    degradable_cluster: PrivateCluster,
) -> None:
    """The master the reader's pub/sub connection goes through dies.  The writer writes to a sid
    of another master, whose scripts were flushed (each is EVALed on the node that lacks it:
    SCRIPT LOAD would go to every master, the dead one too), and the reader's waiter still wakes
    by message, through another node."""
    prefix = redis_prefix()
    reader = RedisStore(degradable_cluster.url, cluster=True, prefix=prefix, poll_interval=TIMEOUT * 3)
    writer = RedisStore(degradable_cluster.url, cluster=True, prefix=prefix)
    try:
        assert await writer.info("nothing-yet") is None  # the writer's client knows the cluster
        await reader.create("probe", "e0")
        probe = asyncio.ensure_future(reader.wait("probe", 0))  # makes the pub/sub connection
        await asyncio.wait_for(reader.pubsub.until(lambda h: h.live >= 1), TIMEOUT)
        probe.cancel()
        doomed = next(n for n in degradable_cluster.nodes if f"127.0.0.1:{n.port}" == reader.pubsub.node)
        survivors = [n for n in degradable_cluster.nodes if n is not doomed]
        sid = next(
            s
            for i in itertools.count()
            if degradable_cluster.master_of(_tag(prefix, s := f"after-{i}")).port != doomed.port
        )
        doomed.kill()
        for node in survivors:  # no script cached anywhere: each must be loaded where it runs
            admin = Redis(port=node.port)
            await admin.script_flush()
            await admin.aclose()
        await writer.create(sid, "e1")
        # The probe's channel (lingering) is subscribed again through a live node.
        await asyncio.wait_for(reader.pubsub.until(lambda h: h.failovers >= 1 and h.live >= 2), TIMEOUT)
        assert reader.pubsub.node in {f"127.0.0.1:{n.port}" for n in survivors}
        parked = reader.pubsub.parked
        waiting = asyncio.ensure_future(reader.wait(sid, 0))
        await asyncio.wait_for(reader.pubsub.until(lambda h: h.parked > parked), TIMEOUT)
        await writer.append(sid, [ev(1)], epoch="e1")
        # Only a message can end this wait before TIMEOUT: its poll_interval is far longer.
        assert await asyncio.wait_for(waiting, TIMEOUT) is True
        assert seqs(await reader.read(sid, 0)) == [1]
    finally:
        await reader.close()
        await writer.close()


async def test_commands_past_max_connections_wait_instead_of_failing(
    redis_cluster: PrivateCluster, prefix: str
) -> None:
    """The cluster client raises MaxConnectionsError once a node's connections are all busy."""
    store = RedisStore(redis_cluster.url, cluster=True, prefix=prefix, max_connections=2)
    try:
        await store.create("busy", "e1")
        await store.append("busy", [ev(i) for i in range(1, 21)], epoch="e1")
        reads = await asyncio.gather(*(store.read("busy", i) for i in range(40)))
        assert [len(r) for r in reads] == [max(0, 20 - i) for i in range(40)]
    finally:
        await store.close()


async def test_an_existing_cluster_client_is_used_and_left_open(redis_cluster: PrivateCluster, prefix: str) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStore(RedisCluster.from_url(redis_cluster.url, decode_responses=True))
    with pytest.raises(ValueError, match="cluster=True"):
        RedisStore(Redis.from_url(redis_cluster.url), cluster=True)
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        store = RedisStore(client, prefix=prefix)
        assert store.cluster
        await store.create("mine", "e1")
        await store.append("mine", [ev(1), ev(2)], epoch="e1")
        await store.close()
        again = RedisStore(client, prefix=prefix)  # the client is still open
        assert seqs(await again.read("mine", 0)) == [1, 2]
        await again.close()
    finally:
        await client.aclose()


async def test_requests_and_workers_on_the_cluster(
    redis_cluster: PrivateCluster, make_gw: MakeGateway, raw: OpenRaw, prefix: str
) -> None:
    """A gateway without apps queues the start ({starts} keys on one master); a worker runs it;
    the client's answer reaches the worker through Redis; one sid per master."""
    from gateway.worker import Worker

    def store() -> RedisStore:
        return RedisStore(redis_cluster.url, cluster=True, prefix=prefix)

    async with Worker(store(), {"slow": _slow()}, concurrency=3):
        gw = await make_gw(store=store(), secret=SECRET)
        assert gw.apps == {}
        for sid in one_sid_per_master(redis_cluster, prefix, "worked"):
            async with raw(gw.url) as r:
                welcome = await r.hello(sid, start={"app": "slow", "input": {"n": 5}})
                assert welcome.t == "welcome"
                seen = await r.events(lambda e: e.k == "ask")
                got = await request(r, {"t": "reply", "ask": seen[-1].d["id"], "rid": "r1", "value": "yes"}, seen)
                assert (got.ok, got.err) == (True, None)  # handed to the worker through the cluster
                if not final(seen[-1]):
                    seen += await r.events(final)
            assert seen[-1].d == {"state": "done"}
            assert [e.d["value"] for e in seen if e.k == "answer"] == ["yes"]
