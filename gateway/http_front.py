"""Every HTTP request the gateway answers: the front door, the connection cap, the routes.

websockets hands each request to ``HttpFront.process_request`` before any
upgrade: a request the front door refuses gets 403 (``gateway/front.py``,
docs/security.md); a WebSocket handshake is admitted or gets 503 when
``max_connections`` are open; anything else is a route: ``/healthz``,
``/apps``, ``/metrics``, or a file of the web UI and the JS client.  The
ASGI front (``Gateway.asgi()``) asks the same object (``admit_upgrade``,
``refuse``, ``route``): a ``Reply`` is either front's response.

Pages of other origins that the front door lets in (``allow_origins``) may
load the files with ``import()`` and ``fetch`` (CORS: the reply names their
origin).  Such a page has no import map of its own, so ``/esm/<file>`` is
``/<file>`` with the web page's import map applied (``resolve_imports``): the
notebook widget (``gateway/static/widget.js``) imports the JS client and the
web UI's view from there, the gateway's own version of both.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from websockets.asyncio.server import ServerConnection as WebSocket
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State

from .config import Config
from .front import FIXES, FrontDoor
from .metrics import FrontMetrics

log = logging.getLogger("wirepipe")

#: The web UI's files.
STATIC = Path(__file__).parent / "static"
#: Under this prefix, the same files with the web page's import map applied to their imports.
ESM = "/esm/"
#: Files that pages of other origins may import (with ``--allow-origin``): the JS client and its
#: dependency, and under ``/esm/`` the web UI's files (the notebook widget's view and style).
CORS_PATHS = ("/client/", "/vendor/", ESM)


def client_dir() -> Path:
    """The JS client's sources: packaged as ``gateway/_jsclient``, or in a source checkout."""
    packaged = Path(__file__).parent / "_jsclient"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "clients" / "js" / "src"


@dataclass(frozen=True)
class Reply:
    """An HTTP response of either front, before it is one of websockets' or of ASGI."""

    status: HTTPStatus
    body: bytes
    ctype: str = "text/plain; charset=utf-8"
    #: Headers beyond the ones every reply gets (``Content-Type``, ``Content-Length``, ...).
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: HTTPStatus, text: str, *headers: tuple[str, str]) -> Reply:
        return cls(status, text.encode(), "text/plain; charset=utf-8", headers)

    def header_list(self) -> list[tuple[str, str]]:
        """Every header of the reply, in order."""
        return [
            ("Content-Type", self.ctype),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            *self.headers,
        ]


class Admitted(Protocol):
    """A WebSocket that holds a slot of ``max_connections``: websockets' own, or the ASGI front's."""

    @property
    def state(self) -> State: ...


