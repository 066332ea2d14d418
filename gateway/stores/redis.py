"""RedisStore: session logs in Redis Streams, shared by every gateway node.

Theory of operation
-------------------
Each log is two keys that share the hash tag ``{sid}`` (so a Redis Cluster
keeps them in one slot and the scripts below may touch both):

``<prefix>{sid}:log``
    a stream, one entry per event, id ``<seq>-0``, one field ``r`` holding
    the encoded event.  Reading after seq ``n`` is ``XRANGE <n+1>-0 +``; the
    entries before ``first`` are trimmed, so that read starts at ``first``.
``<prefix>{sid}:meta``
    a hash: ``epoch``, ``first``, ``head``, ``bytes`` (of the retained
    events), ``ended_at`` (once ended), and a snapshot checkpoint: ``snap``
    (the packed ``Snapshot.as_map()``) and ``snap_seq``, the seq it reflects.

Every write is one Lua script, so it is atomic and ordered with every other
node's: ``append`` checks the epoch and that the first seq follows the head,
plans the trim (oldest first, by count and bytes, keeping at least one
event) before writing anything (scripts do not roll back), XADDs, XTRIMs and
updates the hash; ``end`` sets ``ended_at`` and PEXPIREs both keys; ``create``
replaces both keys.  Each script then PUBLISHes ``<kind>:<head>:<epoch>`` on
``<prefix>{sid}:wake``.

Snapshots.  The writer (the node whose Session appends) keeps the reducer
(``protocol.Snapshot``) of each log it writes in memory and folds each batch
into it.  It stores a checkpoint every ``snapshot_every`` events or 256 KiB,
not every batch: an open text stream makes the snapshot grow with every
token, and rewriting it per token would cost O(n^2) bytes.
``snapshot(sid)`` reads the checkpoint and the events after it in one script
and folds them, so any node returns ``(map, head)``.  The append script
refuses (and the writer retries with a checkpoint) a trim that would drop an
event the checkpoint does not reflect.  A writer without the reducer (a new
process, or after an error) rebuilds it the same way.

One epoch per reader.  A log can be replaced (a new run of the sid, on any
node) between a reader's ``info`` and its ``read``; a reader that passes the
epoch it follows (``read(..., epoch=)``, ``wait(..., epoch=)``) gets [] or
False once the log is of another one, checked inside the read script, so it
never splices two epochs (docs/protocol.md section 2).  ``fetch`` (a
gateway's feed, and a reader behind it) reads the meta hash and the events
after a cursor in one script: the state and the events of one instant, one
round trip.

Waiting.  No waiter holds a connection.  One pub/sub connection per store
subscribes to the wake channel of each sid that has local waiters (and for
``LINGER`` seconds after the last one leaves, so a pump that waits again
and again does not resubscribe each time).  A ``wait`` checks the log, makes
sure the subscription is live (confirmed by a PING through the pub/sub
connection, which Redis answers after the SUBSCRIBE), registers a future and
checks again: an append that lands between the check and the subscription
is seen by the second check, one after it by the message.  A message wakes
only the waiters it concerns (a later head, another epoch, a first ``end``),
so the writer's own direct wake and the echo of its message do not wake
twice.  When the pub/sub connection comes back after a drop, every waiter
wakes (spuriously) and subscriptions count as unconfirmed until a fresh PING
comes back; an idle pub/sub connection is pinged every ``poll_interval / 2``
and dropped if the previous PING went unanswered (a silently dead socket).
A wait also returns False after ``poll_interval`` seconds: the safety net
for what no message announces (a log that expired).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgpack
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from protocol import LeaseLost, LogMissing, LogReplaced, SeqGap, Snapshot, StoreUnavailable, decode_event, packb

from .base import Appended, Fetched, Fetches, LogInfo, Retention, Store

log = logging.getLogger("wirepipe.store.redis")

T = TypeVar("T")

#: A checkpoint is stored at least once per this many bytes of events.
SNAPSHOT_BYTES: Final = 256 * 1024
#: Seconds a sid stays subscribed after its last waiter left.
LINGER: Final = 30.0

_LENGTH: Final = struct.Struct(">I")

# The append script's status codes (the first element of its reply).
_OK, _APPLIED, _MISSING, _OTHER_EPOCH, _BAD_SEQ, _NEED_SNAPSHOT, _NOT_HOLDER = 0, 1, -1, -2, -3, -4, -5
#: What redis-py raises when the server cannot be reached or does not answer
#: (BusyLoadingError, a restarted server loading its data, is a ConnectionError).
_UNREACHABLE: Final = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError, TimeoutError)

# The writer-lease check of the write scripts: KEYS[3] is the lease, which the
# holder ARGV ('' = no check) must hold (append and end also accept a lapsed
# lease while the log is still the writer's open one).
# KEYS: log, meta, lease.  ARGV: channel, epoch, snapshot, head, holder.
_CREATE: Final = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return -5 end
redis.call('DEL', KEYS[1], KEYS[2])
local head = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'first', head + 1, 'head', head, 'bytes', 0,
           'snap', ARGV[3], 'snap_seq', head)
redis.call('PUBLISH', ARGV[1], string.format('c:%d:', head) .. ARGV[2])
return 1
"""

