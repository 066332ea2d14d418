"""One client connection: the asyncio driver of ``protocol.server.ServerConnection``.

Theory of operation
-------------------
Every rule of a connection lives in the sans-I/O ``ServerConnection``; this
module owns the socket, the store and the clock, and carries out what it
decides.  After ``hello`` and ``welcome`` two loops serve a client.  The
*reader*, which runs in the connection's own task (websockets' handler),
feeds each frame to the rules and sends what they return
(``pong``, ``replied``), or runs a request against the session.  The *pump*
asks the rules for its next step and takes what follows its cursor
(everything ready, up to the window and a byte budget) from its sid's
``Feed`` (``gateway/feed.py``: the one reader of that log on this node,
which holds the newest events and where the log stands), sends it as one
``ev`` or ``batch`` frame, and waits on the socket's drain; at the head it
*parks* on the feed: the feed then hands it each new frame (``push``), which
is written to the socket at once, with no task switch, as long as the
window has room and the socket takes it without waiting; otherwise the feed
wakes the pump task, which carries on as above.  The pump runs in a task of
its own that ends when it parks (``wake`` starts a new one), so an idle
client costs one task, its reader.  A cursor older than the feed's tail,
and any step but reading or waiting for an ack, go to the store itself.  Nothing is
queued per client, so a slow client costs a cursor and the socket's bounded
write buffer, and the producer and the other clients never wait for it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from websockets.asyncio.server import ServerConnection as WebSocket
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.protocol import State

from protocol import (
    Error,
    ErrorCode,
    Grant,
    Hello,
    Kind,
    ProtocolError,
    Replied,
    ResumeToken,
    StoreUnavailable,
    encode,
    frame_for,
    is_final,
    sign,
    verify,
)
from protocol.frames import Cancel, Reply, Send
from protocol.server import BATCH_BYTES, ConnectionLimits, Request, ServerConnection, Step

from .config import Auth, Config
from .feed import Feed, Feeds
from .metrics import LAG_MASK, FrontMetrics
from .middleware import Middleware, apply_requests
from .runs import Runs
from .stores import Store, requests_of

if TYPE_CHECKING:
    from .sessions import Session

log = logging.getLogger("wirepipe.connection")

_OPEN = State.OPEN  # an enum member looked up once (a class attribute lookup is slow in 3.11)

__all__ = ["BATCH_BYTES", "Connection", "Services", "Socket"]


class Transport(Protocol):
    """What the gateway's watchers use of a connection's transport."""

    def get_write_buffer_size(self) -> int: ...

    def abort(self) -> None: ...


class Socket(Protocol):
    """The WebSocket a ``Connection`` drives: the subset of websockets' ``ServerConnection`` it uses.

    The native front hands it websockets' connection itself; the ASGI front
    (``gateway/asgi_ws.py``) an adapter over the ASGI ``receive`` and
    ``send`` callables.  ``transport.abort()`` drops the client at once;
    ``transport.get_write_buffer_size()`` is what waits in the socket for
    it (the stall watchdog's measure).
    """

    @property
    def transport(self) -> Transport: ...

    @property
    def state(self) -> State: ...

    async def recv(self) -> bytes | str: ...

    async def send(self, message: bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def wait_closed(self) -> Awaitable[None]: ...


@dataclass(frozen=True)
class Services:
    """What a connection needs of its gateway, and nothing more."""

    config: Config
    store: Store
    runs: Runs
    #: The WebSocket front's counters (gateway/metrics.py: plain ints, read when scraped).
    metrics: FrontMetrics
    secret: bytes
    auth: Auth | None
    default_grant: Grant
    #: The per-sid readers of the store that this gateway's pumps share.
    feeds: Feeds
    middleware: tuple[Middleware, ...] = ()
    #: Called once a connection's ``serve`` has ended (the gateway forgets it).
    gone: Callable[[Connection], None] = lambda conn: None
    #: What a client may do (frame size, rate), from ``config``: one object for every connection.
    limits: ConnectionLimits = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        limits = ConnectionLimits(cfg.max_frame, cfg.rate, cfg.burst, cfg.rate_strikes, cfg.batch_max)
        object.__setattr__(self, "limits", limits)  # frozen: set once, here


class Connection:
    """Serves one WebSocket client for its whole life.

    An idle client (parked at the head of its log, nothing to send) costs
    this object, its rules and the task that reads its socket: the pump task
    ends when it parks and the feed starts another when it needs one
    (``wake``), pings come from the gateway's one heartbeat task
    (``gateway/heartbeat.py``), and the limits are the gateway's one
    ``ConnectionLimits``.  Slots, not a ``__dict__``: a gateway holds
    thousands of these.
    """

    __slots__ = (
        "gw",
        "ws",
        "rules",
        "session",
        "sending_since",
        "stall_mark",
        "beat",
        "_feed",
        "_pump_task",
        "_acked",
        "_reader",
        "_failure",
        "_metrics",
        "_since",
    )

    def __init__(self, gw: Services, ws: Socket, *, beat: int = 0) -> None:
        self.gw = gw
        self.ws = ws
        # The rate limiter starts full, so when it started makes no difference.
        self.rules = ServerConnection(gw.limits)
        self.session: Session | None = None
        #: When its last welcome went out (monotonic): events appended before
        #: are history or a replay to it, not lag (``_lag``).
        self._since = float("inf")
        #: When the frame being sent started waiting for the socket (None: not sending).
        #: A client that takes no byte for ``Config.stall_timeout`` is dropped.
        self.sending_since: float | None = None
        #: (bytes waiting in the socket, when that count was seen): the watchdog's note.
        self.stall_mark: tuple[int, float] | None = None
        #: Which slice of the gateway's heartbeat pings this client (``gateway/heartbeat.py``).
        self.beat = beat
        #: The feed of the sid while the pump follows it (``_start_tasks``).
        self._feed: Feed | None = None
        #: The pump's task; None while parked at the head (the feed pushes) and
        #: before and after the pump's life.
        self._pump_task: asyncio.Task[None] | None = None
        #: Resolved by the reader when an ack opens the window the pump waits on.
        self._acked: asyncio.Future[None] | None = None
        #: The task reading the socket (the connection's handler), while it reads.
        self._reader: asyncio.Task[Any] | None = None
        #: What ended the pump, when it failed: raised by the reader in its stead.
        self._failure: BaseException | None = None
        self._metrics = gw.metrics

    @staticmethod
    def _clock() -> float:
        return asyncio.get_running_loop().time()

    @property
    def sid(self) -> str:
        return self.rules.sid

    # --- life -----------------------------------------------------------------

    async def serve(self) -> None:
        try:
            # The hello is not kept: this frame lives as long as the client.
            await self._open(await self._handshake())
            self._start_tasks()
            try:
                await self._read()
            finally:
                await self._stop_tasks()
        except ProtocolError as exc:
            await self._fail(exc)
        except StoreUnavailable as exc:
            # The store is down: a retryable close; the client resumes once it is back.
            log.warning("sid %r: %s", self.sid, exc)
            await self._fail(ProtocolError(ErrorCode.UNAVAILABLE, "the session store is unreachable; retry"))
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection for sid %r failed", self.sid)
            await self._fail(ProtocolError(ErrorCode.INTERNAL, "internal error"))
        finally:
            self.rules.closed()
            self.gw.gone(self)

    def _start_tasks(self) -> None:
        """Read the socket in this task (``_read``), pump in another.

        The reader is the connection's handler task itself, so an idle
        client has one task; the pump's task ends whenever it parks at the
        head (``_park``) and ``wake`` starts a new one.
        """
        self._reader = asyncio.current_task()
        self._feed = self.gw.feeds.join(self.sid, self.rules.cursor)
        self._start_pump()

    async def _stop_tasks(self) -> None:
        """The reader is done: leave the feed, and end the pump's task if it runs."""
        self._reader = None  # the pump can no longer cancel this task
        feed, self._feed = self._feed, None  # nor be woken
        if feed is not None:
            feed.unpark(self)
            self.gw.feeds.leave(feed)
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))

    def _start_pump(self) -> None:
        self._pump_task = task = asyncio.get_running_loop().create_task(self._pump(), name="wirepipe-pump")
        task.add_done_callback(self._pump_done)

    def _pump_done(self, task: asyncio.Task[None]) -> None:
        """A pump task ended: parked or cancelled (nothing to do), or failed: stop the reader."""
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            return
        if self._failure is None:
            self._failure = exc
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()  # it raises exc (``_read``)
        elif not isinstance(exc, ConnectionClosed | ProtocolError | StoreUnavailable):
            log.error("sid %r: the pump failed as its connection ended", self.sid, exc_info=exc)

    async def _fail(self, exc: ProtocolError) -> None:
        """Tell the client, and close if fatal.  Never raises."""
        self.gw.metrics.error(exc.code.value)
        frame, close = self.rules.fail(exc)
        try:
            await self._send(encode(frame))
            if close is not None:
                await self.ws.close(close, exc.code.value)
        except ConnectionClosed:
            pass

    async def shutdown(self) -> None:
        """The gateway is going away: ``shutdown`` then close 1001, within ``close_timeout``.

        A client that reads nothing cannot hold the gateway: past the timeout
        its connection is aborted.
        """
        try:
            async with asyncio.timeout(self.gw.config.close_timeout):
                await self._fail(ProtocolError(ErrorCode.SHUTDOWN, "the gateway is shutting down"))
        except TimeoutError:
            self.ws.transport.abort()

    async def _send(self, data: bytes) -> None:
        """Send one frame; ``sending_since`` tells the gateway's watchdog how long it waits."""
        self.sending_since = self._clock()
        try:
            await self.ws.send(data)
        finally:
            self.sending_since = None

    # --- handshake ------------------------------------------------------------

    async def _handshake(self) -> Hello:
        try:
            msg = await asyncio.wait_for(self.ws.recv(), self.gw.config.handshake_timeout)
        except TimeoutError:
            raise self.rules.no_hello() from None
        return self.rules.receive_hello(msg)

    async def _authorize(self, hello: Hello) -> tuple[Grant, ResumeToken | None]:
        gw = self.gw
        token = None
        if hello.resume is not None:
            token = verify(gw.secret, hello.resume, sid=hello.sid, now=time.time())
            return token.grant, token
        if gw.auth is None:
            return gw.default_grant, None
        verdict = gw.auth(hello.auth, hello.sid)
        grant = await verdict if inspect.isawaitable(verdict) else verdict
        if grant is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing or bad credentials")
        return Grant(grant), None

    async def _open(self, hello: Hello) -> None:
        gw = self.gw
        self.rules.grant, token = await self._authorize(hello)
        starter = False
        replaced: str | None = None
        if hello.start is not None:
            refused = self.rules.refuse_start()
            if refused is not None:
                await self._fail(refused)
            else:
                replaced = await gw.runs.start(hello.sid, hello.start["app"], hello.start.get("input"))
                starter = True
        # A run another node holds (store leases) fails here with sid_taken.
        self.session = await gw.runs.await_session(hello.sid, self.ws, starter=starter, not_epoch=replaced)
        info = await gw.store.info(hello.sid)
        if info is None:  # expired between the two awaits, or lost with the store
            raise gw.runs.missing_log(hello.sid)
        token_epoch = token.epoch if token is not None else None
        recovered = self.rules.recovers(hello, token_epoch, info.epoch, info.first, info.head)
        if hello.after is not None:  # a replay request
            gw.metrics.replay(recovered, info.head - hello.after)
        if recovered:
            assert hello.after is not None
            await self._welcome(info.epoch, hello.after, info.first, info.head, None)
        else:
            await self._restart(live=hello.live)

    async def _restart(self, *, live: bool = False) -> None:
        """A welcome with ``recovered: false``: snapshot, then events from ``first``."""
        sid = self.sid
        store = self.gw.store
        while True:
            # info, snapshot, info: if the log was replaced in between (a new
            # run, on another node too), read again, so that the welcome never
            # joins a snapshot of one run to the position of another.
            before = await store.info(sid)
            snapshot, at = await store.snapshot(sid)
            info = await store.info(sid)
            if info is None:
                raise self.gw.runs.missing_log(sid)
            if before is not None and before.epoch == info.epoch:
                break
        cursor = self.rules.restart_cursor(live, info.first, at)
        self.session = self.gw.runs.local_session(sid, info.epoch)
        await self._welcome(info.epoch, cursor, info.first, at, snapshot)

    async def _welcome(self, epoch: str, cursor: int, first: int, head: int, snapshot: dict[str, Any] | None) -> None:
        cfg = self.gw.config
        self._since = time.monotonic()
        token = ResumeToken(self.sid, epoch, self.rules.grant, time.time() + cfg.token_ttl)
        welcome = self.rules.welcome(
            epoch=epoch,
            cursor=cursor,
            first=first,
            head=head,
            snapshot=snapshot,
            resume=sign(self.gw.secret, token),
            heartbeat_ms=int(cfg.heartbeat * 1000),
        )
        await self._send(encode(welcome))

    # --- the pump -------------------------------------------------------------

    async def _pump(self) -> None:
        """Steps until parked at the head (``_park`` clears ``_pump_task``); then the task ends."""
        feed, me = self._feed, asyncio.current_task()
        assert feed is not None
        while self._pump_task is me:
            await self._pump_step(feed)

    async def _park(self, feed: Feed) -> None:
        """At the head: the feed pushes frames straight to the socket, and the pump's task ends.

        An idle client costs no task of its own beyond its reader: the feed
        ``wake``s this connection when the pump has to run again.
        """
        feed.park(self)
        self._pump_task = None

    def wake(self) -> None:
        """The feed has something the pump must do itself (``Feed._push``): a new pump task."""
        if self._feed is not None and self._pump_task is None:
            self._start_pump()

    def push(self, feed: Feed) -> bool:
        """What the feed now holds, written to the socket without a task switch (``Feed._push``).

        The same step as ``_pump_step``'s read from the tail, taken only when
        nothing can wait: the log is the epoch this client follows, the window
        has room, the events are in the tail, and the socket is open and not
        over its write limit (websockets' ``paused``: a frame now would have
        to wait for the client to read).  Anything else returns False, and
        the feed wakes the pump task.  True: the client has everything, or
        nothing new was for it; the pump stays parked.

        The native front's alone: its socket is websockets' connection, whose
        transport takes shared wire bytes.  An ASGI connection
        (``gateway/asgi_ws.py``) has no transport to write to: its ``push``
        returns False, and its pump task sends every frame with ``await``.
        """
        ws: WebSocket = self.ws  # type: ignore[assignment]  # native only (see above)
        news = feed.news
        if news is not None and not ws.protocol.extensions:
            # The quick step: the events just appended, when this client was at
            # the head before them; the one frame every such watcher shares.
            # ``_writable``, inlined (once per watcher and event):
            transport = ws.transport
            if ws.protocol.state is not _OPEN or ws.paused or ws.send_in_progress is not None or transport.is_closing():
                return False
            epoch, before, n, wire = news
            if self.rules.sends(epoch, before, n):
                try:
                    transport.write(wire)
                except Exception as exc:  # a write error closes the connection, as send would
                    log.debug("sid %r: a pushed frame failed: %s", self.sid, exc)
                    transport.abort()
                    return False
                self._metrics.events_out += n
                if (-before) & LAG_MASK < n:  # the frame holds a lag-marked event (gateway/metrics.py)
                    self._lag(before)
                return True
        info = feed.state
        if info is None or feed.failure is not None:
            return False
        rules = self.rules
        step, room = rules.next_step(info.epoch, info.first)
        if step is not Step.READ:
            return False
        if rules.cursor >= info.head:
            return True
        if not _writable(ws):
            return False
        try:
            if ws.protocol.extensions:  # compressed: this connection's own bytes
                frame, n = feed.take(rules.cursor, room)
                if n <= 0:
                    return False
                # websockets' own send, less the coroutine: frame it, hand it
                # to the transport.
                ws.protocol.send_binary(frame)
                ws.send_data()
            else:
                # The message's bytes on the wire, shared by every watcher at
                # this place.  websockets keeps no state of data frames sent:
                # writing them ourselves is what its send does.
                wire, n = feed.take_wire(rules.cursor, room)
                if n <= 0:
                    return False
                ws.transport.write(wire)
        except Exception as exc:  # a write error closes the connection, as send would
            log.debug("sid %r: a pushed frame failed: %s", self.sid, exc)
            ws.transport.abort()
            return False
        before = rules.cursor
        rules.sent(n)
        self.gw.metrics.sent(n)
        if (-before) & LAG_MASK < n:  # the frame holds a lag-marked event (gateway/metrics.py)
            self._lag(before)
        return rules.cursor >= info.head

    async def _pump_step(self, feed: Feed) -> None:
        """One step: a frame from the feed's tail, a wait, or a look at the store itself."""
        rules = self.rules
        if feed.known and feed.failure is None:
            info = feed.state
            step, room = rules.next_step(info.epoch if info else None, info.first if info else 0)
            if step is Step.READ:
                assert info is not None
                if rules.cursor >= info.head:
                    await self._park(feed)
                    return
                frame, n = feed.take(rules.cursor, room)
                if n > 0:
                    await self._deliver(frame, n)
                    return
                if n == 0:  # the feed is still reading up to its head
                    await feed.changed.wait()  # no await since the look: any change wakes us
                    return
                # older than the tail: read the store, below
            elif step is Step.WAIT_ACK:
                await self._wait_ack()
                return
            # else a new epoch, no log, or lagged as the feed saw it: the feed
            # may be behind what this connection's welcome saw, so decide on
            # a look of our own, below.
        elif feed.failure is None:
            await feed.changed.wait()  # the feed's first look is on its way
            return
        changed = feed.changed  # set by any change after this look
        got = await self.gw.feeds.fetch(self.sid, rules.cursor, limit=rules.limits.batch_max, max_bytes=BATCH_BYTES)
        if not feed.agrees(got):
            feed.poke()
        info = got.info if got is not None else None
        step, room = rules.next_step(info.epoch if info else None, info.first if info else 0)
        if step is Step.READ:
            assert got is not None
            raws = got.raws[:room]
            if raws:
                await self._deliver(frame_for(raws), len(raws))
            else:
                await changed.wait()
        elif step is Step.WAIT_ACK:
            await self._wait_ack()
        elif step is Step.EXPIRED:
            # Idle until a new run of this sid appears.
            await self.gw.runs.await_session(self.sid, self.ws)
            await self._restart()
        else:
            if step is Step.LAGGED:
                await self._fail(rules.lagged())
            await self._restart()

    async def _deliver(self, frame: bytes, n: int) -> None:
        before = self.rules.cursor
        await self._send(frame)
        self.rules.sent(n)
        self.gw.metrics.sent(n)
        if (-before) & LAG_MASK < n:  # the frame holds a lag-marked event (gateway/metrics.py)
            self._lag(before)

    def _lag(self, before: int) -> None:
        """A frame of the events after ``before`` holding a lag-marked one is written: observe its lag.

        Only for a run written here (its session keeps the marks), and only
        for an event appended after this client's welcome: what it reads of
        the history, or replays on a resume, is not lag.
        """
        s = self.session
        self._metrics.observe_lag(s.lag_marks if s is not None else None, before, self._since)

    async def _wait_ack(self) -> None:
        self._acked = fut = asyncio.get_running_loop().create_future()
        try:
            await fut
        finally:
            self._acked = None

    # --- the reader -----------------------------------------------------------

    async def _read(self) -> None:
        """Each client frame to the rules, and what they return to the client, until it closes.

        If the pump fails, it cancels this task (``_pump_done``): the pump's
        error is raised here instead, as if read here, for ``serve``; a
        cancellation from outside stays one.
        """
        rules, ws = self.rules, self.ws
        try:
            while True:
                # recv, not ``async for``: an async generator per client costs
                # half a kB (and a place in the loop's set of them).
                try:
                    msg = await ws.recv()
                except ConnectionClosedOK:
                    return
                out = rules.receive(msg, self._clock())
                if out is None:
                    acked = self._acked
                    if rules.acked and acked is not None and not acked.done():
                        acked.set_result(None)
                    continue
                if isinstance(out, Request):
                    reply = self._handle(out)
                    if reply is None:
                        reply = await self._not_local(out)
                    await self._send(encode(reply))
                    continue
                if isinstance(out, Error):
                    self.gw.metrics.error(out.code)
                await self._send(encode(out))
        except asyncio.CancelledError:
            failure, reader = self._failure, asyncio.current_task()
            if failure is None or reader is None or reader.uncancel() > 0:
                raise
            raise failure from None

    def _handle(self, req: Request) -> Replied | None:
        """Run a request against the session of this process (None: it runs elsewhere).

        The session decides once per rid (idempotent) and refuses viewers;
        what it runs is the request as the middleware passes it on.
        """
        s, grant, chain = self.session, self.rules.grant, self.gw.middleware
        if s is None or not self.rules.follows(s.epoch):
            return None
        passes = (lambda f: apply_requests(chain, self.sid, f, grant)) if chain else None
        return s.handle(req.frame, grant, req.size, passes)

    async def _not_local(self, req: Request) -> Replied:
        """A request for a run this process does not write (``relay``)."""
        gw = self.gw
        return await relay(gw.store, gw.middleware, self.sid, req.frame, self.rules, req.size)


