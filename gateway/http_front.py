"""Every HTTP request the gateway answers: the front door, the connection cap, the routes.

websockets hands each request to ``HttpFront.process_request`` before any
upgrade: a request the front door refuses gets 403 (``gateway/front.py``,
docs/security.md); a WebSocket handshake is admitted or gets 503 when
``max_connections`` are open; anything else is a route: ``/healthz``,
``/apps``, ``/metrics``, or a file of the web UI and the JS client.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from websockets.asyncio.server import ServerConnection as WebSocket
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State

from .config import Config
from .front import FrontDoor
from .metrics import FrontMetrics

log = logging.getLogger("wirepipe")

#: The web UI's files.
STATIC = Path(__file__).parent / "static"


def client_dir() -> Path:
    """The JS client's sources: packaged as ``gateway/_jsclient``, or in a source checkout."""
    packaged = Path(__file__).parent / "_jsclient"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "clients" / "js" / "src"


class HttpFront:
    """Answers HTTP requests and lets WebSocket handshakes in (or not)."""

    def __init__(
        self,
        config: Config,
        front: FrontDoor,
        metrics: FrontMetrics,
        registry: CollectorRegistry,
        apps: Callable[[], list[str]],
        closing: Callable[[], bool],
    ) -> None:
        self.config = config
        self.front = front
        #: The WebSocket front's counters (handshakes refused).
        self.metrics = metrics
        #: What ``/metrics`` serves (``gateway/exporter.py``).
        self.registry = registry
        self._apps = apps
        self._closing = closing
        self._admitted: set[WebSocket] = set()  # handshakes let in, for max_connections

    def process_request(self, ws: WebSocket, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        refusal = self.front.refusal(request.headers)
        if refusal is not None:
            # once, at INFO: a hostile page can cause these at will.  No query
            # string (it may hold ?auth=), no headers but the two judged.
            log.info(
                "refused %s %.200s: %s (Origin %.200r, Host %.200r)",
                "WebSocket handshake to" if upgrade else "HTTP request for",
                path,
                refusal,
                request.headers.get("Origin"),
                request.headers.get("Host"),
            )
            if upgrade:
                self.metrics.refuse("forbidden")
            return ws.respond(HTTPStatus.FORBIDDEN, f"{refusal}\n")
        if upgrade:
            if self._closing():
                self.metrics.refuse("closing")
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
            return self._admit(ws)
        if path == "/healthz":
            return ws.respond(HTTPStatus.OK, "ok\n")
        if path == "/apps":  # the names hello.start accepts, for start forms
            names = json.dumps({"apps": self._apps()}).encode()
            return _response(HTTPStatus.OK, names, "application/json")
        if path == "/metrics":
            return _response(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if not self.config.serve_ui:
            return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return static(path)

    def _admit(self, ws: WebSocket) -> Response | None:
        """Let a WebSocket handshake in, or answer 503 when ``max_connections`` are open.

        A connection holds its slot from here until it starts closing (a
        client whose close handshake is done has freed it).  This runs
        synchronously up to the 101 response, so two handshakes never race
        for the last slot.  Connections leave the set when their handler
        ends (``release``); those that closed without one (a handshake that
        failed after this) are swept out when the set is full.
        """
        if len(self._admitted) >= self.config.max_connections:
            self._admitted = {c for c in self._admitted if c.state in (State.CONNECTING, State.OPEN)}
        if len(self._admitted) >= self.config.max_connections:
            log.info("refused a WebSocket handshake: %d connections open (--max-connections)", len(self._admitted))
            self.metrics.refuse("capacity")
            response = ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            response.headers["Retry-After"] = "1"
            return response
        self._admitted.add(ws)
        return None

    def release(self, ws: WebSocket) -> None:
        """``ws``'s handler ended: its slot is free."""
        self._admitted.discard(ws)


def _response(status: HTTPStatus, body: bytes, ctype: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = ctype
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-cache"
    headers["X-Content-Type-Options"] = "nosniff"
    return Response(status.value, status.phrase, headers, body)


def static(path: str) -> Response:
    """A file of the web UI or the JS client, or 404; never raises.

    Paths are not percent-decoded (no served file needs it), so ``%2e%2e``
    is a name, not a parent.  A NUL, raw or as ``%00``, is a bad request;
    a name the filesystem refuses (a component over 255 bytes) is not found.
    """
    if "\x00" in path or "%00" in path:
        return _response(HTTPStatus.BAD_REQUEST, b"bad request\n", "text/plain")
    if path in ("", "/"):
        path = "/index.html"
    if path.startswith("/client/"):
        root, rel = client_dir(), path[len("/client/") :]
    else:
        root, rel = STATIC, path.lstrip("/")
    try:
        target = (root / rel).resolve()
        found = target.is_relative_to(root.resolve()) and target.is_file()
    except (OSError, ValueError):  # ENAMETOOLONG and the like: no such file here
        found = False
    if not found:
        return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix in (".js", ".mjs"):
        ctype = "text/javascript"
    if ctype.startswith("text/"):
        ctype += "; charset=utf-8"
    return _response(HTTPStatus.OK, target.read_bytes(), ctype)
