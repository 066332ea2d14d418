"""What only the Redis store has: several nodes on one log, its keys, its pub/sub.

The shared suite (``test_store_suite.py``) checks the Store contract; this
file checks what it cannot see from one store: a second store on the same
prefix (another gateway node, or a new writer process), the key layout,
waiting without a connection per waiter, the pub/sub connection dropping,
and two gateways serving one session end to end.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from support import MS, TIMEOUT, ev, final, seqs, started

from gateway import Gateway
from gateway.client import Client
from gateway.stores import LogInfo, MemoryStore, Retention, Store
from gateway.stores.redis import PubSubHealth, RedisStore
from protocol import Event, Snapshot

pytestmark = pytest.mark.redis

Opener = Callable[..., Any]


@pytest.fixture
def open_store(redis_url: str, prefix: str) -> Opener:
    """``async with open_store(**kw) as s``: a RedisStore on the test's prefix (a node)."""

    @asynccontextmanager
    async def opened(**kw: Any) -> AsyncIterator[RedisStore]:
        kw.setdefault("prefix", prefix)
        store = RedisStore(redis_url, **kw)
        try:
            yield store
        finally:
            await store.close()

    return opened


def script(rng: random.Random, n: int) -> list[tuple[str, Any]]:
    """``n`` events of every kind the snapshot reduces, with sizes that vary."""
    out: list[tuple[str, Any]] = []
    asks: list[str] = []
    for i in range(n):
        r = rng.random()
        if r < 0.4:
            out.append(
                (
                    "text",
                    {
                        "id": f"t{rng.randrange(3)}",
                        "delta": "x" * rng.randrange(1, 300),
                        **({"end": True} if rng.random() < 0.1 else {}),
                    },
                )
            )
        elif r < 0.5:
            tasks = [
                {"id": str(j), "instruction": "i", "deps": [], "type": "t", "status": "pending"}
                for j in range(rng.randrange(1, 4))
            ]
            out.append(("plan", {"goal": f"g{i}", "tasks": tasks, "current": None}))
        elif r < 0.6:
            out.append(("task", {"id": str(rng.randrange(3)), "status": rng.choice(["running", "done"])}))
        elif r < 0.7:
            asks.append(f"a{i}")
            out.append(("ask", {"id": asks[-1], "prompt": "?" * rng.randrange(1, 50)}))
        elif r < 0.75 and asks:
            out.append(("answer", {"id": asks.pop(0), "value": 1, "by": "client"}))
        elif r < 0.8:
            out.append(("status", {"state": rng.choice(["running", "waiting"])}))
        else:
            out.append(("log", {"level": "INFO", "msg": "m" * rng.randrange(1, 2000)}))
    return out


# --- the contract, against the reference, with trimming and checkpoints ----------------


@pytest.mark.parametrize("snapshot_every", [1, 3, 256])
@pytest.mark.parametrize("retention", [Retention(max_events=7), Retention(max_bytes=3000), Retention()])
async def test_agrees_with_the_memory_store_batch_by_batch(
    open_store: Opener, snapshot_every: int, retention: Retention
) -> None:
    rng = random.Random(f"{snapshot_every}-{retention}")
    events = script(rng, 300)
    memory = MemoryStore(retention)
    async with open_store(retention=retention, snapshot_every=snapshot_every) as redis, open_store() as other:
        for s in (memory, redis):
            await s.create("s", "e1")
        seq = 0
        while seq < len(events):
            n = rng.choice([1, 1, 2, 5, 20])
            batch = [ev(i, *events[i - 1]) for i in range(seq + 1, min(seq + n, len(events)) + 1)]
            seq = batch[-1].seq
            for s in (memory, redis):
                await s.append("s", batch)
            want = await memory.info("s")
            assert await redis.info("s") == want
            assert want is not None
            after = rng.randrange(0, seq + 1)
            assert await redis.read("s", after, limit=50) == await memory.read("s", after, limit=50)
            assert await redis.snapshot("s") == await memory.snapshot("s")
            # another node sees the same snapshot (it has no reducer of its own)
            assert await other.snapshot("s") == await memory.snapshot("s")


async def test_a_new_writer_process_rebuilds_the_snapshot_from_the_store(open_store: Opener) -> None:
    rng = random.Random(7)
    events = script(rng, 120)
    reference = Snapshot()
    async with open_store(snapshot_every=50) as first:
        await first.create("s", "e1")
        await first.append("s", [ev(i, *events[i - 1]) for i in range(1, 71)])
    # the first writer is gone with its reducer; a new process takes over the log
    async with open_store(snapshot_every=50) as second:
        await second.append("s", [ev(i, *events[i - 1]) for i in range(71, 121)])
        for k, d in events:
            reference.apply(k, d)
        assert await second.snapshot("s") == (reference.as_map(), 120)
        assert await second.info("s") == LogInfo("e1", 1, 120, False)


