"""The Store protocol: where session logs live.

A *log* is the ordered list of one session's encoded events (see
``protocol.codec.encode_event``) with its epoch.  The store never assigns
sequence numbers: the one writer of a session (the node that holds its Pipe)
does, and hands the store consecutive events.  That is what lets a Redis
Streams backend fit without change (explicit stream ids), and what lets any
node serve any reader.

Readers never get a queue: they hold a cursor (a seq) and ``read`` from it,
``wait``-ing when they are at the head.  A slow reader costs a cursor.

Faults.  A store reports what went wrong with the exceptions of
``protocol.errors``: ``StoreUnavailable`` when it cannot be reached (the
writer retries with backoff), ``LogMissing`` when the log is gone (the
writer starts a new epoch), ``LogReplaced`` when a newer run owns the log,
``SeqGap`` when the log lost events the writer had stored.  An append that
names its ``epoch`` is idempotent: events the log already holds (a retry
after a lost reply) are skipped, so a writer may repeat any append.

A store whose logs can only disappear by expiring after their run ended (one
inside the gateway's process) may say so with a class attribute
``loses_no_logs = True``: writers then keep no copy of the state that a
re-created log would need.

Reading with the state (optional).  A store may also implement ``Fetches``
(both built-in stores do): ``fetch`` returns where the log stands together
with the events after a cursor, read at one instant, so a reader needs one
round trip instead of ``info`` then ``read``, and the two always agree.
``fetch_of(store)`` gives it for any store (falling back to ``info`` and
``read`` for one without it).

Writer leases (optional).  A store shared by several gateway nodes may also
implement ``Leases`` (``RedisStore`` does): each run's Session claims its sid
before it creates the log, renews the claim every ``lease_ttl / 3`` seconds
and releases it once the run's end is stored; its writes name the claim
(``holder=``) and a store refuses them with ``LeaseLost`` once another
holder has the sid.  A claim held by another live writer makes a new run of
the sid ``sid_taken`` on every node, and a claim that lapsed (its writer's
process died) lets any node's janitor end the run ``failed``.  Sessions and
the janitor use leases only when ``leases_of(store)`` returns the store, so a
store that lives inside one process (``MemoryStore``) needs nothing.

Requests to the writer (optional, with leases).  A store with leases may also
implement ``Requests`` (``RedisStore`` does): a client's ``reply``, ``send``
or ``cancel`` that reaches a node which does not write the session is handed
to the writer through the store (``request``), wherever it runs, and the
outcome comes back to the node that asked.  The writer serves them
(``serve_requests``) for as long as its run lives.  ``requests_of(store)``
returns the store when it can.

In-process stores (optional).  A store whose logs live in the gateway's own
process may also implement ``Direct`` (``MemoryStore`` does): ``append_now``
appends without an await, and ``listen`` calls a function of the gateway's
synchronously whenever a log changes, with the events just appended.  The
gateway then carries an event from ``Pipe.set_message`` to the sockets of
its watchers in one step, with no task switch (``direct_of(store)``;
``gateway/feed.py``, ``gateway/sessions.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from protocol import decode_event


class Appended(NamedTuple):
    """One event handed to ``Store.append``: its seq, kind, payload and encoding.

    A named tuple, not a dataclass: one is made per event on the hot path,
    and a tuple is the cheapest record to make.  ``d`` is handed over: for
    the kinds a snapshot keeps it is a fresh copy that nobody else holds
    (``Session.emit`` makes it), so a store may keep it as it is.
    """

    seq: int
    k: str
    d: Any
    raw: bytes


class LogInfo(NamedTuple):
    """Where a log stands.  ``first`` is the oldest retained seq (``head + 1`` if empty).

    A named tuple, not a dataclass: a ``Direct`` store makes one per append.
    """

    epoch: str
    first: int
    head: int
    ended: bool


@dataclass(frozen=True, slots=True)
class Fetched:
    """A log's state and the events after a cursor, read at one instant (``Fetches.fetch``).

    ``raws`` are consecutive events of ``info.epoch`` starting at seq
    ``max(after + 1, info.first)`` (``after`` is what was passed to ``fetch``),
    so the seq of each is known without decoding it.
    """

    info: LogInfo
    raws: list[bytes]


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a log is kept: by count, by bytes, and for how long after its run ended."""

    max_events: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    ttl_after_end: float = 3600.0