# KEYS: log, meta, lease.  ARGV: channel, epoch ('' = any), first seq, max_events,
# max_bytes, snapshot ('' = none), holder ('' = no lease check), raw events...
_APPEND: Final = """
local st = redis.call('HMGET', KEYS[2], 'epoch', 'head', 'first', 'bytes', 'snap_seq', 'ended_at')
if ARGV[7] ~= '' then
  -- Refused if another writer holds the lease, or if it lapsed and the log is
  -- no longer this epoch's open log (another node ended it).  A lease gone
  -- with the log (a Redis that lost its data) lets LogMissing tell the writer.
  local v = redis.call('GET', KEYS[3])
  if v ~= ARGV[7] and (v or (st[1] and (st[1] ~= ARGV[2] or st[6]))) then return {-5} end
end
if not st[1] then return {-1} end
if ARGV[2] ~= '' and st[1] ~= ARGV[2] then return {-2, st[1]} end
local head = tonumber(st[2])
if tonumber(ARGV[3]) ~= head + 1 then
  -- A retry of an append that was applied (its reply was lost): nothing to do.
  if ARGV[2] ~= '' and tonumber(ARGV[3]) + #ARGV - 8 <= head then return {1, head} end
  return {-3, head}
end
local first, nbytes, snap_seq = tonumber(st[3]), tonumber(st[4]), tonumber(st[5])
local max_events, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local snap = ARGV[6]
for i = 8, #ARGV do nbytes = nbytes + #ARGV[i] end
local new_head = head + #ARGV - 7
-- Plan the trim before writing: a script that fails half way does not roll back.
local count = new_head - first + 1
local cut = first
local old, oi = nil, 1
while count > 1 and (count > max_events or nbytes > max_bytes) do
  local size
  if cut <= head then
    if old == nil or oi > #old then
      old = redis.call('XRANGE', KEYS[1], string.format('%d-0', cut), string.format('%d-0', head),
                       'COUNT', math.max(64, count - max_events))
      oi = 1
    end
    size = #old[oi][2][2]
    oi = oi + 1
  else
    size = #ARGV[7 + cut - head]
  end
  nbytes = nbytes - size
  count = count - 1
  cut = cut + 1
end
if snap == '' and cut > snap_seq + 1 then return {-4} end
for s = math.max(cut, head + 1), new_head do
  redis.call('XADD', KEYS[1], string.format('%d-0', s), 'r', ARGV[7 + s - head])
end
if cut > first then
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', cut))
end
if snap ~= '' then
  redis.call('HSET', KEYS[2], 'head', new_head, 'first', cut, 'bytes', nbytes,
             'snap', snap, 'snap_seq', new_head)
else
  redis.call('HSET', KEYS[2], 'head', new_head, 'first', cut, 'bytes', nbytes)
end
if st[6] then
  -- appended after end: the stream (maybe new) expires with the hash
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
redis.call('PUBLISH', ARGV[1], string.format('a:%d:', new_head) .. st[1])
return {0, cut, new_head}
"""

# KEYS: log, meta.  ARGV: start id, limit, max_bytes, epoch ('' = any).
# Reply: one string of length-prefixed events (one reply to parse, not one
# per event: ~2.5x faster with redis-py's own parser); empty if the log is
# not of that epoch.
_READ: Final = """
if ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[4] then return '' end
local out, size = {}, 0
local max_bytes = tonumber(ARGV[3])
for i, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])) do
  local raw = e[2][2]
  size = size + #raw
  if size > max_bytes and i > 1 then break end
  out[i] = struct.pack('>I4', #raw) .. raw
end
return table.concat(out)
"""

# KEYS: log, meta.  ARGV: after, limit, max_bytes.  ``fetch``: the state and the
# events after ``after`` in one reply: nil (no log), or {epoch, first, head,
# ended (0/1), events as in _READ (from max(after + 1, first))}.
_FETCH: Final = """
local st = redis.call('HMGET', KEYS[2], 'epoch', 'first', 'head', 'ended_at')
if not st[1] then return nil end
local out, size = {}, 0
local after, first, head = tonumber(ARGV[1]), tonumber(st[2]), tonumber(st[3])
if after < head and tonumber(ARGV[2]) > 0 then
  local max_bytes = tonumber(ARGV[3])
  local start = string.format('%d-0', math.max(after + 1, first))
  for i, e in ipairs(redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])) do
    local raw = e[2][2]
    size = size + #raw
    if size > max_bytes and i > 1 then break end
    out[i] = struct.pack('>I4', #raw) .. raw
  end
end
return {st[1], first, head, st[4] and 1 or 0, table.concat(out)}
"""

# KEYS: log, meta.  Reply: nil, or {epoch, head, snap, snap_seq, {raws after snap_seq}}.
_STATE: Final = """
local st = redis.call('HMGET', KEYS[2], 'epoch', 'head', 'snap', 'snap_seq')
if not st[1] then return nil end
local tail = {}
if tonumber(st[4]) < tonumber(st[2]) then
  for i, e in ipairs(redis.call('XRANGE', KEYS[1], string.format('%d-0', tonumber(st[4]) + 1), '+')) do
    tail[i] = e[2][2]
  end
end
return {st[1], st[2], st[3], st[4], tail}
"""