async def test_a_stale_writer_of_a_replaced_log_is_refused(open_store: Opener) -> None:
    async with open_store() as a, open_store() as b:
        await a.create("s", "e1")
        await a.append("s", [ev(1)])
        await b.create("s", "e2")  # another node starts a new run of the sid
        await b.append("s", [ev(1)])
        with pytest.raises(ValueError, match="replaced"):
            await a.append("s", [ev(2)])
        assert await b.info("s") == LogInfo("e2", 1, 1, False)
        await b.append("s", [ev(2)])  # the new writer is undisturbed


# --- keys -------------------------------------------------------------------------------


async def test_keys_share_the_sid_hash_tag_and_expire_together_after_end(
    open_store: Opener, redis_url: str, prefix: str
) -> None:
    async with open_store(retention=Retention(ttl_after_end=600)) as s:
        await s.create("run-1", "e1")
        await s.append("run-1", [ev(1), ev(2)])
        r = Redis.from_url(redis_url)
        try:
            keys = sorted([k.decode() async for k in r.scan_iter(match=f"{prefix}*")])
            assert keys == [f"{prefix}{{run-1}}:log", f"{prefix}{{run-1}}:meta"]
            assert await r.xrange(keys[0]) == [(b"1-0", {b"r": ev(1).raw}), (b"2-0", {b"r": ev(2).raw})]
            assert [await r.pttl(k) for k in keys] == [-1, -1]
            await s.end("run-1")
            ttls = [await r.pttl(k) for k in keys]
            assert all(590_000 < t <= 600_000 for t in ttls), ttls
        finally:
            await r.aclose()


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisStore(prefix="app:{x}:")


