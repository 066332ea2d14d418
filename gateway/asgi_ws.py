"""The WebSocket protocol through ASGI: ``wirepipe.v1`` inside ``Gateway.asgi()``.

Theory of operation
-------------------
A client of the ASGI front is served by the same ``Connection``
(``gateway/connection.py``) as a client of the native front, which drives
the same sans-I/O rules (``protocol.server.ServerConnection``); only the
socket differs.  ``AsgiSocket`` is the subset of websockets' connection
that ``Connection`` uses (``connection.Socket``), made of the ASGI
``receive`` and ``send`` callables:

- ``recv``: the next ``websocket.receive`` message's bytes (or text); a
  ``websocket.disconnect`` raises websockets' ``ConnectionClosed`` (``OK``
  for 1000 and 1001), as websockets' own ``recv`` does, so ``Connection``
  handles both fronts' ends the same way;
- ``send``: ``websocket.send``, awaited: the server (uvicorn) waits while
  its socket's write buffer is over its high-water mark, which bounds what
  a slow client costs, as websockets' ``write_limit`` does natively;
- ``close``: ``websocket.close`` with the protocol's close code and reason;
  the server carries out the closing handshake;
- ``wait_closed``: a client that waits for a run (``Runs.await_session``)
  is watched through ``receive``; what it sends meanwhile is kept for
  ``recv`` (at most ``MAX_QUEUE`` messages, then it is no longer read, as
  websockets stops reading past its ``max_queue``; unlike websockets, which
  learns of a lost TCP connection whatever it reads, such a client's
  departure is then seen only when its run starts or the gateway closes);
- ``transport.abort()`` (the stall watchdog, ``drop_connections``, a
  shutdown past ``close_timeout``): ASGI has no abort, so the connection's
  task is cancelled and the app returns without a close frame; uvicorn then
  closes the TCP connection (after flushing what its buffer holds).

What the native front does per connection and ASGI cannot, and what it does
instead (docs/http.md, "The WebSocket through ASGI"):

- **no push**: the native front writes a frame's shared wire bytes to the
  transport straight from the feed (``Connection.push``); here there is no
  transport, so ``AsgiConnection.push`` returns False and the pump task
  sends every frame with ``await``;
- **no heartbeat of ours**: ASGI has no ping message; the server pings
  (uvicorn's ``--ws-ping-interval`` / ``--ws-ping-timeout``, 20 s each by
  default) and closes a client that does not answer.  The gateway's
  heartbeat skips these clients (``gateway/heartbeat.py``);
- **stalled clients** are still dropped by the stall watchdog: a send that
  waits longer than ``stall_timeout`` aborts the connection as above;
- **compression** is the server's (uvicorn's permessage-deflate, with
  context takeover, ``--ws-per-message-deflate``), and the largest message
  it reads is its ``--ws-max-size`` (16 MiB); the gateway still answers
  ``too_big`` over ``max_frame``.

The handshake obeys the native front's rules: the front door (Origin and
Host), 503 while the gateway closes or when ``max_connections`` are open
(both fronts share the slots), and the subprotocol: ``wirepipe.v1`` if
offered, none offered is v1 too, only unknown ones get HTTP 400.  A refusal
is an HTTP response where the server offers ASGI's
``websocket.http.response`` extension (uvicorn does), else a 403.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from starlette.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close
from websockets.protocol import State

from protocol import SUBPROTOCOL

from .connection import Connection
from .http_front import Reply

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from .feed import Feed
    from .server import Gateway

log = logging.getLogger("wirepipe.asgi")

__all__ = ["MAX_QUEUE", "AsgiConnection", "AsgiSocket", "serve_websocket"]

#: Messages kept for ``recv`` while a waiting client is watched (websockets' ``max_queue``).
MAX_QUEUE: Final = 16
#: Close codes after which ``recv`` raises ``ConnectionClosedOK`` (websockets' rule).
_OK_CODES: Final = frozenset({1000, 1001})


class AsgiSocket:
    """A WebSocket of the ASGI front, as ``Connection`` uses one (see the module docstring)."""

    __slots__ = ("_receive", "_send", "_task", "_pending", "_closed", "_gone", "_close", "_aborted", "remote_address")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        #: The task serving this client (``abort`` cancels it).
        self._task = asyncio.current_task()
        #: Messages read by ``wait_closed`` and not by ``recv`` yet (made when needed:
        #: an idle client keeps no deque, nor an Event, of its own).
        self._pending: deque[bytes | str] | None = None
        #: True once the connection is closed (either side) or aborted.
        self._closed = False
        #: Resolved when closed, for a ``wait_closed`` that reads no more (made when needed).
        self._gone: asyncio.Future[None] | None = None
        #: The close frame sent or received first.
        self._close: Close | None = None
        self._aborted = False
        client = scope.get("client")
        #: The client's (host, port), as websockets' ``remote_address``.
        self.remote_address: tuple[str, int] | None = (client[0], client[1]) if client else None

    # --- what Connection uses ------------------------------------------------------------------

    @property
    def state(self) -> State:
        """OPEN until closed: the connection cap's sweep reads it (``HttpFront._admit``)."""
        return State.CLOSED if self._closed else State.OPEN

    @property
    def transport(self) -> AsgiSocket:
        """This object: ASGI gives the app no transport (``abort``, ``get_write_buffer_size``)."""
        return self

    @property
    def aborted(self) -> bool:
        return self._aborted

    async def recv(self) -> bytes | str:
        """The client's next message.

        Raises:
            ConnectionClosed: the connection is closed (``ConnectionClosedOK`` for 1000 and 1001).
        """
        if self._pending:
            return self._pending.popleft()
        if self._closed:
            raise self._closed_exc()
        got = await self._read()
        if got is None:
            raise self._closed_exc()
        return got

    async def send(self, message: bytes) -> None:
        """One binary message; waits while the server's write buffer is full.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        if self._closed:
            raise self._closed_exc()
        try:
            await self._send({"type": "websocket.send", "bytes": message})
        except OSError:  # the client left (uvicorn's ClientDisconnected, ASGI spec 2.4)
            self._lost(1006)
            raise self._closed_exc() from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason``; the server does the closing handshake."""
        if self._closed:
            return
        self._lost(code, reason)
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except OSError:
            pass

    async def wait_closed(self) -> None:
        """Return once the client has gone; keeps what it sends meanwhile for ``recv`` (bounded)."""
        while not self._closed:
            pending = self._pending
            if pending is None:
                pending = self._pending = deque()
            if len(pending) >= MAX_QUEUE:  # read no more, as websockets past max_queue
                if self._gone is None:
                    self._gone = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._gone)
                return
            got = await self._read()
            if got is not None:
                pending.append(got)

    def get_write_buffer_size(self) -> int:
        """0: what waits is in the server's buffer, out of the app's sight (``send`` waits on it)."""
        return 0

    def abort(self) -> None:
        """Drop the client now: its task ends without a close frame (see the module docstring)."""
        if self._aborted:
            return
        self._aborted = True
        self._lost(1006)
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # --- inside --------------------------------------------------------------------------------

    async def _read(self) -> bytes | str | None:
        """One data message, or None once the client has gone."""
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("bytes")
                if data is not None:
                    return bytes(data)
                text = message.get("text")
                if text is not None:
                    return str(text)
                continue
            if kind == "websocket.disconnect":
                self._lost(int(message.get("code", 1005)), str(message.get("reason") or ""))
                return None

    def _lost(self, code: int, reason: str = "") -> None:
        if self._close is None:
            self._close = Close(code, reason)
        self._closed = True
        gone = self._gone
        if gone is not None and not gone.done():
            gone.set_result(None)

    def _closed_exc(self) -> ConnectionClosed:
        close = self._close
        if close is not None and close.code in _OK_CODES:
            return ConnectionClosedOK(close, None)
        return ConnectionClosedError(close, None)