# KEYS: log, meta, lease.  ARGV: channel, ended_at, ttl in ms, holder.
_END: Final = """
local v = ARGV[4] ~= '' and redis.call('GET', KEYS[3])
if v and v ~= ARGV[4] then return -5 end
local st = redis.call('HMGET', KEYS[2], 'epoch', 'ended_at')
if not st[1] or st[2] then return 0 end
redis.call('HSET', KEYS[2], 'ended_at', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], 'e:0:' .. st[1])
return 1
"""


# Leases.  KEYS: lease.  ARGV: holder, ttl in ms.  Reply: the lease's expiry in
# ms of the server's clock, or -1 (another holder has it).
_CLAIM: Final = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
"""

# KEYS: lease, meta.  ARGV: holder, ttl in ms, epoch.  A vanished lease is taken
# again only while the log is that epoch's and not ended (or gone altogether).
_RENEW: Final = """
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then
  if v then return -1 end
  local st = redis.call('HMGET', KEYS[2], 'epoch', 'ended_at')
  if st[1] and (st[1] ~= ARGV[3] or st[2]) then return -1 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
"""

# KEYS: lease.  ARGV: holder.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: live.  Reply: the sids whose lease expiry (by the server's clock) passed.
_LAPSED: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
"""


@dataclass(slots=True)
class _Writer:
    """The writer's view of one log: where it stands and its reducer at ``head``."""

    epoch: str
    head: int
    snap: Snapshot
    ckpt: int  # snap_seq of the stored checkpoint
    tail_bytes: int  # bytes of the events after the checkpoint


@dataclass(slots=True, eq=False)
class _Waiter:
    after: int
    fut: asyncio.Future[bool]
    epoch: str | None = None  # what the log was when the wait began (None: being checked)
    ended: bool = False
    # changes announced while the log was being checked, judged once it is known
    early: list[tuple[bytes, str, int]] = field(default_factory=list)

    def judge(self, kind: bytes, epoch: str, head: int) -> bool | None:
        """What a change means for this wait: True, False, or None (nothing)."""
        if epoch != self.epoch:  # replaced
            return False
        if kind == b"a":
            return True if head > self.after else None
        if kind == b"e" and not self.ended:
            return False
        return None


@dataclass(slots=True, eq=False)
class _Watch:
    """One subscribed wake channel and the local waiters on it."""

    sid: str
    channel: bytes
    ready: asyncio.Future[None]  # done once the subscription is live
    waiters: set[_Waiter] = field(default_factory=set)
    idle: asyncio.TimerHandle | None = None


class PubSubHealth:
    """What happened to a store's pub/sub connection: counters, and a way to wait on them.

    For monitoring (export the counters) and for code that must know the
    connection is back before it relies on another node's wake-ups.
    """

    __slots__ = ("pongs", "live", "reconnects", "silent_drops", "parked", "_changed")

    def __init__(self) -> None:
        #: Health PINGs answered (the idle connection is alive).
        self.pongs = 0
        #: Times the subscriptions were confirmed live: after a SUBSCRIBE, and
        #: after each reconnect once the re-sent SUBSCRIBEs are in effect.
        self.live = 0
        #: Times the connection came back after a drop (each woke every waiter).
        self.reconnects = 0
        #: Connections dropped because a health PING went unanswered.
        self.silent_drops = 0
        #: Waits that found nothing new and now sleep until a message wakes them.
        self.parked = 0
        self._changed = asyncio.Event()

    def _bump(self, counter: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, pred: Callable[[PubSubHealth], bool]) -> None:
        """Return once ``pred(self)`` holds, checked after every change of a counter."""
        while not pred(self):
            await self._changed.wait()


@dataclass(frozen=True, slots=True)
class _State:
    epoch: str
    head: int
    ended: bool


