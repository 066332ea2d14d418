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
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from protocol import (
    SUBPROTOCOL,
    Ack,
    Cancel,
    Error,
    Event,
    Hello,
    Ping,
    Pong,
    RemoteError,
    Replied,
    Reply,
    Send,
    Welcome,
    close_action,
    decode_server,
    encode,
    events_of,
)

from .front import redacting_logger

log = logging.getLogger("wirepipe.client")


class Client:
    """An auto-resuming wirepipe client.  Use as ``async with``."""

    def __init__(
        self,
        url: str,
        sid: str,
        *,
        auth: str | None = None,
        window: int | None = None,
        start: dict[str, Any] | None = None,
        live: bool = False,
        name: str = "wirepipe-py/0.1",
        backoff: tuple[float, float] = (0.05, 5.0),
        max_retries: int | None = None,
        on_reset: Callable[[Welcome], Any] | None = None,
        compression: bool = True,
    ) -> None:
        self.url = url
        self.sid = sid
        self.auth = auth
        self.window = window
        self.start = start
        self.live = live
        self.name = name
        self.backoff = backoff
        self.max_retries = max_retries
        self.on_reset = on_reset
        self.compression = compression
        self.welcome: Welcome | None = None
        self.resets: list[Welcome] = []
        self.errors: list[Error] = []
        self.epoch: str | None = None
        self.last_seq = 0
        #: Events received twice (dropped; the protocol promises none) and
        #: holes in the seqs (the protocol promises none): for diagnostics.
        self.duplicates = 0
        self.gaps = 0
        self.connects = 0
        self.closed_with: int | None = None
        self._resume: str | None = None
        self._ws: ClientConnection | None = None
        self._events: asyncio.Queue[tuple[int, Event] | BaseException | None] = asyncio.Queue()
        self._pending: dict[str, tuple[bytes, asyncio.Future[Replied]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._welcomed = asyncio.Event()
        self._pongs: dict[Any, asyncio.Future[None]] = {}
        # Flow control: events are queued as (generation, event); the
        # generation moves at every socket and every welcome, both of which
        # restart the gateway's window, so older events are owed no ack.
        self._gen = 0
        self._ack_every = 0
        self._acked_seq = 0
        self._buffered = 0
        self._stopping = False
        self._welcomed_now = False

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
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc or RemoteError("closed", "client closed"))
        self._pending.clear()
        self._events.put_nowait(exc)

    @property
    def ws(self) -> ClientConnection | None:
        """The current socket (None between connections)."""
        return self._ws

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._stopping:
                try:
                    await self._session()
                    code = 1000
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else 1006
                except (OSError, InvalidStatus, TimeoutError) as exc:
                    log.debug("connect failed: %s", exc)
                    code = 1006
                self._ws = None
                self.closed_with = code
                if self._stopping:
                    break
                if close_action(code) != "retry" or (
                    self.max_retries is not None and attempt >= self.max_retries
                ):
                    err = self.errors[-1] if self.errors else None
                    raise RemoteError(err.code if err else str(code), err.msg if err else "")
                base, cap = self.backoff
                if self._welcomed_now:  # that connection worked: start the backoff over
                    attempt = 0
                await asyncio.sleep(random.uniform(0, min(cap, base * 2**attempt)))
                attempt += 1
        except RemoteError as exc:
            self._finish(exc)
            return
        self._finish(None)

    async def _session(self) -> None:
        async with ws_connect(
            self.url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            max_size=None,
            compression="deflate" if self.compression else None,
            # at DEBUG websockets would log the hello's bytes, auth included
            logger=redacting_logger("wirepipe.client.ws"),
        ) as ws:
            self._ws = ws
            self._gen += 1
            self._ack_every = 0  # no acks on this socket before its welcome
            self._welcomed_now = False
            first = self.connects == 0
            self.connects += 1
            hello = Hello(
                sid=self.sid,
                auth=self.auth,
                resume=self._resume,
                epoch=self.epoch,
                after=self.last_seq if self.epoch is not None else None,
                live=self.live and first,
                window=self.window,
                client=self.name,
                start=self.start if first else None,
            )
            await ws.send(encode(hello))
            async for msg in ws:
                await self._on_frame(ws, decode_server(msg))

    async def _on_frame(self, ws: ClientConnection, frame: Any) -> None:
        if isinstance(frame, Welcome):
            if not frame.recovered:
                if self.welcome is not None:
                    self.resets.append(frame)
                    if self.on_reset is not None:
                        self.on_reset(frame)
                self.last_seq = frame.first - 1 if not (self.live and self.welcome is None) else frame.head
            self.welcome = frame
            self.epoch = frame.epoch
            self._resume = frame.resume
            # The gateway's window restarts at our position: after (the last
            # event received) when recovered, else where the events resume.
            self._gen += 1
            self._acked_seq = self.last_seq
            self._ack_every = max(1, frame.window // 2) if frame.window else 0
            self._welcomed_now = True
            self._welcomed.set()
            for raw, _ in list(self._pending.values()):  # re-send, same rid
                await ws.send(raw)
            return
        for ev in events_of(frame):
            if ev.seq <= self.last_seq:
                self.duplicates += 1
                continue  # a duplicate
            if ev.seq != self.last_seq + 1:
                self.gaps += 1  # the gateway broke its promise: say so, keep going
                log.warning("sid %s: events %d..%d never arrived", self.sid, self.last_seq + 1, ev.seq - 1)
            self.last_seq = ev.seq
            self._events.put_nowait((self._gen, ev))
            self._buffered += 1
        if isinstance(frame, Replied):
            entry = self._pending.pop(frame.rid, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(frame)
        elif isinstance(frame, Pong):
            fut = self._pongs.pop(frame.n, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(frame, Error):
            self.errors.append(frame)

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
        gen, ev = item
        self._buffered -= 1
        if gen == self._gen and self._ack_every and ev.seq - self._acked_seq >= self._ack_every:
            await self._ack(ev.seq)
        return ev

    async def _ack(self, seq: int) -> None:
        """Ack, cumulatively, every event up to ``seq`` (the consumer took them)."""
        self._acked_seq = seq
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(encode(Ack(seq)))
        except ConnectionClosed:
            pass  # the reconnect's hello.after restarts the window

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
        raw = encode(frame)
        self._pending[frame.rid] = (raw, fut)
        if self._ws is not None:
            try:
                await self._ws.send(raw)
            except ConnectionClosed:
                pass  # re-sent after the reconnect
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
        self._pongs[n] = fut
        if self._ws is None:
            raise RemoteError("closed", "not connected")
        await self._ws.send(encode(Ping(n)))
        await fut


def connect(url: str, sid: str, **options: Any) -> Client:
    """``async with connect(url, sid) as c``: the same as ``Client(url, sid, ...)``."""
    return Client(url, sid, **options)
