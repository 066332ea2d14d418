"""One client connection: handshake, a cursor that reads the log, acks, requests.

Theory of operation
-------------------
After ``hello`` and ``welcome`` two tasks serve a client.  The *reader*
decodes frames and answers them (``replied``, ``pong``; acks open the
window).  The *pump* owns a cursor, a seq: it reads what the store holds
after the cursor (everything ready, up to the window and a byte budget),
sends it as one ``ev`` or ``batch`` frame, and waits on the socket's drain.
Nothing is queued per client, so a slow client costs a cursor and the
socket's bounded write buffer, and the producer and the other clients never
wait for it.  When the cursor falls behind the log's retained window, or the
log is replaced by a new epoch, the pump restarts the client: ``lagged``
(for the first case) then a fresh ``welcome`` with a snapshot.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from protocol import (
    Ack,
    Cancel,
    ConnState,
    Error,
    ErrorCode,
    FlowWindow,
    Grant,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    Replied,
    Reply,
    ResumeToken,
    Send,
    StoreUnavailable,
    Welcome,
    decode_client,
    encode,
    frame_for,
    sign,
    verify,
)
from protocol.state import transition

if TYPE_CHECKING:
    from .server import Gateway
    from .sessions import Session

log = logging.getLogger("wirepipe.connection")

#: A batch frame stays under this many bytes (Python's websockets client
#: refuses messages over 1 MiB by default).
BATCH_BYTES = 512 * 1024


class RateLimiter:
    """A token bucket: ``rate`` frames a second, bursts of ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "strikes")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()
        self.strikes = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= self.burst:
            self.strikes = 0  # quiet long enough to refill the whole burst: a fresh start
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.strikes += 1
        return False


