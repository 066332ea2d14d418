"""Feeds: a session's log is read once per node and handed to every local watcher.

The counting stores below are the real MemoryStore and RedisStore with a
counter on each reading method (instrumentation, not stubs): every test runs
against both.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from store_factories import STORE_MARKS, delete_prefix, redis_prefix, require_redis
from support import TIMEOUT, OpenRaw, Raw, final
from websockets.frames import Frame, Opcode

from gateway import Gateway, MemoryStore
from gateway.feed import Feeds, Tail, wire_message
from gateway.stores import Appended, Fetched, LogInfo, Retention, Store
from protocol import Event, encode_event, events_of

READS = ("fetch", "read", "info", "wait")


class Counting:
    """Counts the calls of the reading methods of the store it is mixed into."""

    calls: Counter[str]

    async def fetch(self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20) -> Fetched | None:
        self.calls["fetch"] += 1
        return await super().fetch(sid, after, limit=limit, max_bytes=max_bytes)  # type: ignore[misc,no-any-return]

    async def read(
        self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20, epoch: str | None = None
    ) -> list[bytes]:
        self.calls["read"] += 1
        return await super().read(sid, after, limit=limit, max_bytes=max_bytes, epoch=epoch)  # type: ignore[misc,no-any-return]

    async def info(self, sid: str) -> LogInfo | None:
        self.calls["info"] += 1
        return await super().info(sid)  # type: ignore[misc,no-any-return]

    async def wait(
        self,
        sid: str,
        after: int,
        timeout: float | None = None,
        *,
        epoch: str | None = None,
        ended: bool | None = None,
    ) -> bool:
        self.calls["wait"] += 1
        return await super().wait(sid, after, timeout, epoch=epoch, ended=ended)  # type: ignore[misc,no-any-return]


class CountingMemory(Counting, MemoryStore):
    def __init__(self, retention: Retention | None = None) -> None:
        super().__init__(retention)
        self.calls = Counter()


@pytest.fixture(params=[pytest.param(n, marks=STORE_MARKS.get(n, []), id=n) for n in ("memory", "redis")])
async def counting(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh counting store of each backend."""
    if request.param == "memory":
        store: Store = CountingMemory()
        try:
            yield store
        finally:
            await store.close()
        return
    from gateway.stores.redis import RedisStore

    class CountingRedis(Counting, RedisStore):
        def __init__(self, url: str, prefix: str) -> None:
            super().__init__(url, prefix=prefix)
            self.calls = Counter()

    url, prefix = require_redis(), redis_prefix()
    store = CountingRedis(url, prefix)
    try:
        yield store
    finally:
        try:
            await store.close()
        finally:
            await delete_prefix(prefix)


def calls(store: Store) -> Counter[str]:
    assert isinstance(store, Counting)
    return store.calls


async def until_seq(r: Raw, seq: int) -> list[Event]:
    return await r.events(lambda e: e.seq >= seq)


async def test_n_watchers_of_one_run_read_the_log_once(counting: Store, raw: OpenRaw) -> None:
    """Reads of the store do not grow with the number of watchers: one feed reads for all."""
    n_watchers, n_events = 8, 30
    async with Gateway(port=0, store=counting) as gw, AsyncExitStack() as stack:
        sid = f"feed-{uuid.uuid4().hex[:8]}"
        pipe = gw.pipe(sid)
        await pipe.drained()
        watchers = [await stack.enter_async_context(raw(gw.url)) for _ in range(n_watchers)]
        for w in watchers:
            assert (await w.hello(sid)).t == "welcome"
        before = calls(counting).copy()
        got: list[list[int]] = [[] for _ in watchers]
        # Lockstep: every watcher has each event before the next is written, so
        # without a shared reader each of them would read each event itself.
        for i in range(1, n_events + 1):
            pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": f"m{i}"}})
            for w, seen in zip(watchers, got, strict=True):
                seen += [e.seq for e in await until_seq(w, i)]
        assert all(seen == list(range(1, n_events + 1)) for seen in got)
        spent = calls(counting) - before
        # One feed: about one fetch and one wait per event, whatever the number
        # of watchers (each watcher alone would cost a read, an info and a wait).
        reads = spent["fetch"] + spent["read"]
        assert reads <= 2 * n_events + 4, spent
        assert spent["info"] <= 4, spent
        assert spent["wait"] <= 2 * n_events + 4, spent
        feed = gw.feeds.get(sid)
        assert feed is not None and feed.pumps == n_watchers


