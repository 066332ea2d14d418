"""The shared store suite: one set of tests, run against every backend.

Fixtures come from ``tests/stores/conftest.py``: ``make_store`` (parametrized
by backend id), ``store`` (a fresh one with the default retention) and ``sid``
(a unique session id).  Nothing here knows which backend it is testing.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support import MS, TIMEOUT, ev, seqs, started

from gateway.stores import Appended, Fetched, Fetches, LogInfo, Retention, Store, direct_of, fetch

# --- helpers --------------------------------------------------------------------


def evs(first: int, n: int) -> list[Appended]:
    return [ev(s) for s in range(first, first + n)]


async def filled(store: Store, sid: str, n: int, epoch: str = "e1") -> list[Appended]:
    await store.create(sid, epoch)
    batch = evs(1, n)
    if batch:
        await store.append(sid, batch)
    return batch


def past(t: float) -> None:
    """Return once the wall clock reads later than ``t`` (no sleeping: it is a few ns away)."""
    while time.time() <= t:
        pass


# --- the basics -------------------------------------------------------------------


async def test_store_satisfies_protocol(store: Store) -> None:
    assert isinstance(store, Store)
    assert isinstance(store.retention, Retention)


async def test_missing_log(store: Store, sid: str) -> None:
    assert await store.info(sid) is None
    assert await store.read(sid, 0) == []
    snap, at = await store.snapshot(sid)
    assert at == 0
    assert snap == {"status": None, "plan": None, "asks": [], "texts": []}
    assert await asyncio.wait_for(store.wait(sid, 0, timeout=TIMEOUT), TIMEOUT) is False
    await store.end(sid)  # harmless
    assert await store.info(sid) is None


async def test_create_makes_an_empty_log(store: Store, sid: str) -> None:
    await store.create(sid, "e1")
    assert await store.info(sid) == LogInfo(epoch="e1", first=1, head=0, ended=False)
    assert await store.read(sid, 0) == []
    assert (await store.snapshot(sid))[1] == 0


async def test_append_then_read_returns_the_raw_events(store: Store, sid: str) -> None:
    await store.create(sid, "e1")
    a, b = evs(1, 3), evs(4, 2)
    await store.append(sid, a)
    await store.append(sid, b)
    assert await store.info(sid) == LogInfo("e1", 1, 5, False)
    assert await store.read(sid, 0) == [e.raw for e in a + b]
    assert seqs(await store.read(sid, 2)) == [3, 4, 5]
    assert seqs(await store.read(sid, 4)) == [5]


async def test_logs_are_separate(store: Store, sid: str) -> None:
    other = sid + "-other"
    await filled(store, sid, 3, epoch="e1")
    await filled(store, other, 1, epoch="e2")
    assert (await store.info(sid)) == LogInfo("e1", 1, 3, False)
    assert (await store.info(other)) == LogInfo("e2", 1, 1, False)
    assert seqs(await store.read(other, 0)) == [1]


@pytest.mark.parametrize(
    ("head", "batch"),
    [
        (0, [2]),  # the first event is not seq 1
        (2, [2]),  # reuses the head
        (2, [1, 2, 3]),  # starts in the past
        (2, [4]),  # leaves a gap
        (2, [3, 5]),  # a gap inside the batch
        (2, [3, 3]),  # a duplicate inside the batch
    ],
)
async def test_append_seqs_must_follow_head(store: Store, sid: str, head: int, batch: list[int]) -> None:
    await filled(store, sid, head)
    before = await store.read(sid, 0)
    with pytest.raises(ValueError):
        await store.append(sid, [ev(s) for s in batch])
    info = await store.info(sid)
    assert info is not None and info.head == head
    assert await store.read(sid, 0) == before
    await store.append(sid, [ev(head + 1)])  # the log is still usable
    assert seqs(await store.read(sid, head)) == [head + 1]


async def test_append_to_missing_log_raises_keyerror(store: Store, sid: str) -> None:
    with pytest.raises(KeyError):
        await store.append(sid, [ev(1)])
    assert await store.info(sid) is None


# --- read limits --------------------------------------------------------------------


async def test_read_limit(store: Store, sid: str) -> None:
    await filled(store, sid, 10)
    assert seqs(await store.read(sid, 0, limit=3)) == [1, 2, 3]
    assert seqs(await store.read(sid, 3, limit=3)) == [4, 5, 6]
    assert seqs(await store.read(sid, 8, limit=5)) == [9, 10]
    assert seqs(await store.read(sid, 0, limit=1)) == [1]


async def test_read_max_bytes(store: Store, sid: str) -> None:
    batch = await filled(store, sid, 6)
    size = len(batch[0].raw)
    assert all(len(e.raw) == size for e in batch)
    assert seqs(await store.read(sid, 0, max_bytes=2 * size)) == [1, 2]
    assert seqs(await store.read(sid, 0, max_bytes=3 * size - 1)) == [1, 2]
    assert seqs(await store.read(sid, 2, max_bytes=3 * size)) == [3, 4, 5]
    # at least one event, even when it alone is over the budget
    assert seqs(await store.read(sid, 0, max_bytes=1)) == [1]
    # both limits: the tighter one wins
    assert seqs(await store.read(sid, 0, limit=2, max_bytes=10 * size)) == [1, 2]


async def test_read_returns_one_event_bigger_than_max_bytes(store: Store, sid: str) -> None:
    await store.create(sid, "e1")
    big = ev(1, "log", {"level": "INFO", "msg": "x" * 10_000})
    await store.append(sid, [big, ev(2)])
    assert await store.read(sid, 0, max_bytes=100) == [big.raw]
    assert seqs(await store.read(sid, 1, max_bytes=1)) == [2]


async def test_read_at_or_after_head_is_empty(store: Store, sid: str) -> None:
    await filled(store, sid, 4)
    assert await store.read(sid, 4) == []
    assert await store.read(sid, 5) == []
    assert await store.read(sid, 1000) == []


# --- retention -------------------------------------------------------------------------


async def test_retention_by_count(make_store: Any, sid: str) -> None:
    async with make_store(Retention(max_events=5)) as store:
        await store.create(sid, "e1")
        for first in (1, 5, 9):
            await store.append(sid, evs(first, 4))
        info = await store.info(sid)
        assert info is not None and (info.first, info.head) == (8, 12)
        # a reader from before the window starts at first
        assert seqs(await store.read(sid, 0)) == [8, 9, 10, 11, 12]
        assert seqs(await store.read(sid, 6)) == [8, 9, 10, 11, 12]
        assert seqs(await store.read(sid, 9)) == [10, 11, 12]


async def test_retention_by_bytes(make_store: Any, sid: str) -> None:
    size = len(ev(1).raw)
    async with make_store(Retention(max_bytes=3 * size)) as store:
        await store.create(sid, "e1")
        for s in range(1, 11):
            await store.append(sid, [ev(s)])
        info = await store.info(sid)
        assert info is not None and (info.first, info.head) == (8, 10)
        raws = await store.read(sid, 0)
        assert seqs(raws) == [8, 9, 10]
        assert sum(map(len, raws)) <= 3 * size


async def test_retention_keeps_the_newest_event_even_if_over_max_bytes(make_store: Any, sid: str) -> None:
    async with make_store(Retention(max_bytes=10)) as store:
        await filled(store, sid, 1)
        assert await store.info(sid) == LogInfo("e1", 1, 1, False)
        await store.append(sid, [ev(2)])
        assert await store.info(sid) == LogInfo("e1", 2, 2, False)
        assert seqs(await store.read(sid, 0)) == [2]


async def test_ttl_after_end_expires_the_log(make_store: Any, sid: str) -> None:
    async with make_store(Retention(ttl_after_end=0)) as store:
        await filled(store, sid, 3)
        await store.end(sid)
        past(time.time())
        assert await store.info(sid) is None
        assert await store.read(sid, 0) == []
        assert await store.snapshot(sid) == ({"status": None, "plan": None, "asks": [], "texts": []}, 0)
        assert await asyncio.wait_for(store.wait(sid, 0, timeout=TIMEOUT), TIMEOUT) is False
        # the sid is free for a new run
        await filled(store, sid, 1, epoch="e2")
        assert await store.info(sid) == LogInfo("e2", 1, 1, False)


async def test_ttl_runs_only_after_end(make_store: Any, sid: str) -> None:
    async with make_store(Retention(ttl_after_end=0)) as store:
        await filled(store, sid, 2)
        past(time.time())
        assert await store.info(sid) == LogInfo("e1", 1, 2, False)
    async with make_store(Retention(ttl_after_end=3600)) as store:
        await filled(store, sid, 2)
        await store.end(sid)
        assert await store.info(sid) == LogInfo("e1", 1, 2, True)
        assert seqs(await store.read(sid, 0)) == [1, 2]


# --- create replaces ------------------------------------------------------------------


async def test_create_replaces_the_log(store: Store, sid: str) -> None:
    await filled(store, sid, 3, epoch="e1")
    await store.append(sid, [ev(4, "status", {"state": "done"})])
    await store.end(sid)
    await store.create(sid, "e2")
    assert await store.info(sid) == LogInfo("e2", 1, 0, False)
    assert await store.read(sid, 0) == []
    snap, at = await store.snapshot(sid)
    assert at == 0 and snap["status"] is None
    await store.append(sid, [ev(1)])  # seqs start again
    assert seqs(await store.read(sid, 0)) == [1]


async def test_create_wakes_waiters(store: Store, sid: str) -> None:
    await filled(store, sid, 2, epoch="e1")
    task = asyncio.create_task(store.wait(sid, 2))
    await started(task)
    await store.create(sid, "e2")
    # the new log has nothing after seq 2
    assert await asyncio.wait_for(task, TIMEOUT) is False
    assert (await store.info(sid)) == LogInfo("e2", 1, 0, False)


# --- wait ------------------------------------------------------------------------------


async def test_wait_returns_true_at_once_when_data_is_there(store: Store, sid: str) -> None:
    await filled(store, sid, 2)
    assert await asyncio.wait_for(store.wait(sid, 0), TIMEOUT) is True
    assert await asyncio.wait_for(store.wait(sid, 1), TIMEOUT) is True


async def test_wait_wakes_on_append(store: Store, sid: str) -> None:
    await filled(store, sid, 2)
    task = asyncio.create_task(store.wait(sid, 2))
    await started(task)
    await store.append(sid, [ev(3)])
    assert await asyncio.wait_for(task, TIMEOUT) is True
    assert seqs(await store.read(sid, 2)) == [3]


async def test_wait_wakes_on_end(store: Store, sid: str) -> None:
    await filled(store, sid, 1)
    task = asyncio.create_task(store.wait(sid, 1))
    await started(task)
    await store.end(sid)
    assert await asyncio.wait_for(task, TIMEOUT) is False
    info = await store.info(sid)
    assert info is not None and info.ended


async def test_an_end_before_the_wait_is_not_missed_by_a_waiter_that_saw_the_log_open(store: Store, sid: str) -> None:
    """``ended=False``: the caller looked before the end; a wait that starts after it returns at once.

    (A start racing a run that just finished waited out the whole lease for the end it missed.)"""
    await filled(store, sid, 1)
    info = await store.info(sid)
    assert info is not None and not info.ended
    await store.end(sid)  # between the caller's look and its wait
    assert await asyncio.wait_for(store.wait(sid, 1, epoch=info.epoch, ended=False), TIMEOUT) is False
    assert await store.wait(sid, 1, timeout=20 * MS, epoch=info.epoch, ended=True) is False  # the same: no event


async def test_wait_times_out(store: Store, sid: str) -> None:
    await filled(store, sid, 1)
    assert await asyncio.wait_for(store.wait(sid, 1, timeout=20 * MS), TIMEOUT) is False
    # a timed-out wait leaves nothing behind that breaks the next one
    task = asyncio.create_task(store.wait(sid, 1))
    await started(task)
    await store.append(sid, [ev(2)])
    assert await asyncio.wait_for(task, TIMEOUT) is True


async def test_many_waiters_all_wake_on_one_append(store: Store, sid: str) -> None:
    await filled(store, sid, 1)
    tasks = [asyncio.create_task(store.wait(sid, 1)) for _ in range(50)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(t.done() for t in tasks)
    await store.append(sid, [ev(2)])
    results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert results == [True] * 50


async def test_cancelled_waiter_does_not_break_others(store: Store, sid: str) -> None:
    await filled(store, sid, 1)
    victim = asyncio.create_task(store.wait(sid, 1))
    other = asyncio.create_task(store.wait(sid, 1))
    await started(victim)
    victim.cancel()
    await asyncio.gather(victim, return_exceptions=True)
    assert not other.done()
    await store.append(sid, [ev(2)])
    assert await asyncio.wait_for(other, TIMEOUT) is True


# --- snapshot ------------------------------------------------------------------------------


async def test_snapshot_reflects_state(store: Store, sid: str) -> None:
    await store.create(sid, "e1")
    plan = {
        "goal": "g",
        "tasks": [
            {"id": "1", "instruction": "a", "deps": [], "type": "t", "status": "pending"},
            {"id": "2", "instruction": "b", "deps": ["1"], "type": "t", "status": "pending"},
        ],
        "current": None,
    }
    script: list[tuple[str, Any]] = [
        ("status", {"state": "running"}),
        ("plan", plan),
        ("task", {"id": "1", "status": "running"}),
        ("task", {"id": "1", "status": "done", "result": "r1"}),
        ("task", {"id": "2", "status": "running"}),
        ("text", {"id": "t1", "delta": "hel"}),
        ("text", {"id": "t2", "delta": "gone"}),
        ("text", {"id": "t1", "delta": "lo"}),
        ("text", {"id": "t2", "delta": "", "end": True}),
        ("ask", {"id": "a1", "prompt": "first?"}),
        ("ask", {"id": "a2", "prompt": "second?", "choices": ["y", "n"]}),
        ("answer", {"id": "a1", "value": "ok", "by": "client"}),
        ("status", {"state": "waiting"}),
    ]
    await store.append(sid, [ev(i, k, d) for i, (k, d) in enumerate(script, 1)])
    snap, at = await store.snapshot(sid)
    assert at == len(script)
    assert snap["status"] == {"state": "waiting"}
    assert snap["plan"]["goal"] == "g"
    assert snap["plan"]["current"] == "2"
    assert [(t["id"], t["status"]) for t in snap["plan"]["tasks"]] == [("1", "done"), ("2", "running")]
    assert snap["plan"]["tasks"][0]["result"] == "r1"
    assert snap["asks"] == [{"id": "a2", "prompt": "second?", "choices": ["y", "n"]}]
    assert snap["texts"] == [{"id": "t1", "text": "hello"}]

    # later events move the seq; a new plan replaces the old one
    n = len(script)
    await store.append(
        sid,
        [
            ev(n + 1),
            ev(n + 2, "plan", {"goal": "g2", "tasks": [], "current": None}),
            ev(n + 3, "answer", {"id": "a2", "value": "y", "by": "timeout"}),
        ],
    )
    snap, at = await store.snapshot(sid)
    assert at == n + 3
    assert snap["plan"] == {"goal": "g2", "tasks": [], "current": None}
    assert snap["asks"] == []
    assert snap["texts"] == [{"id": "t1", "text": "hello"}]


async def test_snapshot_survives_retention(make_store: Any, sid: str) -> None:
    async with make_store(Retention(max_events=2)) as store:
        await store.create(sid, "e1")
        await store.append(sid, [ev(1, "ask", {"id": "a1", "prompt": "p"})])
        await store.append(sid, evs(2, 5))
        info = await store.info(sid)
        assert info is not None and info.first == 5
        snap, at = await store.snapshot(sid)
        assert at == 6
        assert [a["id"] for a in snap["asks"]] == ["a1"]


async def test_end_marks_the_log_ended(store: Store, sid: str) -> None:
    await filled(store, sid, 2)
    await store.end(sid)
    await store.end(sid)  # idempotent
    assert await store.info(sid) == LogInfo("e1", 1, 2, True)
    assert seqs(await store.read(sid, 0)) == [1, 2]


# --- faults: idempotent appends, lost logs ---------------------------------------------


async def test_an_append_with_its_epoch_is_idempotent(store: Store, sid: str) -> None:
    """A writer that lost the reply of an applied append repeats it: nothing is stored twice."""
    await store.create(sid, "e1")
    await store.append(sid, evs(1, 5), epoch="e1")
    await store.append(sid, evs(1, 5), epoch="e1")  # the whole batch again
    await store.append(sid, evs(4, 4), epoch="e1")  # overlapping: 4, 5 stored, 6, 7 new
    assert seqs(await store.read(sid, 0)) == [1, 2, 3, 4, 5, 6, 7]
    assert (await store.info(sid)) == LogInfo("e1", 1, 7, False)


async def test_an_append_for_another_epoch_is_refused(store: Store, sid: str) -> None:
    from protocol import LogReplaced

    await store.create(sid, "e1")
    await store.append(sid, evs(1, 2), epoch="e1")
    await store.create(sid, "e2")  # a newer run took the sid
    with pytest.raises(LogReplaced):
        await store.append(sid, evs(3, 1), epoch="e1")
    assert (await store.info(sid)) == LogInfo("e2", 1, 0, False)


async def test_a_log_that_lost_events_reports_the_gap(store: Store, sid: str) -> None:
    from protocol import SeqGap

    await store.create(sid, "e1")
    await store.append(sid, evs(1, 2), epoch="e1")
    with pytest.raises(SeqGap) as info:
        await store.append(sid, evs(5, 1), epoch="e1")
    assert info.value.head == 2
    assert seqs(await store.read(sid, 0)) == [1, 2]


async def test_an_append_to_no_log_is_log_missing(store: Store, sid: str) -> None:
    from protocol import LogMissing

    with pytest.raises(LogMissing):
        await store.append(sid, evs(1, 1), epoch="e1")


async def test_a_log_continued_under_a_new_epoch(store: Store, sid: str) -> None:
    """What a writer does after its log was lost: same seqs onward, a new epoch, its state."""
    snap = {
        "status": {"state": "running"},
        "plan": {"goal": "g", "tasks": [{"id": "1", "status": "running"}], "current": "1"},
        "asks": [{"id": "a1", "prompt": "?"}],
        "texts": [{"id": "t1", "text": "hel"}],
    }
    await store.create(sid, "e2", head=41, snapshot=snap)
    assert (await store.info(sid)) == LogInfo("e2", 42, 41, False)
    assert await store.read(sid, 0) == []
    got, at = await store.snapshot(sid)
    assert (got, at) == (snap, 41)
    await store.append(sid, [ev(42, "text", {"id": "t1", "delta": "lo"})], epoch="e2")
    await store.append(sid, [ev(43, "answer", {"id": "a1", "value": 1, "by": "client"})], epoch="e2")
    got, at = await store.snapshot(sid)
    assert at == 43 and got["texts"] == [{"id": "t1", "text": "hello"}] and got["asks"] == []
    assert seqs(await store.read(sid, 0)) == [42, 43]


# --- one epoch per reader ---------------------------------------------------------------


async def test_a_reader_naming_its_epoch_never_reads_another(store: Store, sid: str) -> None:
    """A log replaced between a reader's ``info`` and its ``read`` must not be spliced in."""
    await filled(store, sid, 3, epoch="e1")
    assert seqs(await store.read(sid, 1, epoch="e1")) == [2, 3]
    await store.create(sid, "e2")  # a new run of the sid
    await store.append(sid, evs(1, 5), epoch="e2")
    assert await store.read(sid, 1, epoch="e1") == []  # not e2's events 2..5
    assert seqs(await store.read(sid, 1, epoch="e2")) == [2, 3, 4, 5]
    assert seqs(await store.read(sid, 1)) == [2, 3, 4, 5]  # without an epoch: whatever is there