class Connection:
    """Serves one WebSocket client for its whole life."""

    def __init__(self, gw: Gateway, ws: ServerConnection) -> None:
        self.gw = gw
        self.ws = ws
        self.state = ConnState.AWAIT_HELLO
        self.sid = ""
        self.epoch = ""
        self.grant = Grant.VIEWER
        self.session: Session | None = None
        self.flow = FlowWindow(None, 0)
        self.cursor = 0
        self._acked = asyncio.Event()
        self._size = 0  # bytes of the frame being handled
        #: When the frame being sent started waiting for the socket (None: not sending).
        #: A client that takes no byte for ``Config.stall_timeout`` is dropped.
        self.sending_since: float | None = None
        #: (bytes waiting in the socket, when that count was seen): the watchdog's note.
        self.stall_mark: tuple[int, float] | None = None
        self._clock = asyncio.get_running_loop().time
        self._limiter = RateLimiter(gw.config.rate, gw.config.burst)

    # --- life -----------------------------------------------------------------

    async def serve(self) -> None:
        try:
            hello = await self._handshake()
            await self._open(hello)
            await self._run_tasks()
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
            self.state = ConnState.CLOSED

    async def _run_tasks(self) -> None:
        tasks = {
            asyncio.create_task(self._read(), name="wirepipe-read"),
            asyncio.create_task(self._pump(), name="wirepipe-pump"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()  # re-raise ProtocolError / ConnectionClosed

    async def _fail(self, exc: ProtocolError) -> None:
        """Tell the client, and close if fatal.  Never raises."""
        self.gw.metrics.error(exc.code.value)
        try:
            await self._send(encode(Error(exc.code.value, exc.msg, exc.fatal)))
            if exc.fatal and exc.close_code is not None:
                self.state = ConnState.CLOSING
                await self.ws.close(exc.close_code, exc.code.value)
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
        cfg = self.gw.config
        try:
            msg = await asyncio.wait_for(self.ws.recv(), cfg.handshake_timeout)
        except TimeoutError:
            raise ProtocolError(ErrorCode.NO_HELLO, "no hello within the handshake timeout") from None
        frame = decode_client(msg, cfg.max_frame)
        if not isinstance(frame, Hello):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"the first frame must be hello, not {frame.t}")
        return frame

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
        self.sid = hello.sid
        self.grant, token = await self._authorize(hello)
        if hello.start is not None:
            if self.grant is not Grant.OPERATOR:
                await self._fail(ProtocolError(ErrorCode.FORBIDDEN, "a viewer cannot start a run"))
            else:
                gw.start_run(hello.sid, hello.start["app"], hello.start.get("input"))
        self.session = await gw.await_session(hello.sid, self.ws)
        info = await gw.store.info(hello.sid)
        if info is None:  # expired between the two awaits, or lost with the store
            raise gw.missing_log(hello.sid)
        recovered = (
            token is not None
            and hello.epoch == info.epoch
            and hello.after is not None
            and info.first <= hello.after + 1
            and hello.after <= info.head
        )
        self.flow = FlowWindow(hello.window, 0)
        self.state = transition(self.state, ConnState.OPEN)
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
                raise self.gw.missing_log(sid)
            if before is not None and before.epoch == info.epoch:
                break
        cursor = at if live else info.first - 1
        self.session = self.gw.local_session(sid, info.epoch)
        await self._welcome(info.epoch, cursor, info.first, at, snapshot)

    async def _welcome(
        self, epoch: str, cursor: int, first: int, head: int, snapshot: dict[str, Any] | None
    ) -> None:
        gw = self.gw
        self.epoch = epoch
        self.cursor = cursor
        self.flow.restart(cursor)
        tok = ResumeToken(self.sid, epoch, self.grant, time.time() + gw.config.token_ttl)
        await self._send(
            encode(
                Welcome(
                    sid=self.sid,
                    epoch=epoch,
                    resume=sign(gw.secret, tok),
                    head=head,
                    first=first,
                    recovered=snapshot is None,
                    grant=self.grant,
                    snapshot=snapshot,
                    window=self.flow.size,
                    heartbeat=int(gw.config.heartbeat * 1000),
                )
            )
        )

    # --- the pump -------------------------------------------------------------

    async def _pump(self) -> None:
        store = self.gw.store
        sid = self.sid
        flow = self.flow
        limit = self.gw.config.batch_max
        while True:
            info = await store.info(sid)
            if info is None:
                # Expired: idle until a new run of this sid appears.
                await self.gw.await_session(sid, self.ws)
                await self._restart()
                continue
            if info.epoch != self.epoch:
                await self._restart()
                continue
            if self.cursor + 1 < info.first:
                await self._fail(
                    ProtocolError(ErrorCode.LAGGED, "fell out of the retention window", fatal=False)
                )
                await self._restart()
                continue
            room = flow.room()
            if room == 0:
                self._acked.clear()
                await self._acked.wait()
                continue
            raws = await store.read(
                sid, self.cursor, limit=limit if room is None else min(room, limit),
                max_bytes=BATCH_BYTES, epoch=self.epoch,
            )
            if not raws:
                await store.wait(sid, self.cursor, epoch=self.epoch)
                continue
            await self._send(frame_for(raws))
            self.cursor += len(raws)
            flow.on_sent(self.cursor)
            self.gw.metrics.sent(len(raws))

    # --- the reader -----------------------------------------------------------

    async def _read(self) -> None:
        cfg = self.gw.config
        async for msg in self.ws:
            try:
                frame: Any = decode_client(msg, cfg.max_frame)
            except ProtocolError as exc:
                if exc.fatal or exc.rid is None:
                    raise
                frame = exc  # a request whose value cannot travel: answered below
            self._size = len(msg)
            # An ack that moves the window is flow control, not abuse: never
            # charged, so acking every window/2 events cannot trip the limit
            # on a fast backlog (a refused ack would shut the window for good).
            # Redundant acks are charged like any frame.
            free = isinstance(frame, Ack) and self.flow.advances(frame.seq)
            if not free and not self._limiter.allow():
                fatal = self._limiter.strikes > cfg.rate_strikes
                raise_or_tell = ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    "too many frames: slow down and re-send (requests are idempotent by rid)",
                    fatal=fatal,
                )
                if fatal:
                    raise raise_or_tell
                await self._fail(raise_or_tell)
                continue
            if isinstance(frame, ProtocolError):
                assert frame.rid is not None
                await self._send(encode(Replied(frame.rid, False, frame.code.value)))
                continue
            reply = self._handle(frame)
            if reply is None and isinstance(frame, (Reply, Send, Cancel)):
                reply = await self._not_local(frame)
            if reply is not None:
                await self._send(encode(reply))

    async def _not_local(self, frame: Reply | Send | Cancel) -> Replied:
        """A request for a run this process does not hold."""
        if self.grant is not Grant.OPERATOR:
            return Replied(frame.rid, False, ErrorCode.FORBIDDEN)
        info = await self.gw.store.info(self.sid)
        if info is not None and info.epoch == self.epoch and not info.ended:
            # alive, but its agent runs on another node sharing the store
            return Replied(frame.rid, False, ErrorCode.NOT_HERE)
        err = ErrorCode.ASK_CLOSED if isinstance(frame, Reply) else ErrorCode.ENDED
        return Replied(frame.rid, False, err)

    def _handle(self, frame: Any) -> Replied | Pong | None:
        if isinstance(frame, Ack):
            if self.flow.on_ack(frame.seq):
                self._acked.set()
            return None
        if isinstance(frame, Ping):
            return Pong(frame.n)
        if isinstance(frame, Hello):
            raise ProtocolError(ErrorCode.BAD_FRAME, "hello may be sent only once")
        s = self.session
        if s is None or s.epoch != self.epoch:
            return None  # not run here: _not_local answers
        if isinstance(frame, Reply):
            return s.request(frame.rid, self.grant, lambda: s.answer(frame.ask, frame.value))
        if isinstance(frame, Send):
            return s.request(frame.rid, self.grant, lambda: s.deliver(frame.data, self._size))
        if isinstance(frame, Cancel):
            return s.request(frame.rid, self.grant, lambda: s.cancel(frame.reason))
        raise AssertionError(f"unhandled frame {frame!r}")  # pragma: no cover