async def test_an_existing_client_is_used_and_left_open(redis_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStore(Redis.from_url(redis_url, decode_responses=True))
    client = Redis.from_url(redis_url)
    try:
        store = RedisStore(client, prefix=prefix)
        assert isinstance(store, Store)
        await store.create("s", "e1")
        await store.append("s", [ev(1)])
        assert seqs(await store.read("s", 0)) == [1]
        await store.close()
        assert await client.ping()
    finally:
        await client.aclose()


# --- waiting ------------------------------------------------------------------------------


async def test_another_nodes_append_end_and_create_wake_waiters(open_store: Opener) -> None:
    async with open_store() as writer, open_store() as reader:
        await writer.create("s", "e1")
        await writer.append("s", [ev(1)])
        task = asyncio.create_task(reader.wait("s", 1))
        await started(task)
        await writer.append("s", [ev(2)])
        assert await asyncio.wait_for(task, TIMEOUT) is True

        task = asyncio.create_task(reader.wait("s", 2))
        await started(task)
        await writer.end("s")
        assert await asyncio.wait_for(task, TIMEOUT) is False

        parked = reader.pubsub.parked
        task = asyncio.create_task(reader.wait("s", 2))  # an ended log still waits...
        await asyncio.wait_for(reader.pubsub.until(lambda h: h.parked > parked), TIMEOUT)
        assert not task.done()
        await writer.create("s", "e2")  # ...for a new run to replace it
        assert await asyncio.wait_for(task, TIMEOUT) is False


class CountingStore(RedisStore):
    """A RedisStore that counts its status reads (instrumentation of the real store)."""

    checks = 0

    async def _check(self, sid: str) -> Any:
        self.checks += 1
        return await super()._check(sid)


def parked_past(n: int, health: PubSubHealth) -> bool:
    return health.parked > n


async def test_a_subscribed_waiter_knows_the_log_from_messages_not_a_read_per_wait(redis_url: str, prefix: str) -> None:
    """Before: every wait read the log's status from Redis before parking (one round trip per event)."""
    writer = RedisStore(redis_url, prefix=prefix)
    reader = CountingStore(redis_url, prefix=prefix)
    try:
        await writer.create("s", "e1")
        after = 0
        for seq in range(1, 31):
            parked = reader.pubsub.parked
            task = asyncio.create_task(reader.wait("s", after, epoch="e1"))
            # Parked, not just started: an append while the wait still reads the
            # log (a loaded machine) would rightly make it read again.
            await asyncio.wait_for(reader.pubsub.until(functools.partial(parked_past, parked)), TIMEOUT)
            await writer.append("s", [ev(seq)], epoch="e1")
            assert await asyncio.wait_for(task, TIMEOUT) is True
            after = seq
        assert reader.checks <= 3  # the first waits, before the subscription knew the log
        # What the messages say is right: an end, then a new run.
        task = asyncio.create_task(reader.wait("s", after, epoch="e1"))
        await started(task)
        await writer.end("s")
        assert await asyncio.wait_for(task, TIMEOUT) is False
        await writer.create("s", "e2")
        task = asyncio.create_task(reader.wait("s", 0, epoch="e2"))
        await started(task)
        await writer.append("s", [ev(1)], epoch="e2")
        assert await asyncio.wait_for(task, TIMEOUT) is True
        assert await reader.wait("s", 5, epoch="e1", timeout=0) is False  # the old epoch is gone
    finally:
        await reader.close()
        await writer.close()


async def test_many_sessions_appends_share_round_trips(redis_url: str, prefix: str) -> None:
    """Before: one round trip per append; the hot scripts of all sessions now go together."""
    store = RedisStore(redis_url, prefix=prefix)
    try:
        sids = [f"s{i}" for i in range(40)]
        for sid in sids:
            await store.create(sid, "e1")
        assert store.batcher is not None
        trips, calls = store.batcher.round_trips, store.batcher.calls
        for seq in range(1, 4):
            await asyncio.gather(*(store.append(sid, [ev(seq)], epoch="e1") for sid in sids))
        assert store.batcher.calls - calls == 3 * len(sids)
        assert store.batcher.round_trips - trips <= 3 * 2  # about one per wave, not one per session
        for sid in sids:
            assert seqs(await store.read(sid, 0)) == [1, 2, 3]
    finally:
        await store.close()


async def test_a_subscribed_reader_gets_new_events_from_the_wake_message(redis_url: str, prefix: str) -> None:
    """The append's message carries its events: a live reader fetches them with no round trip."""
    writer = RedisStore(redis_url, prefix=prefix)
    reader = RedisStore(redis_url, prefix=prefix)
    try:
        await writer.create("s", "e1")
        after = 0
        assert reader.batcher is not None
        for seq in range(1, 21):
            task = asyncio.create_task(reader.wait("s", after, epoch="e1"))
            await started(task)
            await writer.append("s", [ev(seq)], epoch="e1")
            assert await asyncio.wait_for(task, TIMEOUT) is True
            calls = reader.batcher.calls
            got = await reader.fetch("s", after)
            assert got is not None and seqs(got.raws) == [seq] and got.info.head == seq
            if seq > 2:
                assert reader.batcher.calls == calls  # from the message: no round trip
            after = seq
        # The same answers as a read from Redis, for any cursor the message covers.
        direct = RedisStore(redis_url, prefix=prefix)
        try:
            for cursor in (0, 5, 19, 20):
                a, b = await reader.fetch("s", cursor, limit=7), await direct.fetch("s", cursor, limit=7)
                assert a is not None and b is not None
                assert (a.info, a.raws) == (b.info, b.raws)
        finally:
            await direct.close()
    finally:
        await reader.close()
        await writer.close()


async def test_a_malformed_wake_message_harms_no_waiter(open_store: Opener, redis_url: str, prefix: str) -> None:
    """Anyone with access to Redis can publish on a wake channel: garbage there once
    killed the listener, and every later wait slept until poll_interval."""
    async with open_store(poll_interval=3600.0) as writer, open_store(poll_interval=3600.0) as reader:
        await writer.create("s", "e1")
        await writer.append("s", [ev(1)])
        parked = reader.pubsub.parked
        task = asyncio.create_task(reader.wait("s", 1))
        await asyncio.wait_for(reader.pubsub.until(lambda h: h.parked > parked), TIMEOUT)
        r = Redis.from_url(redis_url)
        try:
            await r.publish(f"{prefix}{{s}}:wake", b"a:not-a-number:\xff")
        finally:
            await r.aclose()
        assert await asyncio.wait_for(task, TIMEOUT) is False  # woken to look again, not killed
        parked = reader.pubsub.parked
        task = asyncio.create_task(reader.wait("s", 1))
        await asyncio.wait_for(reader.pubsub.until(lambda h: h.parked > parked), TIMEOUT)
        await writer.append("s", [ev(2)])
        assert await asyncio.wait_for(task, TIMEOUT) is True  # the listener still listens


async def test_waiters_hold_no_connection(open_store: Opener, redis_url: str) -> None:
    # Four connections in all, one of them pub/sub: 200 waiters could not
    # even start if each held one.
    async with open_store(max_connections=4) as reader, open_store() as writer:
        sids = [f"s{i}" for i in range(20)]
        for sid in sids:
            await writer.create(sid, "e1")
            await writer.append(sid, [ev(1)])
        tasks = [asyncio.create_task(reader.wait(sid, 1)) for sid in sids for _ in range(10)]
        # every one of them checked the log and sleeps: none holds a connection
        await asyncio.wait_for(reader.pubsub.until(lambda h: h.parked == 200), TIMEOUT)
        assert not any(t.done() for t in tasks)
        for sid in sids:
            await writer.append(sid, [ev(2)])
        assert await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT) == [True] * 200