async def test_a_wait_for_a_replaced_epoch_returns_false(store: Store, sid: str) -> None:
    await filled(store, sid, 1, epoch="e1")
    waiting = asyncio.create_task(store.wait(sid, 1, timeout=TIMEOUT, epoch="e1"))
    await started(waiting)
    await store.create(sid, "e2")
    await store.append(sid, evs(1, 3), epoch="e2")  # e2 has seq 2, 3 now: not what e1's reader waits for
    assert await asyncio.wait_for(waiting, TIMEOUT) is False
    # and a wait that starts on the wrong epoch returns at once
    assert await asyncio.wait_for(store.wait(sid, 0, timeout=TIMEOUT, epoch="e1"), TIMEOUT) is False
    assert await asyncio.wait_for(store.wait(sid, 0, timeout=TIMEOUT, epoch="e2"), TIMEOUT) is True


# --- fetch: the state and the events at one instant ----------------------------------


class BaseOnly:
    """A store seen through the base ``Store`` protocol alone (no ``fetch``): the fallback's path."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.retention = store.retention
        self.info = store.info
        self.read = store.read
        self.wait = store.wait
        self.create = store.create
        self.append = store.append
        self.snapshot = store.snapshot
        self.end = store.end
        self.close = store.close


@pytest.fixture(params=["native", "fallback"])
def fetch_of(request: pytest.FixtureRequest, store: Store) -> Callable[..., Awaitable[Fetched | None]]:
    """``stores.fetch`` on the store itself (its ``Fetches.fetch``) or on one without ``fetch``."""
    if request.param == "native":
        assert isinstance(store, Fetches)
        target: Any = store
    else:
        target = BaseOnly(store)
        assert not isinstance(target, Fetches)

    async def call(sid: str, after: int, **kw: Any) -> Fetched | None:
        return await fetch(target, sid, after, **kw)

    return call


async def test_fetch_of_no_log_is_none(store: Store, sid: str, fetch_of: Any) -> None:
    assert await fetch_of(sid, 0) is None


async def test_fetch_returns_the_state_with_the_events(store: Store, sid: str, fetch_of: Any) -> None:
    batch = await filled(store, sid, 5)
    got = await fetch_of(sid, 0)
    assert got == Fetched(LogInfo("e1", 1, 5, False), [e.raw for e in batch])
    assert seqs((await fetch_of(sid, 3)).raws) == [4, 5]
    assert seqs((await fetch_of(sid, 1, limit=2)).raws) == [2, 3]
    size = len(batch[0].raw)
    assert seqs((await fetch_of(sid, 0, max_bytes=2 * size + 1)).raws) == [1, 2]
    assert seqs((await fetch_of(sid, 0, max_bytes=1)).raws) == [1]  # at least one
    # at the head, past it, or limit 0: the state alone
    for after, kw in ((5, {}), (9, {}), (0, {"limit": 0})):
        assert await fetch_of(sid, after, **kw) == Fetched(LogInfo("e1", 1, 5, False), [])
    await store.end(sid)
    assert (await fetch_of(sid, 5)).info.ended


async def test_fetch_behind_first_starts_at_first(make_store: Any, sid: str) -> None:
    async with make_store(Retention(max_events=3)) as store:
        await filled(store, sid, 10)
        for target in (store, BaseOnly(store)):
            got = await fetch(target, sid, 2)
            assert got is not None and got.info.first == 8
            assert seqs(got.raws) == [8, 9, 10]  # the caller compares with info.first: it lagged


async def test_fetch_after_a_replacement_shows_the_new_epoch_only(store: Store, sid: str, fetch_of: Any) -> None:
    await filled(store, sid, 5, epoch="e1")
    await store.create(sid, "e2")
    await store.append(sid, evs(1, 2))
    got = await fetch_of(sid, 1)
    assert got.info == LogInfo("e2", 1, 2, False) and seqs(got.raws) == [2]
    # a reader of e1 at seq 5 sees e2's head behind it: no events, and the epoch says why
    assert await fetch_of(sid, 5) == Fetched(LogInfo("e2", 1, 2, False), [])
    # a log continued under a new epoch keeps its seqs
    await store.create(sid, "e3", head=40)
    await store.append(sid, evs(41, 2))
    got = await fetch_of(sid, 0)
    assert got.info == LogInfo("e3", 41, 42, False) and seqs(got.raws) == [41, 42]


def _heard(into: list[list[bytes]], info: LogInfo | None, raws: list[bytes]) -> None:
    into.append(raws)


async def test_a_direct_stores_one_event_append_is_append_now_of_one(make_store: Any, sid: str) -> None:
    """``Direct.append_one`` (the writer's append on the loop) stores, folds and refuses as ``append_now``."""
    async with make_store(Retention(max_events=4)) as store:
        direct = direct_of(store)
        if direct is None:
            pytest.skip("not a Direct store")
        script: list[tuple[str, Any]] = [
            ("text", {"id": "t1", "delta": "a"}),  # opens the stream
            ("text", {"id": "t1", "delta": "b"}),  # the inlined fold: an open stream's delta
            ("text", {"id": ["u"], "delta": "x"}),  # an unhashable id: ignored by the snapshot, stored
            ("text", {"id": "t1", "delta": 5}),  # not a str: ignored by the snapshot
            ("text", {"id": "t2", "delta": "c"}),
            ("text", {"id": "t2", "delta": "", "end": True}),
            ("plan", {"goal": "g", "tasks": []}),
        ]
        one, many = f"{sid}-one", f"{sid}-now"
        for s in (one, many):
            await store.create(s, "e1")
        heard: dict[str, list[list[bytes]]] = {one: [], many: []}
        for s in (one, many):
            direct.listen(s, functools.partial(_heard, heard[s]))
        for seq, (k, d) in enumerate(script, 1):
            direct.append_one(one, ev(seq, k, d), "e1")
            direct.append_now(many, [ev(seq, k, d)], epoch="e1")
        assert await store.snapshot(one) == await store.snapshot(many)
        assert await store.read(one, 0) == await store.read(many, 0)  # the newest 4 (retention)
        assert heard[one] == heard[many] and len(heard[one]) == len(script)
        # the same refusals: another epoch, a gap, a missing log
        for bad in ((one, ev(len(script) + 1), "e2"), (one, ev(len(script) + 5), "e1"), ("nope", ev(1), "e1")):
            with pytest.raises(Exception) as by_one:
                direct.append_one(*bad)
            with pytest.raises(Exception) as by_now:
                direct.append_now(bad[0], [bad[1]], epoch=bad[2])
            assert type(by_one.value) is type(by_now.value)
        await store.append(one, [ev(len(script) + 1)])  # still appendable after them all