@runtime_checkable
class Store(Protocol):
    """Where logs live.  Every method is safe to call concurrently on one event loop."""

    retention: Retention

    async def create(self, sid: str, epoch: str, *, head: int = 0, snapshot: dict[str, Any] | None = None) -> None:
        """Start a new, empty log for ``sid`` under ``epoch``, replacing any older one.

        ``head`` and ``snapshot`` continue a log that was lost: the first
        event appended will be ``head + 1`` and ``snapshot`` (a
        ``Snapshot.as_map()``) is the state as of ``head``.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """

    async def append(self, sid: str, events: Sequence[Appended], *, epoch: str | None = None) -> None:
        """Append consecutive events (the first has seq ``head + 1``) and wake waiters.

        With ``epoch`` (what a writer passes) the log must be of that epoch,
        and events whose seq the log already holds are skipped: the append
        is idempotent, so a retry after a lost reply stores nothing twice.

        Raises:
            LogMissing: no log for ``sid`` (a ``KeyError``).
            LogReplaced: the log is of another epoch than ``epoch``.
            SeqGap: the first event is past ``head + 1`` (a ``ValueError``).
            ValueError: without ``epoch``, the seqs do not follow the head.
            StoreUnavailable: the store cannot be reached (the append may or
                may not have happened: repeat it with ``epoch``).
        """

    async def read(
        self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20, epoch: str | None = None
    ) -> list[bytes]:
        """Encoded events with seq > ``after``, ascending, at most ``limit`` (at least one).

        Returns [] if there is nothing newer, no such log, or (with ``epoch``)
        a log of another epoch: a reader that names the epoch it follows
        never splices two (docs/protocol.md section 2).  If ``after + 1`` is
        older than ``first``, reading starts at ``first``: callers compare
        with ``info`` to detect that they lagged.
        """

    async def wait(
        self,
        sid: str,
        after: int,
        timeout: float | None = None,
        *,
        epoch: str | None = None,
        ended: bool | None = None,
    ) -> bool:
        """Wait until the log has an event with seq > ``after``, ends, or is replaced.

        True if it has such an event now (of ``epoch``, when given).
        Spurious False returns are allowed: callers re-check ``info`` and
        wait again.  A missing log, or one of another epoch than ``epoch``,
        returns False at once; so does, with ``ended`` (whether the log had
        ended when the caller last looked), one whose end differs: an end
        between the caller's look and the wait is not missed.
        """

    async def info(self, sid: str) -> LogInfo | None:
        """Where the log stands, or None if there is none (never created, or expired)."""

    async def snapshot(self, sid: str) -> tuple[dict[str, Any], int]:
        """The compacted state (docs/protocol.md section 4) and the seq it reflects."""

    async def end(self, sid: str) -> None:
        """Mark the run ended; the log expires ``retention.ttl_after_end`` seconds later."""

    async def close(self) -> None:
        """Release resources."""


@runtime_checkable
class Fetches(Protocol):
    """A store that reads a log's state and its events in one step (see the module docstring)."""

    async def fetch(self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20) -> Fetched | None:
        """``info(sid)`` and the events after ``after`` of that same log, at one instant.

        None if there is no log.  Otherwise the events (``limit`` and
        ``max_bytes`` as in ``Store.read``: at most ``limit``, at least one
        if any, stopping before the event that would pass ``max_bytes``)
        start at ``max(after + 1, info.first)``; none if ``after >= head``
        or ``limit <= 0`` (a look at the state alone).

        Raises:
            StoreUnavailable: the store cannot be reached.
        """


