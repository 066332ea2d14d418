"""The gateway: accept loop, sessions, static files, lifespan.

``Gateway`` is the one object a user makes::

    async with Gateway(host="127.0.0.1", port=0) as gw:
        pipe = gw.pipe("run-1")     # hand it to an agent
        print(gw.url)               # clients connect here

Closing it (leaving the ``async with``) tells every client ``shutdown``,
closes them with 1001, then stops; closing twice is harmless.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import mimetypes
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from protocol import (
    DEFAULT_MAX_FRAME,
    SUBPROTOCOL,
    ErrorCode,
    Grant,
    ProtocolError,
    RunState,
    StoreUnavailable,
)

from .connection import Connection
from .front import FrontDoor, is_loopback, redacting_logger
from .metrics import Metrics
from .pipe import WebPipe
from .sessions import Limits, Session, _on_loop
from .stores import MemoryStore, Store

log = logging.getLogger("wirepipe")

#: An app: ``async def app(pipe, input)`` (or a plain function, run in a thread).
App = Callable[[WebPipe, Any], Any]
#: An auth hook: ``(credential, sid) -> "viewer" | "operator" | None`` (may be async).
Auth = Callable[[str | None, str], "str | None | Awaitable[str | None]"]

STATIC = Path(__file__).parent / "static"
#: Seconds ``close()`` gives the store to release its connections.
STORE_CLOSE_TIMEOUT = 1.0


def _client_dir() -> Path:
    """The JS client's sources: packaged as ``gateway/_jsclient``, or in a source checkout."""
    packaged = Path(__file__).parent / "_jsclient"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "clients" / "js" / "src"