def _writable(ws: WebSocket) -> bool:
    """A frame written now goes out at once: open, under its write limit, no send in progress.

    ``is_closing``: a write that met a reset closes the transport at once,
    and websockets hears of it only on the loop's next turn.
    """
    return (
        ws.protocol.state is _OPEN and not ws.paused and ws.send_in_progress is None and not ws.transport.is_closing()
    )


async def relay(
    store: Store,
    middleware: tuple[Middleware, ...],
    sid: str,
    frame: Reply | Send | Cancel,
    rules: ServerConnection,
    size: int,
) -> Replied:
    """A request for a run this process does not write: handed to its writer through the store.

    The middleware runs here, where the client is; the writer runs the
    request once per ``rid`` (whichever node it came through).  Without
    a live writer (its process died, or the store cannot hand requests
    on) the client gets ``not_here`` while the run's log is open; a
    writer that does not answer in time gets ``unavailable`` (re-send
    the same ``rid``).  ``rules`` says the grant and the epoch the client
    follows; both fronts (this WebSocket one and the REST API,
    ``gateway/http_api.py``) ask here.
    """
    remote = requests_of(store)
    if remote is not None and rules.grant is Grant.OPERATOR:
        passed = apply_requests(middleware, sid, frame, rules.grant) if middleware else frame
        if passed is None:
            return Replied(frame.rid, False, ErrorCode.REFUSED)
        handed = {"rid": frame.rid, "f": encode(passed), "g": rules.grant.value, "n": size, "e": rules.epoch}
        try:
            out = await remote.request(sid, handed)
        except StoreUnavailable as exc:
            log.warning("sid %r: a %s request was not answered: %s", sid, frame.t.value, exc)
            return Replied(frame.rid, False, ErrorCode.UNAVAILABLE)
        if out is not None and not out.get("stale"):
            return Replied(frame.rid, bool(out.get("ok")), out.get("err"))
    info = await store.info(sid)
    alive = info is not None and rules.follows(info.epoch) and not info.ended
    if alive:
        # The final status may be stored a moment before the log is ended.
        status = (await store.snapshot(sid))[0].get("status")
        alive = not (isinstance(status, dict) and is_final(Kind.STATUS, status))
    return rules.not_local(frame, alive)