#: ``fetch(sid, after, *, limit, max_bytes)`` of one store (``fetch_of``).
FetchFn = Callable[..., Awaitable[Fetched | None]]


def fetch_of(store: Store) -> FetchFn:
    """The ``fetch`` of ``store``: its own (``Fetches``), or ``info`` then ``read`` of that epoch.

    Look it up once and keep it: telling whether a store has ``fetch`` is
    an ``isinstance`` against a protocol, which is not free.
    """
    if isinstance(store, Fetches):
        return store.fetch

    async def fallback(sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20) -> Fetched | None:
        return await _fetch_by_info_and_read(store, sid, after, limit=limit, max_bytes=max_bytes)

    return fallback


async def fetch(store: Store, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20) -> Fetched | None:
    """``fetch_of(store)(sid, after, ...)``: the log's state and the events after ``after``."""
    return await fetch_of(store)(sid, after, limit=limit, max_bytes=max_bytes)


async def _fetch_by_info_and_read(store: Store, sid: str, after: int, *, limit: int, max_bytes: int) -> Fetched | None:
    """``Fetches.fetch`` for a store without it: ``info`` then ``read`` of that epoch.

    It looks again when the log changed between its two calls (replaced,
    or trimmed past the cursor), so it keeps ``Fetched``'s promise.
    """
    while True:
        info = await store.info(sid)
        if info is None:
            return None
        start = max(after + 1, info.first)
        if start > info.head or limit <= 0:
            return Fetched(info, [])
        raws = await store.read(sid, after, limit=limit, max_bytes=max_bytes, epoch=info.epoch)
        if raws and decode_event(raws[0]).seq == start:
            last = start + len(raws) - 1
            if last > info.head:  # appended since the look: the read is the newer truth
                info = LogInfo(info.epoch, info.first, last, info.ended)
            return Fetched(info, raws)
        # replaced, expired or trimmed in between: look again


@runtime_checkable
class Leases(Protocol):
    """A store's writer leases: one live writer per sid across every node sharing it.

    ``holder`` is a writer's id (random, one per Session, the same across the
    epochs it creates).  Every method raises ``StoreUnavailable`` when the
    store cannot be reached.
    """

    #: Seconds a claim lives without a renewal; None: this store has no leases.
    lease_ttl: float | None

    async def claim(self, sid: str, holder: str) -> bool:
        """Take ``sid`` for ``holder`` if nobody holds it (or ``holder`` does); False if another does."""

    async def renew(self, sid: str, holder: str, epoch: str) -> bool:
        """Extend ``holder``'s claim; False once it is lost.

        A claim that vanished (it lapsed, or the store lost its data) is
        taken again only if the log is still ``epoch``'s and not ended (or
        gone with the data): a run that another node finalised stays lost.
        """

    async def release(self, sid: str, holder: str) -> None:
        """Give up ``holder``'s claim (nothing if it is not the holder)."""

    async def lapsed(self) -> list[str]:
        """Sids whose claim was due to be renewed by now (their writer may be dead)."""

    async def reserve(self, sid: str, holder: str, ttl: float) -> bool:
        """Hold ``sid`` for a queued start for ``ttl`` seconds; False if anyone holds it.

        A reservation is not renewed and not reaped: the writer that takes
        the start takes it over (``take_over``), or it lapses.
        """

    async def take_over(self, sid: str, reserved_by: str, holder: str) -> bool:
        """Claim ``sid`` for ``holder`` if ``reserved_by`` (a queued start), ``holder`` or nobody holds it."""

    async def create(
        self,
        sid: str,
        epoch: str,
        *,
        head: int = 0,
        snapshot: dict[str, Any] | None = None,
        holder: str | None = None,
    ) -> None:
        """``Store.create``; with ``holder``, refused (``LeaseLost``) unless it holds the sid."""

    async def append(
        self, sid: str, events: Sequence[Appended], *, epoch: str | None = None, holder: str | None = None
    ) -> None:
        """``Store.append``; with ``holder``, refused (``LeaseLost``) unless it holds the sid."""

    async def end(self, sid: str, *, holder: str | None = None, release: bool = False) -> None:
        """``Store.end``; with ``holder``, refused (``LeaseLost``) unless it holds the sid.

        ``release``: the holder gives the sid up in the same step (the run is
        over), so that whoever sees the end may start the sid again at once.
        """


