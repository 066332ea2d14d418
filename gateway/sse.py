"""Server-Sent Events: a session's log as ``text/event-stream``, resumable by ``Last-Event-ID``.

Theory of operation
-------------------
An SSE client is a WebSocket watcher that cannot speak: no hello, no ack, no
window.  So a stream is driven by the same sans-I/O rules
(``protocol.server.ServerConnection``) as a WebSocket connection, with the
hello's parts taken from the request:

- **the position**: ``Last-Event-ID`` (the header an ``EventSource`` sends
  when it reconnects, or the ``last_event_id`` query parameter) is the
  ``id`` of the last event the client got, ``<epoch>:<seq>``: the hello's
  ``epoch`` and ``after``.  ``ServerConnection.recovers`` decides, as for a
  hello (the position is trusted as a resume token would be: it grants
  nothing, the request's credential does), whether the events after it
  follow with no gap and no duplicate;
- **otherwise a reset**: ``event: reset`` carrying the snapshot (the
  ``welcome`` with ``recovered: false``), then the events from ``first``
  (``restart_cursor``; ``?live=1`` starts after ``head``).  A stream with no
  position starts so too.  A new run of the sid (another epoch) and a
  cursor that fell out of retention (``next_step``'s ``RESTART`` and
  ``LAGGED``) reset it again, mid-stream;
- **the events**: each ``id: <epoch>:<seq>`` and ``data:`` one JSON object
  ``{seq, k, ts, d}``, on one line (``gateway.http_api.dumps``).  A reset's
  ``id`` is the position its events follow from, so a client that
  reconnects right after it resumes there;
- **reading** is a pump's (``Connection._pump_step``): from the sid's
  ``Feed`` tail, or the store when the cursor is older, waiting on the
  feed's ``changed`` at the head;
- ``retry:`` first (``RETRY_MS``), and a ``: ping`` comment whenever nothing
  was written for ``Config.heartbeat`` seconds (proxies keep the stream,
  clients see it live).

Bounded.  One write is one batch (at most ``Config.batch_max`` events and
``BATCH_BYTES`` of them), and the next is read only once the server took
it: uvicorn's ``send`` waits while the socket's write buffer is over its
high-water mark, so a client that reads nothing costs a cursor, one batch
and the socket's buffer.  A write that waits more than ``Config.stall_timeout``
(``heartbeat`` when unset) ends the stream (``front="sse"`` ``stalled``);
the client comes back and resumes.  A client that leaves
(``http.disconnect``) ends it at once.  Ending a stream leaves the feed.

uvicorn waits for open responses before it runs the app's lifespan
shutdown (where the gateway closes): see docs/http.md for shutting down
with streams open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import msgpack
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from protocol import ErrorCode, Grant, Hello, StoreUnavailable
from protocol.server import BATCH_BYTES, ConnectionLimits, ServerConnection, Step

from .http_api import ApiError, dumps, snapshot_of

if TYPE_CHECKING:
    from .feed import Feed
    from .http_api import HttpApi
    from .metrics import FrontMetrics

log = logging.getLogger("wirepipe.sse")

#: The reconnection delay an EventSource is told (``retry:``), in milliseconds.
RETRY_MS: Final = 1000
#: Seconds a stream waits for a run this node has just started to create its log.
READY_TIMEOUT: Final = 10.0


class Stalled(Exception):
    """The client took no byte of a write for ``stall_timeout``."""


def parse_position(text: str | None) -> tuple[str, int] | None:
    """``<epoch>:<seq>`` -> (epoch, seq); None for anything else (the stream starts afresh)."""
    if not text:
        return None
    epoch, sep, seq = text.strip().rpartition(":")
    if not sep or not epoch or not seq.isdigit() or len(seq) > 18:
        return None
    return epoch, int(seq)


async def open_stream(api: HttpApi, request: Request, sid: str, grant: Grant) -> Response:
    """The response of ``GET .../sessions/{sid}/events``: the stream, or an error before it starts.

    Raises:
        ApiError: ``no_session`` (404) when ``sid`` has no log, ``unavailable``.
    """
    gw = api.gw
    position = parse_position(request.headers.get("last-event-id") or request.query_params.get("last_event_id"))
    live = request.query_params.get("live") in ("1", "true")
    try:
        info = await gw.store.info(sid)
        if info is None:
            s = gw.runs.sessions.get(sid)
            if s is not None and not s.refused and not s.ready.done():  # a run started here a moment ago
                await asyncio.wait({s.ready}, timeout=READY_TIMEOUT)
                info = await gw.store.info(sid)
    except StoreUnavailable as exc:
        raise ApiError(ErrorCode.UNAVAILABLE, "the session store is unreachable; retry") from exc
    if info is None:
        raise ApiError(ErrorCode.NO_SESSION, f"no session {sid!r} (SSE does not wait for a run to start)")
    cfg = gw.config
    rules = ServerConnection(ConnectionLimits(cfg.max_frame, cfg.rate, cfg.burst, cfg.rate_strikes, cfg.batch_max))
    rules.sid, rules.grant = sid, grant
    recovered = False
    if position is not None:
        epoch, after = position
        hello = Hello(sid, epoch=epoch, after=after)
        recovered = rules.recovers(hello, epoch, info.epoch, info.first, info.head)
        api.sse.replay(recovered, info.head - after)
    stream = EventStream(api, sid, rules)
    if recovered:
        assert position is not None
        stream.begin(info.epoch, position[1])
    else:
        try:
            await stream.reset("start" if position is None else "position", live=live)
        except StoreUnavailable as exc:
            raise ApiError(ErrorCode.UNAVAILABLE, "the session store is unreachable; retry") from exc
        if stream.ended:
            raise ApiError(ErrorCode.NO_SESSION, f"no session {sid!r}")
    return stream


class EventStream(Response):
    """One SSE client of one sid: its cursor and its response (see the module docstring)."""

    media_type = "text/event-stream"

    def __init__(self, api: HttpApi, sid: str, rules: ServerConnection, front: FrontMetrics | None = None) -> None:
        # Not Response.__init__: a stream has no body (and so no Content-Length).
        self.api = api
        #: The counters it counts in (``front="sse"``; a chat reply's are ``front="openai"``).
        self.front = front if front is not None else api.sse
        self.sid = sid
        self.rules = rules
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
        ]
        #: Text to write before the next events (a reset), and whether the log is gone.
        self._pending: list[str] = []
        self.ended = False
        cfg = api.gw.config
        self._heartbeat = cfg.heartbeat
        self._stall = cfg.stall_limit
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._last_write = 0.0
        #: When the stream began: events appended before are history, not lag.
        self._since = float("inf")

    def begin(self, epoch: str, cursor: int) -> None:
        """Start the rules at ``cursor`` of ``epoch`` (the welcome's part of it)."""
        self._since = time.monotonic()
        heartbeat_ms = int(self._heartbeat * 1000)
        self.rules.welcome(
            epoch=epoch, cursor=cursor, first=0, head=0, snapshot=None, resume="", heartbeat_ms=heartbeat_ms
        )

    async def reset(self, reason: str, *, live: bool = False) -> None:
        """Queue an ``event: reset`` with the snapshot; the events from ``first`` (or ``head``) follow.

        ``ended`` is set instead when the log is gone.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """
        got = await snapshot_of(self.api.gw, self.sid)
        if got is None:
            self.ended = True
            return
        info, snapshot, at = got
        cursor = self.rules.restart_cursor(live, info.first, at)
        self.begin(info.epoch, cursor)
        d = {
            "sid": self.sid,
            "epoch": info.epoch,
            "first": info.first,
            "head": at,
            "reason": reason,
            "snapshot": snapshot,
        }
        self._pending.append(f"event: reset\nid: {info.epoch}:{cursor}\ndata: {dumps(d)}\n\n")

    def stop(self) -> None:
        """End the stream now (``HttpApi.drop_streams``)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    # --- the response -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = self.api
        api.streams.add(self)
        self.front.connections_total += 1
        self.front.connections_open += 1
        await api.stream_changed()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            self._task = pump = asyncio.create_task(self._pump(send), name=f"wirepipe-sse-{self.sid}")
            if self._stopped:
                pump.cancel()
            left = asyncio.create_task(_disconnected(receive), name=f"wirepipe-sse-rx-{self.sid}")
            try:
                await asyncio.wait({pump, left}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (pump, left):
                    t.cancel()
                await asyncio.gather(pump, left, return_exceptions=True)
            client_left = left.done() and not left.cancelled() and left.exception() is None
            stalled = pump.done() and not pump.cancelled() and isinstance(pump.exception(), Stalled)
            if not client_left and not stalled:
                # The client is still there: end the response properly.  A stalled
                # one is left unfinished: the server closes its connection.
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"", "more_body": False}), self._stall
                )
        except (OSError, TimeoutError):  # the client went away while we ended
            pass
        finally:
            self.rules.closed()
            api.streams.discard(self)
            self.front.connections_open -= 1
            await api.stream_changed()

    async def _write(self, send: Send, text: str) -> None:
        try:
            await asyncio.wait_for(
                send({"type": "http.response.body", "body": text.encode(), "more_body": True}), self._stall
            )
        except TimeoutError:
            raise Stalled from None
        self._last_write = time.monotonic()

    async def _pump(self, send: Send) -> None:
        api = self.api
        await self._open(send)
        feed = api.gw.feeds.join(self.sid, self.rules.cursor)
        try:
            while not api.gw.runs.closing and not self.ended:
                if self._pending:
                    text, self._pending = "".join(self._pending), []
                    await self._write(send, text)
                    continue
                await self._step(send, feed)
            await self._close(send, None)
        except Stalled:
            log.info("dropping an SSE client of %r that took no byte for %.1fs", self.sid, self._stall)
            self.front.stalled += 1
            raise
        except StoreUnavailable as exc:
            log.warning("sid %r: SSE stream ended: %s", self.sid, exc)
            await self._close(send, exc)
        finally:
            api.gw.feeds.leave(feed)

    async def _open(self, send: Send) -> None:
        """What the stream writes first: the reconnection delay."""
        await self._write(send, f"retry: {RETRY_MS}\n\n")

    async def _close(self, send: Send, failure: StoreUnavailable | None) -> None:
        """What the stream writes last, when it ends on its own (nothing: an SSE client comes back)."""

    async def _step(self, send: Send, feed: Feed) -> None:
        """One step of ``Connection._pump_step``: events from the tail, a wait, or a look at the store."""
        rules = self.rules
        if feed.known and feed.failure is None:
            info = feed.state
            step, room = rules.next_step(info.epoch if info else None, info.first if info else 0)
            if step is Step.READ:
                assert info is not None
                if rules.cursor >= info.head:
                    await self._idle(send, feed.changed)
                    return
                i, n = feed.tail.span(rules.cursor, room, BATCH_BYTES)
                if n > 0:
                    await self._events(send, info.epoch, feed.tail.raws[i : i + n])
                    return
                if n == 0:
                    await self._idle(send, feed.changed)
                    return
                # older than the tail: read the store, below
            # else a new epoch, no log, lagged: decide on a look of our own, below
        elif feed.failure is None:
            await self._idle(send, feed.changed)  # the feed's first look is on its way
            return
        changed = feed.changed
        got = await self.api.gw.feeds.fetch(self.sid, rules.cursor, limit=rules.limits.batch_max, max_bytes=BATCH_BYTES)
        if not feed.agrees(got):
            feed.poke()
        info = got.info if got is not None else None
        step, room = rules.next_step(info.epoch if info else None, info.first if info else 0)
        if step is Step.READ:
            assert got is not None
            raws = got.raws[:room]
            if raws:
                await self._events(send, got.info.epoch, raws)
            else:
                await self._idle(send, changed)
        elif step is Step.EXPIRED:
            self.ended = True  # the log is gone; a client that comes back gets 404 or the next run
        else:
            await self.reset("lagged" if step is Step.LAGGED else "epoch")

    async def _events(self, send: Send, epoch: str, raws: list[bytes]) -> None:
        parts = []
        for raw in raws:
            ev: dict[str, Any] = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            parts.append(f"id: {epoch}:{ev['seq']}\ndata: {dumps(ev)}\n\n")
        before = self.rules.cursor
        await self._write(send, "".join(parts))
        self.rules.sent(len(raws))
        # the delivery lag, as a WebSocket's (gateway/metrics.py), for a run written here
        session = self.api.gw.runs.sessions.get(self.sid)
        marks = session.lag_marks if session is not None and session.epoch == epoch else None
        self.front.delivered(marks, before, len(raws), self._since)

    async def _idle(self, send: Send, changed: asyncio.Event) -> None:
        """Wait for a change; a ``: ping`` comment once nothing was written for ``heartbeat`` seconds."""
        if self._heartbeat <= 0:  # no heartbeat: no pings either
            await changed.wait()
            return
        left = self._heartbeat - (time.monotonic() - self._last_write)
        if left > 0:
            try:
                await asyncio.wait_for(changed.wait(), left)
                return
            except TimeoutError:
                pass
        await self._write(send, ": ping\n\n")


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (``http.disconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
