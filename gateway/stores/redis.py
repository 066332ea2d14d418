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
and never before as many bytes of events followed the last one as that
checkpoint's own size: an open text stream makes the snapshot grow with
every token, and rewriting it per batch would cost O(n^2) bytes.
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
is seen by the second check, one after it by the message.  Once a
subscription is live, its messages tell the log's epoch, head and end, so
later waits skip the second check (one round trip less per event): that
knowledge is dropped whenever messages may have been lost (a reconnect, a
new pub/sub connection, a malformed message) or when a change of another
epoch comes, and the next wait reads the log again.  A message wakes
only the waiters it concerns (a later head, another epoch, a first ``end``),
so the writer's own direct wake and the echo of its message do not wake
twice.  When the pub/sub connection comes back after a drop, every waiter
wakes (spuriously) and subscriptions count as unconfirmed until a fresh PING
comes back; an idle pub/sub connection is pinged every ``poll_interval / 2``
and dropped if the previous PING went unanswered (a silently dead socket).
A wait also returns False after ``poll_interval`` seconds: the safety net
for what no message announces (a log that expired).

Requests to the writer (``base.Requests``).  A client's ``reply``, ``send`` or
``cancel`` that reaches a node which does not write the session travels
through two more keys of the sid's slot:

``<prefix>{sid}:req``
    a stream of requests (capped near ``MAX_REQUESTS`` entries), each one
    field ``q``: the packed request with a token of its own and the channel
    of the node that asked.  A script adds it only while the sid's lease is
    held (a live writer), and PUBLISHes on ``<prefix>{sid}:reqs``.  ``create``
    deletes the stream (a new run owes nothing to the old one's requests) and
    ``end`` gives it the log's expiry.
``<prefix>{sid}:out:<token>``
    the outcome, kept ``OUTCOME_TTL`` seconds; the same script PUBLISHes it on
    the asking node's channel ``<prefix>node:<id>``.
``<prefix>{sid}:rids``
    a hash, ``rid`` -> the outcome the writer will always give it (up to
    ``MAX_RIDS`` per run), so that a re-sent ``rid`` gets its first outcome
    from any node even after the run ended and its writer left.  ``create``
    deletes it and ``end`` gives it the log's expiry.

The writer subscribes to ``<prefix>{sid}:reqs`` and reads the stream after
the last entry it took, on each message, after each reconnect of the pub/sub
connection, and every ``poll_interval``.  The asking node waits for the
message, and looks at the outcome key itself if it may have missed it (a
reconnect) and every ``lease_ttl / 2``: an answer is never lost, only
delayed.  It gives up after ``request_timeout`` (``StoreUnavailable``: the
client re-sends the same ``rid``, which the writer answers once), and at
once when the lease is gone (no live writer).  A ``rid`` is answered once
whichever node it comes through: every request of a sid reaches its one
writer, which remembers the outcome of each ``rid``.

The start queue (``wirepipe worker``).  Workers advertise the apps they run
in the sorted set ``<prefix>{starts}:apps`` (app -> when the advertisement
lapses, by Redis's clock).  A gateway's ``hello.start`` for an app that only
workers run reserves the sid's lease for a start id (``reserve``: a sid
with a live writer or a queued start is ``sid_taken``) and adds the start to
the stream ``<prefix>{starts}:q:<app>`` (``enqueue_start``; refused when
``MAX_QUEUED`` starts wait).  Workers read it as one consumer group
(``workers``, XREADGROUP), take the sid over from the reservation
(``take_over``) and acknowledge the entry (XACK and XDEL: the stream holds
only starts not yet taken).  An entry a worker read and never acknowledged
(it died first) is claimed by another after ``claim_idle`` seconds
(XAUTOCLAIM).  Every start key shares the hash tag ``{starts}``, so one
XREADGROUP reads every app's stream on a Redis Cluster too.

Redis Cluster.  With ``cluster=True`` (or a ``RedisCluster`` client) every
command goes to the master of its key's slot.  Each script names only keys
of one ``{sid}`` (log, meta, lease) or only ``<prefix>live``, so each runs
on one node; ``live`` is touched by separate commands, never together with
a sid's keys.  Commands in flight are bounded by ``max_connections`` in the
store (a semaphore), since the cluster client fails instead of waiting once
a node's connections are all busy.  A PUBLISH on any node reaches the
subscribers of every node (the cluster bus broadcasts it), so pub/sub is a
plain connection to one node, picked at random among the cluster's nodes.
If that connection fails (the node died, or a health PING went unanswered)
the store moves it to the next node: it starts the pub/sub side afresh there
(every waiter wakes, spuriously, and subscriptions count as unconfirmed
until a PING through the new node comes back), as after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import logging
import random
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgpack
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    ClusterError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from protocol import LeaseLost, LogMissing, LogReplaced, SeqGap, Snapshot, StoreUnavailable, decode_event, packb

from .base import Appended, Fetched, Fetches, LogInfo, Retention, Store

log = logging.getLogger("wirepipe.store.redis")

T = TypeVar("T")

#: A checkpoint is stored at least once per this many bytes of events.
SNAPSHOT_BYTES: Final = 256 * 1024
#: Seconds a sid stays subscribed after its last waiter left.
LINGER: Final = 30.0
#: Requests kept per sid for its writer (the oldest are trimmed past it: their
#: senders time out and re-send).
MAX_REQUESTS: Final = 1000
#: Seconds an outcome of a request is kept for a node that missed its message.
OUTCOME_TTL: Final = 60.0
#: Outcomes by rid kept per run in Redis (past it, only the writer remembers).
MAX_RIDS: Final = 10_000
#: Starts that may wait in one app's queue; past it a start is refused (``unavailable``).
MAX_QUEUED: Final = 10_000
#: The consumer group of the workers on each app's start stream.
WORKERS: Final = "workers"
#: Requests the writer takes per read of its stream.
_REQUEST_BATCH: Final = 100

_LENGTH: Final = struct.Struct(">I")

# The append script's status codes (the first element of its reply).
_OK, _APPLIED, _MISSING, _OTHER_EPOCH, _BAD_SEQ, _NEED_SNAPSHOT, _NOT_HOLDER = 0, 1, -1, -2, -3, -4, -5
#: What redis-py raises when the server cannot be reached or does not answer
#: (BusyLoadingError, a restarted server loading its data, is a ConnectionError),
#: and what its cluster client raises when no node serves a slot for now (the
#: cluster is down, a slot is not covered, no node can be reached to map them).
_UNREACHABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OSError,
    TimeoutError,
    ClusterError,
    RedisClusterException,
)
#: What the pub/sub side counts as a lost connection.
_PUBSUB_LOST: Final = (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterException)

# The writer-lease check of the write scripts: KEYS[3] is the lease, which the
# holder ARGV ('' = no check) must hold (append and end also accept a lapsed
# lease while the log is still the writer's open one).
# KEYS: log, meta, lease, requests, rids.  ARGV: channel, epoch, snapshot, head, holder.
_CREATE: Final = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return -5 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
local head = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'first', head + 1, 'head', head, 'bytes', 0,
           'snap', ARGV[3], 'snap_seq', head)