def leases_of(store: Store) -> Leases | None:
    """``store`` if it has writer leases (and they are on), else None."""
    if isinstance(store, Leases) and store.lease_ttl is not None:
        return store
    return None


@runtime_checkable
class Requests(Protocol):
    """Client requests handed to a session's writer through the store, from any node."""

    async def request(self, sid: str, req: dict[str, Any]) -> dict[str, Any] | None:
        """Hand ``req`` to the live writer of ``sid`` and return its outcome.

        ``req`` is a map the writer's handler understands (the gateway sends
        the request's ``rid``, the encoded frame, the client's grant and
        epoch).  An outcome the handler marks ``"once": True`` is the one its
        ``rid`` always gets, from any node, also after the writer left.
        Returns None when ``sid`` has no live writer (no lease: its run
        ended, or its process died) and its ``rid`` has no outcome.

        Raises:
            StoreUnavailable: the store cannot be reached, or the writer did
                not answer in time (the request may or may not have been
                carried out: repeat it with the same ``rid``).
        """

    async def serve_requests(self, sid: str, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Take the requests for ``sid`` as they come, answer each with ``handle(req)``; runs until cancelled.

        Raises:
            StoreUnavailable: the store cannot be reached (call again after a backoff).
        """


def requests_of(store: Store) -> Requests | None:
    """``store`` if requests can reach a session's writer through it (it has leases too), else None."""
    if isinstance(store, Requests) and leases_of(store) is not None:
        return store
    return None


@runtime_checkable
class StartQueue(Protocol):
    """Runs of apps that worker processes take (``wirepipe worker``; RedisStore)."""

    async def advertised(self) -> list[str]:
        """The apps some live worker runs."""

    async def enqueue_start(self, app: str, start: dict[str, Any]) -> bool:
        """Queue ``start`` (``sid``, ``input``, ``holder``: the sid's reservation) for a worker; False if full."""


def queue_of(store: Store) -> StartQueue | None:
    """``store`` if workers can take starts through it (it has leases too), else None."""
    if isinstance(store, StartQueue) and leases_of(store) is not None:
        return store
    return None


#: ``Direct.listen``'s callback: the log's state after a change (None: no log)
#: and the events the change appended (the newest of the log, ending at
#: ``info.head``; empty for any other change: a new epoch, an end, an expiry).
Listener = Callable[[LogInfo | None, list[bytes]], None]


@runtime_checkable
class Direct(Protocol):
    """A store inside the gateway's process: appends without an await, changes told as they happen."""

    @property
    def direct(self) -> bool:
        """False turns the rest off (a subclass that changes how the store appends or reads)."""

    def append_now(self, sid: str, events: Sequence[Appended], *, epoch: str | None = None) -> None:
        """``Store.append``, done before it returns (same errors)."""

    def append_one(self, sid: str, ev: Appended, epoch: str) -> None:
        """``append_now(sid, (ev,), epoch=epoch)``: one event, the writer's append on the loop."""

    def listen(self, sid: str, fn: Listener) -> None:
        """Call ``fn`` after every change of the log of ``sid`` (see ``Listener``), until ``unlisten``.

        ``fn`` runs inside the call that changed the log: it must not call
        the store back, and what it raises is logged and dropped.
        """

    def unlisten(self, sid: str, fn: Listener) -> None:
        """Stop calling ``fn`` for ``sid`` (nothing if it was not listening)."""


def direct_of(store: Store) -> Direct | None:
    """``store`` if it lives in this process (``Direct``), else None."""
    return store if isinstance(store, Direct) and store.direct else None