class HttpFront:
    """Answers HTTP requests and lets WebSocket handshakes in (or not), for both fronts.

    The native front (websockets) calls ``process_request``; the ASGI front
    (``gateway/http_api.py``, ``gateway/asgi_ws.py``) calls ``admit_upgrade``
    and ``route`` itself: the same rules, the same files, one set of slots.
    """

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
        self._admitted: set[Admitted] = set()  # handshakes let in, for max_connections

    def process_request(self, ws: WebSocket, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            refused = self.admit_upgrade(request.headers, path, ws)
            return None if refused is None else _response(refused)
        refused = self.refuse(request.headers, path)
        return _response(refused if refused is not None else self.route(path, request.headers.get("Origin")))

    def refuse(self, headers: Mapping[str, str], path: str, *, upgrade: bool = False) -> Reply | None:
        """The front door's 403 for a request with these headers, or None to let it in (``FrontDoor``)."""
        refusal = self.front.refusal(headers)
        if refusal is None:
            return None
        # once, at INFO: a hostile page can cause these at will.  No query
        # string (it may hold ?auth=), no headers but the two judged.
        log.info(
            "refused %s %.200s: %s (Origin %.200r, Host %.200r); %s",
            "WebSocket handshake to" if upgrade else "HTTP request for",
            path,
            refusal,
            headers.get("Origin"),
            headers.get("Host"),
            FIXES.get(refusal, ""),
        )
        return Reply.text(HTTPStatus.FORBIDDEN, f"{refusal}\n")

    def admit_upgrade(self, headers: Mapping[str, str], path: str, ws: Admitted) -> Reply | None:
        """Let a WebSocket handshake in (None: ``ws`` holds a slot now), or the reply that refuses it.

        403 from the front door, 503 while the gateway closes or when
        ``max_connections`` are open.
        """
        refused = self.refuse(headers, path, upgrade=True)
        if refused is not None:
            self.metrics.refuse("forbidden")
            return refused
        if self._closing():
            self.metrics.refuse("closing")
            return Reply.text(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        return self._admit(ws)

    def route(self, path: str, origin: str | None = None) -> Reply:
        """The answer to an HTTP request the front door let in: a route, a file, or 404.

        ``origin`` is the request's ``Origin``.  The JS client (``/client/``)
        and its vendored dependency (``/vendor/``) are ES modules, which a
        browser fetches with CORS, and so are the web UI's files under
        ``/esm/`` (the notebook widget imports them): their replies carry
        ``Access-Control-Allow-Origin`` for that origin (the front door let
        it in: the gateway's own pages, or ``allow_origins``), so that a page
        of another origin can import them.
        """
        if path.startswith(CORS_PATHS):
            reply = self._route(path)
            cors = (("Access-Control-Allow-Origin", origin),) if origin is not None else ()
            return replace(reply, headers=(*reply.headers, *cors, ("Vary", "Origin")))
        return self._route(path)

    def _route(self, path: str) -> Reply:
        if path == "/healthz":
            return Reply.text(HTTPStatus.OK, "ok\n")
        if path == "/apps":  # the names hello.start accepts, for start forms
            names = json.dumps({"apps": self._apps()}).encode()
            return Reply(HTTPStatus.OK, names, "application/json")
        if path == "/metrics":
            return Reply(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if not self.config.serve_ui:
            return Reply.text(HTTPStatus.NOT_FOUND, "not found\n")
        return static(path)

    def _admit(self, ws: Admitted) -> Reply | None:
        """Let a WebSocket handshake in, or answer 503 when ``max_connections`` are open.

        A connection holds its slot from here until it starts closing (a
        client whose close handshake is done has freed it).  This runs
        synchronously up to the 101 response, so two handshakes never race
        for the last slot.  Connections leave the set when their handler
        ends (``release``); those that closed without one (a handshake that
        failed after this) are swept out when the set is full.  Both fronts
        share the slots.
        """
        if len(self._admitted) >= self.config.max_connections:
            self._admitted = {c for c in self._admitted if c.state in (State.CONNECTING, State.OPEN)}
        if len(self._admitted) >= self.config.max_connections:
            log.info("refused a WebSocket handshake: %d connections open (--max-connections)", len(self._admitted))
            self.metrics.refuse("capacity")
            return Reply.text(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n", ("Retry-After", "1"))
        self._admitted.add(ws)
        return None

    def release(self, ws: Admitted) -> None:
        """``ws``'s handler ended: its slot is free."""
        self._admitted.discard(ws)


def _response(reply: Reply) -> Response:
    """``reply`` as websockets' response (the native front)."""
    return Response(reply.status.value, reply.status.phrase, Headers(reply.header_list()), reply.body)


def static(path: str) -> Reply:
    """A file of the web UI or the JS client, or 404; never raises.

    Under ``/esm/``, the same file, a module with the web page's import map
    applied to its imports (``resolve_imports``).  Paths are not
    percent-decoded (no served file needs it), so ``%2e%2e`` is a name, not
    a parent.  A NUL, raw or as ``%00``, is a bad request;
    a name the filesystem refuses (a component over 255 bytes) is not found.
    """
    if "\x00" in path or "%00" in path:
        return Reply(HTTPStatus.BAD_REQUEST, b"bad request\n", "text/plain")
    if path.startswith(ESM):
        inner = "/" + path[len(ESM) :]
        reply = _file(inner)
        if reply.status is not HTTPStatus.OK or not reply.ctype.startswith("text/javascript"):
            return reply
        body = resolve_imports(reply.body.decode("utf-8"), inner.lstrip("/"), import_map())
        return Reply(HTTPStatus.OK, body.encode("utf-8"), reply.ctype)
    return _file(path)


def _file(path: str) -> Reply:
    """The file at ``path`` of the web UI or, under ``/client/``, of the JS client; or 404."""
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
        return Reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix in (".js", ".mjs"):
        ctype = "text/javascript"
    if ctype.startswith("text/"):
        ctype += "; charset=utf-8"
    return Reply(HTTPStatus.OK, target.read_bytes(), ctype)


# --- the import map, for pages that have none -------------------------------------------------

_IMPORT_MAP = re.compile(r"<script\s+type=[\"']?importmap[\"']?\s*>(.*?)</script>", re.DOTALL | re.IGNORECASE)
# A module specifier in a static import or export, or a literal import(): the quote and the text.
_SPECIFIER = re.compile(r"""(\bfrom\s*|\bimport\s*\(?\s*)(['"])([^'"\s]+)\2""")


def import_map() -> dict[str, str]:
    """The web page's import map (``index.html``): bare specifier -> file path from the UI's root.

    Read on each call (it is small, and a checkout's page may change under
    a running gateway); an absent or unreadable map is empty.
    """
    try:
        match = _IMPORT_MAP.search((STATIC / "index.html").read_text("utf-8"))
        imports = json.loads(match.group(1)).get("imports", {}) if match else {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v.removeprefix("./").lstrip("/") for k, v in imports.items() if isinstance(v, str)}


def resolve_imports(source: str, module: str, imports: Mapping[str, str]) -> str:
    """``source`` (the module at path ``module`` from the root) with its bare specifiers resolved.

    A specifier that ``imports`` maps (exactly, or by its longest key that
    ends in ``/``) becomes a path relative to the module, so it resolves
    the same under any mount; relative and absolute ones, and bare ones
    the map lacks, stay as they are.
    """

    def resolve(m: re.Match[str]) -> str:
        spec = m.group(3)
        if spec.startswith((".", "/")) or ":" in spec:
            return m.group(0)
        if spec in imports:
            target = imports[spec]
        else:
            prefixes = [k for k in imports if k.endswith("/") and spec.startswith(k)]
            if not prefixes:
                return m.group(0)
            key = max(prefixes, key=len)
            target = imports[key] + spec[len(key) :]
        rel = posixpath.relpath(target, posixpath.dirname(module) or ".")
        return f"{m.group(1)}{m.group(2)}{rel if rel.startswith('.') else './' + rel}{m.group(2)}"

    return _SPECIFIER.sub(resolve, source)