class AsgiConnection(Connection):
    """A ``Connection`` over an ``AsgiSocket``: every frame is sent by the pump task."""

    __slots__ = ()

    def push(self, feed: Feed) -> bool:
        """Never: no transport to write to (see the module docstring); the feed wakes the pump."""
        return False


# --- the handshake ---------------------------------------------------------------------------------


async def serve_websocket(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI ``websocket`` scope: the handshake by the native front's rules, then a ``Connection``."""
    if (await receive())["type"] != "websocket.connect":
        return
    sock = AsgiSocket(scope, receive, send)
    offered = list(scope.get("subprotocols") or ())
    refused = gw.http.admit_upgrade(Headers(scope=scope), scope.get("path", ""), sock)
    if refused is None:
        if offered and SUBPROTOCOL not in offered:
            gw.http.release(sock)
            refused = Reply.text(
                HTTPStatus.BAD_REQUEST, f"unsupported subprotocols {', '.join(offered)}; this is {SUBPROTOCOL}\n"
            )
    if refused is not None:
        await _refuse(scope, send, refused)
        return
    try:
        await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL if offered else None})
    except OSError:  # gone before the handshake's end
        gw.http.release(sock)
        return
    conn = gw.connected(AsgiConnection, sock)
    try:
        await conn.serve()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not sock.aborted or task is None or task.uncancel() > 0:
            raise
        # aborted: return without a close frame; the server closes the TCP connection


async def _refuse(scope: Scope, send: Send, reply: Reply) -> None:
    """Answer a refused handshake with ``reply``, or a bare 403 without the ASGI extension for it."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.header_list()]
    await send({"type": "websocket.http.response.start", "status": reply.status.value, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": reply.body})