async def test_a_watcher_older_than_the_tail_gets_everything_once(counting: Store, raw: OpenRaw) -> None:
    """The tail holds 4 events; a watcher from seq 0 reads the rest from the store, in order, once."""
    async with Gateway(port=0, store=counting, feed_events=4) as gw:
        sid = f"far-{uuid.uuid4().hex[:8]}"
        pipe = gw.pipe(sid)
        async with raw(gw.url) as live, raw(gw.url) as far, raw(gw.url) as windowed:
            assert (await live.hello(sid, live=True)).t == "welcome"  # keeps the feed at the head
            for i in range(1, 41):
                pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": f"m{i}"}})
            await pipe.drained()
            await until_seq(live, 40)
            feed = gw.feeds.get(sid)
            assert feed is not None and feed.tail.first > 1 and len(feed.tail) <= 4
            welcome = await far.hello(sid)
            assert welcome.t == "welcome" and not welcome.recovered
            w2 = await windowed.hello(sid, window=3)
            assert w2.window == 3
            # more while they replay
            for i in range(41, 61):
                pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": f"m{i}"}})
            pipe.close()
            evs = await far.events(final)
            assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
            assert [e.d["msg"] for e in evs[:60]] == [f"m{i}" for i in range(1, 61)]
            # a client with a window of 3 that acks each frame: the same events, in order, once
            seen: list[int] = []
            while not seen or seen[-1] < evs[-1].seq:
                frame = await windowed.recv()
                seen += [e.seq for e in events_of(frame)]
                assert len(list(events_of(frame))) <= 3
                await windowed.send({"t": "ack", "seq": seen[-1]})
            assert seen == [e.seq for e in evs]


async def test_a_new_run_resets_the_feed_and_no_watcher_splices_epochs(counting: Store, raw: OpenRaw) -> None:
    """Watchers of run 1 move to run 2 with a fresh welcome; nothing of run 1 after it."""
    async with Gateway(port=0, store=counting) as gw, AsyncExitStack() as stack:
        sid = f"epochs-{uuid.uuid4().hex[:8]}"
        first = gw.pipe(sid)
        for i in range(1, 11):
            first.set_message({"k": "log", "d": {"level": "INFO", "msg": f"one-{i}"}})
        watchers = [await stack.enter_async_context(raw(gw.url)) for _ in range(3)]
        welcomes = [await w.hello(sid) for w in watchers]
        old_epoch = welcomes[0].epoch
        for w in watchers:
            await w.events(lambda e: e.seq >= 10)
        feed = gw.feeds.get(sid)
        assert feed is not None
        first.close()
        for w in watchers:
            await w.events(final)
        # the second run writes at once, while the watchers are being moved
        second = gw.pipe(sid)
        for i in range(1, 31):
            second.set_message({"k": "log", "d": {"level": "INFO", "msg": f"two-{i}"}})
        second.close()
        for w in watchers:
            frames = await w.collect(lambda fs: any(final(e) for f in fs for e in events_of(f)))
            kinds = [f.t for f in frames]
            assert kinds.count("welcome") == 1, kinds  # moved once
            at = kinds.index("welcome")
            welcome = frames[at]
            assert welcome.epoch != old_epoch and not welcome.recovered and welcome.first == 1
            assert frames[:at] == []  # run 1 had ended and been read: nothing of it after its end
            after = [e for f in frames[at + 1 :] for e in events_of(f)]
            # the whole second run from its first event, once, in order, and nothing else
            assert [e.seq for e in after] == list(range(1, 32))
            assert [e.d["msg"] for e in after[:-1]] == [f"two-{i}" for i in range(1, 31)]
        assert feed is gw.feeds.get(sid)
        assert feed.state is not None and feed.state.epoch != old_epoch


