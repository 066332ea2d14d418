"""One origin: uvicorn answers every HTTP request, websockets' own connection takes every WebSocket.

The default front of ``Gateway`` and ``wirepipe serve`` (``Config.front =
"uvicorn"``; docs/http.md, "Fronts"): the web UI, the WebSocket protocol,
REST and SSE on one host and port.

Theory of operation
-------------------
uvicorn parses every request (its h11 protocol: nothing here parses
HTTP).  A request that is not a WebSocket upgrade goes to the
gateway's ASGI app (``Gateway.asgi()``: REST and SSE under ``/api/v1``, the
page, ``/client/``, ``/metrics``, ``/healthz``, ``/apps``).  An upgrade is
handed by uvicorn, with the request's bytes, to its ``ws`` protocol class,
which here is not an ASGI WebSocket but the ``ServerConnection`` that the
``websockets`` front makes, with the same options, tied to a websockets
``Server`` that listens on nothing (``serve()`` not awaited).  websockets'
handler for it runs the same handshake (``HttpFront.process_request``: the
front door, the connection cap, 503 while closing) and then the gateway's
handler: from its first byte on, the client is a client of the websockets
front, with its push path, its memory per idle connection and its
heartbeat.  ``./run bench --front websockets`` measures it beside the other
fronts (docs/performance.md).

Bounds: HTTP connections (and responses in flight) are capped at
``Config.max_connections`` (uvicorn answers 503 over it; WebSockets are
capped apart, by the front door, at as many again), an
idle keep-alive connection is closed after ``KEEP_ALIVE`` seconds, a request
head over 16 KiB gets 400 (uvicorn's defaults), a body is read with the API's
own bound (``Config.max_frame``).

Closing (``close``): the SSE streams end (their clients come back with
``Last-Event-ID``), every HTTP connection is told to close after its
response, the responses in flight get ``timeout`` seconds, then what is left
is cancelled and its socket aborted.  The WebSocket clients are the
gateway's to close (``Gateway.close``) and websockets' ``Server``'s to wait
for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

if TYPE_CHECKING:
    from starlette.types import ASGIApp
    from websockets.asyncio.server import ServerConnection

log = logging.getLogger("wirepipe")

#: Seconds an idle HTTP keep-alive connection is kept (uvicorn's default).
KEEP_ALIVE: Final = 5


class _Http(H11Protocol):
    """uvicorn's h11 protocol, which also hands over the bytes a client sent right after its upgrade.

    A client may send its first frame (``hello``) in the same segment as the
    handshake; uvicorn would drop what h11 holds past the request's head.
    h11 always, not httptools where installed: the same parser everywhere.
    """

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        early, _ = self.conn.trailing_data
        super().handle_websocket_upgrade(event)
        if early:
            self.transport.get_protocol().data_received(early)  # type: ignore[attr-defined]


class UvicornFront:
    """uvicorn's HTTP protocol on one listening socket, upgrades handed to ``websocket()``."""

    def __init__(
        self,
        app: ASGIApp,
        websocket: Callable[[], ServerConnection],
        *,
        max_connections: int,
    ) -> None:
        self._websocket = websocket
        self.config = uvicorn.Config(
            app,
            ws=self._upgrade,  # type: ignore[arg-type]  # any callable that makes an asyncio Protocol
            lifespan="off",  # the gateway is started and closed by its owner, not by uvicorn
            proxy_headers=False,  # X-Forwarded-For is not trusted: rate limits key on the peer
            server_header=False,
            date_header=False,
            access_log=False,  # one line per request is not the gateway's log (docs/metrics.md counts them)
            log_config=None,  # the process's logging, as configured, not uvicorn's
            # uvicorn counts the request it judges: this lets max_connections in
            limit_concurrency=max_connections + 1,
            timeout_keep_alive=KEEP_ALIVE,
        )
        self.config.load()
        self.config.http_protocol_class = _Http
        self.state = ServerState()
        # Every response's headers beyond its own (uvicorn refreshes these once a
        # second in its main loop, which is not run here: no Date header).
        self.state.default_headers = [(b"server", b"wirepipe")]
        self.server: asyncio.Server | None = None

    def _upgrade(self, **_uvicorn: Any) -> ServerConnection:
        """uvicorn's ``ws_protocol_class(config=, server_state=, app_state=)``: websockets' connection."""
        return self._websocket()

    def _http(self) -> asyncio.Protocol:
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.state, app_state={}
        )
        return protocol

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listen on ``host:port`` (0: a free port).

        Raises:
            OSError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._http, host, port, backlog=self.config.backlog)
        return self.server

    async def close(self, timeout: float) -> None:
        """Stop listening, close every HTTP connection after its response; ``timeout`` for those in flight."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.state.connections):
            conn.shutdown()  # closes an idle one now, a busy one after its response
        tasks = set(self.state.tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("closing: %d HTTP responses did not end within %.1fs; cut", len(late), timeout)
                await asyncio.wait(late, timeout=timeout)
        for conn in list(self.state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