redis.call('PUBLISH', ARGV[1], string.format('c:%d:', head) .. ARGV[2])
return 1
"""

#: Bytes of new events an append's wake message carries (past it, readers read).
PUSH_BYTES: Final = 64 * 1024
#: The newest events a subscribed sid keeps from its messages: count, bytes.
RECENT_EVENTS: Final = 256
RECENT_BYTES: Final = 256 * 1024

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
-- The message carries the new events (from the first kept one) when they are
-- small, so that readers on every node need no read: 'a:<head>:<epoch>', a newline,
-- the first kept seq, a newline, the events (each a 4-byte length, then its bytes).
local from, parts, psize = math.max(cut, head + 1), {}, 0
for s = from, new_head do psize = psize + #ARGV[7 + s - head] + 4 end
if psize <= PUSH_BYTES then
  for s = from, new_head do parts[#parts + 1] = struct.pack('>I4', #ARGV[7 + s - head]) .. ARGV[7 + s - head] end
end
redis.call('PUBLISH', ARGV[1], string.format('a:%d:', new_head) .. st[1] .. string.format('\\n%d\\n', cut)
           .. table.concat(parts))
return {0, cut, new_head}
""".replace("PUSH_BYTES", str(PUSH_BYTES))

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

# KEYS: log, meta, lease, requests, rids.  ARGV: channel, ended_at, ttl in ms,
# holder, release ('1': the holder's lease goes too).
_END: Final = """
local v = ARGV[4] ~= '' and redis.call('GET', KEYS[3])
if v and v ~= ARGV[4] then return -5 end
-- The run is over: its writer gives the sid up in the same step (ARGV[5]), so
-- that whoever sees the end can start the sid again at once.
if v and ARGV[5] == '1' then redis.call('DEL', KEYS[3]) end
local st = redis.call('HMGET', KEYS[2], 'epoch', 'ended_at')
if not st[1] or st[2] then return 0 end
redis.call('HSET', KEYS[2], 'ended_at', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('PEXPIRE', KEYS[5], ARGV[3])
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

# KEYS: lease.  ARGV: holder, ttl in ms.  Reply: 1 (reserved) or 0 (held by anyone).
_RESERVE: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

# KEYS: lease.  ARGV: reservation, holder, ttl in ms.  Reply: as _CLAIM's.  A
# reservation that lapsed (the start waited long) is no obstacle: a lease
# nobody holds is taken as well.
_TAKE_OVER: Final = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] and v ~= ARGV[2] then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
"""

# KEYS: lease.  ARGV: holder.
_RELEASE: Final = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return redis.call('DEL', KEYS[1]) end
if not v then return 1 end  -- already gone (given up with the end): still leave the live set
return 0
"""

# Requests.  KEYS: requests, lease, rids.  ARGV: channel, packed request, max
# entries, rid.  Reply: the packed outcome the rid already has, or 1 (queued
# for the writer), or 0 (no live writer: nothing queued).
_REQUEST: Final = """
local done = redis.call('HGET', KEYS[3], ARGV[4])
if done then return done end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'q', ARGV[2])
redis.call('PUBLISH', ARGV[1], '')
return 1
"""

# KEYS: outcome, rids.  ARGV: the asking node's channel, token, packed outcome,
# ttl in ms, rid ('' = not for keeps), max rids.
_OUTCOME: Final = """
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
if ARGV[5] ~= '' and redis.call('HLEN', KEYS[2]) < tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[3])
end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return 1
"""

# The start queue.  KEYS: stream.  ARGV: packed start, max queued.  Reply: 1 or 0 (full).
_ENQUEUE: Final = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('XADD', KEYS[1], '*', 's', ARGV[1])
return 1
"""

# KEYS: apps.  ARGV: ttl in ms, "<app>\n<worker>" members...  (each lapses unless renewed)
_ADVERTISE: Final = """
local t = redis.call('TIME')
local lapse = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'GT', lapse, ARGV[i]) end
return 1
"""

