"""MemoryStore: the embedded default.  Logs live in this process and die with it."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from protocol import LogMissing, LogReplaced, SeqGap, Snapshot

from .base import Appended, Direct, Fetched, Fetches, Listener, LogInfo, Retention, Store

log_ = logging.getLogger("wirepipe.store")

_tuple_new = tuple.__new__
# An ``Appended``'s fields, in C (once per event), by index: cheaper than by name.
_SEQ = itemgetter(Appended._fields.index("seq"))
_RAW = itemgetter(Appended._fields.index("raw"))
_K_D = itemgetter(Appended._fields.index("k"), Appended._fields.index("d"))


class _Log:
    __slots__ = ("epoch", "events", "skip", "first", "nbytes", "snap", "ended_at", "changed")

    def __init__(self, epoch: str, head: int = 0) -> None:
        self.epoch = epoch
        # A list, not a deque: readers index into the middle.  Trimmed events
        # are skipped by offset and compacted away in bulk.
        self.events: list[bytes] = []
        self.skip = 0  # events[:skip] are trimmed
        self.first = head + 1  # seq of events[skip]
        self.nbytes = 0
        self.snap = Snapshot()
        self.ended_at: float | None = None
        # One future shared by every waiter: an append wakes them all at once.
        self.changed: asyncio.Future[None] | None = None

    @property
    def head(self) -> int:
        return self.first + len(self.events) - self.skip - 1

    def info(self) -> LogInfo:
        # tuple.__new__ directly: the named tuple's own __new__ is a Python call (one per append)
        head = self.first + len(self.events) - self.skip - 1
        return _tuple_new(LogInfo, (self.epoch, self.first, head, self.ended_at is not None))

    def trim(self, retention: Retention) -> None:
        events = self.events
        while len(events) - self.skip > 1 and (
            len(events) - self.skip > retention.max_events or self.nbytes > retention.max_bytes
        ):
            self.nbytes -= len(events[self.skip])
            self.skip += 1
            self.first += 1
        if self.skip > 1024 and self.skip * 2 > len(events):
            del events[: self.skip]
            self.skip = 0

    def wake(self) -> None:
        if self.changed is not None and not self.changed.done():
            self.changed.set_result(None)
        self.changed = None


def _slice(log: _Log, after: int, limit: int, max_bytes: int) -> list[bytes]:
    """The events of ``log`` after seq ``after`` (which is before its head), as ``Store.read``."""
    i = log.skip + max(0, after + 1 - log.first)
    out = log.events[i : i + limit]
    size = 0
    for n, raw in enumerate(out):
        size += len(raw)
        if size > max_bytes and n:
            return out[:n]
    return out


class MemoryStore:
    """Session logs in memory, trimmed by count, bytes and time after the run ended.

    It is ``Direct`` (``stores.base``): ``append_now`` needs no await, and
    listeners hear of every change of a log as it happens; a subclass that
    changes how appends or reads behave (a test's faulty store) is not, so
    that every write and read goes through its methods.
    """

    #: A log lives as long as the process, until it expires (see ``Store``).
    loses_no_logs = True

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._logs: dict[str, _Log] = {}
        # (expiry time, order, sid, log) of ended logs: purged as time passes,
        # so that a log nobody reads again is still reclaimed.
        self._expiries: list[tuple[float, int, str, _Log]] = []
        self._order = 0
        self._listeners: dict[str, list[Listener]] = {}

    @property
    def direct(self) -> bool:
        cls = type(self)
        methods = ("append", "append_now", "append_one", "fetch", "read", "wait", "info")
        return all(getattr(cls, m) is getattr(MemoryStore, m) for m in methods)

    def listen(self, sid: str, fn: Listener) -> None:
        self._listeners.setdefault(sid, []).append(fn)

    def unlisten(self, sid: str, fn: Listener) -> None:
        fns = self._listeners.get(sid)
        if fns is not None and fn in fns:
            fns.remove(fn)
            if not fns:
                del self._listeners[sid]

    def _tell(self, sid: str, log: _Log | None, raws: list[bytes], fns: list[Listener] | None = None) -> None:
        """Every listener of ``sid``: the log's state now, and the events just appended."""
        if fns is None:
            fns = self._listeners.get(sid)
            if not fns:
                return
        info = log.info() if log is not None else None
        for fn in list(fns):
            try:
                fn(info, raws)
            except Exception:  # a listener's bug must not undo a stored append
                log_.exception("a listener of %r failed", sid)

    def _purge(self) -> None:
        now = time.time()
        heap = self._expiries
        while heap and heap[0][0] < now:
            _, _, sid, log = heapq.heappop(heap)
            if self._logs.get(sid) is log:
                del self._logs[sid]
                log.wake()
                self._tell(sid, None, [])

    def _get(self, sid: str) -> _Log | None:
        log = self._logs.get(sid)
        if log is not None and log.ended_at is not None:
            if time.time() - log.ended_at > self.retention.ttl_after_end:
                del self._logs[sid]
                log.wake()
                self._tell(sid, None, [])
                return None
        return log

    async def create(self, sid: str, epoch: str, *, head: int = 0, snapshot: dict[str, Any] | None = None) -> None:
        self._purge()
        old = self._logs.get(sid)
        log = self._logs[sid] = _Log(epoch, head)
        if snapshot is not None:
            log.snap = Snapshot.from_map(snapshot)
        if old is not None:
            old.wake()
        self._tell(sid, log, [])

    async def append(self, sid: str, events: Sequence[Appended], *, epoch: str | None = None) -> None:
        self.append_now(sid, events, epoch=epoch)

    def append_now(self, sid: str, events: Sequence[Appended], *, epoch: str | None = None) -> None:
        log = self._logs.get(sid)
        if log is None:
            raise LogMissing(f"no log for {sid!r}")
        raws = log.events
        head = log.first + len(raws) - log.skip - 1
        if epoch is not None:
            if log.epoch != epoch:
                raise LogReplaced(f"log {sid!r} was replaced (epoch {log.epoch!r}, not {epoch!r})")
            if events and events[0].seq != head + 1:
                if events[0].seq <= head:  # a retry: skip what is stored
                    events = [ev for ev in events if ev.seq > head]
                if events and events[0].seq > head + 1:
                    raise SeqGap(f"seq {events[0].seq} does not follow seq {head}", head)
        # Check the whole batch before touching the log: a gap inside it would
        # put raws at positions that no longer match their seqs.
        n = len(events)
        if n == 1:  # checked: ``append_one`` stores it, the step the loop takes
            if events[0].seq != head + 1:
                raise ValueError(f"seq {events[0].seq} does not follow seq {head}")
            self.append_one(sid, events[0], log.epoch)
            return
        if list(map(_SEQ, events)) != list(range(head + 1, head + 1 + n)):
            i = next(i for i, ev in enumerate(events) if ev.seq != head + 1 + i)
            raise ValueError(f"seq {events[i].seq} does not follow seq {head + i}")
        # The payloads are handed over (``Appended``): the reducer keeps them with no second copy.
        new = list(map(_RAW, events))
        nbytes = log.nbytes + sum(map(len, new))
        log.snap.fold(map(_K_D, events), owned=True)
        raws += new
        log.nbytes = nbytes
        retention = self.retention
        if len(raws) - log.skip > retention.max_events or nbytes > retention.max_bytes:
            log.trim(retention)
            # the appended events still held (a batch over the retention lost its oldest)
            held = len(raws) - log.skip
            if held < n:
                new = raws[log.skip :]
        if log.changed is not None:
            log.wake()
        if n:
            fns = self._listeners.get(sid)
            if fns:
                self._tell(sid, log, new, fns)

    def append_one(self, sid: str, ev: Appended, epoch: str) -> None:
        """``append_now(sid, (ev,), epoch=epoch)``: the one event a writer appends on the loop.

        The common case (the log of ``epoch`` exists and ``ev`` is the seq
        after its head) taken in one step; anything else goes the long way,
        with the same errors.
        """
        log = self._logs.get(sid)
        if log is None or log.epoch != epoch:
            return self.append_now(sid, (ev,), epoch=epoch)
        raws = log.events
        seq, k, d, raw = ev
        if seq != log.first + len(raws) - log.skip:
            return self.append_now(sid, (ev,), epoch=epoch)
        # Snapshot.apply, with the fold of an open stream's delta inlined (Snapshot.fold)
        if k == "text" and type(d) is dict and len(d) == 2:
            tid, delta = d.get("id"), d.get("delta")
            parts = log.snap.texts.get(tid) if type(tid) is str else None
            if parts is not None and type(delta) is str:
                parts.append(delta)
            else:
                log.snap.apply(k, d, owned=True)
        else:
            log.snap.apply(k, d, owned=True)
        raws.append(raw)
        log.nbytes = nbytes = log.nbytes + len(raw)
        retention = self.retention
        if len(raws) - log.skip > retention.max_events or nbytes > retention.max_bytes:
            log.trim(retention)  # keeps the newest event: ``raw`` is still held
        if log.changed is not None:
            log.wake()
        fns = self._listeners.get(sid)
        if fns:
            self._tell(sid, log, [raw], fns)
        return None

    async def read(
        self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20, epoch: str | None = None
    ) -> list[bytes]:
        log = self._get(sid)
        if log is None or after >= log.head or (epoch is not None and log.epoch != epoch):
            return []
        return _slice(log, after, limit, max_bytes)

    async def fetch(self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20) -> Fetched | None:
        self._purge()
        log = self._get(sid)
        if log is None:
            return None
        info = log.info()
        if after >= log.head or limit <= 0:
            return Fetched(info, [])
        return Fetched(info, _slice(log, after, limit, max_bytes))

    async def wait(
        self,
        sid: str,
        after: int,
        timeout: float | None = None,
        *,
        epoch: str | None = None,
        ended: bool | None = None,
    ) -> bool:
        log = self._get(sid)
        if (
            log is None
            or (epoch is not None and log.epoch != epoch)
            or (ended is not None and (log.ended_at is not None) != ended)
        ):
            return False
        if log.head > after:
            return True
        # An ended log still waits: a new run under the same sid replaces it
        # (and wakes us), and nothing else can happen to it.
        if log.changed is None:
            log.changed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(log.changed), timeout)
        except TimeoutError:
            return False
        current = self._logs.get(sid)
        return current is log and log.head > after

    async def info(self, sid: str) -> LogInfo | None:
        self._purge()
        log = self._get(sid)
        if log is None:
            return None
        return log.info()

    async def snapshot(self, sid: str) -> tuple[dict[str, Any], int]:
        log = self._get(sid)
        if log is None:
            return Snapshot().as_map(), 0
        return log.snap.as_map(), log.head

    async def end(self, sid: str) -> None:
        self._purge()
        log = self._logs.get(sid)
        if log is not None and log.ended_at is None:
            log.ended_at = time.time()
            self._order += 1
            heapq.heappush(self._expiries, (log.ended_at + self.retention.ttl_after_end, self._order, sid, log))
            log.wake()
            self._tell(sid, log, [])

    async def close(self) -> None:
        for log in self._logs.values():
            log.wake()
        sids = list(self._logs)
        self._logs.clear()
        for sid in sids:
            self._tell(sid, None, [])
        self._expiries.clear()

    def __len__(self) -> int:
        """How many logs the store holds now (expired ones are purged first)."""
        self._purge()
        return len(self._logs)


_: type[Store] = MemoryStore
__: type[Fetches] = MemoryStore
___: type[Direct] = MemoryStore