# --- the feed on its own ----------------------------------------------------------


def ev(seq: int, size: int = 10) -> Appended:
    d = {"level": "INFO", "msg": "x" * size}
    return Appended(seq, "log", d, encode_event(seq, "log", 1.0, d))


async def changed_until(feed: Any, pred: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not pred():
            await feed.changed.wait()


async def test_the_tail_is_bounded_and_frames_are_built_once() -> None:
    store = MemoryStore()
    feeds = Feeds(store, max_events=5, max_bytes=10_000, batch_max=1000, batch_bytes=1 << 20, linger=0)
    try:
        await store.create("s", "e1")
        await store.append("s", [ev(i) for i in range(1, 21)])
        feed = feeds.join("s", 0)
        await changed_until(feed, lambda: feed.known and feed.tail.next == 21)
        assert feed.state == LogInfo("e1", 1, 20, False)
        assert (feed.tail.first, len(feed.tail)) == (16, 5)
        assert feed.take(0, 100)[1] == -1  # older than the tail: read the store
        assert feed.take(20, 100) == (b"", 0)  # nothing after the head yet
        a, b = feed.take(17, 100), feed.take(17, 100)
        assert a[1] == 3 and a[0] is b[0]  # the same bytes, built once
        assert feed.take(17, 2)[1] == 2
        # bytes bound: 3 events of ~40 bytes do not fit in 60 bytes
        small = Feeds(store, max_events=100, max_bytes=60, batch_max=1000, batch_bytes=1 << 20, linger=0)
        f2 = small.join("s", 0)
        await changed_until(f2, lambda: f2.known and f2.tail.next == 21)
        assert f2.tail.nbytes <= 60 and len(f2.tail) == 60 // len(ev(1).raw)
        small.leave(f2)
        await small.close()
        # a new epoch empties the tail: nothing of e1 is served after it
        await store.create("s", "e2")
        await store.append("s", [ev(1), ev(2)])
        await changed_until(feed, lambda: feed.state is not None and feed.state.epoch == "e2" and feed.tail.next == 3)
        assert (feed.tail.first, len(feed.tail)) == (1, 2)
        frame, n = feed.take(0, 100)
        assert n == 2 and frame.endswith(ev(1).raw + ev(2).raw)
        # the last pump leaves: the feed is dropped after its linger (0 here)
        feeds.leave(feed)
        await asyncio.wait_for(asyncio.wait({feed.task}), TIMEOUT)
        assert feeds.get("s") is None and feed.task.cancelled()
    finally:
        await feeds.close()
        await store.close()


def test_a_tail_compacted_after_trims_still_serves_batches() -> None:
    """``Tail.span`` measures bytes from running totals, which a compaction leaves counting from older events."""
    tail = Tail(max_events=4, max_bytes=1 << 20)
    seq = 0
    while seq < 1030 or tail.skip:  # until the add that compacted the trimmed events away
        seq += 1
        tail.add([ev(seq).raw])
    assert (tail.first, tail.next) == (seq - 3, seq + 1)
    two = sum(len(ev(s).raw) for s in (seq - 3, seq - 2))
    i, n = tail.span(seq - 4, 100, two)  # from the first event held: index 0
    assert (i, n) == (0, 2) and tail.raws[:2] == [ev(seq - 3).raw, ev(seq - 2).raw]
    assert tail.span(seq - 4, 100, 1 << 20) == (0, 4)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
def test_a_shared_wire_message_is_the_frame_websockets_would_send(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    assert wire_message(data) == Frame(Opcode.BINARY, data).serialize(mask=False)
