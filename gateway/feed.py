"""Feeds: each session's log read once per node and handed to every local watcher.

Theory of operation
-------------------
Without feeds every client connection (its *pump*, ``gateway/connection.py``)
would look at the store for itself: where the log stands, then the events
after its cursor, then a wait; N watchers of one run cost N reads of every
event, and with a store across the network N round trips each.

A ``Feed`` is the one reader of a sid on this node while at least one pump
watches it.  Its task loops: ``fetch`` (``stores.fetch``: the log's state and
the events after the feed's position, at one instant), then ``Store.wait``
once it has caught up.  It keeps

- ``state``: what the last fetch saw (epoch, first, head, ended; None: no
  log), so pumps need no ``Store.info`` per step;
- a bounded *tail*: the newest encoded events of the current epoch, at most
  ``Config.feed_events`` events and ``Config.feed_bytes`` bytes (the oldest
  leave first; ``wirepipe serve --feed-events/--feed-bytes``).  A new epoch
  (a new run of the sid, a log re-created after a loss) empties it, so two
  epochs never meet in it (docs/protocol.md section 2);
- the last frames it built from the tail (at most ``FRAMES``), by (epoch,
  first seq, last seq): watchers at the same cursor and window get the same
  bytes, built once;
- ``changed``: an ``asyncio.Event`` set (and replaced) whenever any of that
  changes.  Pumps wait on it, not on the store.

A pump asks the rules (``protocol.server.ServerConnection.next_step``) with
the feed's state, takes its next frame from the tail, or waits for a change.
Two cases go to the store directly, as every pump did before feeds: a cursor
older than the tail (a client replaying old events, or far behind), and a
step other than read or wait-for-ack (a new epoch, no log, lagged): the
feed's view may be older than what the pump's own welcome saw, so the pump
decides on a fresh ``fetch`` and, if that disagrees with the feed, pokes it.

Push.  A pump at the head of the log *parks* on its feed (``park``) instead
of waiting for a change.  When events arrive, the feed hands each parked
pump the frame at once (``Pusher.push``: the pump writes it to its socket
without a task switch, ``gateway/connection.py``); a pump that cannot take
it that way (its window is full, its socket is busy, the log changed epoch)
is woken and carries on as a task.  So a watcher at the head costs no task
switch per event, and watchers at the same cursor share one frame.

In-process stores.  With a ``Direct`` store (``MemoryStore``) the feed
listens to the log instead of waiting on it: an append hands the feed its
events inside the append, and the feed pushes them on, so an event goes
from the writer to the sockets in one step.  Any other change (a new epoch,
an end, an expiry) pokes the feed's task, which looks at the store.

Faults.  A store error in the feed's task (``StoreUnavailable`` or anything
else) is logged, recorded in ``failure`` (pumps then read the store
themselves, and get the same error as before feeds: a retryable
``unavailable`` close), and retried with backoff (``RETRY_FIRST`` doubling to
``RETRY_CAP``) or as soon as a pump pokes it.  The task ends only when the
feed is dropped: ``LINGER`` seconds after its last pump left.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from itertools import accumulate
from typing import Any, Final, Protocol

from protocol import StoreUnavailable, frame_for

from .stores import Fetched, FetchFn, LogInfo, Store, direct_of, fetch_of

log = logging.getLogger("wirepipe.feed")

#: Seconds a feed lives on after its last pump left (a client that reconnects
#: at once finds it still warm).
LINGER: Final = 5.0
#: Frames a feed keeps after building them, for the next watcher at the same place.
FRAMES: Final = 2
#: Backoff between retries of a failing store: first, cap (seconds).
RETRY_FIRST: Final = 0.05
RETRY_CAP: Final = 2.0


def wire_message(data: bytes) -> bytes:
    """``data`` as one binary WebSocket message on the wire from a server (RFC 6455 section 5.2).

    One final frame, unmasked, no extension: the bytes websockets'
    ``Frame(Opcode.BINARY, data).serialize(mask=False)`` makes, for less.
    """
    n = len(data)
    if n < 126:
        return bytes((0x82, n)) + data
    if n < 0x10000:
        return b"\x82\x7e" + n.to_bytes(2, "big") + data
    return b"\x82\x7f" + n.to_bytes(8, "big") + data


class Tail:
    """The newest encoded events of one epoch, consecutive, bounded by count and bytes.

    ``first`` is the seq of the oldest held, ``next`` the seq the next
    added event must have.  Trimmed events are skipped by offset and
    compacted away in bulk.
    """

    __slots__ = ("raws", "ends", "skip", "first", "nbytes", "max_events", "max_bytes")

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.raws: list[bytes] = []
        #: ends[i]: bytes of raws[0..i] (running total), for byte-bounded takes.
        self.ends: list[int] = []
        self.skip = 0
        self.first = 1
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.raws) - self.skip

    @property
    def next(self) -> int:
        return self.first + len(self)

    def reset(self, first: int) -> None:
        """Empty, to hold events from seq ``first`` on."""
        self.raws, self.ends, self.skip, self.first, self.nbytes = [], [], 0, first, 0

    def add(self, raws: list[bytes]) -> None:
        """Append the events after ``next``, then trim the oldest past the bounds."""
        ends = self.ends
        total = ends[-1] if ends else 0
        if len(raws) == 1:  # most appends: one event
            size = len(raws[0])
            ends.append(total + size)
        else:
            sizes = list(map(len, raws))
            size = sum(sizes)
            ends += accumulate(sizes, initial=total)
            del ends[-len(sizes) - 1]  # the initial total, already the last before
        self.raws += raws
        self.nbytes = nbytes = self.nbytes + size
        if len(self.raws) - self.skip > self.max_events or nbytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        n = len(self.raws)
        while self.skip < n and (n - self.skip > self.max_events or self.nbytes > self.max_bytes):
            self.nbytes -= len(self.raws[self.skip])
            self.skip += 1
            self.first += 1
        if self.skip > 1024 and self.skip * 2 > n:
            del self.raws[: self.skip]
            del self.ends[: self.skip]
            self.skip = 0

    def span(self, after: int, limit: int, max_bytes: int) -> tuple[int, int]:
        """Where the events after seq ``after`` are: (index into ``raws``, count).

        As ``Store.read``: at most ``limit``, at least one, stopping before
        the event that would pass ``max_bytes``.  Count -1: ``after + 1`` is
        older than the tail; 0: nothing after ``after`` here yet.
        """
        if after + 1 < self.first:
            return 0, -1
        i = self.skip + after + 1 - self.first
        n = min(limit, len(self.raws) - i)
        if n <= 0:
            return i, 0
        before = self.ends[i - 1] if i else self.ends[0] - len(self.raws[0])  # ends count from before compactions
        fit = bisect.bisect_right(self.ends, before + max_bytes, i, i + n) - i
        return i, max(fit, 1)


class Pusher(Protocol):
    """A pump parked at the head of a feed (``Feed.park``)."""

    def push(self, feed: Feed) -> bool:
        """Take what the feed now holds without a task switch; False: wake me instead."""

    def wake(self) -> None:
        """Resume the pump's task (it left the feed's parked set)."""


class Feed:
    """The one reader of a sid's log on this node (see the module docstring)."""

    def __init__(
        self, sid: str, store: Store, fetch: FetchFn, tail: Tail, batch_max: int, max_bytes: int, after: int
    ) -> None:
        self.sid = sid
        self.store = store
        self._fetch = fetch
        self.tail = tail
        self.batch_max = batch_max
        self.max_bytes = max_bytes
        #: The log as the last fetch saw it (None: no log).  Meaningful once ``known``.
        self.state: LogInfo | None = None
        #: False until the first fetch answered.
        self.known = False
        #: The error of the last try, until a fetch succeeds again.
        self.failure: Exception | None = None
        self._changed: asyncio.Event | None = None
        #: While a ``Direct`` store's append is pushed (``_heard``): (epoch, the seq
        #: before the new events, their count, the wire bytes of their frame), which
        #: every watcher that was at the head takes.  None at any other time.
        self.news: tuple[str, int, int, bytes] | None = None
        #: Pumps parked at the head, pushed to as events arrive (insertion order).
        self.parked: dict[Pusher, None] = {}
        #: Pumps following this feed.
        self.pumps = 0
        #: Fetches made (for tests and monitoring: reads of this log by this node).
        self.fetches = 0
        self._after = after  # the feed's position: the last seq it read
        self._first_look = True
        self._frames: dict[tuple[str, int, int], list[Any]] = {}
        self._poked = False
        self._rest: asyncio.Future[None] | None = None
        self.idle: asyncio.TimerHandle | None = None
        self._direct = direct_of(store)
        if self._direct is not None:
            self._direct.listen(sid, self._heard)
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"wirepipe-feed-{sid}")
        self.task.add_done_callback(self._unlisten)

    @property
    def changed(self) -> asyncio.Event:
        """Set, and replaced by a fresh one, on every change of the state, the failure or the tail.

        Made when first asked for: a feed whose pumps are all parked makes none.
        """
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def park(self, pump: Pusher) -> None:
        """``pump`` is at the head: push to it as events arrive, or ``wake`` it."""
        self.parked[pump] = None

    def unpark(self, pump: Pusher) -> None:
        """``pump`` stops following (it is closing); nothing if it was not parked."""
        self.parked.pop(pump, None)

    # --- for pumps ----------------------------------------------------------------

    def take(self, after: int, room: int) -> tuple[bytes, int]:
        """The frame of the events after seq ``after`` (at most ``room``), from the tail.

        Returns (frame, count).  Count -1: ``after + 1`` is older than the
        tail (read the store); 0: nothing yet (wait for ``changed``).  Only
        for a pump that follows the feed's epoch (``state.epoch``).
        """
        built, n = self._built(after, room)
        return (built[0] if built is not None else b""), n

    def take_wire(self, after: int, room: int) -> tuple[bytes, int]:
        """``take``, as the bytes of a whole WebSocket message on the wire (server to client).

        A binary frame, unmasked and uncompressed, is the same bytes for every
        client, so watchers at the same place share one copy and the socket
        gets it as it is (``Connection.push``).
        """
        built, n = self._built(after, room)
        if built is None:
            return b"", n
        if built[1] is None:
            built[1] = wire_message(built[0])
        return built[1], n

    def _built(self, after: int, room: int) -> tuple[list[Any] | None, int]:
        """[frame, wire bytes or None] of the events after ``after``, cached by place (see ``take``)."""
        tail = self.tail
        i, n = tail.span(after, room, self.max_bytes)
        if n <= 0:
            return None, n
        assert self.state is not None
        key = (self.state.epoch, after + 1, after + n)
        built = self._frames.get(key)
        if built is None:
            built = [frame_for(tail.raws[i : i + n]), None]
            if len(self._frames) >= FRAMES:
                del self._frames[next(iter(self._frames))]
            self._frames[key] = built
        return built, n

    def poke(self) -> None:
        """Look at the store again soon (a pump saw a log that the feed's state does not show)."""
        self._poked = True
        if self._rest is not None and not self._rest.done():
            self._rest.cancel()

    def agrees(self, got: Fetched | None) -> bool:
        """Whether a pump's own look shows the same log (existence and epoch) as the feed's state."""
        if not self.known or self.failure is not None:
            return False
        if got is None or self.state is None:
            return got is None and self.state is None
        return got.info.epoch == self.state.epoch

    # --- the task -----------------------------------------------------------------

    def _bump(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        if self.parked:
            self._push()

    def _push(self) -> None:
        """Hand what changed to every parked pump; wake those that cannot take it so."""
        parked = self.parked
        for pump in list(parked):
            if pump in parked and not pump.push(self):
                del parked[pump]
                pump.wake()

    def _heard(self, info: LogInfo | None, raws: list[bytes]) -> None:
        """A ``Direct`` store's news: events that follow what the feed holds go in now; else the task looks."""
        st = self.state
        if not (
            raws
            and info is not None
            and st is not None
            and self.known
            and self.failure is None
            and info.epoch == st.epoch
            and self._after == info.head - len(raws)
        ):
            self.poke()
            return
        # ``_apply`` of a fetch that found just these events, the same epoch
        before = self._after
        self.tail.add(raws)
        self._after = info.head
        self.state = info
        n = len(raws)
        # One frame of them all, as a pump's own step would take (``Tail.span``).
        if self.parked and (n == 1 or (n <= self.batch_max and sum(map(len, raws)) <= self.max_bytes)):
            self.news = (info.epoch, before, n, wire_message(frame_for(raws)))
            try:
                self._bump()
            finally:
                self.news = None
        else:
            self._bump()

    def _unlisten(self, _: object) -> None:
        if self._direct is not None:
            self._direct.unlisten(self.sid, self._heard)

    async def _run(self) -> None:
        pause = RETRY_FIRST
        while True:
            try:
                self._poked = False
                got = await self._fetch(self.sid, self._after, limit=self.batch_max, max_bytes=self.max_bytes)
                self.fetches += 1
                self._apply(got)
                pause = RETRY_FIRST
                if not self._poked:
                    await self._wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.failure is None:
                    if isinstance(exc, StoreUnavailable):
                        log.warning("feed %r: %s; retrying", self.sid, exc)
                    else:
                        log.exception("feed %r: the store failed; retrying", self.sid)
                self.failure = exc
                self._bump()
                await self._sleep(pause)
                pause = min(pause * 2, RETRY_CAP)

    async def _wait(self) -> None:
        """Until the log may have changed past what the feed holds (or a poke)."""
        st = self.state
        if st is not None and self._after < st.head:
            return  # more to read
        if st is None or self._direct is not None:
            # No log: nothing in the store to wait on.  Pumps wait for a run
            # of the sid themselves and poke the feed once they see one.  A
            # Direct store tells the feed of every change (``_heard``): an
            # append is taken in there, anything else pokes.
            self._rest = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait({self._rest})
            finally:
                self._rest = None
            return
        # Not cut short by a poke: a pump pokes when it saw another epoch or
        # no log, and each of those ends this wait too.
        await self.store.wait(self.sid, st.head, epoch=st.epoch)

    async def _sleep(self, seconds: float) -> None:
        """A backoff that a poke cuts short."""
        if self._poked:
            return
        self._rest = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait({self._rest}, timeout=seconds)
        finally:
            self._rest = None

    def _apply(self, got: Fetched | None) -> None:
        """Take in what a fetch returned: the state, and the events into the tail."""
        was, failed = self.state, self.failure is not None
        self.failure = None
        tail = self.tail
        if got is None:
            self.state = None
            if was is not None or not self.known or failed:
                tail.reset(1)
                self._frames.clear()
                self._after = 0
                self.known = True
                self._bump()
            return
        info, raws = got.info, got.raws
        start = max(self._after + 1, info.first)  # the seq of raws[0]
        if was is None or was.epoch != info.epoch or not self.known:
            # A first look, or a new epoch: the tail holds only this epoch, from
            # near its head (or from the first pump's cursor on a first look).
            want = max(info.first, info.head - tail.max_events + 1)
            if self._first_look:
                want = max(want, min(self._after + 1, info.head + 1))
            self._first_look = False
            self._frames.clear()
            if raws and start >= want:
                tail.reset(start)
                tail.add(raws)
            else:
                tail.reset(want)
                if raws and start + len(raws) > want:
                    tail.add(raws[want - start :])
        elif raws:
            if start != tail.next:  # the store trimmed past the tail's end
                tail.reset(start)
            tail.add(raws)
        self._after = tail.next - 1
        self.state = info
        self.known = True
        if raws or info != was or failed:
            self._bump()


class Feeds:
    """The feeds of one gateway, by sid: made by the first pump of a sid, dropped after the last."""

    def __init__(
        self, store: Store, *, max_events: int, max_bytes: int, batch_max: int, batch_bytes: int, linger: float = LINGER
    ) -> None:
        self.store = store
        #: The store's ``fetch`` (looked up once): for feeds, and for pumps behind them.
        self.fetch = fetch_of(store)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.batch_max = batch_max
        self.batch_bytes = batch_bytes
        self.linger = linger
        self._feeds: dict[str, Feed] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    def get(self, sid: str) -> Feed | None:
        """The feed of ``sid``, if it has one now."""
        return self._feeds.get(sid)

    def join(self, sid: str, after: int) -> Feed:
        """The feed of ``sid`` for one more pump (whose cursor is ``after``), made if needed."""
        feed = self._feeds.get(sid)
        if feed is None:
            tail = Tail(self.max_events, self.max_bytes)
            feed = self._feeds[sid] = Feed(sid, self.store, self.fetch, tail, self.batch_max, self.batch_bytes, after)
            feed.task.add_done_callback(self._ended)
        if feed.idle is not None:
            feed.idle.cancel()
            feed.idle = None
        feed.pumps += 1
        return feed

    def leave(self, feed: Feed) -> None:
        """A pump stopped following ``feed``; the last one starts its linger."""
        feed.pumps -= 1
        if feed.pumps == 0 and feed.idle is None and self._feeds.get(feed.sid) is feed:
            feed.idle = asyncio.get_running_loop().call_later(self.linger, self._drop, feed)

    def _drop(self, feed: Feed) -> None:
        feed.idle = None
        if feed.pumps == 0 and self._feeds.get(feed.sid) is feed:
            del self._feeds[feed.sid]
            feed.task.cancel()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A feed's task ended: by a drop (cancelled), or by a bug, which is logged.

        A feed whose task died is forgotten and marked failed, so its pumps
        read the store themselves; the next pump of the sid makes a new one.
        """
        if task.cancelled():
            return
        exc = task.exception()
        for sid, feed in list(self._feeds.items()):
            if feed.task is task:
                del self._feeds[sid]
                if feed.idle is not None:
                    feed.idle.cancel()
                feed.failure = exc if isinstance(exc, Exception) else RuntimeError("the feed stopped")
                feed._bump()
                log.error("feed %r: its task ended; its pumps read the store themselves", sid, exc_info=exc)

    async def close(self) -> None:
        """Stop every feed (the gateway is closing); their pumps read the store themselves."""
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            if feed.idle is not None:
                feed.idle.cancel()
            feed.task.cancel()
        await asyncio.gather(*(f.task for f in feeds), return_exceptions=True)
        for feed in feeds:
            feed.failure = RuntimeError("the gateway is closing")
            feed._bump()
