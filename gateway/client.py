"""A Python client for scripts, notebooks and tests.

    async with Client(gw.url, "run-1") as c:
        async for ev in c:                  # resumes by itself after a drop
            if ev.k == "ask":
                await c.reply(ev.d["id"], "yes")

The iterator yields ``protocol.Event`` values, in order, each once.  When the
gateway cannot recover the stream (``welcome.recovered`` false after a
reconnect), ``on_reset(welcome)`` is called and the new welcome is appended
to ``resets``: what was shown must be rebuilt from ``welcome.snapshot``.

Flow control (docs/protocol.md section 6): with a window in force
(``welcome.window``) the client acks *after consumption*: once the iterator
has yielded at least ``max(1, window // 2)`` events since the last ack, it
sends one cumulative ``ack`` for the last event yielded.  A consumer that
stops iterating therefore stops the gateway at the window, and ``buffered``
(events received, not yet yielded) stays at most the window.  A reconnect's
welcome restarts the window at ``hello.after``, the last event *received*, so
events buffered before it are owed no ack (the buffer can then briefly hold
up to two windows).  Without a window the client never acks and buffers
whatever arrives.

Connection life (the JS client's states, ``clients/js/src/wirepipe.js``):
``connecting`` (a socket is opening, or open with its hello sent and no
welcome yet: a gateway holds the hello of a sid that has no run until one
starts), ``open`` (welcomed), ``recovering`` (the socket dropped or could not
open; a retry is scheduled) and ``closed``.  ``on_state(state)`` hears each
change; ``on_close(info)`` hears each socket that ended or could not open,
with what the client does next (``CloseInfo``), before it retries or stops.

``snapshot`` is the run's state as received (``protocol.Snapshot``: status,
plan, open asks, open texts), kept by the rule of docs/protocol.md section 4:
rebuilt from each welcome that resets, then every event past its ``head``
folded in.  In a notebook it shows as a table (``_repr_html_``).

In a notebook (Jupyter's kernel runs an event loop already), use the client
with top-level ``await`` or a task, never ``asyncio.run``; ``widget()`` shows
the run live (docs/notebook.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from protocol import (
    SUBPROTOCOL,
    Cancel,
    ClientProtocol,
    Error,
    ErrorCode,
    Event,
    Pong,
    ProtocolError,
    RemoteError,
    Replied,
    Reply,
    Send,
    Snapshot,
    Welcome,
    Welcomed,
)
from protocol.codec import SID_RE

from . import __version__
from .front import redacting_logger

log = logging.getLogger("wirepipe.client")

#: ``hello.client`` of this client: its name and the package version.
CLIENT_NAME = f"wirepipe-py/{__version__}"


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """A socket ended or could not open, and what the client does next (``on_close``).

    ``code``: the close code (1006 when no close frame came, or no socket
    opened); ``reason``: the close frame's reason, or why the socket could not
    open or broke (the error's text, e.g. "[Errno 111] Connect call failed");
    ``status``: the HTTP status of a refused handshake (403, 404, 503, ...);
    ``will_retry``: a retry follows in ``delay`` seconds; ``attempt``: failed
    attempts in a row so far (1 for the first; a welcome starts it over).
    """

    code: int
    reason: str
    will_retry: bool
    delay: float | None = None
    attempt: int = 1
    status: int | None = None


class Client:
    """An auto-resuming wirepipe client.  Use as ``async with``.

    The protocol's rules (hellos, position, duplicates, resets, acks, pending
    requests, close codes) live in ``protocol.ClientProtocol``; this class
    drives it: sockets, backoff timers, the event queue.
    """

    def __init__(
        self,
        url: str,
        sid: str,
        *,
        auth: str | None = None,
        window: int | None = None,
        start: dict[str, Any] | None = None,
        live: bool = False,
        name: str = CLIENT_NAME,
        backoff: tuple[float, float] = (0.05, 5.0),
        max_retries: int | None = None,
        on_reset: Callable[[Welcome], Any] | None = None,
        compression: bool = True,
        on_state: Callable[[str], Any] | None = None,
        on_close: Callable[[CloseInfo], Any] | None = None,
    ) -> None:
        """
        Raises:
            ValueError: ``sid`` is not 1-128 chars of ``[A-Za-z0-9._:-]``, or
                ``window`` is not an integer from 1 to 1,000,000 (as the JS
                client refuses them, before any socket).
        """
        if not isinstance(sid, str) or not SID_RE.fullmatch(sid):
            raise ValueError(f"invalid sid {sid!r}: 1-128 chars of [A-Za-z0-9._:-]")
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or not 0 < window <= 1_000_000
        ):
            raise ValueError(f"window must be an integer from 1 to 1,000,000, not {window!r}")
        self.url = url
        self.sid = sid
        self.backoff = backoff
        self.max_retries = max_retries
        self.on_reset = on_reset
        self.on_state = on_state
        self.on_close = on_close
        self.compression = compression
        self._state = "connecting"
        self.proto = ClientProtocol(sid, auth=auth, window=window, start=start, live=live, client=name)
        self.closed_with: int | None = None
        self._ws: ClientConnection | None = None
        # Events are queued with the generation they were delivered in (see ClientProtocol.consumed).
        self._events: asyncio.Queue[tuple[int, Event] | BaseException | None] = asyncio.Queue()
        self._replies: dict[str, asyncio.Future[Replied]] = {}
        self._task: asyncio.Task[None] | None = None
        self._welcomed = asyncio.Event()
        self._pongs: dict[Any, asyncio.Future[None]] = {}
        self._buffered = 0
        self._stopping = False
        self._snapshot = Snapshot()
        self._snapshot_head = 0

    # --- the protocol's state, read through ---------------------------------------

    @property
    def auth(self) -> str | None:
        """The credential of the next hello (set it before a reconnect to change it)."""
        return self.proto.auth

    @auth.setter
    def auth(self, value: str | None) -> None:
        self.proto.auth = value

    @property
    def window(self) -> int | None:
        return self.proto.window

    @property
    def start(self) -> dict[str, Any] | None:
        return self.proto.start

    @property
    def live(self) -> bool:
        return self.proto.live

    @property
    def name(self) -> str | None:
        return self.proto.client

    @property
    def welcome(self) -> Welcome | None:
        """The last welcome."""
        return self.proto.welcome

    @property
    def resets(self) -> list[Welcome]:
        """Every welcome after the first that reset the stream (``recovered`` false)."""
        return self.proto.resets

    @property
    def errors(self) -> list[Error]:
        """Every ``error`` frame received."""
        return self.proto.errors

    @property
    def epoch(self) -> str | None:
        return self.proto.epoch

    @property
    def last_seq(self) -> int:
        """The seq of the last event received in the current epoch."""
        return self.proto.last_seq

    @property
    def duplicates(self) -> int:
        """Events received twice (dropped; the protocol promises none)."""
        return self.proto.duplicates

    @property
    def gaps(self) -> int:
        """Holes in the seqs (the protocol promises none): for diagnostics."""
        return self.proto.gaps

    @property
    def snapshot(self) -> Snapshot:
        """The run's state as received so far (see the module docstring); a new object after a reset."""
        return self._snapshot

    @property
    def connects(self) -> int:
        """Sockets opened so far."""
        return self.proto.connects

    @property
    def state(self) -> str:
        """``connecting``, ``open``, ``recovering`` or ``closed`` (see the module docstring)."""
        return self._state

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            if self.on_state is not None:
                self.on_state(state)

    # --- life -------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and wait for the first ``welcome``.

        Raises:
            RemoteError: the gateway refused the session for good.
        """
        self._task = asyncio.create_task(self._run())
        waiter = asyncio.ensure_future(self._welcomed.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not self._welcomed.is_set():
            waiter.cancel()
            self._task.result()
            err = self.errors[-1] if self.errors else None
            if err is not None:  # say why (unauthorized, no_app, ...), not just "closed"
                raise RemoteError(err.code, err.msg, fatal=err.fatal)
            raise RemoteError("closed", "connection ended before welcome")

    async def close(self) -> None:
        """Close for good (1000); pending requests fail."""
        self._stopping = True
        self._set_state("closed")
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(exc or RemoteError("closed", "client closed"))
        self._replies.clear()
        self.proto.pending.clear()
        self._events.put_nowait(exc)

    @property
    def ws(self) -> ClientConnection | None:
        """The current socket (None between connections)."""
        return self._ws

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._stopping:
                self._set_state("connecting")
                welcomed = False
                reason, status = "", None
                try:
                    code = await self._session()
                    if self._ws is not None:
                        reason = self._ws.close_reason or ""
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else 1006
                    reason = exc.rcvd.reason if exc.rcvd is not None else ""
                except (OSError, InvalidHandshake, TimeoutError) as exc:
                    # Unreachable, refused (HTTP 403, 404, 503...), not a WebSocket server, TLS.
                    log.debug("connect failed: %s", exc)
                    code = 1006
                    reason = str(exc) or type(exc).__name__
                    status = exc.response.status_code if isinstance(exc, InvalidStatus) else None
                finally:
                    welcomed = self.proto.welcomed
                    self._ws = None
                self.closed_with = code
                action = self.proto.closed(code)
                if self._stopping:
                    break
                if welcomed:  # that connection worked: start the backoff over
                    attempt = 0
                if action != "retry" or (self.max_retries is not None and attempt >= self.max_retries):
                    self._set_state("closed")
                    if self.on_close is not None:
                        self.on_close(CloseInfo(code, reason, False, None, attempt + 1, status))
                    err = self.errors[-1] if self.errors else None
                    raise RemoteError(err.code if err else str(code), err.msg if err else reason)
                base, cap = self.backoff
                delay = random.uniform(0, min(cap, base * 2**attempt))
                self._set_state("recovering")
                if self.on_close is not None:
                    self.on_close(CloseInfo(code, reason, True, delay, attempt + 1, status))
                await asyncio.sleep(delay)
                attempt += 1
        except RemoteError as exc:
            self._finish(exc)
            return
        except Exception as exc:  # a bug: the iterator and every pending request learn it
            log.exception("client of %s stopped", self.sid)
            self._finish(exc)
            return
        self._finish(None)

    async def _session(self) -> int:
        """One connection, until it closes; returns the close code the gateway sent (1000 if none)."""
        async with ws_connect(
            self.url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            max_size=None,
            compression="deflate" if self.compression else None,
            # at DEBUG websockets would log the hello's bytes, auth included
            logger=redacting_logger("wirepipe.client.ws"),
        ) as ws:
            self._ws = ws
            self.proto.opened()
            await self._flush(ws)
            async for msg in ws:
                gaps = self.proto.gaps
                try:
                    outs = self.proto.receive_data(msg)
                except ProtocolError as exc:
                    # The gateway sent something that is not a frame: a local,
                    # non-fatal error, as the JS client reports it; a hole it
                    # leaves in the seqs is counted in ``gaps``.
                    log.warning("sid %s: an undecodable frame from the gateway: %s", self.sid, exc.msg)
                    self.proto.errors.append(Error(exc.code.value, exc.msg, False))
                    continue
                for out in outs:
                    self._handle(out)
                if self.proto.gaps != gaps:
                    log.warning("sid %s: %d event(s) skipped a seq", self.sid, self.proto.gaps - gaps)
                if self.proto.start is not None and not self.proto.welcomed:
                    refused = [e for e in self.proto.errors if e.code == ErrorCode.FORBIDDEN]
                    if refused:  # the run this client came to start will not come from it
                        raise RemoteError(refused[-1].code, refused[-1].msg)
                await self._flush(ws)
            # The loop ends quietly on 1000 and 1001 alike: a gateway going
            # away (1001) is a retry, a normal close is not.
            return ws.close_code if ws.close_code is not None else 1000

    async def _flush(self, ws: ClientConnection) -> None:
        for data in self.proto.data_to_send():
            await ws.send(data)

    def _handle(self, out: object) -> None:
        if isinstance(out, Welcomed):
            if out.reset:  # docs/protocol.md section 4: rebuild, then fold only seq > head
                self._snapshot = Snapshot.from_map(out.welcome.snapshot)
                self._snapshot_head = out.welcome.head
            self._set_state("open")
            if out.reset and not out.first and self.on_reset is not None:
                self.on_reset(out.welcome)
            self._welcomed.set()
        elif isinstance(out, Event):
            if out.seq > self._snapshot_head:
                self._snapshot.apply(out.k, out.d)
            self._events.put_nowait((self.proto.generation, out))
            self._buffered += 1
        elif isinstance(out, Replied):
            fut = self._replies.pop(out.rid, None)
            if fut is not None and not fut.done():
                fut.set_result(out)
        elif isinstance(out, Pong):
            pong = self._pongs.pop(out.n, None)
            if pong is not None and not pong.done():
                pong.set_result(None)

    async def _send_queued(self) -> None:
        ws = self._ws
        if ws is None:
            self.proto.frames_to_send()  # nowhere to go: the rules re-send what matters
            return
        try:
            await self._flush(ws)
        except ConnectionClosed:
            pass  # the reconnect's hello and welcome take over

    # --- events -------------------------------------------------------------------

    def __aiter__(self) -> Client:
        return self

    @property
    def buffered(self) -> int:
        """Events received and not yet yielded by the iterator."""
        return self._buffered

    async def __anext__(self) -> Event:
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._events.put_nowait(item)
            raise item
        generation, ev = item
        self._buffered -= 1
        if self.proto.consumed(ev.seq, generation) is not None:
            await self._send_queued()
        return ev

    async def until(self, pred: Callable[[Event], bool]) -> list[Event]:
        """Collect events until one satisfies ``pred`` (included)."""
        out: list[Event] = []
        async for ev in self:
            out.append(ev)
            if pred(ev):
                break
        return out

    # --- requests -----------------------------------------------------------------

    async def _request(self, frame: Reply | Send | Cancel) -> Replied:
        fut: asyncio.Future[Replied] = asyncio.get_running_loop().create_future()
        self._replies[frame.rid] = fut
        self.proto.request(frame)
        await self._send_queued()
        return await fut

    async def reply(self, ask: str, value: Any, rid: str | None = None) -> Replied:
        """Answer an ask; resolves to the ``replied`` outcome."""
        return await self._request(Reply(ask, rid or uuid.uuid4().hex, value))

    async def send(self, data: Any, rid: str | None = None) -> Replied:
        """Send ``data`` to the agent (its ``get_message``)."""
        return await self._request(Send(data, rid or uuid.uuid4().hex))

    async def cancel(self, reason: str | None = None, rid: str | None = None) -> Replied:
        """Ask the run to stop."""
        return await self._request(Cancel(rid or uuid.uuid4().hex, reason))

    async def ping(self) -> None:
        """Round trip a ``ping``."""
        n = uuid.uuid4().hex
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._ws is None:
            raise RemoteError("closed", "not connected")
        self._pongs[n] = fut
        self.proto.ping(n)
        await self._flush(self._ws)
        await fut

    # --- notebooks ------------------------------------------------------------------

    def widget(self, **options: Any) -> Any:
        """A notebook widget that shows this session live (``gateway.notebook.watch``).

        It follows the session on connections of its own (the kernel's and
        each view's), with this client's URL and credential; ``options``
        are ``watch``'s (``start`` excepted: this client started the run, if any).

        Raises:
            ImportError: anywidget is not installed (``pip install 'wirepipe[notebook]'``).
        """
        from .notebook import watch  # optional: the core never needs anywidget

        return watch(self.url, self.sid, auth=self.auth, **options)


def connect(url: str, sid: str, **options: Any) -> Client:
    """``async with connect(url, sid) as c``: the same as ``Client(url, sid, ...)``."""
    return Client(url, sid, **options)
