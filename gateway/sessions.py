"""Sessions: the writer side of one run in this process.

Theory of operation
-------------------
A ``Session`` owns what only the writer may own: the next seq, the open asks,
the messages clients sent to the agent, the reply outcomes by ``rid``, and
the cancel flag.  Agent threads append through ``emit`` under a plain lock:
an event is checked first, and takes its seq only once it is encoded, so a
value that cannot be encoded raises at the call and burns nothing; any
number of threads get one gap-free order.  A payload that holds agent
objects is encoded before the lock (the seq is spliced in under it), so
agent code the encoder runs (a model's ``model_dump``) may itself write
events; a plain one, whose packing runs no Python code, is encoded whole
under the lock.  The kinds the snapshot keeps are copied at the call
(``protocol.codec.copy_value``): the agent may go on changing its dicts.

One *writer task* per session hands pending events to the store in batches,
in order, and never gives up on a store hiccup:

- every store error is retried with backoff (transient ones for as long as
  it takes; anything else a few times, then the run fails for good);
- appends name the epoch, so a retry after a lost reply stores nothing
  twice (``Store.append`` skips what the log already holds);
- a log that is gone (a store restarted without persistence) or that lost
  events is re-created under a new epoch that continues the seqs, seeded
  with the writer's own snapshot: clients get ``recovered: false`` with the
  state, then everything written after;
- the pending buffer is bounded (``backlog_events``, ``backlog_bytes``):
  when a store has been unreachable that long, writes raise
  ``BacklogFull`` (nothing appended); the final ``status`` and the answers
  that close asks always fit;
- a failure for good (a bug, a log another run took over) ends the run:
  ``failed`` with a reason every client sees (on a fresh epoch when the old
  log cannot take it), its app task cancelled, its asks closed.

Writer leases.  On a store with leases (``stores.leases_of``: RedisStore,
shared by several nodes) the writer first claims the sid under the
session's ``holder`` id (one per Session, the same across its epochs): a
sid another live writer holds ends this run at once, before its log is
touched (``ready`` fails with ``sid_taken``).  While the run lives a renewer
task renews the claim every ``lease_ttl / 3``; every create, append and end
names the holder, so once the claim is lost (another node found it lapsed
and finalised the run) the store refuses them with ``LeaseLost`` and this
writer stops as if its log were replaced.  The claim is released once the
run's end is stored.

Requests from any node.  On a store that hands requests to the writer
(``stores.requests_of``: RedisStore), a *request server* task takes the
``reply``, ``send`` and ``cancel`` frames that clients sent through other
nodes (or that an agent process without a WebSocket server gets) and runs
them exactly as a local client's (``handle``): once per ``rid``, viewers
refused, the outcome sent back to the node that asked.

Readers never touch a session: they read the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final, TypeVar

import msgpack

from protocol import (
    BacklogFull,
    Cancel,
    ErrorCode,
    Grant,
    Kind,
    LeaseLost,
    LogMissing,
    LogReplaced,
    ProtocolError,
    Replied,
    Reply,
    RunState,
    Send,
    SeqGap,
    Snapshot,
    StoreUnavailable,
    check_value,
    decode_client,
    encode_event,
    is_final,
)
from protocol.codec import NotPlain, copy_value, encode_body, encode_text, is_flat_map, walk_value, with_seq
from protocol.events import FINAL_STATES

from .metrics import LAG_EVERY, LAG_MARKS, LAG_MASK, Metrics
from .middleware import Middleware, apply_events
from .stores import Appended, Leases, Requests, Store, direct_of, leases_of, requests_of

log = logging.getLogger("wirepipe.session")

T = TypeVar("T")

#: Reply outcomes remembered per session, for idempotent re-sends by rid.
MAX_REMEMBERED_RIDS: Final = 10_000
#: Events handed to the store in one append, at most (a long backlog is
#: written in slices, so that no single store call blocks for long).
MAX_FLUSH_BATCH: Final = 1000
#: A batch of at least this many events, when an agent thread woke the writer
#: last, means that thread writes faster than the writer stores: the writer
#: then lets events gather for ``GATHER_SECONDS`` before it looks again,
#: instead of waking for every few (each wake is a hand-over of the GIL
#: between the agent's thread and the loop's, which cost more than the events
#: themselves: ``bench.pipe_cost``).  Events written on the loop never wait so.
GATHER_EVENTS: Final = 16
GATHER_SECONDS: Final = 0.001
#: Kinds whose payload the snapshot reducer keeps: emit hands on a copy, as
#: a client decodes it, so that an agent mutating its dict later changes nothing.
_KEPT_KINDS: Final = frozenset(k.value for k in (Kind.PLAN, Kind.TASK, Kind.ASK, Kind.STATUS))
#: Backoff between store retries: first, cap (seconds).
RETRY_FIRST: Final = 0.05
RETRY_CAP: Final = 2.0
#: Tries for a store error that is not a connection problem (likely a bug).
MAX_ODD_FAILURES: Final = 5
#: What a Python encoder may raise for a value it cannot write.
_ENCODE_ERRORS: Final = (ValueError, TypeError, OverflowError, RecursionError)
# Once per event, so bound once: the clock, the thread's id, and what makes an ``Appended``
# without the named tuple's Python-level ``__new__`` (``_tuple_new(Appended, fields)``).
_now: Final = time.time
_tuple_new: Final = tuple.__new__
_get_ident: Final = threading.get_ident
# An ``Appended``'s fields, in C and by index (cheaper than by name): (k, d) for the reducer, raw for its size.
_K_D: Final = itemgetter(Appended._fields.index("k"), Appended._fields.index("d"))
_RAW: Final = itemgetter(Appended._fields.index("raw"))


def _unwritable(k: str, exc: Exception) -> ValueError:
    return ValueError(f"cannot write a {str(k)!r} event: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Limits:
    """Per-session bounds, each with a ``wirepipe serve`` flag (docs/reliability.md)."""

    #: Events written and not yet stored; past it, writes raise ``BacklogFull``.
    backlog_events: int = 100_000
    #: Bytes of those events.
    backlog_bytes: int = 64 * 1024 * 1024
    #: Client ``send`` messages the agent has not taken yet; past it, ``inbox_full``.
    inbox_messages: int = 1000
    #: Bytes of those messages (their frame sizes).
    inbox_bytes: int = 16 * 1024 * 1024


class Flag(threading.Event):
    """A ``threading.Event`` that is also truthy when set: ``if pipe.cancelled: ...``."""

    def __bool__(self) -> bool:
        return self.is_set()


class Session:
    """The writer side of one run: seq, asks, inbox, replies, cancel."""

    def __init__(
        self,
        sid: str,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        predecessor: Session | None = None,
        limits: Limits | None = None,
        middleware: Sequence[Middleware] = (),
        *,
        reserved_by: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.sid = sid
        #: The gateway's counters (events appended, asks, store retries; gateway/metrics.py).
        self.metrics = metrics if metrics is not None else Metrics()
        #: seq -> monotonic time of its emit, for the seqs sampled for the delivery lag.
        self.lag_marks: dict[int, float] = {}
        self.epoch = secrets.token_hex(8)
        #: This writer's id in the store's lease of the sid (the same across epochs).
        self.holder = secrets.token_hex(8)
        #: A queued start's reservation of the sid: this writer takes the lease
        #: over from it, or takes it if nobody holds it (``Leases.take_over``).
        self.reserved_by = reserved_by
        self.store = store
        self._leases = leases_of(store)
        self._requests = requests_of(store)
        #: A store in this process: events emitted on the loop while the
        #: writer waits are stored at once (``_store_now``).
        self._direct = direct_of(store) if self._leases is None else None
        #: The writer was last woken by an agent thread (not on the loop): see ``GATHER_EVENTS``.
        self._by_thread = False
        self._server: asyncio.Task[None] | None = None
        self._lease_lost = False
        self._renewer: asyncio.Task[None] | None = None
        #: Lease renewals that succeeded (``await session.renewed(n)``).
        self.renewals = 0
        self._renewed = asyncio.Event()
        #: True if another live writer held the sid: this run never started.
        self.refused = False
        self.loop = loop
        self.limits = limits or Limits()
        self.middleware = tuple(middleware)
        self._max_events = self.limits.backlog_events
        self._max_bytes = self.limits.backlog_bytes
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: list[Appended] = []  # written, not taken by the writer yet
        self._waiting = 0  # events written and not stored yet (pending + the batch in flight)
        self._pending_bytes = 0  # their bytes
        self._idle = False  # the writer waits for events (under the lock)
        self._more = asyncio.Event()
        self._verify = False  # a reader found the log missing: the writer looks
        self._drained: list[asyncio.Future[None]] = []
        self._ask_ids = itertools.count(1)
        self.ended = False
        #: The final ``status`` payload, once the run ended.
        self.final_status: dict[str, Any] | None = None
        self.predecessor = predecessor
        self._end_stored = False
        #: Done once the log exists in the store (the first time).
        self.ready: asyncio.Future[None] = loop.create_future()
        #: Set while the store fails; cleared when it answers again.
        self.troubled = asyncio.Event()
        #: Why the store failed last (None while it works).
        self.trouble: str | None = None
        #: What is stored: the seq of the last stored event and the state as of it.
        self.stored = 0
        self._snap = Snapshot()
        # The state as of `stored`, to seed a log re-created after a loss; a
        # store that loses no logs needs none (see Store).
        self._keep_snap = not getattr(store, "loses_no_logs", False)
        self.asks: dict[str, tuple[dict[str, Any], asyncio.Future[Any]]] = {}
        self._asked: dict[str, float] = {}  # ask id -> when it was asked (monotonic), for metrics
        self.settled: set[str] = set()
        self.replies: OrderedDict[str, Replied] = OrderedDict()
        self.inbox: asyncio.Queue[tuple[Any, int]] = asyncio.Queue()
        self._inbox_bytes = 0
        self.cancelled = Flag()
        self.cancel_reason: str | None = None
        self.on_cancel: list[Callable[[str | None], None]] = []
        self.task: asyncio.Future[Any] | None = None  # the app run, when the gateway started it
        #: The registered app this run runs (None: a Pipe the embedding code writes), and when it began.
        self.app: str | None = None
        self.started = time.time()
        self.dropped = 0
        self.writer: asyncio.Task[None] = loop.create_task(self._write(), name=f"wirepipe-writer-{sid}")
        self.writer.add_done_callback(self._writer_done)

    # --- writing (any thread) ---------------------------------------------

    @property
    def head(self) -> int:
        """The last seq handed out (not necessarily stored yet)."""
        return self._seq

    @property
    def finished(self) -> bool:
        """True once the run ended and its log was closed in the store."""
        return self._end_stored

    @property
    def backlog(self) -> int:
        """Events written and not stored yet."""
        return self._waiting

    def emit(
        self,
        k: str,
        d: Any,
        ts: float | None = None,
        *,
        checked: bool = False,
        force: bool = False,
        plain: bool = False,
        text: bytes | None = None,
    ) -> int:
        """Append one event; returns its seq.  Never blocks on I/O.

        Returns 0 if the run has ended, or if a middleware dropped the event
        (docs/middleware.md: every event passes the session's middleware first).

        ``checked``: ``d`` is known to be a well-formed value (built here).
        ``force``: the event fits even a full backlog (the few that close a
        run: answers by ``closed``, the final status).
        ``plain``: ``d`` is a dict of built-in strings and numbers (built
        here: a text delta), so encoding it runs no Python code.
        ``text``: ``d`` is ``{"id": tid, "delta": a str}`` of a ``text``
        event (built here), and this is ``codec.text_head(tid)``: the event
        is encoded from its parts (``codec.encode_text``).  Only with ``ts`` None.

        Raises:
            ValueError: ``d`` cannot be encoded (nests deeper than
                ``protocol.MAX_DEPTH``, a map key that is not a string or a
                number).  Nothing is appended.
            BacklogFull: too many events wait for the store (nothing appended).
        """
        if self.middleware:
            out = apply_events(self.middleware, self.sid, k, d)
            if out is None:
                return 0  # dropped by a middleware: no seq
            if out[0] is not k or out[1] is not d:
                k, d = out
                checked = plain = False
            text = None  # a middleware may have changed d in place
        if self.ended:  # read without the lock: once set it stays set (and is read again under it)
            return self._drop(k)
        # Encoding a payload that holds agent objects runs agent code (a
        # model's model_dump), which may write events itself: such payloads
        # are checked, encoded and copied before the lock, and the seq is
        # spliced in under it (codec.with_seq).  A plain payload (a text
        # delta, a flat map of built-in scalars: most events) runs no Python
        # code when packed, so it is encoded in one piece under the lock,
        # which is cheaper; either way a value that fails to encode raises
        # before its seq is taken.
        stamp = _now() if ts is None else ts
        body = None
        if text is None and (k in _KEPT_KINDS or not (plain or is_flat_map(d))):
            body, d = self._encode(k, d, stamp, checked)
        lock = self._lock
        lock.acquire()  # not `with`: this costs half as much, once per event
        try:
            if self.ended:
                return self._drop(k)
            seq = self._seq + 1
            if body is not None:
                raw = with_seq(seq, body)
            else:
                try:
                    raw = encode_event(seq, k, stamp, d) if text is None else encode_text(seq, stamp, text, d["delta"])
                except _ENCODE_ERRORS as exc:
                    raise _unwritable(k, exc) from None
            size = len(raw)
            if not force and (self._waiting >= self._max_events or self._pending_bytes + size > self._max_bytes):
                raise BacklogFull(
                    f"session {self.sid}: {self._waiting} events ({self._pending_bytes} bytes) "
                    f"wait for the store ({self.trouble or 'busy'}); write refused"
                )
            self._seq = seq
            if (seq & LAG_MASK) == 1:  # sampled for the delivery lag (gateway/metrics.py)
                self.lag_marks[seq] = time.monotonic()
                self.lag_marks.pop(seq - LAG_EVERY * LAG_MARKS, None)
            ev = _tuple_new(Appended, (seq, k, d, raw))
            if k == "status" and is_final(k, d):
                self.ended = True
                self.final_status = d
            # The writer waits for events (so none are pending), this is its
            # loop, and the store is Direct: the event is stored below, at
            # once (``_store_now``), not queued for the writer, which waits on.
            kick = self._idle
            # ``on_loop``, inlined: asyncio's loop notes its thread while it
            # runs (None once stopped); another loop (uvloop) is asked.
            tid = getattr(self.loop, "_thread_id", None)
            now = (
                kick
                and self._direct is not None
                and not self.ended
                and not self._verify
                and (tid == _get_ident() if tid is not None else on_loop(self.loop))
            )
            if not now:
                self._pending.append(ev)
                self._waiting += 1
                self._pending_bytes += size
                self._idle = False
        finally:
            lock.release()
        if now:
            self._store_now(ev, size)
        elif kick:
            if on_loop(self.loop):
                self._by_thread = False
                self._more.set()
            else:
                self._by_thread = True
                try:
                    self.loop.call_soon_threadsafe(self._more.set)
                except RuntimeError:  # loop closed: the gateway is gone
                    pass
        return seq

    def _encode(self, k: str, d: Any, ts: float, checked: bool) -> tuple[bytes, Any]:
        """``emit``'s checks: the event encoded without its seq, and the payload to hand on.

        The payload handed on is ``d`` itself, except for the kinds the
        reducers keep: for those it is a copy as a client decodes it, which
        the agent changing ``d`` later cannot touch.  Objects the encoder
        expands (models, dataclasses) are checked in the shape they get.

        Raises:
            ValueError: ``d`` cannot be written.
        """
        kept = k in _KEPT_KINDS
        opaque = False
        own: Any = None
        if kept:
            try:
                own = copy_value(d)  # checks as it copies
            except NotPlain:
                opaque = True
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"cannot write a {str(k)!r} event: its payload {exc}") from None
        if opaque or not (kept or checked):
            why, expands = walk_value(d)
            if why is not None:
                raise ValueError(f"cannot write a {str(k)!r} event: its payload {why}")
            opaque = opaque or expands
        try:
            body = encode_body(k, ts, d)
            if opaque:
                decoded = msgpack.unpackb(body, raw=False, strict_map_key=False)["d"]
                why = check_value(decoded)
                if why is not None:
                    raise ValueError(why)
                own = decoded
        except _ENCODE_ERRORS as exc:
            raise _unwritable(k, exc) from None
        return body, (own if kept else d)

    def _drop(self, k: str) -> int:
        """An event after the run ended: dropped (0), with one warning per session."""
        self.dropped += 1
        if self.dropped == 1:
            log.warning("session %s: %s event after the run ended: dropped", self.sid, str(k))
        return 0

    # --- the writer task (event loop) ------------------------------------------

    async def _write(self) -> None:
        """Create the log, then store pending events in order until the run's end is stored."""
        try:
            if self.predecessor is not None:
                # The run this one replaces may still be writing its last events
                # and ending its log: it finishes first, then the new log is made.
                await self.predecessor.drained()
                self.predecessor = None
            leases = self._leases
            if leases is not None:
                if not await self._retry(lambda: self._claim(leases)) and not (
                    # a run that wrote its final status is about to give the sid up
                    await ending(self.store, self.sid, leases.lease_ttl or RETRY_CAP)
                    and await self._retry(lambda: self._claim(leases))
                ):
                    raise ProtocolError(ErrorCode.SID_TAKEN, f"sid {self.sid!r} already has a run (on another node)")
                self._renewer = self.loop.create_task(self._renew(), name=f"wirepipe-lease-{self.sid}")
            await self._retry(lambda: self._create())
            self.ready.set_result(None)
            if self._requests is not None:
                self._server = self.loop.create_task(
                    self._serve_requests(self._requests), name=f"wirepipe-requests-{self.sid}"
                )
            while True:
                if self._lease_lost:
                    raise LeaseLost(f"the lease of {self.sid!r} was lost")
                if self._verify:
                    self._verify = False
                    await self._check_log()
                with self._lock:
                    batch = self._pending[:MAX_FLUSH_BATCH]
                    del self._pending[:MAX_FLUSH_BATCH]
                    if not batch and not (self.ended and not self._end_stored):
                        self._idle = True  # under the lock: the next emit kicks us
                if batch:
                    await self._store(batch)
                    if (
                        self._by_thread
                        and len(batch) >= GATHER_EVENTS
                        and len(self._pending) < MAX_FLUSH_BATCH
                        and not self.ended
                    ):
                        await asyncio.sleep(GATHER_SECONDS)  # a pace (see GATHER_EVENTS), not a synchronisation
                    continue
                if self.ended and not self._end_stored:
                    # After the final status nothing more can be emitted: end the log.
                    await self._end()
                    await self._release()
                    self._settle_drained()
                    return
                self._settle_drained()
                await self._more.wait()
                self._more.clear()
        except asyncio.CancelledError:
            self._settle_drained()
            raise
        except Exception as exc:
            await self._give_up(exc)
        finally:
            if self._renewer is not None:
                self._renewer.cancel()
            if self._server is not None:
                self._server.cancel()

    # --- the store, under the lease when it has leases ---------------------------

    async def _claim(self, leases: Leases) -> bool:
        if self.reserved_by is not None:
            return await leases.take_over(self.sid, self.reserved_by, self.holder)
        return await leases.claim(self.sid, self.holder)

    async def _create(self, head: int = 0, snapshot: dict[str, Any] | None = None) -> None:
        if self._leases is not None:
            await self._leases.create(self.sid, self.epoch, head=head, snapshot=snapshot, holder=self.holder)
        else:
            await self.store.create(self.sid, self.epoch, head=head, snapshot=snapshot)

    async def _append(self, events: Sequence[Appended]) -> None:
        if self._leases is not None:
            await self._leases.append(self.sid, events, epoch=self.epoch, holder=self.holder)
        else:
            await self.store.append(self.sid, events, epoch=self.epoch)

    async def _end_store(self) -> None:
        if self._leases is not None:
            await self._leases.end(self.sid, holder=self.holder, release=True)
        else:
            await self.store.end(self.sid)

    async def _renew(self) -> None:
        """Renew the lease every ``lease_ttl / 3`` until the writer ends; flag a lost one."""
        leases = self._leases
        assert leases is not None and leases.lease_ttl is not None
        period = leases.lease_ttl / 3
        # The first renewal comes at a random point of the first period, so
        # that runs started together do not all renew at the same moment.
        delay = period * random.uniform(0.5, 1.0)
        while True:
            await asyncio.sleep(delay)  # a timer, not a synchronisation
            delay = period
            try:
                held = await leases.renew(self.sid, self.holder, self.epoch)
            except Exception as exc:  # the store is down: the next period tries again
                log.warning("session %s: lease renewal failed: %s: %s", self.sid, type(exc).__name__, exc)
                continue
            if not held:
                log.error("session %s: its lease was taken by another node; the run stops", self.sid)
                self._lease_lost = True
                self._more.set()
                return
            self.renewals += 1
            self._renewed.set()
            self._renewed = asyncio.Event()

    async def renewed(self, n: int) -> None:
        """Return once the lease was renewed ``n`` times (for tests and monitoring)."""
        while self.renewals < n:
            await self._renewed.wait()

    async def _release(self) -> None:
        """The run's end is stored: give the sid up (best effort: it lapses anyway)."""
        if self._leases is None:
            return
        if self._renewer is not None:
            self._renewer.cancel()
        try:
            await self._leases.release(self.sid, self.holder)
        except Exception as exc:
            log.warning(
                "session %s: could not release its lease (it lapses): %s: %s", self.sid, type(exc).__name__, exc
            )

    async def _store(self, batch: list[Appended]) -> None:
        while True:
            try:
                await self._retry(lambda: self._append(batch))
                break
            except (LogMissing, SeqGap) as exc:
                await self._reopen(exc)
        self._stored(batch)

    def _stored(self, batch: list[Appended]) -> None:
        """``batch`` is in the store: the writer's bookkeeping."""
        if self._keep_snap:
            # Kept kinds were decoded afresh in emit and the stores copy
            # what they keep: the reducer may own them.
            self._snap.fold(map(_K_D, batch), owned=True)
        n = len(batch)
        self.stored = batch[-1].seq
        self.metrics.events_appended += n
        size = sum(map(len, map(_RAW, batch)))
        lock = self._lock
        lock.acquire()
        self._waiting -= n
        self._pending_bytes -= size
        lock.release()

    def _store_now(self, ev: Appended, size: int) -> None:
        """Store ``ev`` at once, on the loop, with no task switch (a ``Direct`` store).

        Called by ``emit`` on the event loop when the writer was waiting
        for events, so the writer has nothing pending or in flight: ``ev``
        is the newest event (``size`` bytes), not counted as pending.  The
        store's listeners (``Feed``) push it on to the watchers' sockets
        inside the append, so a watcher at the head gets the event before
        ``set_message`` returns.  If the append fails, ``ev`` goes back to
        the front of the pending events (any that another thread wrote
        meanwhile follow it) and the writer is woken to store it with its retries.
        """
        direct = self._direct
        assert direct is not None
        try:
            direct.append_one(self.sid, ev, self.epoch)
        except Exception:
            lock = self._lock
            with lock:
                self._pending.insert(0, ev)
                self._waiting += 1
                self._pending_bytes += size
                self._idle = False
            self._more.set()
            return
        if self._keep_snap:
            self._snap.apply(ev.k, ev.d, owned=True)
        self.stored = ev.seq
        self.metrics.events_appended += 1

    def poke(self) -> None:
        """A reader found this run's log missing: the writer checks it, and re-creates it if lost.

        Without this a log lost while the agent is quiet (waiting on an ask)
        would stay missing until its next write.
        """
        if not self._end_stored and not self.writer.done():
            self._verify = True
            self._more.set()

    async def _check_log(self) -> None:
        info = await self._retry(lambda: self.store.info(self.sid))
        if info is not None and info.epoch != self.epoch:
            raise LogReplaced(f"log {self.sid!r} was replaced")
        if info is None or info.head < self.stored:
            await self._reopen(LogMissing("the log is missing") if info is None else SeqGap("behind", info.head))

    async def _end(self) -> None:
        while True:
            try:
                await self._retry(lambda: self._end_log())
                break
            except (LogMissing, SeqGap) as exc:
                await self._reopen(exc)
        self._end_stored = True

    async def _end_log(self) -> None:
        info = await self.store.info(self.sid)
        if info is None:
            raise LogMissing(f"no log for {self.sid!r}")
        if info.epoch != self.epoch:
            raise LogReplaced(f"log {self.sid!r} was replaced")
        if info.head < self.stored:
            raise SeqGap(f"the log is at {info.head}, behind {self.stored}", info.head)
        await self._end_store()

    async def _reopen(self, why: Exception) -> None:
        """The log is gone or lost events: continue under a new epoch, from what is stored."""
        old, self.epoch = self.epoch, secrets.token_hex(8)
        log.warning(
            "session %s: its log was lost (%s); continuing under epoch %s from seq %d (was %s)",
            self.sid,
            why,
            self.epoch,
            self.stored + 1,
            old,
        )
        snapshot = self._snap.as_map()
        leases = self._leases
        # The lease went with the log if the store lost its data: take it back,
        # unless another node finalised the run meanwhile.
        if leases is not None and not await self._retry(lambda: leases.renew(self.sid, self.holder, old)):
            raise LeaseLost(f"the lease of {self.sid!r} was lost")
        await self._retry(lambda: self._create(self.stored, snapshot))

    async def _retry(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a store call until it succeeds; transient errors are retried for as long as it takes.

        Raises:
            LogMissing, LogReplaced, SeqGap: for the caller to handle.
            Exception: a non-transient error ``MAX_ODD_FAILURES`` times in a row.
        """
        delay = RETRY_FIRST
        failures = odd = 0
        while True:
            try:
                result = await op()
            except (LogMissing, LogReplaced, SeqGap):
                raise
            except Exception as exc:
                failures += 1
                transient = isinstance(exc, (StoreUnavailable, OSError, TimeoutError))
                if not transient:
                    odd += 1
                    if odd >= MAX_ODD_FAILURES:
                        raise
                self.metrics.store_retries["transient" if transient else "other"] += 1
                self.trouble = f"{type(exc).__name__}: {exc}"
                self.troubled.set()
                if failures == 1 or failures % 50 == 0:
                    log.warning(
                        "session %s: store call failed (%d in a row, %d events waiting): %s; retrying",
                        self.sid,
                        failures,
                        self._waiting,
                        self.trouble,
                        exc_info=not transient,
                    )
                await asyncio.sleep(delay)  # backoff
                delay = min(delay * 2, RETRY_CAP)
                continue
            if failures:
                log.info("session %s: the store answers again after %d failed calls", self.sid, failures)
                self.trouble = None
                self.troubled.clear()
            return result

    async def _give_up(self, exc: Exception) -> None:
        """The log cannot be written for good: end the run ``failed`` where clients can see it."""
        # Replaced, lease lost, or never claimed: the log belongs to another writer.
        replaced = isinstance(exc, (LogReplaced, ProtocolError))
        with self._lock:
            lost = self._waiting
            self._pending.clear()
            self._waiting = self._pending_bytes = 0
            self.ended = True  # nothing more is accepted
        if isinstance(exc, ProtocolError):
            self.refused = True
            log.warning("session %s: another node runs this sid; this run does not start", self.sid)
        elif replaced:
            log.error(
                "session %s: another writer took its log (%s); this run stops (%d events not stored)",
                self.sid,
                type(exc).__name__,
                lost,
            )
        else:
            log.error(
                "session %s: its events cannot be stored (%d not stored); the run fails", self.sid, lost, exc_info=exc
            )
        if self.task is not None and not self.task.done():
            self.task.cancel()
        open_asks = list(self.asks)
        for ask_id in open_asks:
            _, fut = self.asks.pop(ask_id)
            self.settled.add(ask_id)
            self._ask_ended(ask_id, "closed")
            if not fut.done():
                fut.cancel()
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved here: waiters see it too
        if replaced:
            self._end_stored = True
            self._settle_drained()
            return
        detail = f"internal: the session log could not be written ({type(exc).__name__}); {lost} events lost"
        events = failed_ending(self.stored, open_asks, detail)
        try:
            try:
                # The log as it stands keeps its history: the refused events are
                # dropped and the end follows what is stored.
                await self._retry(lambda: self._append(events))
            except LogReplaced:
                raise
            except Exception as again:
                # The log cannot take even that: a fresh epoch that continues
                # from what is stored, with its state.
                log.warning(
                    "session %s: the log refuses its end too (%s); ending it under a new epoch", self.sid, again
                )
                snapshot = self._snap.as_map()
                if not self._keep_snap:
                    snapshot = (await self._retry(lambda: self.store.snapshot(self.sid)))[0]
                self.epoch = secrets.token_hex(8)
                await self._retry(lambda: self._create(self.stored, snapshot))
                await self._retry(lambda: self._append(events))
            self._seq = self.stored = events[-1].seq
            await self._retry(lambda: self._end_store())
            await self._release()
        except Exception:
            log.exception("session %s: could not record the failure either", self.sid)
        self._end_stored = True
        self._settle_drained()

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # _give_up itself failed (a bug): at least nobody waits for this writer.
        log.error("session %s: the writer task died", self.sid, exc_info=task.exception())
        with self._lock:
            self.ended = True
        self._end_stored = True
        self._settle_drained()

    def _settle_drained(self) -> None:
        futs, self._drained = self._drained, []
        for fut in futs:
            if not fut.done():
                fut.set_result(None)

    async def drained(self) -> None:
        """Wait until every event emitted so far is in the store (and the end, once ended)."""
        with self._lock:
            if self.writer.done() or (self._idle and not self._waiting and self.ready.done()):
                return
            fut = self.loop.create_future()
            self._drained.append(fut)
        await fut

    # --- asks (event loop) --------------------------------------------------

    async def ask(
        self,
        prompt: str,
        *,
        choices: list[Any] | None = None,
        default: Any = None,
        timeout: float | None = None,
        other: bool = False,
        **extra: Any,
    ) -> Any:
        """Append an ``ask`` and wait for its answer (``default`` after ``timeout``)."""
        ask_id = f"a{next(self._ask_ids)}"
        d: dict[str, Any] = {"id": ask_id, "prompt": prompt, **extra}
        if choices is not None:
            d["choices"] = list(choices)
            if other:
                d["other"] = True
        if default is not None:
            d["default"] = default
        if timeout is not None:
            d["timeout"] = timeout
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.asks[ask_id] = (d, fut)
        try:
            seq = self.emit(Kind.ASK, d)
        except BaseException:
            del self.asks[ask_id]  # not asked: a bad payload, or a full backlog
            raise
        if not seq:
            del self.asks[ask_id]
            return default
        self.metrics.asks_opened += 1
        self._asked[ask_id] = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self.settle(ask_id, default, by="timeout")
            return fut.result()
        finally:
            if not fut.done():  # the asking coroutine was cancelled
                if self.asks.pop(ask_id, None) is not None:
                    self.settled.add(ask_id)
                    self._ask_ended(ask_id, "closed")
                    self.emit(Kind.ANSWER, {"id": ask_id, "value": None, "by": "closed"}, checked=True, force=True)
                fut.cancel()

    def settle(self, ask_id: str, value: Any, *, by: str) -> bool:
        """First answer wins: resolve the ask and append ``answer``.  False if not open.

        Raises:
            ValueError: ``value`` cannot be written (too deep, odd map keys);
                the ask stays open.
        """
        entry = self.asks.get(ask_id)
        if entry is None:
            return False
        why = check_value(value)
        if why is not None:
            raise ValueError(f"the answer {why}")
        # Appended before the ask is settled: a value that cannot be encoded
        # leaves it open.  It always fits the backlog (at most one per ask).
        self.emit(Kind.ANSWER, {"id": ask_id, "value": value, "by": by}, checked=True, force=True)
        del self.asks[ask_id]
        self.settled.add(ask_id)
        self._ask_ended(ask_id, by)
        _, fut = entry
        if not fut.done():
            fut.set_result(value)
        return True

    def _ask_ended(self, ask_id: str, by: str) -> None:
        """Count an ask that is no longer open, and how long it was (``by``: its answer's)."""
        asked = self._asked.pop(ask_id, None)
        if asked is not None:
            self.metrics.ask_settled(by, time.monotonic() - asked)

    def answer(self, ask_id: str, value: Any, *, by: str = "client") -> str | None:
        """Settle an ask from outside; returns None on success or the error code.

        ``bad_value``: not one of the choices, or a value that cannot be
        written back; the ask stays open either way.
        """
        entry = self.asks.get(ask_id)
        if entry is None:
            return ErrorCode.ASK_CLOSED if ask_id in self.settled else ErrorCode.UNKNOWN_ASK
        d, _ = entry
        choices = d.get("choices")
        if choices is not None and not d.get("other") and value not in choices:
            return ErrorCode.BAD_VALUE
        try:
            self.settle(ask_id, value, by=by)
        except ValueError:
            return ErrorCode.BAD_VALUE
        return None

    # --- requests from clients (event loop) --------------------------------

    def handle(
        self,
        frame: Reply | Send | Cancel,
        grant: Grant,
        size: int = 0,
        passes: Callable[[Reply | Send | Cancel], Reply | Send | Cancel | None] | None = None,
    ) -> Replied:
        """Run a client's ``reply``, ``send`` or ``cancel`` once per ``rid``; the same rid gets the first outcome.

        ``size`` is the frame's size on the wire (it counts against the
        inbox).  ``passes`` is the gateway's middleware (docs/middleware.md),
        run once per rid: None from it refuses the request.
        """

        def act() -> str | None:
            f = frame if passes is None else passes(frame)
            if f is None:
                return ErrorCode.REFUSED
            if isinstance(f, Reply):
                return self.answer(f.ask, f.value)
            if isinstance(f, Send):
                return self.deliver(f.data, size)
            return self.cancel(f.reason)

        return self.request(frame.rid, grant, act)

    def _remote(self, req: dict[str, Any]) -> dict[str, Any]:
        """A request another node handed on (see ``gateway/connection.py``): its outcome."""
        if req.get("e") != self.epoch:
            # The client follows another run of this sid: the node that asked
            # answers it as for a run that is not here.
            return {"stale": True}
        frame = decode_client(req["f"])
        if not isinstance(frame, (Reply, Send, Cancel)):
            raise TypeError(f"a {frame.t.value} frame is not a request")
        r = self.handle(frame, Grant(req["g"]), int(req.get("n") or 0))
        # "once": the outcome this rid will always get (see Session.request).
        return {"ok": r.ok, "err": r.err, "once": self.replies.get(r.rid) is r}

    async def _serve_requests(self, requests: Requests) -> None:
        """Answer the requests other nodes hand on, until the writer ends; retried while the store fails."""
        delay = RETRY_FIRST
        while True:
            try:
                await requests.serve_requests(self.sid, self._remote)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "session %s: cannot take requests from other nodes (%s: %s); retrying",
                    self.sid,
                    type(exc).__name__,
                    exc,
                    exc_info=not isinstance(exc, StoreUnavailable),
                )
                await asyncio.sleep(delay)  # backoff
                delay = min(delay * 2, RETRY_CAP)

    def _remember(self, r: Replied) -> Replied:
        self.replies[r.rid] = r
        if len(self.replies) > MAX_REMEMBERED_RIDS:
            self.replies.popitem(last=False)
        return r

    def request(self, rid: str, grant: Grant, act: Callable[[], str | None]) -> Replied:
        """Run one client request once per rid; the same rid gets the first outcome."""
        done = self.replies.get(rid)
        if done is not None:
            return done
        if grant is not Grant.OPERATOR:
            return self._remember(Replied(rid, False, ErrorCode.FORBIDDEN))
        err = act()
        if err in (ErrorCode.INBOX_FULL, ErrorCode.REFUSED):
            return Replied(rid, False, err)  # not remembered: the same rid may try again later
        return self._remember(Replied(rid, err is None, err))

    def deliver(self, data: Any, size: int = 0) -> str | None:
        """A client ``send``: queue ``data`` (``size`` bytes on the wire) for the agent.

        ``inbox_full`` when the agent has not taken ``Limits.inbox_messages``
        messages or ``Limits.inbox_bytes`` bytes yet: the sender re-sends later.
        """
        if self.ended:
            return ErrorCode.ENDED
        lim = self.limits
        if self.inbox.qsize() >= lim.inbox_messages or (
            self.inbox.qsize() and self._inbox_bytes + size > lim.inbox_bytes
        ):
            return ErrorCode.INBOX_FULL
        self._inbox_bytes += size
        self.inbox.put_nowait((data, size))
        return None

    def take_nowait(self) -> Any:
        """The next message a client sent, or None (event loop)."""
        if self.inbox.empty():
            return None
        data, size = self.inbox.get_nowait()
        self._inbox_bytes -= size
        return data

    async def take(self, timeout: float | None = None) -> Any:
        """The next message a client sent; None after ``timeout`` seconds (event loop)."""
        try:
            data, size = await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None
        self._inbox_bytes -= size
        return data

    def cancel(self, reason: str | None) -> str | None:
        """A client ``cancel``: flag the run, and stop it if the gateway started it."""
        if self.ended:
            return ErrorCode.ENDED
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()
            for fn in list(self.on_cancel):
                try:
                    fn(reason)
                except Exception:
                    log.exception("session %s: cancel callback failed", self.sid)
            if self.task is not None:
                self.task.cancel()
        return None

    # --- the end ------------------------------------------------------------

    def close(self, state: str = RunState.DONE, detail: str | None = None) -> None:
        """Append the final ``status`` (once); open asks are closed first."""
        if state not in FINAL_STATES:
            raise ValueError(f"close state must be one of {sorted(FINAL_STATES)}, not {state!r}")
        if self.ended:
            return
        if not on_loop(self.loop):
            # Open asks live on the loop, and their answers must precede the
            # final status: do the whole close there.
            try:
                asyncio.run_coroutine_threadsafe(self._aclose(state, detail), self.loop).result()
            except RuntimeError:  # the loop is closed: nobody is left to tell
                pass
            return
        self._close_asks()
        d: dict[str, Any] = {"state": state}
        if detail is not None:
            d["detail"] = str(detail)
        self.emit(Kind.STATUS, d, checked=True, force=True)

    async def _aclose(self, state: str, detail: str | None) -> None:
        self.close(state, detail)

    def _close_asks(self) -> None:
        for ask_id in list(self.asks):
            entry = self.asks.pop(ask_id)
            self.settled.add(ask_id)
            self._ask_ended(ask_id, "closed")
            self.emit(Kind.ANSWER, {"id": ask_id, "value": None, "by": "closed"}, checked=True, force=True)
            if not entry[1].done():
                entry[1].cancel()


def failed_ending(head: int, open_asks: Sequence[str], detail: str | None) -> list[Appended]:
    """The events that end a run ``failed`` after seq ``head``, from outside its agent.

    An ``answer`` by ``closed`` for each open ask, then the final ``status``
    (none if ``detail`` is None: the run had already ended).  Used when a
    writer gives up on its log and when another node ends a dead writer's run.
    """
    closing: list[tuple[str, Any]] = [(Kind.ANSWER, {"id": a, "value": None, "by": "closed"}) for a in open_asks]
    if detail is not None:
        closing.append((Kind.STATUS, {"state": RunState.FAILED, "detail": detail}))
    now = time.time()
    return [Appended(head + i, k, d, encode_event(head + i, k, now, d)) for i, (k, d) in enumerate(closing, 1)]


async def ending(store: Store, sid: str, timeout: float) -> bool:
    """True once the log of ``sid`` is ended, if its run already wrote its final status (within ``timeout``).

    False at once for a run that has not (it is alive: ``sid_taken``) or no
    log at all (a start of the sid is under way elsewhere).  The writer of a
    finished run ends its log and gives the sid up in one step just after
    its final status, which clients may see first: a new start of the sid
    right then waits for that step instead of being refused.
    """
    info = await store.info(sid)
    if info is None:
        return False
    if info.ended:
        return True
    status = (await store.snapshot(sid))[0].get("status")
    if not (isinstance(status, dict) and is_final(Kind.STATUS, status)):
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        # ended=False: an end between the look above and the wait returns at once
        await store.wait(sid, info.head, timeout=left, epoch=info.epoch, ended=False)
        now = await store.info(sid)
        if now is None or now.ended or now.epoch != info.epoch:
            return True
        info = now
    return False


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called from the thread that runs ``loop`` (inside it)."""
    # asyncio's loops note their thread while they run: comparing it is
    # cheaper than get_running_loop, which asks the kernel for the pid.
    tid = getattr(loop, "_thread_id", None)
    if tid is not None:
        return bool(tid == threading.get_ident())
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