@dataclass(frozen=True)
class Config:
    """Limits and knobs; every one has a ``wirepipe serve`` flag."""

    max_frame: int = DEFAULT_MAX_FRAME
    handshake_timeout: float = 10.0
    heartbeat: float = 20.0
    compression: bool = True
    write_limit: int = 64 * 1024
    batch_max: int = 1000
    token_ttl: float = 24 * 3600.0
    #: What a client gets when there is no ``auth`` hook.  None: operator on a
    #: loopback bind, viewer on any other (where "no credentials" must not mean
    #: "anyone on the network may run code").  ``--insecure`` sets operator.
    default_grant: Grant | None = None
    wait_for_run: bool = True
    rate: float = 200.0
    burst: float = 400.0
    rate_strikes: int = 20
    serve_ui: bool = True
    close_timeout: float = 2.0
    #: Seconds a client may take no byte at all while the gateway has a frame
    #: for it before it is dropped (None: ``heartbeat``).  It comes back and
    #: resumes; a stalled socket never holds the gateway or its shutdown.
    stall_timeout: float | None = None
    #: Per session: events written and not yet stored (the store is down) before
    #: writes raise ``BacklogFull``, and their bytes.
    backlog_events: int = Limits.backlog_events
    backlog_bytes: int = Limits.backlog_bytes
    #: Per session: client ``send`` messages the agent has not taken, and their bytes.
    inbox_messages: int = Limits.inbox_messages
    inbox_bytes: int = Limits.inbox_bytes
    #: Seconds ``close()`` waits for sessions to store what they hold.
    drain_timeout: float = 5.0
    #: Origins (``scheme://host[:port]``) allowed besides the gateway's own;
    #: ``"*"`` allows every origin, ``"null"`` included (unsafe).  docs/security.md.
    allow_origins: tuple[str, ...] = ()
    #: Host names allowed besides loopback ones (``host`` or ``host:port``; ``"*"``:
    #: any).  On a non-loopback bind, Host is checked only when this is set.
    allow_hosts: tuple[str, ...] = ()
    #: Open WebSocket connections; the next handshake gets HTTP 503 + Retry-After.
    max_connections: int = 4096

    def __post_init__(self) -> None:
        # lists are accepted (Gateway(allow_origins=[...])); a frozen config holds tuples
        for name in ("allow_origins", "allow_hosts"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{name} takes a list of strings, not a string")
            object.__setattr__(self, name, tuple(value))
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


class Gateway:
    """A wirepipe gateway: a WebSocket server over a store of session logs.

    Raises (at construction):
        TypeError: both ``config`` and knobs, or a string for a list knob.
        ValueError: a malformed ``allow_origins`` / ``allow_hosts`` entry, or
            ``max_connections`` < 1.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        store: Store | None = None,
        secret: str | bytes | None = None,
        apps: dict[str, App] | None = None,
        auth: Auth | None = None,
        config: Config | None = None,
        **knobs: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.store: Store = store if store is not None else MemoryStore()
        if secret is None:
            secret = secrets.token_bytes(32)
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.apps: dict[str, App] = dict(apps or {})
        self.auth = auth
        if config is not None and knobs:
            raise TypeError(f"pass either config= or knobs ({', '.join(knobs)}), not both")
        self.config = config or Config(**knobs)
        self.front = FrontDoor.of(host, self.config.allow_origins, self.config.allow_hosts)
        self.metrics = Metrics()
        self._admitted: set[ServerConnection] = set()  # handshakes let in, for max_connections
        self._sessions: dict[str, Session] = {}
        self._pipes: dict[str, WebPipe] = {}  # the pipe of each session in _sessions
        self._born: dict[str, asyncio.Future[Session]] = {}  # sids clients wait for
        self._born_waiters: dict[str, int] = {}
        self._conns: set[Connection] = set()
        self._conns_changed = asyncio.Condition()
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._janitor: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # --- lifespan ---------------------------------------------------------------

    @property
    def default_grant(self) -> Grant:
        """What a client gets when there is no ``auth`` hook (``Config.default_grant``)."""
        if self.config.default_grant is not None:
            return self.config.default_grant
        return Grant.OPERATOR if is_loopback(self.host) else Grant.VIEWER

    async def start(self) -> Gateway:
        """Bind and start serving.  Returns self.

        Raises:
            OSError: the address cannot be bound.
        """
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        if self.auth is None and cfg.default_grant is None and not is_loopback(self.host):
            log.warning(
                "listening on %s with no operator credentials: every client is a viewer (it can "
                "watch, not start, answer or cancel runs).  Give operators a credential "
                "(--operator-token, or Gateway(auth=...)), or pass --insecure "
                "(Config(default_grant=Grant.OPERATOR)) to make every client an operator",
                self.host,
            )
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            # Over max_frame we answer too_big ourselves; websockets guards far beyond.
            max_size=max(cfg.max_frame * 4, cfg.max_frame + 65536),
            compression="deflate" if cfg.compression else None,
            ping_interval=cfg.heartbeat,
            ping_timeout=cfg.heartbeat,
            write_limit=cfg.write_limit,
            # after a fatal error, a client that does not read (so never
            # answers our close frame) is dropped after this, not 10 s
            close_timeout=cfg.close_timeout,
            server_header="wirepipe",
            # websockets logs request lines, headers and frame payloads at DEBUG:
            # ours redacts credentials from them (docs/security.md)
            logger=redacting_logger("wirepipe.ws"),
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        self._janitor = asyncio.create_task(self._sweep_forever(), name="wirepipe-janitor")
        self._watchdog = asyncio.create_task(self._watch_stalls(), name="wirepipe-watchdog")
        return self

    async def _watch_stalls(self) -> None:
        """Drop clients whose socket took no byte for ``stall_timeout``.

        websockets' own keepalive cannot: its ping waits behind the frame
        that does not drain.
        """
        cfg = self.config
        limit = cfg.stall_timeout if cfg.stall_timeout is not None else cfg.heartbeat
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(limit / 4)
            now = loop.time()
            for c in list(self._conns):
                since = c.sending_since
                if since is None:
                    c.stall_mark = None
                    continue
                # Progress is any byte the client took: a slow reader is not stalled.
                pending = c.ws.transport.get_write_buffer_size()
                mark = c.stall_mark
                if mark is None or mark[0] != pending or mark[1] < since:
                    c.stall_mark = mark = (pending, now)  # it moved (or a new frame): the clock restarts
                if now - mark[1] > limit:
                    log.info("dropping a client of %r that took no byte for %.1fs", c.sid, now - mark[1])
                    self.metrics.stalled += 1
                    c.ws.transport.abort()

    async def _sweep_forever(self) -> None:
        period = min(60.0, max(1.0, self.store.retention.ttl_after_end))
        while True:
            await asyncio.sleep(period)
            try:
                await self.sweep()
            except Exception as exc:  # the store is down: sweep again next period
                log.warning("janitor: sweep failed (%s: %s); trying again in %.0fs", type(exc).__name__, exc, period)

    async def sweep(self) -> int:
        """Forget ended runs whose logs the store has expired; returns how many.

        Only runs whose end is stored count: a run that ended before its log
        was even created is not forgotten until its log exists and expires.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """
        gone = [
            sid for sid, s in list(self._sessions.items())
            if s.finished and await self.store.info(sid) is None
        ]
        for sid in gone:
            s = self._sessions.get(sid)
            if s is not None and s.finished:  # not replaced by a new run meanwhile
                del self._sessions[sid]
                del self._pipes[sid]
        return len(gone)

    async def close(self) -> None:
        """Tell every client ``shutdown``, close them with 1001, stop runs, stop.  Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        for task in (self._janitor, self._watchdog):
            if task is not None:
                task.cancel()
        try:
            # Clients are told and closed (within close_timeout each) while the
            # runs stop and what they wrote last reaches the store (within
            # drain_timeout): the two bounds overlap, they do not add up.
            await asyncio.gather(
                asyncio.gather(*(c.shutdown() for c in list(self._conns)), return_exceptions=True),
                self._stop_runs(),
            )
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            for born in self._born.values():
                born.cancel()
            try:
                await asyncio.wait_for(self.store.close(), STORE_CLOSE_TIMEOUT)
            except Exception as exc:
                log.warning("closing: the store did not close cleanly: %s: %s", type(exc).__name__, exc)
        finally:
            self._closed.set()

    async def _stop_runs(self) -> None:
        """Cancel the runs, then give their final events ``drain_timeout`` to be stored."""
        for s in list(self._sessions.values()):
            if s.task is not None and not s.task.done():
                s.task.cancel()
        tasks = [s.task for s in self._sessions.values() if s.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        sessions = list(self._sessions.values())
        drains = [asyncio.ensure_future(s.drained()) for s in sessions]
        if drains:
            await asyncio.wait(drains, timeout=self.config.drain_timeout)
        for s, fut in zip(sessions, drains, strict=True):
            fut.cancel()
            if s.backlog or not s.writer.done():
                if s.backlog:
                    log.error("closing: session %s: %d events not stored (%s)",
                              s.sid, s.backlog, s.trouble or "the store did not answer")
                s.writer.cancel()
        await asyncio.gather(*(s.writer for s in sessions), return_exceptions=True)

    async def __aenter__(self) -> Gateway:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Run until cancelled (or until ``close``)."""
        if self._server is None:
            await self.start()
        await self._closed.wait()

    @property
    def url(self) -> str:
        """The ``ws://`` URL clients connect to."""
        return f"ws://{_hostport(self.host, self.port)}/"

    @property
    def http_url(self) -> str:
        """The ``http://`` URL of the web UI."""
        return f"http://{_hostport(self.host, self.port)}/"

    # --- sessions -----------------------------------------------------------------

    def pipe(self, sid: str) -> WebPipe:
        """The Pipe of session ``sid``: the open run's, or a new run's.

        A new run gets a new epoch; clients still on an ended run of the same
        sid are moved to it with a fresh ``welcome``.  Callable from any thread.

        Raises:
            ValueError: ``sid`` is not 1-128 chars of ``[A-Za-z0-9._:-]``.
            RuntimeError: the gateway is not started or is closing.
        """
        from protocol.codec import SID_RE

        if not SID_RE.fullmatch(sid):
            raise ValueError(f"invalid sid {sid!r}: 1-128 chars of [A-Za-z0-9._:-]")
        loop = self._loop
        if loop is None or self._closing:
            raise RuntimeError("the gateway is not running")
        if not _on_loop(loop):
            async def make() -> WebPipe:
                return self.pipe(sid)

            return asyncio.run_coroutine_threadsafe(make(), loop).result()
        s = self._sessions.get(sid)
        if s is None or s.ended:
            cfg = self.config
            limits = Limits(cfg.backlog_events, cfg.backlog_bytes, cfg.inbox_messages, cfg.inbox_bytes)
            s = Session(sid, self.store, loop, predecessor=s, limits=limits)
            self._pipes[sid] = WebPipe(s)
            self._sessions[sid] = s
            fut = self._born.pop(sid, None)
            if fut is not None and not fut.done():
                fut.set_result(s)
        return self._pipes[sid]

    def missing_log(self, sid: str) -> Exception:
        """What a client of ``sid`` gets when its log is not in the store.

        If this process runs the session, its log was lost (a store restarted
        without persistence) and is being re-created: retry soon.  Otherwise
        there is no such session.
        """
        s = self._sessions.get(sid)
        if s is not None and not s.finished:
            s.poke()
            return StoreUnavailable(f"the log of {sid!r} is being re-created")
        return ProtocolError(ErrorCode.NO_SESSION, f"no session {sid!r}")

    def local_session(self, sid: str, epoch: str) -> Session | None:
        s = self._sessions.get(sid)
        return s if s is not None and s.epoch == epoch else None

    async def await_session(self, sid: str, ws: ServerConnection) -> Session | None:
        """The session a new client of ``sid`` joins; waits for a run if there is none.

        Returns None for a log served from the store alone (its run is not
        in this process).

        Raises:
            ProtocolError: ``no_session`` when the gateway does not wait for runs.
            ConnectionClosed: the client left while waiting.
        """
        while True:
            s = self._sessions.get(sid)
            if s is not None:
                if not s.ready.done():
                    # The log is being created; if the store fails meanwhile, say
                    # so (a retryable close) instead of holding the client.
                    trouble: asyncio.Future[Any] = asyncio.ensure_future(s.troubled.wait())
                    ready: asyncio.Future[Any] = s.ready
                    try:
                        await asyncio.wait({ready, trouble}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        trouble.cancel()
                    if not s.ready.done():
                        raise StoreUnavailable(f"the store cannot be reached: {s.trouble}")
                await s.ready
                return s
            if await self.store.info(sid) is not None:
                return None
            if not self.config.wait_for_run:
                raise ProtocolError(ErrorCode.NO_SESSION, f"no session {sid!r}")
            fut = self._born.get(sid)
            if fut is None or fut.done():
                fut = self._born[sid] = asyncio.get_running_loop().create_future()
            closed: asyncio.Future[Any] = asyncio.ensure_future(ws.wait_closed())
            waiting: set[asyncio.Future[Any]] = {fut, closed}
            self._born_waiters[sid] = self._born_waiters.get(sid, 0) + 1
            try:
                # A run started here resolves fut; one started on another node
                # sharing the store shows up in the store: look again now and then.
                await asyncio.wait(waiting, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                left = self._born_waiters[sid] - 1
                if left:
                    self._born_waiters[sid] = left
                else:  # nobody waits for this sid any more: forget it
                    del self._born_waiters[sid]
                    if self._born.get(sid) is fut and not fut.done():
                        del self._born[sid]
            if closed.done():
                await ws.recv()  # raises ConnectionClosed: the client left

    def start_run(self, sid: str, app_name: str, value: Any) -> WebPipe:
        """Start a run of the registered app ``app_name`` under ``sid``.

        Raises:
            ProtocolError: ``no_app`` if no such app, ``sid_taken`` if ``sid``
                has a run that has not ended.
        """
        app = self.apps.get(app_name)
        if app is None:
            raise ProtocolError(ErrorCode.NO_APP, f"no app {app_name!r}")
        s = self._sessions.get(sid)
        if s is not None and not s.ended:
            raise ProtocolError(ErrorCode.SID_TAKEN, f"sid {sid!r} already has a run")
        pipe = self.pipe(sid)
        session = self._sessions[sid]
        session.task = asyncio.ensure_future(self._run_app(app, pipe, value))
        self.metrics.runs_started += 1
        return pipe

    async def _run_app(self, app: App, pipe: WebPipe, value: Any) -> None:
        pipe.emit("status", {"state": RunState.RUNNING})
        try:
            if inspect.iscoroutinefunction(app):
                await app(pipe, value)
            else:
                result = await asyncio.to_thread(app, pipe, value)
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            pipe.close(RunState.CANCELLED, detail=pipe.cancel_reason or "cancelled")
            return
        except Exception as exc:
            log.exception("app run %s failed", pipe.sid)
            pipe.close(RunState.FAILED, detail=_public_detail(exc))
            return
        if pipe.cancelled.is_set():
            pipe.close(RunState.CANCELLED, detail=pipe.cancel_reason or "cancelled")
        else:
            pipe.close(RunState.DONE)

    def drop_connections(self, sid: str | None = None) -> int:
        """Abort the TCP connections of ``sid`` (all if None), abruptly.  For tests and ops."""
        n = 0
        for c in list(self._conns):
            if sid is None or c.sid == sid:
                c.ws.transport.abort()
                n += 1
        return n

    # --- serving --------------------------------------------------------------------

    def _admit(self, ws: ServerConnection) -> Response | None:
        """Let a WebSocket handshake in, or answer 503 when ``max_connections`` are open.

        A connection holds its slot from here until it starts closing (a
        client whose close handshake is done has freed it).  This runs
        synchronously up to the 101 response, so two handshakes never race
        for the last slot.
        """
        self._admitted = {c for c in self._admitted if c.state in (State.CONNECTING, State.OPEN)}
        if len(self._admitted) >= self.config.max_connections:
            log.info("refused a WebSocket handshake: %d connections open (--max-connections)",
                     len(self._admitted))
            response = ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            response.headers["Retry-After"] = "1"
            return response
        self._admitted.add(ws)
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        conn = Connection(self, ws)
        self._conns.add(conn)
        self.metrics.connections_total += 1
        self.metrics.connections_open += 1
        async with self._conns_changed:
            self._conns_changed.notify_all()
        try:
            await conn.serve()
        finally:
            self._conns.discard(conn)
            self.metrics.connections_open -= 1
            async with self._conns_changed:
                self._conns_changed.notify_all()

    async def wait_connections(self, pred: Callable[[int], bool]) -> None:
        """Return once ``pred(number of open client connections)`` is true.

        ``await gw.wait_connections(lambda n: n == 0)``: for operators draining
        a node before a deploy, and for tests.
        """
        async with self._conns_changed:
            await self._conns_changed.wait_for(lambda: pred(len(self._conns)))

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        refusal = self.front.refusal(request.headers)
        if refusal is not None:
            # once, at INFO: a hostile page can cause these at will.  No query
            # string (it may hold ?auth=), no headers but the two judged.
            log.info(
                "refused %s %.200s: %s (Origin %.200r, Host %.200r)",
                "WebSocket handshake to" if upgrade else "HTTP request for",
                path, refusal, request.headers.get("Origin"), request.headers.get("Host"),
            )
            return ws.respond(HTTPStatus.FORBIDDEN, f"{refusal}\n")
        if upgrade:
            if self._closing:
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
            return self._admit(ws)
        if path == "/healthz":
            return ws.respond(HTTPStatus.OK, "ok\n")
        if path == "/apps":  # the names hello.start accepts, for start forms
            names = json.dumps({"apps": sorted(self.apps)}).encode()
            return _response(HTTPStatus.OK, names, "application/json")
        if path == "/metrics":
            body = self.metrics.render({"wirepipe_sessions": len(self._sessions)})
            return _response(HTTPStatus.OK, body.encode(), "text/plain; version=0.0.4")
        if not self.config.serve_ui:
            return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return _static(path)


def _public_detail(exc: BaseException) -> str:
    """What clients see of a failed run: the type and the first line, short.

    The full text (which may quote inputs, configs or environments) stays in
    the gateway's log.
    """
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _select_subprotocol(
    ws: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """``wirepipe.v1`` if offered; none offered is v1 too; only unknown ones: HTTP 400."""
    if not offered:
        return None
    if SUBPROTOCOL in offered:
        return Subprotocol(SUBPROTOCOL)
    raise NegotiationError(f"unsupported subprotocols {', '.join(offered)}; this is {SUBPROTOCOL}")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _response(status: HTTPStatus, body: bytes, ctype: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = ctype
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-cache"
    headers["X-Content-Type-Options"] = "nosniff"
    return Response(status.value, status.phrase, headers, body)


def _static(path: str) -> Response:
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
        root, rel = _client_dir(), path[len("/client/") :]
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