# KEYS: apps.  Reply: the apps some live worker runs.
_ADVERTISED: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: live.  Reply: the sids whose lease expiry (by the server's clock) passed.
_LAPSED: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
"""


class _Script:
    """One Lua script: EVALSHA, and EVAL on the node that lacks it (``NOSCRIPT``).

    redis-py's own script objects answer NOSCRIPT with SCRIPT LOAD, which a
    cluster client sends to every master: with one of them down, no script
    could be loaded anywhere.  EVAL runs (and caches) the script on the node
    of its keys only.
    """

    __slots__ = ("batcher", "_client", "_text", "sha")

    def __init__(self, client: Redis | RedisCluster, text: str, batcher: _Batcher | None = None) -> None:
        self._client = client
        self._text = text
        #: The batcher that sends this script's calls (None: each its own round trip).
        self.batcher = batcher
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        if self.batcher is not None:
            return await self.batcher.call(self, keys, args)
        return await self.direct(keys, args)

    async def direct(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """EVALSHA (EVAL if the node lacks the script), in a round trip of its own."""
        try:
            return await self._client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._client.eval(self._text, len(keys), *keys, *args)


#: Script calls sent in one pipeline, at most.
BATCH_CALLS: Final = 256


class _Batcher:
    """The hot scripts of every session, sent to Redis together: one pipeline per round trip.

    Each call queues and gets a future.  While no round trip is under way
    the first call goes at once; calls made meanwhile (other sessions'
    appends and reads) wait for it and then go together in one pipeline
    (at most ``BATCH_CALLS``), so nothing waits for a timer and a busy node
    pays one round trip, not one per session.  Each call keeps its own
    outcome: a pipeline command that fails fails only its caller (NOSCRIPT
    runs it again with EVAL); a connection that fails fails the round trip's
    callers, who retry as after any Redis error.  A round trip bounded by
    ``timeout`` fails its callers with ``StoreUnavailable``.
    """

    __slots__ = ("_client", "_queue", "_task", "timeout", "round_trips", "calls")

    def __init__(self, client: Redis | RedisCluster, timeout: float) -> None:
        self._client = client
        self._queue: list[tuple[_Script, Sequence[Any], Sequence[Any], asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self.timeout = timeout
        #: Round trips made, and the calls they carried (for monitoring and tests).
        self.round_trips = 0
        self.calls = 0

    def call(self, script: _Script, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, fut))
        if self._task is None:
            self._task = loop.create_task(self._drain(), name="wirepipe-redis-batch")
        return fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:BATCH_CALLS], self._queue[BATCH_CALLS:]
                batch = [b for b in batch if not b[3].done()]  # callers that gave up
                if batch:
                    await self._send(batch)
        finally:
            self._task = None
            if self._queue:  # cancelled (the store closes): nobody will send these
                for *_, fut in self._queue:
                    if not fut.done():
                        fut.set_exception(StoreUnavailable("the store is closed"))
                self._queue.clear()

    async def _send(self, batch: list[tuple[_Script, Sequence[Any], Sequence[Any], asyncio.Future[Any]]]) -> None:
        self.round_trips += 1
        self.calls += len(batch)
        try:
            async with asyncio.timeout(self.timeout):
                if len(batch) == 1:
                    script, keys, args, _ = batch[0]
                    results: list[Any] = [await script.direct(keys, args)]
                else:
                    pipe = self._client.pipeline(transaction=False)
                    for script, keys, args, _ in batch:
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    results = await pipe.execute(raise_on_error=False)
        except TimeoutError:
            exc: BaseException = StoreUnavailable(f"redis did not answer within {self.timeout:g}s")
            results = [exc] * len(batch)
        except asyncio.CancelledError:
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreUnavailable("the store is closed"))
            raise
        except Exception as err:  # the connection failed: every call of the round trip
            results = [err] * len(batch)
        for (script, keys, args, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, NoScriptError):  # this node lacks the script: EVAL it
                asyncio.ensure_future(self._again(script, keys, args, fut))
            elif isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    @staticmethod
    async def _again(script: _Script, keys: Sequence[Any], args: Sequence[Any], fut: asyncio.Future[Any]) -> None:
        try:
            result = await script.direct(keys, args)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not fut.done():
                fut.set_result(result)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


@dataclass(frozen=True, slots=True)
class _Scripts:
    """Makes :class:`_Script` objects: ``register_script`` as on a redis-py client."""

    client: Redis | RedisCluster
    batcher: _Batcher | None = None

    def register_script(self, text: str, *, batched: bool = False) -> _Script:
        return _Script(self.client, text, self.batcher if batched else None)


@dataclass(slots=True)
class _Writer:
    """The writer's view of one log: where it stands and its reducer at ``head``."""

    epoch: str
    head: int
    snap: Snapshot
    ckpt: int  # snap_seq of the stored checkpoint
    tail_bytes: int  # bytes of the events after the checkpoint
    ckpt_bytes: int = 0  # the stored checkpoint's size


@dataclass(slots=True, eq=False)
class _Waiter:
    after: int
    fut: asyncio.Future[bool]
    epoch: str | None = None  # what the log was when the wait began (None: being checked)
    #: The loop time past which the housekeeping tick ends the wait (False).
    due: float = float("inf")
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
    #: Since when the watch has no waiter (loop time; None: it has some).
    idle_since: float | None = None
    #: The log as the messages received since the subscription went live tell
    #: it (None: not known; a wait then reads it from Redis).  Reset whenever
    #: messages may have been lost.
    known: _State | None = None
    #: Changes announced so far (a check made meanwhile may be older).
    changes: int = 0
    #: The newest events the messages carried (of ``known``'s epoch), from seq
    #: ``recent_first``: a read they cover needs no round trip.
    recent: list[bytes] = field(default_factory=list)
    recent_first: int = 1
    recent_bytes: int = 0

    def lost(self, ready: asyncio.Future[None]) -> None:
        """Messages may have been lost: a new subscription, and nothing known."""
        self.ready = ready
        self.known = None
        self._forget()

    def learn(self, kind: bytes, epoch: str, head: int, first: int | None = None, raws: Sequence[bytes] = ()) -> None:
        """What an announced change says of the log (``raws``: the events it carried, ending at ``head``)."""
        self.changes += 1
        k = self.known
        if kind == b"c":
            self.known = _State(epoch, head, False, head + 1)
            self._forget(head + 1)
        elif k is None or k.epoch != epoch:
            self.known = None  # another epoch's change, maybe late: look it up next time
            self._forget()
        elif kind == b"a":
            self.known = _State(epoch, max(head, k.head), k.ended, k.first if first is None else max(first, k.first))
            self._keep(head, raws)
        elif kind == b"e":
            self.known = _State(epoch, k.head, True, k.first)

    def _forget(self, at: int = 1) -> None:
        self.recent, self.recent_first, self.recent_bytes = [], at, 0

    def _keep(self, head: int, raws: Sequence[bytes]) -> None:
        end = self.recent_first + len(self.recent) - 1
        start = head - len(raws) + 1
        if head <= end:
            return  # already here (the writer's own wake, then its message's echo)
        if not raws or start > end + 1:
            # Events we were not told (a large append): start again after them.
            self._forget(head + 1 if not raws else start)
            if not raws:
                return
            end = start - 1
        fresh = raws[end + 1 - start :]
        self.recent.extend(fresh)
        self.recent_bytes += sum(map(len, fresh))
        drop = 0
        while len(self.recent) - drop > RECENT_EVENTS or (
            self.recent_bytes > RECENT_BYTES and drop < len(self.recent) - 1
        ):
            self.recent_bytes -= len(self.recent[drop])
            drop += 1
        if drop:
            del self.recent[:drop]
            self.recent_first += drop

    def cached(self, after: int, limit: int, max_bytes: int) -> Fetched | None:
        """``fetch`` answered from what the messages said, or None (read Redis)."""
        k = self.known
        if k is None or not self.ready.done():
            return None
        info = LogInfo(k.epoch, k.first, k.head, k.ended)
        if after >= k.head or limit <= 0:
            return Fetched(info, [])
        start = max(after + 1, k.first)
        rf = self.recent_first
        if start < rf or rf + len(self.recent) - 1 != k.head:
            return None
        out: list[bytes] = []
        size = 0
        for raw in self.recent[start - rf : start - rf + limit]:
            size += len(raw)
            if size > max_bytes and out:
                break
            out.append(raw)
        return Fetched(info, out)


class PubSubHealth:
    """What happened to a store's pub/sub connection: counters, and a way to wait on them.

    For monitoring (export the counters) and for code that must know the
    connection is back before it relies on another node's wake-ups.
    """

    __slots__ = ("pongs", "live", "reconnects", "silent_drops", "parked", "failovers", "node", "_changed")

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
        #: Cluster: times the connection moved to another node because its node failed.
        self.failovers = 0
        #: Cluster: the node (``host:port``) the connection goes through, once picked.
        self.node: str | None = None
        self._changed: asyncio.Event | None = None

    def _bump(self, counter: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        if self._changed is not None:  # someone waits (``parked`` is bumped on every wait)
            self._changed.set()
            self._changed = None

    async def until(self, pred: Callable[[PubSubHealth], bool]) -> None:
        """Return once ``pred(self)`` holds, checked after every change of a counter."""
        while not pred(self):
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()


@dataclass(slots=True, eq=False)
class _Channel:
    """A channel subscribed for a callback: requests to a writer, outcomes to a requester."""

    name: bytes
    #: Called with each message's data, and with None when messages may have
    #: been lost (the pub/sub connection came back).
    on_message: Callable[[bytes | None], None]
    ready: asyncio.Future[None]  # done once the subscription is live
    users: int = 0


@dataclass(frozen=True, slots=True)
class _State:
    epoch: str
    head: int
    ended: bool
    first: int


class RedisStore:
    """Session logs in Redis Streams: any gateway node can serve any session.

    ``url`` is a ``redis://`` URL, or an existing ``redis.asyncio.Redis``
    client made with ``decode_responses=False`` (the caller closes it).
    ``cluster=True`` makes the URL a Redis Cluster's (any one node: the
    client finds the others); an existing
    ``redis.asyncio.cluster.RedisCluster`` client is used as one.
    ``snapshot_every`` is how many events may follow the stored snapshot
    checkpoint (1: store it with every append).  ``poll_interval`` bounds
    how long one ``wait`` blocks before a (spurious) False, and half of it
    is how often an idle pub/sub connection is pinged.  ``max_connections``
    bounds the pool made from a URL (one of them is the pub/sub connection);
    on a cluster it bounds the commands in flight (past it, a command waits),
    and the pub/sub connection is one more, to one node.
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
        url: str | Redis | RedisCluster = "redis://127.0.0.1:6379/0",
        *,
        cluster: bool = False,
        retention: Retention | None = None,
        prefix: str = "wirepipe:",
        snapshot_every: int = 256,
        poll_interval: float = 30.0,
        max_connections: int = 64,
        command_timeout: float = 10.0,
        lease_ttl: float | None = 10.0,
        request_timeout: float = 5.0,
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
        if not request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        #: Seconds a node waits for the writer to answer a request it handed on.
        self.request_timeout = request_timeout
        if cluster and isinstance(url, Redis):
            raise ValueError("cluster=True takes a URL or a RedisCluster client, not a Redis one")
        #: Seconds a writer's lease lives without a renewal (None: no leases).
        self.lease_ttl = lease_ttl
        self.command_timeout = command_timeout
        self.retention = retention or Retention()
        self.prefix = prefix
        self.snapshot_every = snapshot_every
        self.poll_interval = poll_interval
        self.linger = LINGER
        self._redis: Redis | RedisCluster
        if isinstance(url, RedisCluster):
            if url.get_connection_kwargs().get("decode_responses"):
                raise ValueError("RedisStore needs a client with decode_responses=False")
            self._redis = url
            self._owns_client = False
        elif isinstance(url, Redis):
            if url.connection_pool.connection_kwargs.get("decode_responses"):
                raise ValueError("RedisStore needs a client with decode_responses=False")
            self._redis = url
            self._owns_client = False
        elif cluster:
            # Past max_connections on one node it raises: _gate bounds what is in flight.
            self._redis = RedisCluster.from_url(url, max_connections=max_connections)
            self._owns_client = True
        else:
            # Blocking: past max_connections a command waits for a connection
            # instead of failing.  One connection is the pub/sub one.
            pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=None)
            self._redis = Redis.from_pool(pool)  # owns the pool: aclose() disconnects it
            self._owns_client = True
        #: True on a Redis Cluster (``cluster=True``, or a ``RedisCluster`` client).
        self.cluster = isinstance(self._redis, RedisCluster)
        #: On a cluster: bounds the commands in flight (its client has no blocking pool).
        self._gate = asyncio.Semaphore(max_connections) if self.cluster else None
        #: Sends the hot scripts of every session together (see ``_Batcher``).  Not
        #: on a cluster: its client refuses scripts in a pipeline.
        self.batcher = None if self.cluster else _Batcher(self._redis, command_timeout)
        r = _Scripts(self._redis, self.batcher)
        self._create = r.register_script(_CREATE)
        self._append = r.register_script(_APPEND, batched=True)
        self._fetch = r.register_script(_FETCH, batched=True)
        self._read = r.register_script(_READ)
        self._state = r.register_script(_STATE)
        self._end = r.register_script(_END)
        self._claim = r.register_script(_CLAIM)
        self._renew = r.register_script(_RENEW, batched=True)
        self._release = r.register_script(_RELEASE)
        self._lapsed = r.register_script(_LAPSED)
        self._reserve = r.register_script(_RESERVE)
        self._take_over = r.register_script(_TAKE_OVER)
        self._request = r.register_script(_REQUEST)
        self._enqueue = r.register_script(_ENQUEUE)
        self._advertise = r.register_script(_ADVERTISE)
        self._advertised = r.register_script(_ADVERTISED)
        self._outcome = r.register_script(_OUTCOME)
        # channels subscribed for a callback, and this node's requests waiting for outcomes
        self._channels: dict[bytes, _Channel] = {}
        self._node = secrets.token_hex(8)
        self._tokens = itertools.count(1)
        self._outcomes: dict[bytes, asyncio.Future[dict[str, Any] | None]] = {}
        self._outcome_channel: _Channel | None = None
        #: The last request taken, by sid this process writes (see ``serve_requests``).
        self._served: dict[str, bytes] = {}
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
        #: On a cluster: the client of the node the pub/sub connection goes to
        #: (made when first needed), and where the next pick starts.
        self._node_client: Redis | None = None
        self._node_pick = random.randrange(1 << 16)
        self._subscriber: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        # lease expiries to record in ``live``, and the task that does it
        self._live_pending: dict[str, int] = {}
        self._live_task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._health_token: bytes | None = None
        #: The pub/sub connection's history (``await store.pubsub.until(...)``).
        self.pubsub = PubSubHealth()
        self._inflight: set[asyncio.Future[Any]] = set()
        self._closed = False
        #: Commands that failed with ``StoreUnavailable`` (unreachable, no answer
        #: within ``command_timeout``, refusing writes for now), for ``/metrics``.
        self.failed_calls = 0

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
        task = asyncio.ensure_future(call if self._gate is None else self._gated(call))
        self._inflight.add(task)
        task.add_done_callback(self._settled)
        # asyncio.wait, like shield, leaves the call running if we are cancelled.
        done, _ = await asyncio.wait({task}, timeout=self.command_timeout)
        if not done:
            task.cancel()  # redis-py then drops the connection: its reply would be out of step
            self.failed_calls += 1
            raise StoreUnavailable(f"redis did not answer within {self.command_timeout:g}s")
        with _unavailable(self):
            return task.result()

    async def _hot(self, script: _Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """A hot script (append, fetch, renew): through the batcher when there is one.

        The batcher bounds each round trip by ``command_timeout`` itself and
        a caller that is cancelled just stops waiting for its future, so this
        path needs no task and no timer of its own (``_io`` does, for the rest).

        Raises:
            StoreUnavailable: as ``_io``.
        """
        batcher = script.batcher
        if batcher is None:
            return await self._io(script(keys=keys, args=args))
        with _unavailable(self):
            return await batcher.call(script, keys, args)

    async def _gated(self, call: Awaitable[T]) -> T:
        """``call`` once fewer than ``max_connections`` commands are in flight (cluster only)."""
        assert self._gate is not None
        try:
            await self._gate.acquire()
        except BaseException:
            if inspect.iscoroutine(call):
                call.close()  # never started: no "never awaited" warning
            raise
        try:
            return await call
        finally:
            self._gate.release()

    def _settled(self, task: asyncio.Future[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that was cancelled never will

    # --- keys -----------------------------------------------------------------

    def _keys(self, sid: str) -> list[str]:
        """The log, its meta hash, its writer lease, its requests and their outcomes by rid (one hash slot)."""
        tag = f"{self.prefix}{{{sid}}}"
        return [f"{tag}:log", f"{tag}:meta", f"{tag}:lease", f"{tag}:req", f"{tag}:rids"]

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
        self._served.pop(sid, None)  # the new log starts with no requests
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
        raws = [ev.raw for ev in events]
        size = sum(map(len, raws))
        head = w.head + len(events)
        since = w.tail_bytes + size
        # A checkpoint costs its size: it is rewritten only once at least as many
        # bytes of events followed it (an open text stream grows with every token:
        # rewriting it every batch cost O(n^2) bytes for a long stream).
        ckpt = self.snapshot_every == 1 or (
            since >= w.ckpt_bytes and (head - w.ckpt >= self.snapshot_every or since >= SNAPSHOT_BYTES)
        )
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
        self._wake(sid, b"a", w.epoch, head, int(ret[1]) if code == _OK else None, raws if code == _OK else ())

    async def _run_append(
        self, sid: str, w: _Writer, seq: int, raws: list[bytes], ckpt: bool, holder: str | None
    ) -> list[Any]:
        r = self.retention
        snap = packb(w.snap.as_map()) if ckpt else b""
        if ckpt:
            w.ckpt_bytes = len(snap)  # kept only if the append succeeds (w is then kept)
        args: list[Any] = [self._channel(sid), w.epoch, seq, r.max_events, r.max_bytes, snap, holder or "", *raws]
        ret: list[Any] = await self._hot(self._append, self._keys(sid), args)
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

    async def fetch(self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20) -> Fetched | None:
        """``Fetches.fetch``: the state and the events after ``after``, one script, one round trip.

        No round trip when the sid is subscribed and its messages carried
        what is asked (the common case of a live reader).
        """
        watch = self._watches.get(sid)
        if watch is not None:
            hit = watch.cached(after, limit, max_bytes)
            if hit is not None:
                return hit
        args: list[int] = [max(after, 0), max(limit, 0), max_bytes]
        got = await self._hot(self._fetch, self._keys(sid)[:2], args)
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

    async def end(self, sid: str, *, holder: str | None = None, release: bool = False) -> None:
        self._writers.pop(sid, None)
        self._served.pop(sid, None)
        ttl_ms = max(0, int(self.retention.ttl_after_end * 1000))
        args: list[Any] = [self._channel(sid), repr(time.time()), ttl_ms, holder or "", "1" if release else ""]
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
        expiry = await self._hot(self._renew, [keys[2], keys[1]], [holder, self._lease_ms(), epoch])
        if int(expiry) < 0:
            return False
        # A separate command (the set is not in the sid's hash slot), one for
        # every renewal made meanwhile: if it is lost the janitor finds the sid
        # early (the older expiry stays), and its SET NX fails harmlessly.
        self._live_later(sid, int(expiry))
        return True

    def _live_later(self, sid: str, expiry: int) -> None:
        """Record ``sid``'s new lease expiry in ``live``: one ZADD for all renewals made meanwhile."""
        self._live_pending[sid] = expiry
        if self._live_task is None and not self._closed:
            self._live_task = asyncio.get_running_loop().create_task(self._flush_live(), name="wirepipe-redis-live")

    async def _flush_live(self) -> None:
        try:
            while self._live_pending and not self._closed:
                batch, self._live_pending = self._live_pending, {}
                try:
                    await self._io(self._redis.zadd(self._live, batch))
                except StoreUnavailable as exc:  # the older expiries stay: found early, harmless
                    log.warning("redis: %d lease expiries not recorded: %s", len(batch), exc)
        finally:
            self._live_task = None

    async def release(self, sid: str, holder: str) -> None:
        if await self._io(self._release(keys=[self._keys(sid)[2]], args=[holder])):
            # A new claim made since re-adds the sid with its next renewal.
            await self._io(self._redis.zrem(self._live, sid))

    async def lapsed(self) -> list[str]:
        sids = await self._io(self._lapsed(keys=[self._live]))
        return [_str(s) for s in sids]

    async def reserve(self, sid: str, holder: str, ttl: float) -> bool:
        ms = max(1, int(ttl * 1000))
        return bool(await self._io(self._reserve(keys=[self._keys(sid)[2]], args=[holder, ms])))

    async def take_over(self, sid: str, reserved_by: str, holder: str) -> bool:
        args: list[Any] = [reserved_by, holder, self._lease_ms()]
        expiry = await self._io(self._take_over(keys=[self._keys(sid)[2]], args=args))
        if int(expiry) < 0:
            return False
        await self._io(self._redis.zadd(self._live, {sid: int(expiry)}))
        return True

    # --- requests to the writer (base.Requests) -------------------------------------

    def _out_key(self, sid: str, token: bytes) -> str:
        """Where the outcome of the request ``token`` waits for a node that missed its message."""
        return f"{self.prefix}{{{sid}}}:out:{token.decode(errors='replace')}"

    def _requests_channel(self, sid: str) -> bytes:
        return f"{self.prefix}{{{sid}}}:reqs".encode()

    async def request(self, sid: str, req: dict[str, Any]) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        out_ch = self._outcome_channel
        if out_ch is None or self._channels.get(out_ch.name) is not out_ch:
            # This node's channel for outcomes: subscribed once, kept until close
            # (again if a failed subscription dropped it).
            channel = f"{self.prefix}node:{self._node}".encode()
            self._outcome_channel = out_ch = await self._listen_to(channel, self._on_outcome)
        token = f"{self._node}.{next(self._tokens)}".encode()
        fut: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self._outcomes[token] = fut
        keys = self._keys(sid)
        out_key = self._out_key(sid, token)
        try:
            packed = packb({**req, "q": token, "to": out_ch.name})
            args: list[Any] = [self._requests_channel(sid), packed, MAX_REQUESTS, str(req.get("rid", ""))]
            queued = await self._io(self._request(keys=[keys[3], keys[2], keys[4]], args=args))
            if isinstance(queued, bytes):
                return _unpack_map(queued)  # the rid was answered before: its outcome
            if not queued:
                return None  # no live writer
            deadline = loop.time() + self.request_timeout
            # How often to look for an outcome whose message was lost, and for
            # a writer that died: its lease lapses within lease_ttl.
            look = (self.lease_ttl or self.poll_interval) / 2
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise StoreUnavailable(f"the writer of {sid!r} did not answer within {self.request_timeout:g}s")
                done, _ = await asyncio.wait({fut}, timeout=min(left, look))
                if done and fut.result() is not None:
                    return fut.result()
                # A message may have been lost (a reconnect), or nobody will answer.
                stored = await self._io(self._redis.get(out_key))
                if stored is not None:
                    return _unpack_map(bytes(stored, "utf-8") if isinstance(stored, str) else stored)
                if not await self._io(self._redis.exists(keys[2])):
                    return None  # the writer is gone
                if fut.done():
                    fut = loop.create_future()
                    self._outcomes[token] = fut
        finally:
            self._outcomes.pop(token, None)

    def _on_outcome(self, data: bytes | None) -> None:
        if data is None:  # messages may have been lost: every request looks
            for fut in self._outcomes.values():
                if not fut.done():
                    fut.set_result(None)
            return
        token, _, packed = data.partition(b" ")
        waiting = self._outcomes.get(token)
        if waiting is None or waiting.done():
            return
        try:
            waiting.set_result(_unpack_map(packed))
        except (ValueError, TypeError, msgpack.UnpackException):
            log.warning("redis: a malformed outcome on this node's channel ignored")
            waiting.set_result(None)  # it looks at the stored outcome instead

    async def serve_requests(self, sid: str, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        kick = asyncio.Event()
        kick.set()  # requests queued before the subscription is live
        channel = await self._listen_to(self._requests_channel(sid), lambda _data: kick.set())
        key = self._keys(sid)[3]
        # Where the last call stopped (a store error ended it): requests are
        # taken once, also across retries.
        last = self._served.get(sid, b"0-0")
        try:
            while True:
                if not kick.is_set():
                    # The safety net: a message no reconnect announced lost.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_interval):
                            await kick.wait()
                kick.clear()
                while True:
                    entries = await self._io(self._redis.xrange(key, min=b"(" + last, max=b"+", count=_REQUEST_BATCH))
                    for entry_id, fields in entries or ():
                        last = entry_id.encode() if isinstance(entry_id, str) else bytes(entry_id or b"")
                        self._served[sid] = last
                        await self._answer(sid, dict(fields or {}), handle)
                    if len(entries or ()) < _REQUEST_BATCH:
                        break
        finally:
            self._unlisten(channel)

    async def _answer(
        self, sid: str, fields: dict[Any, Any], handle: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        try:
            req = _unpack_map(fields[b"q"])
            token, to = req["q"], req["to"]
            if not isinstance(token, bytes) or not isinstance(to, bytes):
                raise TypeError("no token")
        except (KeyError, ValueError, TypeError, msgpack.UnpackException):
            # Anyone with access to Redis may write there: not ours.
            log.warning("redis: a malformed request for %r ignored", sid)
            return
        try:
            outcome = handle(req)
        except Exception:
            log.exception("redis: a request for %r failed", sid)
            outcome = {"ok": False, "err": "internal"}
        out_key = self._out_key(sid, token)
        rid = str(req.get("rid", "")) if outcome.get("once") else ""
        args: list[Any] = [to, token, packb(outcome), int(OUTCOME_TTL * 1000), rid, MAX_RIDS]
        await self._io(self._outcome(keys=[out_key, self._keys(sid)[4]], args=args))

    # --- the start queue (wirepipe worker) ---------------------------------------------

    def _starts(self, app: str) -> str:
        return f"{self.prefix}{{starts}}:q:{app}"

    async def advertise(self, apps: Sequence[str], ttl: float, worker: str = "") -> None:
        """Say that ``worker`` (alive) runs ``apps``, for ``ttl`` seconds (renew it before then)."""
        args: list[Any] = [max(1, int(ttl * 1000)), *(f"{app}\n{worker}" for app in apps)]
        await self._io(self._advertise(keys=[f"{self.prefix}{{starts}}:apps"], args=args))

    async def withdraw(self, apps: Sequence[str], worker: str = "") -> None:
        """``worker`` no longer runs ``apps`` (it stops)."""
        members = [f"{app}\n{worker}" for app in apps]
        if members:
            await self._io(self._redis.zrem(f"{self.prefix}{{starts}}:apps", *members))

    async def advertised(self) -> list[str]:
        """The apps some live worker runs."""
        members = await self._io(self._advertised(keys=[f"{self.prefix}{{starts}}:apps"]))
        return sorted({_str(m).partition("\n")[0] for m in members})

    async def enqueue_start(self, app: str, start: dict[str, Any]) -> bool:
        """Queue a start of ``app`` for the workers; False if ``MAX_QUEUED`` starts wait already."""
        return bool(await self._io(self._enqueue(keys=[self._starts(app)], args=[packb(start), MAX_QUEUED])))

    async def start_groups(self, apps: Sequence[str]) -> None:
        """Make the workers' consumer group on each app's start stream (if it is not there)."""
        for app in apps:
            try:
                await self._io(self._redis.xgroup_create(self._starts(app), WORKERS, id="0", mkstream=True))
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    async def take_starts(
        self, apps: Sequence[str], consumer: str, count: int, block: float
    ) -> list[tuple[str, bytes, dict[str, Any]]]:
        """Up to ``count`` new starts of ``apps`` for ``consumer``, waiting up to ``block`` seconds.

        Returns (app, entry id, start) for each; acknowledge each with ``ack_start``.
        """
        streams: dict[Any, Any] = {self._starts(app): ">" for app in apps}
        got: Any = await self._io(
            self._redis.xreadgroup(WORKERS, consumer, streams, count=count, block=max(1, int(block * 1000)))
        )
        out: list[tuple[str, bytes, dict[str, Any]]] = []
        for stream, entries in got or ():
            app = _str(stream)[len(self._starts("")) :]
            out += self._starts_of(app, entries)
        return out

    async def reclaim_starts(
        self, app: str, consumer: str, idle: float, count: int
    ) -> list[tuple[str, bytes, dict[str, Any]]]:
        """Starts of ``app`` that another consumer read ``idle`` seconds ago and never acknowledged."""
        reply = await self._io(
            self._redis.xautoclaim(
                self._starts(app), WORKERS, consumer, min_idle_time=max(0, int(idle * 1000)), count=count
            )
        )
        return self._starts_of(app, reply[1] if reply else ())

    def _starts_of(self, app: str, entries: Any) -> list[tuple[str, bytes, dict[str, Any]]]:
        out: list[tuple[str, bytes, dict[str, Any]]] = []
        for entry_id, fields in entries:
            if not fields:  # deleted since it was read
                continue
            try:
                start = _unpack_map(fields[b"s"])
            except (KeyError, ValueError, TypeError, msgpack.UnpackException):
                start = {}  # not ours: the worker acknowledges and drops it
            out.append((app, entry_id, start))
        return out

    async def ack_start(self, app: str, entry_id: bytes) -> None:
        """The start was taken (or dropped): acknowledge it and delete it from the queue."""
        key = self._starts(app)
        await self._io(self._redis.xack(key, WORKERS, entry_id))
        await self._io(self._redis.xdel(key, entry_id))

    async def wait(
        self,
        sid: str,
        after: int,
        timeout: float | None = None,
        *,
        epoch: str | None = None,
        ended: bool | None = None,
    ) -> bool:
        if timeout is not None and timeout <= 0:  # a poll
            st = await self._check(sid)
            return st is not None and st.head > after and (epoch is None or st.epoch == epoch)
        try:
            if timeout is None or timeout >= self.poll_interval:
                # No timer of its own: the housekeeping tick ends it after poll_interval.
                return await self._wait(sid, after, epoch, ended)
            async with asyncio.timeout(timeout):
                return await self._wait(sid, after, epoch, ended)
        except TimeoutError:
            return False
        except _PUBSUB_LOST as exc:  # the subscription failed
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kick.set()  # a loop whose cancel redis-py swallowed still sees _closed
        tasks = [t for t in (self._subscriber, self._listener, self._housekeeper, self._live_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=1.0)
        if self.batcher is not None:
            self.batcher.close()
        self._wake_all()
        for watch in self._watches.values():
            if not watch.ready.done():
                watch.ready.set_result(None)  # its waiters see _closed and return False
        self._watches.clear()
        self._by_channel.clear()
        for ch in self._channels.values():
            if not ch.ready.done():
                ch.ready.set_exception(StoreUnavailable("the store is closed"))
                ch.ready.exception()
        self._channels.clear()
        for fut in self._outcomes.values():
            if not fut.done():
                fut.set_result(None)
        self._writers.clear()
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        if self._node_client is not None:
            await self._node_client.aclose()
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
        w = _Writer(_str(epoch), int(head), _fold(snap, tail), int(snap_seq), sum(map(len, tail)), len(snap))
        self._writers[sid] = w
        return w

    # --- waiting ------------------------------------------------------------------

    async def _check(self, sid: str) -> _State | None:
        epoch, head, ended_at, first = await self._io(
            self._redis.hmget(self._keys(sid)[1], ["epoch", "head", "ended_at", "first"])
        )
        if epoch is None:
            return None
        return _State(_str(epoch), _int(head), ended_at is not None, _int(first))

    async def _wait(self, sid: str, after: int, seen: str | None, ended: bool | None = None) -> bool:
        if self._closed:
            return False
        loop = asyncio.get_running_loop()
        waiter = _Waiter(after, loop.create_future(), due=loop.time() + self.poll_interval)
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
            if ended is not None and st.ended != ended:  # ended since the caller looked
                return False
            waiter.epoch, waiter.ended = st.epoch, st.ended
            watch = self._watch(sid)
        self._attach(watch, waiter)  # before anything else: an idle watch must not be dropped now
        try:
            if not watch.ready.done():
                await asyncio.shield(watch.ready)
                if self._closed:
                    return False
            st = watch.known
            if st is None:
                # Not known from messages: read it, and keep it if no change
                # was announced meanwhile (else the messages know better).
                ready, changes = watch.ready, watch.changes
                st = await self._check(sid)
                if watch.ready is ready and ready.done() and watch.changes == changes:
                    watch.known = st
            if st is None or (seen is not None and st.epoch != seen):
                return False
            if ended is not None and st.ended != ended:
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

    async def wait_created(self, sid: str, timeout: float, *, other_than: str | None = None) -> bool:
        """Wait up to ``timeout`` seconds for ``sid`` to have a log (of another epoch than ``other_than``).

        True if it has one now; False after the timeout, or spuriously: a
        change of the log announced on its wake channel ends the wait.
        """
        if self._closed:
            return False
        # A waiter of no epoch: any create or append of a real one concerns it.
        waiter = _Waiter(1 << 62, asyncio.get_running_loop().create_future(), epoch="")
        watch = self._watch(sid)
        self._attach(watch, waiter)
        try:
            async with asyncio.timeout(timeout):
                if not watch.ready.done():
                    await asyncio.shield(watch.ready)
                st = await self._check(sid)
                if st is not None and st.epoch != other_than:
                    return True
                await waiter.fut
        except TimeoutError:
            return False
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # the subscription failed
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}: {exc}") from exc
        finally:
            self._detach(watch, waiter)
        st = await self._check(sid)
        return st is not None and st.epoch != other_than

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
            if self._housekeeper is None:
                self._housekeeper = self._spawn(self._housekeep(), "wirepipe-redis-housekeeping")
        return watch

    async def _listen_to(self, name: bytes, on_message: Callable[[bytes | None], None]) -> _Channel:
        """Subscribe ``name`` for ``on_message`` (shared by every user of it); live on return.

        Raises:
            StoreUnavailable: the subscription failed (Redis unreachable).
        """
        if self._closed:
            raise StoreUnavailable("the store is closed")
        ch = self._channels.get(name)
        if ch is None:
            ch = _Channel(name, on_message, asyncio.get_running_loop().create_future())
            self._channels[name] = ch
            self._to_unsub.discard(name)
            self._to_sub.add(name)
            self._kick.set()
            if self._subscriber is None:
                self._subscriber = self._spawn(self._subscribe_loop(), "wirepipe-redis-sub")
        ch.users += 1
        try:
            await asyncio.shield(ch.ready)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._unlisten(ch)
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._unlisten(ch)
            raise
        return ch

    def _unlisten(self, ch: _Channel) -> None:
        ch.users -= 1
        if ch.users > 0 or self._channels.get(ch.name) is not ch:
            return
        del self._channels[ch.name]
        self._to_sub.discard(ch.name)
        self._to_unsub.add(ch.name)
        self._kick.set()

    def _attach(self, watch: _Watch, waiter: _Waiter) -> None:
        watch.waiters.add(waiter)
        watch.idle_since = None

    def _detach(self, watch: _Watch, waiter: _Waiter) -> None:
        watch.waiters.discard(waiter)
        if not watch.waiters:
            watch.idle_since = asyncio.get_running_loop().time()

    async def _housekeep(self) -> None:
        """One timer for every wait: end waits past their due time, unsubscribe idle sids.

        A timer per wait (and per idle watch) cost more than the wait itself
        on a busy node; a tick every quarter of ``min(poll_interval,
        linger)`` does both jobs for all of them.
        """
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(max(0.01, min(self.poll_interval, self.linger) / 4))  # a timer
            now = loop.time()
            for watch in list(self._watches.values()):
                try:
                    for w in watch.waiters:
                        if w.due <= now and not w.fut.done():
                            w.fut.set_result(False)  # the safety net: look again
                    if watch.idle_since is not None and now - watch.idle_since >= self.linger:
                        self._unwatch(watch)
                except Exception:  # a bug here must not stop the safety net for everyone
                    log.exception("redis: housekeeping of %r failed", watch.sid)

    def _unwatch(self, watch: _Watch) -> None:
        if watch.waiters or self._watches.get(watch.sid) is not watch:
            return
        del self._watches[watch.sid]
        del self._by_channel[watch.channel]
        self._to_sub.discard(watch.channel)
        self._to_unsub.add(watch.channel)
        self._kick.set()

    def _wake(
        self, sid: str, kind: bytes, epoch: str, head: int, first: int | None = None, raws: Sequence[bytes] = ()
    ) -> None:
        """Settle the local waiters that a change of ``sid``'s log concerns (and learn of it)."""
        watch = self._watches.get(sid)
        if watch is None:
            return
        watch.learn(kind, epoch, head, first, raws)
        for w in watch.waiters:
            if w.fut.done():
                continue
            if w.epoch is None:  # being checked
                w.early.append((kind, epoch, head))
                continue
            verdict = w.judge(kind, epoch, head)
            if verdict is not None:
                w.fut.set_result(verdict)

    def _tell_channels(self) -> None:
        """Tell every channel's user that messages may have been lost."""
        for ch in list(self._channels.values()):
            try:
                ch.on_message(None)
            except Exception:  # a bug in a callback must not stop the others
                log.exception("redis pub/sub: a callback of %r failed", ch.name)

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
        if task is self._housekeeper:
            self._housekeeper = self._spawn(self._housekeep(), "wirepipe-redis-housekeeping")
            return
        if task is self._subscriber:
            self._subscriber = None
        if task is self._listener:
            self._listener = None
        self._afresh()

    def _afresh(self) -> None:
        """Drop the pub/sub connection and resubscribe every watched channel on a new one.

        Every waiter wakes (a message may have been missed) and new ones wait
        until the new subscriptions are confirmed.
        """
        old, self._pubsub = self._pubsub, None
        if old is not None:
            self._close_later(old.aclose())  # type: ignore[no-untyped-call]
        if self._listener is not None:  # its pub/sub connection is gone: it goes too
            if self._listener is not asyncio.current_task():
                self._listener.cancel()
            self._listener = None
        loop = asyncio.get_running_loop()
        for watch in self._watches.values():
            watch.lost(loop.create_future() if watch.ready.done() else watch.ready)
            self._to_sub.add(watch.channel)
        for ch in self._channels.values():
            if ch.ready.done():
                ch.ready = loop.create_future()
            self._to_sub.add(ch.name)
        self._wake_all()
        self._tell_channels()
        if self._subscriber is None and self._watches:
            self._subscriber = self._spawn(self._subscribe_loop(), "wirepipe-redis-sub")
        self._kick.set()

    def _close_later(self, aw: Awaitable[Any]) -> None:
        """Close a dropped connection in the background; a failure to close is logged."""

        async def close() -> None:
            try:
                await aw
            except Exception as exc:  # it is being dropped anyway
                log.debug("redis pub/sub: closing a dropped connection: %r", exc)

        task = asyncio.ensure_future(close())
        self._inflight.add(task)  # close() waits for it (briefly)
        task.add_done_callback(self._settled)

    async def _pubsub_client(self) -> Redis:
        """The client the pub/sub connection comes from: the store's own, or (cluster) one node's."""
        if isinstance(self._redis, Redis):
            return self._redis
        if self._node_client is None:
            if not self._redis.get_nodes():
                await self._redis.initialize()  # learns the nodes
            nodes = sorted(self._redis.get_nodes(), key=lambda n: n.name)
            if not nodes:
                raise RedisClusterException("the cluster client knows no node")
            node = nodes[self._node_pick % len(nodes)]
            # one pub/sub connection (and one more while a dropped one is being closed)
            pool = ConnectionPool(connection_class=node.connection_class, max_connections=2, **node.connection_kwargs)
            self._node_client = Redis.from_pool(pool)
            self.pubsub.node = node.name
            log.info("redis pub/sub: subscribing through cluster node %s", node.name)
        return self._node_client

    def _fail_over(self, client: Redis | None) -> None:
        """Cluster: the pub/sub connection through ``client``'s node failed; move it to the next node.

        Only once per failed node (the listener and the subscriber may both
        see it fail).  A PUBLISH on any node reaches every node, so any node
        serves the subscriptions.
        """
        if client is None or client is not self._node_client or self._closed:
            return
        self._node_client = None
        self._node_pick += 1
        self._afresh()
        self._close_later(client.aclose())
        self.pubsub._bump("failovers")

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
            ps: PubSub | None = None
            client: Redis | None = None
            try:
                if self._pubsub is None:
                    self._pubsub = (await self._pubsub_client()).pubsub()
                ps, client = self._pubsub, self._node_client
                if unsubs:
                    await ps.unsubscribe(*unsubs)
                if subs and self._pubsub is ps:
                    await ps.subscribe(*subs)
                    if self._pubsub is not ps:  # dropped meanwhile: _afresh queued every channel again
                        continue
                    if self._listener is None:
                        assert ps.connection is not None
                        ps.connection.register_connect_callback(self._on_reconnect)
                        self._listener = self._spawn(self._listen(), "wirepipe-redis-listen")
                    futs = [wt.ready for ch in subs if (wt := self._by_channel.get(ch)) is not None]
                    futs += [c.ready for ch in subs if (c := self._channels.get(ch)) is not None]
                    await self._ping(futs, None, "live")
            except _PUBSUB_LOST as exc:
                if ps is not None and self._pubsub is not ps:
                    continue  # the connection was dropped meanwhile; _afresh queued every channel again
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
                    chan = self._channels.pop(ch, None)
                    if chan is not None and not chan.ready.done():
                        chan.ready.set_exception(exc)  # its users see it and subscribe again later
                        chan.ready.exception()
                self._fail_over(client)  # cluster: the next try goes to the next node
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
            watch.lost(loop.create_future() if watch.ready.done() else watch.ready)
            futs.append(watch.ready)
        for ch in self._channels.values():
            if ch.ready.done():
                ch.ready = loop.create_future()
            futs.append(ch.ready)
        self._wake_all()
        self._tell_channels()
        await self._ping(futs, conn, "live")

    async def _listen(self) -> None:
        pause = 0.05
        assert self._pubsub is not None
        client = self._node_client
        while not self._closed:
            try:
                msg = await self._pubsub.get_message(timeout=None)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if client is not None:  # cluster: go on through another node
                    log.warning("redis pub/sub: %s; moving to another cluster node", exc)
                    self._fail_over(client)
                    return
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
                chan = self._channels.get(msg["channel"])
                if chan is not None:
                    try:
                        chan.on_message(bytes(msg["data"]))
                    except Exception:
                        log.exception("redis pub/sub: a callback of %r failed", chan.name)
                    continue
                watch = self._by_channel.get(msg["channel"])
                if watch is not None:
                    what, _, rest = bytes(msg["data"]).partition(b":")
                    head, _, rest = rest.partition(b":")
                    epoch, nl, rest = rest.partition(b"\n")  # 'a' messages: first, then the events
                    first, _, pushed = rest.partition(b"\n")
                    try:
                        self._wake(
                            watch.sid, what, epoch.decode(), int(head), int(first) if nl else None, _split(pushed)
                        )
                    except (ValueError, UnicodeDecodeError, struct.error):
                        # not ours (anyone with access to Redis may publish): wake
                        # every waiter of that sid; each re-checks the log
                        log.warning("redis pub/sub: a malformed message on %r ignored", msg["channel"])
                        watch.known = None
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


@contextlib.contextmanager
def _unavailable(store: RedisStore) -> Iterator[None]:
    """Redis unreachable, or refusing for now: ``StoreUnavailable`` (other errors pass).

    Each ``StoreUnavailable`` that leaves is counted in ``store.failed_calls``.
    """
    try:
        yield
    except StoreUnavailable:  # the batcher's: no answer in time
        store.failed_calls += 1
        raise
    except _UNREACHABLE as exc:
        store.failed_calls += 1
        raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}: {exc}") from exc
    except ResponseError as exc:
        if _refused_for_now(exc):
            store.failed_calls += 1
            raise StoreUnavailable(f"redis refuses writes for now: {type(exc).__name__}: {exc}") from exc
        raise


def _refused_for_now(exc: ResponseError) -> bool:
    if isinstance(exc, (OutOfMemoryError, TryAgainError)):  # redis-py drops the code from its text
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


def _unpack_map(packed: bytes) -> dict[str, Any]:
    m = msgpack.unpackb(packed, raw=False, strict_map_key=False)
    if not isinstance(m, dict):
        raise ValueError("not a map")
    return m


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