class RedisStore:
    """Session logs in Redis Streams: any gateway node can serve any session.

    ``url`` is a ``redis://`` URL, or an existing ``redis.asyncio.Redis``
    client made with ``decode_responses=False`` (the caller closes it).
    ``snapshot_every`` is how many events may follow the stored snapshot
    checkpoint (1: store it with every append).  ``poll_interval`` bounds
    how long one ``wait`` blocks before a (spurious) False, and half of it
    is how often an idle pub/sub connection is pinged.  ``max_connections``
    bounds the pool made from a URL (one of them is the pub/sub connection).
    ``command_timeout`` bounds how long one command may take: a Redis that
    does not answer (a dead link, a black hole) is ``StoreUnavailable`` then.

    Every method raises ``protocol.StoreUnavailable`` when Redis cannot be
    reached or does not answer in time.

    Raises:
        ValueError: ``prefix`` has a brace (it would break the ``{sid}``
            hash tag), the client decodes responses, or a knob is out of range.
    """

    def __init__(
        self,
        url: str | Redis = "redis://127.0.0.1:6379/0",
        *,
        retention: Retention | None = None,
        prefix: str = "wirepipe:",
        snapshot_every: int = 256,
        poll_interval: float = 30.0,
        max_connections: int = 64,
        command_timeout: float = 10.0,
        lease_ttl: float | None = 10.0,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix {prefix!r} must not contain braces: keys use a {{sid}} hash tag")
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        if not poll_interval > 0:
            raise ValueError("poll_interval must be positive")
        if not command_timeout > 0:
            raise ValueError("command_timeout must be positive")
        if lease_ttl is not None and not lease_ttl >= 0.01:
            raise ValueError("lease_ttl must be at least 0.01 seconds (or None: no leases)")
        #: Seconds a writer's lease lives without a renewal (None: no leases).
        self.lease_ttl = lease_ttl
        self.command_timeout = command_timeout
        self.retention = retention or Retention()
        self.prefix = prefix
        self.snapshot_every = snapshot_every
        self.poll_interval = poll_interval
        self.linger = LINGER
        if isinstance(url, Redis):
            if url.connection_pool.connection_kwargs.get("decode_responses"):
                raise ValueError("RedisStore needs a client with decode_responses=False")
            self._redis = url
            self._owns_client = False
        else:
            # Blocking: past max_connections a command waits for a connection
            # instead of failing.  One connection is the pub/sub one.
            pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=None)
            self._redis = Redis.from_pool(pool)  # owns the pool: aclose() disconnects it
            self._owns_client = True
        r = self._redis
        self._create = r.register_script(_CREATE)
        self._append = r.register_script(_APPEND)
        self._read = r.register_script(_READ)
        self._state = r.register_script(_STATE)
        self._end = r.register_script(_END)
        self._claim = r.register_script(_CLAIM)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._lapsed = r.register_script(_LAPSED)
        self._empty_snap = packb(Snapshot().as_map())
        self._writers: dict[str, _Writer] = {}
        # pub/sub: watches by sid and by channel, and the task that (un)subscribes
        self._watches: dict[str, _Watch] = {}
        self._by_channel: dict[bytes, _Watch] = {}
        self._to_sub: set[bytes] = set()
        self._to_unsub: set[bytes] = set()
        # PING token -> the futures its pong settles, and the counter it bumps
        self._pings: dict[bytes, tuple[list[asyncio.Future[None]], str | None]] = {}
        self._ping_ids = itertools.count(1)
        self._kick = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._health_token: bytes | None = None
        #: The pub/sub connection's history (``await store.pubsub.until(...)``).
        self.pubsub = PubSubHealth()
        self._inflight: set[asyncio.Future[Any]] = set()
        self._closed = False

    @property
    def reconnects(self) -> int:
        """How many times the pub/sub connection came back (each woke every waiter)."""
        return self.pubsub.reconnects

    async def _io(self, call: Awaitable[T]) -> T:
        """Await one redis-py call so that cancelling the caller always works.

        On Python 3.11 redis-py writes through ``asyncio.wait_for``, which
        swallows a cancellation that arrives as the write completes
        (CPython gh-86296): a cancelled pump would run on, unseen.  So the
        call runs in a task of its own, awaited through ``asyncio.wait``: the
        caller stops at once, and the call finishes in the background and
        hands its connection back to the pool in a clean state.

        Raises:
            StoreUnavailable: Redis could not be reached, or did not answer
                within ``command_timeout``.
        """
        task = asyncio.ensure_future(call)
        self._inflight.add(task)
        task.add_done_callback(self._settled)
        # asyncio.wait, like shield, leaves the call running if we are cancelled.
        done, _ = await asyncio.wait({task}, timeout=self.command_timeout)
        if not done:
            task.cancel()  # redis-py then drops the connection: its reply would be out of step
            raise StoreUnavailable(f"redis did not answer within {self.command_timeout:g}s")
        try:
            return task.result()
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}: {exc}") from exc
        except ResponseError as exc:
            if _refused_for_now(exc):
                raise StoreUnavailable(f"redis refuses writes for now: {type(exc).__name__}: {exc}") from exc
            raise

    def _settled(self, task: asyncio.Future[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that was cancelled never will

    # --- keys -----------------------------------------------------------------

    def _keys(self, sid: str) -> list[str]:
        """The log, its meta hash and its writer lease (one hash slot)."""
        tag = f"{self.prefix}{{{sid}}}"
        return [f"{tag}:log", f"{tag}:meta", f"{tag}:lease"]

    @property
    def _live(self) -> str:
        return f"{self.prefix}live"

    def _channel(self, sid: str) -> bytes:
        return f"{self.prefix}{{{sid}}}:wake".encode()

    # --- the Store protocol ---------------------------------------------------

    async def create(
        self,
        sid: str,
        epoch: str,
        *,
        head: int = 0,
        snapshot: dict[str, Any] | None = None,
        holder: str | None = None,
    ) -> None:
        self._writers.pop(sid, None)
        snap = Snapshot.from_map(snapshot)
        packed = self._empty_snap if snapshot is None else packb(snap.as_map())
        args: list[Any] = [self._channel(sid), epoch, packed, head, holder or ""]
        if await self._io(self._create(keys=self._keys(sid), args=args)) == _NOT_HOLDER:
            raise LeaseLost(f"another writer holds the lease of {sid!r}")
        self._writers[sid] = _Writer(epoch, head, snap, head, 0)
        self._wake(sid, b"c", epoch, head)

    async def append(
        self, sid: str, events: Sequence[Appended], *, epoch: str | None = None, holder: str | None = None
    ) -> None:
        if not events:
            if await self.info(sid) is None:
                raise LogMissing(f"no log for {sid!r}")
            return
        w = self._writers.get(sid)
        if w is None or w.head + 1 != events[0].seq or (epoch is not None and w.epoch != epoch):
            w = await self._load(sid)  # LogMissing if there is no log
            if epoch is not None:
                if w.epoch != epoch:
                    raise LogReplaced(f"log {sid!r} was replaced (epoch {w.epoch!r}, not {epoch!r})")
                # A retry of an append whose reply was lost: skip what is stored.
                events = [ev for ev in events if ev.seq > w.head]
                if not events:
                    return
                if events[0].seq > w.head + 1:
                    raise SeqGap(f"seq {events[0].seq} does not follow seq {w.head}", w.head)
        for i, ev in enumerate(events):
            if ev.seq != w.head + 1 + i:
                raise ValueError(f"seq {ev.seq} does not follow seq {w.head + i}")
        # The reducer runs ahead of the store from here: it is kept only if
        # the store confirms the append.
        del self._writers[sid]
        for ev in events:
            w.snap.apply(ev.k, ev.d)
        size = sum(len(ev.raw) for ev in events)
        head = w.head + len(events)
        ckpt = head - w.ckpt >= self.snapshot_every or w.tail_bytes + size >= SNAPSHOT_BYTES
        raws = [ev.raw for ev in events]
        ret = await self._run_append(sid, w, events[0].seq, raws, ckpt, holder)
        if ret[0] == _NEED_SNAPSHOT:  # the trim reaches past the checkpoint
            ckpt = True
            ret = await self._run_append(sid, w, events[0].seq, raws, ckpt, holder)
        code = int(ret[0])
        if code == _NOT_HOLDER:
            raise LeaseLost(f"another writer holds the lease of {sid!r}")
        if code == _MISSING:
            raise LogMissing(f"no log for {sid!r}")
        if code == _OTHER_EPOCH:
            raise LogReplaced(f"log {sid!r} was replaced (epoch {_str(ret[1])!r}, not {w.epoch!r})")
        if code == _BAD_SEQ:
            stored = int(ret[1])
            if epoch is not None and stored > w.head:
                # Part of the batch is stored (an earlier try whose reply was
                # lost, on another connection): reload and append the rest.
                return await self.append(sid, events, epoch=epoch, holder=holder)
            if epoch is not None and stored < events[0].seq - 1:
                raise SeqGap(f"seq {events[0].seq} does not follow seq {stored}", stored)
            raise ValueError(f"seq {events[0].seq} does not follow seq {stored}")
        if code not in (_OK, _APPLIED):  # pragma: no cover - the script returns nothing else
            raise RuntimeError(f"append script returned {ret!r}")
        w.head = head
        if ckpt:
            w.ckpt, w.tail_bytes = head, 0
        else:
            w.tail_bytes += size
        self._writers[sid] = w
        self._wake(sid, b"a", w.epoch, head)

    async def _run_append(
        self, sid: str, w: _Writer, seq: int, raws: list[bytes], ckpt: bool, holder: str | None
    ) -> list[Any]:
        r = self.retention
        snap = packb(w.snap.as_map()) if ckpt else b""
        args: list[Any] = [self._channel(sid), w.epoch, seq, r.max_events, r.max_bytes, snap, holder or "", *raws]
        ret: list[Any] = await self._io(self._append(keys=self._keys(sid), args=args))
        return ret

    async def read(
        self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20, epoch: str | None = None
    ) -> list[bytes]:
        if limit <= 0:
            return []
        start = f"{max(after, 0) + 1}-0"
        args: list[str | int] = [start, limit, max_bytes, epoch or ""]
        blob: bytes = await self._io(self._read(keys=self._keys(sid), args=args))
        return _split(blob)

    @functools.cached_property
    def _fetch(self) -> AsyncScript:
        return self._redis.register_script(_FETCH)

    async def fetch(self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20) -> Fetched | None:
        """``Fetches.fetch``: the state and the events after ``after``, one script, one round trip."""
        args: list[int] = [max(after, 0), max(limit, 0), max_bytes]
        got = await self._io(self._fetch(keys=self._keys(sid)[:2], args=args))
        if got is None:
            return None
        epoch, first, head, ended, blob = got
        return Fetched(LogInfo(_str(epoch), int(first), int(head), bool(int(ended))), _split(blob))

    async def info(self, sid: str) -> LogInfo | None:
        epoch, first, head, ended_at = await self._io(
            self._redis.hmget(self._keys(sid)[1], ["epoch", "first", "head", "ended_at"])
        )
        if epoch is None:
            return None
        return LogInfo(_str(epoch), _int(first), _int(head), ended_at is not None)

    async def snapshot(self, sid: str) -> tuple[dict[str, Any], int]:
        state = await self._io(self._state(keys=self._keys(sid)))
        if state is None:
            return Snapshot().as_map(), 0
        _, head, snap, snap_seq, tail = state
        if not tail:
            # A fresh map from the stored bytes: callers may keep or change it.
            return dict(msgpack.unpackb(snap, raw=False, strict_map_key=False)), int(snap_seq)
        return _fold(snap, tail).as_map(), int(head)

    async def end(self, sid: str, *, holder: str | None = None) -> None:
        self._writers.pop(sid, None)
        ttl_ms = max(0, int(self.retention.ttl_after_end * 1000))
        args: list[Any] = [self._channel(sid), repr(time.time()), ttl_ms, holder or ""]
        if await self._io(self._end(keys=self._keys(sid), args=args)) == _NOT_HOLDER:
            raise LeaseLost(f"another writer holds the lease of {sid!r}")

    # --- writer leases (base.Leases) ----------------------------------------------

    def _lease_ms(self) -> int:
        if self.lease_ttl is None:
            raise RuntimeError("this RedisStore has no leases (lease_ttl=None)")
        return max(1, int(self.lease_ttl * 1000))

    async def claim(self, sid: str, holder: str) -> bool:
        expiry = await self._io(self._claim(keys=[self._keys(sid)[2]], args=[holder, self._lease_ms()]))
        if int(expiry) < 0:
            return False
        await self._io(self._redis.zadd(self._live, {sid: int(expiry)}))
        return True

    async def renew(self, sid: str, holder: str, epoch: str) -> bool:
        keys = self._keys(sid)
        expiry = await self._io(self._renew(keys=[keys[2], keys[1]], args=[holder, self._lease_ms(), epoch]))
        if int(expiry) < 0:
            return False
        # A separate command (the set is not in the sid's hash slot): if it is
        # lost the janitor finds the sid early, and its SET NX fails harmlessly.
        await self._io(self._redis.zadd(self._live, {sid: int(expiry)}))
        return True

    async def release(self, sid: str, holder: str) -> None:
        if await self._io(self._release(keys=[self._keys(sid)[2]], args=[holder])):
            # A new claim made since re-adds the sid with its next renewal.
            await self._io(self._redis.zrem(self._live, sid))

    async def lapsed(self) -> list[str]:
        sids = await self._io(self._lapsed(keys=[self._live]))
        return [_str(s) for s in sids]

    async def wait(self, sid: str, after: int, timeout: float | None = None, *, epoch: str | None = None) -> bool:
        if timeout is not None and timeout <= 0:  # a poll
            st = await self._check(sid)
            return st is not None and st.head > after and (epoch is None or st.epoch == epoch)
        limit = self.poll_interval if timeout is None else min(timeout, self.poll_interval)
        try:
            async with asyncio.timeout(limit):
                return await self._wait(sid, after, epoch)
        except TimeoutError:
            return False
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # the subscription failed
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kick.set()  # a loop whose cancel redis-py swallowed still sees _closed
        tasks = [t for t in (self._subscriber, self._listener) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=1.0)
        self._wake_all()
        for watch in self._watches.values():
            if watch.idle is not None:
                watch.idle.cancel()
            if not watch.ready.done():
                watch.ready.set_result(None)  # its waiters see _closed and return False
        self._watches.clear()
        self._by_channel.clear()
        self._writers.clear()
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        if self._owns_client:
            await self._redis.aclose()

    # --- writer state -----------------------------------------------------------

    async def _load(self, sid: str) -> _Writer:
        """The writer's view rebuilt from the store (checkpoint + the events after it).

        Raises:
            LogMissing: no log for ``sid``.
        """
        state = await self._io(self._state(keys=self._keys(sid)))
        if state is None:
            raise LogMissing(f"no log for {sid!r}")
        epoch, head, snap, snap_seq, tail = state
        w = _Writer(_str(epoch), int(head), _fold(snap, tail), int(snap_seq), sum(map(len, tail)))
        self._writers[sid] = w
        return w

    # --- waiting ------------------------------------------------------------------

    async def _check(self, sid: str) -> _State | None:
        epoch, head, ended_at = await self._io(self._redis.hmget(self._keys(sid)[1], ["epoch", "head", "ended_at"]))
        if epoch is None:
            return None
        return _State(_str(epoch), _int(head), ended_at is not None)

    async def _wait(self, sid: str, after: int, seen: str | None) -> bool:
        if self._closed:
            return False
        waiter = _Waiter(after, asyncio.get_running_loop().create_future())
        watch = self._watches.get(sid)
        if watch is None or not watch.ready.done():
            # Not subscribed yet: look first (the common "data is there" and
            # "no such log" answers need no subscription), and remember what
            # the log was, so that a change before the subscription is live
            # still ends the wait.
            st = await self._check(sid)
            if st is None or (seen is not None and st.epoch != seen):  # gone, or replaced
                return False
            if st.head > after:
                return True
            waiter.epoch, waiter.ended = st.epoch, st.ended
            watch = self._watch(sid)
        self._attach(watch, waiter)  # before anything else: an idle watch must not be dropped now
        try:
            if not watch.ready.done():
                await asyncio.shield(watch.ready)
                if self._closed:
                    return False
            st = await self._check(sid)
            if st is None or (seen is not None and st.epoch != seen):
                return False
            if waiter.epoch is None:
                waiter.epoch, waiter.ended = st.epoch, st.ended
            elif (st.epoch, st.ended) != (waiter.epoch, waiter.ended):
                return False
            if st.head > after:
                return True
            # A change announced during the check may or may not be in what
            # it saw; judged against it, the worst case is a spurious False.
            for change in waiter.early:
                verdict = waiter.judge(*change)
                if verdict is not None:
                    return verdict
            self.pubsub._bump("parked")
            return await waiter.fut
        finally:
            self._detach(watch, waiter)

    def _watch(self, sid: str) -> _Watch:
        watch = self._watches.get(sid)
        if watch is None:
            channel = self._channel(sid)
            watch = _Watch(sid, channel, asyncio.get_running_loop().create_future())
            self._watches[sid] = watch
            self._by_channel[channel] = watch
            self._to_unsub.discard(channel)
            self._to_sub.add(channel)
            self._kick.set()
            if self._subscriber is None:
                self._subscriber = self._spawn(self._subscribe_loop(), "wirepipe-redis-sub")
        return watch

    def _attach(self, watch: _Watch, waiter: _Waiter) -> None:
        watch.waiters.add(waiter)
        if watch.idle is not None:
            watch.idle.cancel()
            watch.idle = None

    def _detach(self, watch: _Watch, waiter: _Waiter) -> None:
        watch.waiters.discard(waiter)
        if not watch.waiters and watch.idle is None and not self._closed:
            watch.idle = asyncio.get_running_loop().call_later(self.linger, self._unwatch, watch)

    def _unwatch(self, watch: _Watch) -> None:
        watch.idle = None
        if watch.waiters or self._watches.get(watch.sid) is not watch:
            return
        del self._watches[watch.sid]
        del self._by_channel[watch.channel]
        self._to_sub.discard(watch.channel)
        self._to_unsub.add(watch.channel)
        self._kick.set()

    def _wake(self, sid: str, kind: bytes, epoch: str, head: int) -> None:
        """Settle the local waiters that a change of ``sid``'s log concerns."""
        watch = self._watches.get(sid)
        if watch is None:
            return
        for w in watch.waiters:
            if w.fut.done():
                continue
            if w.epoch is None:  # being checked
                w.early.append((kind, epoch, head))
                continue
            verdict = w.judge(kind, epoch, head)
            if verdict is not None:
                w.fut.set_result(verdict)

    def _wake_all(self) -> None:
        for watch in self._watches.values():
            for w in watch.waiters:
                if not w.fut.done():
                    w.fut.set_result(False)

    # --- the pub/sub connection -------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._died)
        return task

    def _died(self, task: asyncio.Task[None]) -> None:
        """A pub/sub task ended by a bug: say so, and start the pub/sub side afresh.

        No task dies silently: waiters would otherwise sleep until
        ``poll_interval`` on every wait.
        """
        if task.cancelled() or self._closed or task.exception() is None:
            return
        log.error("redis pub/sub: task %s died; starting afresh", task.get_name(), exc_info=task.exception())
        if task is self._subscriber:
            self._subscriber = None
        if task is self._listener:
            self._listener = None
        old, self._pubsub = self._pubsub, None
        if old is not None:
            asyncio.ensure_future(old.aclose())  # type: ignore[no-untyped-call]
        if self._listener is not None:  # its pub/sub connection is gone: it goes too
            self._listener.cancel()
            self._listener = None
        loop = asyncio.get_running_loop()
        for watch in self._watches.values():
            if watch.ready.done():
                watch.ready = loop.create_future()
            self._to_sub.add(watch.channel)
        self._wake_all()
        if self._subscriber is None and self._watches:
            self._subscriber = self._spawn(self._subscribe_loop(), "wirepipe-redis-sub")
        self._kick.set()

    async def _subscribe_loop(self) -> None:
        """The one task that writes to the pub/sub connection: (un)subscribe, then PING."""
        while not self._closed:
            try:
                async with asyncio.timeout(self.poll_interval / 2):
                    await self._kick.wait()
            except TimeoutError:
                await self._health_check()
                continue
            self._kick.clear()
            if self._closed:
                return
            subs, self._to_sub = self._to_sub, set()
            unsubs, self._to_unsub = self._to_unsub, set()
            try:
                if self._pubsub is None:
                    self._pubsub = self._redis.pubsub()
                if unsubs:
                    await self._pubsub.unsubscribe(*unsubs)
                if subs:
                    await self._pubsub.subscribe(*subs)
                    if self._listener is None:
                        assert self._pubsub.connection is not None
                        self._pubsub.connection.register_connect_callback(self._on_reconnect)
                        self._listener = self._spawn(self._listen(), "wirepipe-redis-listen")
                    futs = [wt.ready for ch in subs if (wt := self._by_channel.get(ch)) is not None]
                    await self._ping(futs, None, "live")
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("redis pub/sub: cannot subscribe: %s", exc)
                for ch in subs:
                    watch = self._by_channel.pop(ch, None)
                    if watch is not None:
                        self._watches.pop(watch.sid, None)
                        if not watch.ready.done():
                            watch.ready.set_exception(exc)
                            watch.ready.exception()  # retrieved: waiters re-raise it
                        for w in watch.waiters:
                            if not w.fut.done():
                                w.fut.set_result(False)
                await asyncio.sleep(0.1)

    async def _health_check(self) -> None:
        """PING the idle pub/sub connection; if the last PING is still unanswered, drop it.

        A connection that died without a reset (a partition, a NAT timeout)
        would otherwise swallow every message until ``poll_interval`` saves
        each wait.  Dropping it makes the listener reconnect and resubscribe.
        """
        ps = self._pubsub
        if ps is None or self._listener is None or ps.connection is None:
            return
        try:
            if self._health_token is not None and self._health_token in self._pings:
                log.warning("redis pub/sub: no pong in %.1fs; reconnecting", self.poll_interval / 2)
                self._pings.pop(self._health_token, None)
                self._health_token = None
                self.pubsub._bump("silent_drops")
                await ps.connection.disconnect(nowait=True)
                return
            await self._ping([], None, "pongs", health=True)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("redis pub/sub: health check failed: %s", exc)

    async def _ping(
        self,
        futs: list[asyncio.Future[None]],
        conn: AbstractConnection | None,
        counter: str | None = None,
        *,
        health: bool = False,
    ) -> bytes:
        """PING through the pub/sub connection: its pong settles ``futs`` and bumps ``counter``.

        Redis answers in order, so the pong means every SUBSCRIBE sent before
        it is in effect.  A ``health`` PING is the one the next health check
        looks for; it is recorded before the write, so that a pong (or a
        later check) can never race with the bookkeeping.
        """
        token = f"wirepipe-{next(self._ping_ids)}".encode()
        self._pings[token] = (futs, counter)
        if health:
            self._health_token = token
        assert self._pubsub is not None
        if conn is None:
            await self._pubsub.ping(token)
        else:
            await conn.send_command("PING", token, check_health=False)
        return token

    async def _on_reconnect(self, conn: AbstractConnection) -> None:
        # redis-py has re-sent SUBSCRIBE for every channel (its own callback
        # runs first).  Messages sent while we were away are lost: wake every
        # waiter, and hold new ones until the subscriptions are live again.
        log.info("redis pub/sub: reconnected; waking every waiter")
        self.pubsub._bump("reconnects")
        self._pings.clear()  # sent on the dead connection: never answered
        futs: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for watch in self._watches.values():
            if watch.ready.done():
                watch.ready = loop.create_future()
            futs.append(watch.ready)
        self._wake_all()
        await self._ping(futs, conn, "live")

    async def _listen(self) -> None:
        pause = 0.05
        assert self._pubsub is not None
        while not self._closed:
            try:
                msg = await self._pubsub.get_message(timeout=None)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # Waiters wake when the connection is back (_on_reconnect), once;
                # until then poll_interval bounds their waits.
                log.warning("redis pub/sub: %s; retrying in %.2fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            if msg is None:
                continue
            kind = msg["type"]
            if kind == "message":
                watch = self._by_channel.get(msg["channel"])
                if watch is not None:
                    what, _, rest = bytes(msg["data"]).partition(b":")
                    head, _, epoch = rest.partition(b":")
                    try:
                        self._wake(watch.sid, what, epoch.decode(), int(head))
                    except (ValueError, UnicodeDecodeError):
                        # not ours (anyone with access to Redis may publish): wake
                        # every waiter of that sid; each re-checks the log
                        log.warning("redis pub/sub: a malformed message on %r ignored", msg["channel"])
                        for w in watch.waiters:
                            if not w.fut.done():
                                w.fut.set_result(False)
            elif kind == "pong":
                futs, counter = self._pings.pop(bytes(msg["data"]), ([], None))
                for fut in futs:
                    if not fut.done():
                        fut.set_result(None)
                if counter is not None:
                    self.pubsub._bump(counter)


#: Error codes with which Redis refuses a command for a while (full memory, a
#: failed save, a busy script, a replica, a cluster reshaping): an operator can
#: fix them, and the writer retries until they are.
_FOR_NOW: Final = frozenset(
    {"OOM", "MISCONF", "BUSY", "LOADING", "READONLY", "NOREPLICAS", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"}
)


def _refused_for_now(exc: ResponseError) -> bool:
    if isinstance(exc, OutOfMemoryError):  # redis-py drops the "OOM" code from its text
        return True
    text = str(exc)
    if text.split(" ", 1)[0] in _FOR_NOW:
        return True
    # an error raised inside a script: "... script: ..." after the original code
    return any(f"{code} " in text for code in ("OOM command not allowed", "MISCONF"))


def _str(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else b


def _split(blob: bytes) -> list[bytes]:
    """The events of a ``_READ`` reply: each is a 4-byte big-endian length, then the bytes."""
    out = []
    i, n = 0, len(blob)
    unpack = _LENGTH.unpack_from
    while i < n:
        (size,) = unpack(blob, i)
        i += 4
        out.append(blob[i : i + size])
        i += size
    return out


def _int(b: bytes | str | None) -> int:
    if b is None:
        raise ValueError("a log's meta hash lacks a field")  # pragma: no cover - written together
    return int(b)


def _fold(snap: bytes, tail: Sequence[bytes]) -> Snapshot:
    """A reducer from a stored checkpoint and the events after it."""
    m = msgpack.unpackb(snap, raw=False, strict_map_key=False)
    s = Snapshot()
    s.status = m.get("status")
    s.plan = m.get("plan")
    s.asks = {a["id"]: a for a in m.get("asks") or ()}
    s.texts = {t["id"]: [t["text"]] for t in m.get("texts") or ()}
    for raw in tail:
        ev = decode_event(raw)
        s.apply(ev.k, ev.d)
    return s


_: type[Store] = RedisStore
__: type[Fetches] = RedisStore