async def test_a_dropped_pubsub_connection_wakes_waiters_and_waiting_goes_on(
    open_store: Opener, redis_url: str
) -> None:
    async with open_store() as store:
        await store.create("s", "e1")
        await store.append("s", [ev(1)])
        task = asyncio.create_task(store.wait("s", 1))
        await asyncio.wait_for(store.pubsub.until(lambda h: h.parked == 1), TIMEOUT)
        assert store._pubsub is not None and store._pubsub.connection is not None
        host, port = store._pubsub.connection._writer.get_extra_info("sockname")[:2]
        admin = Redis.from_url(redis_url)
        try:
            assert await admin.client_kill_filter(_type=None, addr=f"{host}:{port}") == 1
        finally:
            await admin.aclose()
        # a spurious wake: messages may have been lost while it was away
        assert await asyncio.wait_for(task, TIMEOUT) is False
        assert store.reconnects == 1
        # redis-py reconnects and resubscribes; the pong after it makes the watch live again
        await asyncio.wait_for(store.pubsub.until(lambda h: h.live == 2), TIMEOUT)
        assert store._watches["s"].ready.done()
        # and the resubscribed channel works: another node's append wakes the next wait
        async with open_store() as writer:
            for n in (2, 3):
                task = asyncio.create_task(store.wait("s", n - 1))
                await started(task)
                await writer.append("s", [ev(n)])
                assert await asyncio.wait_for(task, TIMEOUT) is True


async def test_an_unanswered_health_ping_drops_the_pubsub_connection(open_store: Opener) -> None:
    # The subscriber pings an idle connection every poll_interval / 2 and drops
    # it when the previous pong has not come: a generous interval, so that a
    # loaded machine's healthy connection always answers in time.
    async with open_store(poll_interval=2000 * MS) as store, open_store() as writer:
        await writer.create("s", "e1")
        await writer.append("s", [ev(1)])
        task = asyncio.create_task(store.wait("s", 1))
        await asyncio.wait_for(store.pubsub.until(lambda h: h.parked == 1), TIMEOUT)  # subscribed
        await writer.append("s", [ev(2)])
        assert await asyncio.wait_for(task, TIMEOUT) is True
        # a healthy connection answers every ping: the check after a pong keeps it
        await asyncio.wait_for(store.pubsub.until(lambda h: h.pongs >= 2), TIMEOUT)
        assert store.reconnects == 0 and store.pubsub.silent_drops == 0
        # a silent one (the pong of its last health ping never comes) is dropped
        # and made again (the health token is recorded before the ping is written,
        # so nothing overwrites this one)
        stale = b"lost-pong"
        store._pings[stale] = ([], None)
        store._health_token = stale
        await asyncio.wait_for(
            store.pubsub.until(lambda h: h.silent_drops == 1 and h.reconnects == 1 and h.live == 2), TIMEOUT
        )
        task = asyncio.create_task(store.wait("s", 2))
        await started(task)
        await writer.append("s", [ev(3)])
        assert await asyncio.wait_for(task, TIMEOUT) is True


async def test_wait_with_a_zero_timeout_is_a_poll(open_store: Opener) -> None:
    async with open_store() as store:
        assert await store.wait("s", 0, timeout=0) is False
        await store.create("s", "e1")
        await store.append("s", [ev(1)])
        assert await store.wait("s", 0, timeout=0) is True
        assert await store.wait("s", 1, timeout=0) is False
        assert not store._watches  # a poll subscribes to nothing


# --- two gateways on one store -------------------------------------------------------------


#: text deltas the agent writes; then ``close`` ends the text stream and the run
DELTAS = 3000
N_EVENTS = DELTAS + 2


def agent(pipe: Any, go_on: threading.Event, pause_at: int) -> threading.Thread:
    """Writes DELTAS text deltas from a thread, pausing at ``pause_at`` until ``go_on``."""

    def run() -> None:
        for i in range(1, DELTAS + 1):
            pipe.set_message(f"token {i} ")
            if i == pause_at:
                go_on.wait(TIMEOUT)
        pipe.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def gap_free(events: list[Event]) -> bool:
    return [e.seq for e in events] == list(range(1, len(events) + 1))


async def take(c: Client, n: int) -> list[Event]:
    out: list[Event] = []
    async for e in c:
        out.append(e)
        if len(out) == n:
            break
    return out


async def test_gateway_on_redis_client_resumes_gap_free_after_a_drop(redis_url: str, prefix: str) -> None:
    async with Gateway(host="127.0.0.1", port=0, store=RedisStore(redis_url, prefix=prefix)) as gw:
        pipe = gw.pipe("run")
        go_on = threading.Event()
        t = agent(pipe, go_on, pause_at=1000)
        try:
            async with Client(gw.url, "run", backoff=(0.001, 0.01)) as c:
                got = await take(c, 500)
                assert gw.drop_connections("run") == 1  # mid-stream
                go_on.set()
                got += await asyncio.wait_for(c.until(final), TIMEOUT)
            assert gap_free(got) and len(got) == N_EVENTS
            assert got[-1].d == {"state": "done"}
            assert c.connects == 2 and c.resets == []
        finally:
            go_on.set()
            t.join(TIMEOUT)


async def test_a_second_gateway_serves_history_and_recovers_the_first_ones_token(redis_url: str, prefix: str) -> None:
    secret = "s3cret"
    a = Gateway(host="127.0.0.1", port=0, store=RedisStore(redis_url, prefix=prefix), secret=secret)
    b = Gateway(host="127.0.0.1", port=0, store=RedisStore(redis_url, prefix=prefix), secret=secret)
    async with a, b:
        pipe = a.pipe("run")
        go_on = threading.Event()
        t = agent(pipe, go_on, pause_at=1000)
        try:
            async with Client(a.url, "run", backoff=(0.001, 0.01)) as c:
                got = await take(c, 500)
                assert c.welcome is not None and c.welcome.recovered is False
                epoch = c.epoch
                c.url = b.url  # its next connection goes to node B, with node A's token
                assert a.drop_connections("run") == 1
                go_on.set()  # A's agent writes on; B's pump learns of it through Redis
                got += await asyncio.wait_for(c.until(final), TIMEOUT)
            assert c.connects == 2 and c.resets == []
            assert c.welcome.recovered is True and c.welcome.epoch == epoch
            assert gap_free(got) and len(got) == N_EVENTS

            # a late viewer of the ended run, on node B: the whole history
            async with Client(b.url, "run") as late:
                history = await asyncio.wait_for(late.until(final), TIMEOUT)
                w = late.welcome
            assert w is not None and w.recovered is False and w.epoch == epoch
            assert (w.first, w.head) == (1, N_EVENTS)
            assert w.snapshot is not None and w.snapshot["status"] == {"state": "done"}
            assert [(e.seq, e.k, e.d) for e in history] == [(e.seq, e.k, e.d) for e in got]
        finally:
            go_on.set()
            t.join(TIMEOUT)


async def test_without_leases_requests_on_a_node_without_the_agent_get_not_here(redis_url: str, prefix: str) -> None:
    """With leases off (``lease_ttl=None``) a node cannot find the writer: ``not_here``.

    (With leases, the default, requests reach the writer: tests/faults/test_requests.py.)
    """
    a = Gateway(host="127.0.0.1", port=0, store=RedisStore(redis_url, prefix=prefix, lease_ttl=None), secret="s")
    b = Gateway(host="127.0.0.1", port=0, store=RedisStore(redis_url, prefix=prefix, lease_ttl=None), secret="s")
    async with a, b:
        pipe = a.pipe("split")
        asking = asyncio.ensure_future(pipe.ask("Which node?", choices=["a", "b"]))
        async with Client(b.url, "split") as on_b, Client(a.url, "split") as on_a:
            ask = (await asyncio.wait_for(on_b.until(lambda e: e.k == "ask"), TIMEOUT))[-1]
            assert (await on_b.reply(ask.d["id"], "b")).err == "not_here"
            assert (await on_b.send("hi")).err == "not_here"
            assert (await on_a.reply(ask.d["id"], "a")).ok
            assert await asyncio.wait_for(asking, TIMEOUT) == "a"
            pipe.close()
            await asyncio.wait_for(on_b.until(final), TIMEOUT)
            # once the run ended, node B answers as any node would
            assert (await on_b.reply(ask.d["id"], "b")).err == "ask_closed"
            assert (await on_b.cancel()).err == "ended"
