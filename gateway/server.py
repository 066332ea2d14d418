"""The gateway: its lifespan, and the pieces it is made of.

``Gateway`` is the one object a user makes::

    async with Gateway(host="127.0.0.1", port=0) as gw:
        pipe = gw.pipe("run-1")     # hand it to an agent
        print(gw.url)               # clients connect here

It owns the listening socket (``Config.front``: uvicorn for HTTP with
websockets' connection for each WebSocket, ``gateway/uvicorn_front.py``; or
websockets' server alone) and the life of everything else, and composes
the pieces, each in its own module:

- ``Runs`` (``gateway/runs.py``): the sessions written here and the apps run;
- ``HttpFront`` (``gateway/http_front.py``): the front door, the connection
  cap and the HTTP routes (health, apps, metrics, the web UI);
- ``Connection`` (``gateway/connection.py``): one WebSocket client, which
  gets ``Services``, what it needs of the gateway and nothing else;
- ``Metrics`` (``gateway/metrics.py``): plain counters, which the
  ``Exporter`` (``gateway/exporter.py``) of the gateway's own registry
  reads when ``/metrics`` is scraped;
- three watchers of its own: the janitor (forgets expired runs), the stall
  watchdog (drops clients that take no byte) and the heartbeat (pings every
  client, drops those that do not answer: ``gateway/heartbeat.py``).

Closing it (leaving the ``async with``) tells every client ``shutdown`` and
closes them with 1001 while the runs stop and their last events are stored,
then stops; closing twice is harmless.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, serve
from websockets.asyncio.server import ServerConnection as WebSocket
from websockets.exceptions import NegotiationError
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from protocol import SUBPROTOCOL, Grant

from .compression import LeanDeflateFactory
from .config import App, Auth, Config
from .connection import BATCH_BYTES, Connection, Services, Socket
from .exporter import Exporter
from .feed import Feeds
from .front import FrontDoor, is_loopback, redacting_logger
from .heartbeat import TICK, Heartbeat
from .http_front import HttpFront
from .metrics import Metrics
from .middleware import Middleware
from .pipe import WebPipe
from .runs import Runs
from .stores import MemoryStore, Store, leases_of

if TYPE_CHECKING:
    from .http_api import HttpApi
    from .uvicorn_front import UvicornFront

log = logging.getLogger("wirepipe")

__all__ = ["App", "Auth", "Config", "Gateway", "tune_gc"]

#: Seconds ``close()`` gives the store to release its connections.
STORE_CLOSE_TIMEOUT = 1.0


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
        port: int | None = 8765,
        *,
        store: Store | None = None,
        secret: str | bytes | None = None,
        apps: Mapping[str, App] | None = None,
        auth: Auth | None = None,
        config: Config | None = None,
        middleware: Sequence[Middleware] = (),
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
        #: Every event and client request passes these, in order (docs/middleware.md).
        self.middleware = tuple(middleware)
        self.runs = Runs(self.store, self.config, self.apps, self.metrics, self.middleware)
        #: The one reader of each watched session's log here (``gateway/feed.py``).
        self.feeds = Feeds(
            self.store,
            max_events=self.config.feed_events,
            max_bytes=self.config.feed_bytes,
            batch_max=self.config.batch_max,
            batch_bytes=BATCH_BYTES,
        )
        #: What ``/metrics`` serves: this gateway's alone (docs/metrics.md).
        self.registry = Exporter(
            self.metrics, lambda: self.runs.sessions.values(), lambda: len(self.feeds), self.store
        ).registry()
        self.http = HttpFront(
            self.config,
            self.front,
            self.metrics.ws,
            self.registry,
            apps=lambda: sorted(set(self.apps) | set(self.runs.remote_apps)),
            closing=lambda: self._closing,
        )
        self._services = Services(
            self.config,
            self.store,
            self.runs,
            self.metrics.ws,
            self.secret,
            self.auth,
            self.default_grant,
            self.feeds,
            self.middleware,
            gone=self._gone,
        )
        self._conns: set[Connection] = set()
        #: Set (and dropped) when ``_conns`` changes; made when ``wait_connections`` waits.
        self._conns_changed: asyncio.Event | None = None
        #: Pings every client (websockets' per-connection keepalive is off).
        self.heartbeat = Heartbeat(self.config.heartbeat, self.metrics.ws)
        self._server: Server | None = None
        #: uvicorn, with the ``uvicorn`` front (``gateway/uvicorn_front.py``).
        self._uvicorn: UvicornFront | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._janitor: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._asgi: HttpApi | None = None

    @property
    def default_grant(self) -> Grant:
        """What a client gets when there is no ``auth`` hook (``Config.default_grant``)."""
        if self.config.default_grant is not None:
            return self.config.default_grant
        return Grant.OPERATOR if is_loopback(self.host) else Grant.VIEWER

    # --- lifespan ---------------------------------------------------------------

    async def start(self) -> Gateway:
        """Bind and start serving.  Returns self.

        Raises:
            OSError: the address cannot be bound.
        """
        self.runs.loop = asyncio.get_running_loop()  # also: the gateway is started
        share_attribute_names()
        cfg = self.config
        if self.auth is None and cfg.default_grant is None and not is_loopback(self.host):
            log.warning(
                "listening on %s with no operator credentials: every client is a viewer (it can "
                "watch, not start, answer or cancel runs).  Give operators a credential "
                "(--operator-token, or Gateway(auth=...)), or pass --insecure "
                "(Config(default_grant=Grant.OPERATOR)) to make every client an operator",
                self.host,
            )
        if self.port is not None:
            await self._listen(self.port)
        try:
            await self.runs.refresh_apps()  # the apps workers run, for /apps (the janitor keeps it fresh)
        except Exception as exc:
            log.warning("cannot learn the apps workers run yet: %s: %s", type(exc).__name__, exc)
        self._janitor = asyncio.create_task(self._sweep_forever(), name="wirepipe-janitor")
        self._watchdog = asyncio.create_task(self._watch_stalls(), name="wirepipe-watchdog")
        self._heartbeat = asyncio.create_task(self.heartbeat.run(), name="wirepipe-heartbeat")
        return self

    def _websocket_options(self) -> dict[str, Any]:
        """websockets' options for a client of either front that uses its connection (``front``)."""
        cfg = self.config
        return {
            "subprotocols": [Subprotocol(SUBPROTOCOL)],
            "select_subprotocol": _select_subprotocol,
            "process_request": self.http.process_request,
            # Over max_frame we answer too_big ourselves; websockets guards far beyond.
            "max_size": max(cfg.max_frame * 4, cfg.max_frame + 65536),
            # permessage-deflate without zlib state between messages (gateway/compression.py)
            "compression": None,
            "extensions": [LeanDeflateFactory()] if cfg.compression else None,
            # one heartbeat task for all clients (self.heartbeat), not a keepalive task each
            "ping_interval": None,
            "ping_timeout": None,
            "write_limit": cfg.write_limit,
            # after a fatal error, a client that does not read (so never
            # answers our close frame) is dropped after this, not 10 s
            "close_timeout": cfg.close_timeout,
            "server_header": "wirepipe",
            # websockets logs request lines, headers and frame payloads at DEBUG:
            # ours redacts credentials from them (docs/security.md)
            "logger": redacting_logger("wirepipe.ws"),
        }

    async def _listen(self, port: int) -> None:
        """Bind ``host:port`` with ``Config.front``: uvicorn and websockets (one origin), or websockets alone."""
        options = self._websocket_options()
        if self.config.front == "websockets":
            self._server = await serve(self._handler, self.host, port, **options)
            sock = next(iter(self._server.sockets))
        else:
            from .uvicorn_front import UvicornFront  # uvicorn and Starlette: not imported by ``import gateway``

            # websockets' Server, listening on nothing: its handler runs each
            # upgrade uvicorn hands over (the handshake, then ours); closing it
            # closes those clients and waits for their handlers.
            server = serve(self._handler, **options)
            self._uvicorn = UvicornFront(
                self.asgi(), websocket_connection(server, options), max_connections=self.config.max_connections
            )
            server.server = listener = await self._uvicorn.start(self.host, port)
            self._server = server  # once it has a listener: close() closes both
            sock = next(iter(listener.sockets))
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        """Tell every client ``shutdown``, close them with 1001, stop runs, stop.  Idempotent.

        It ends within ``max(close_timeout, drain_timeout)`` plus a second
        for the store, whatever the clients and the store do.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.runs.closing = True
        for task in (self._janitor, self._watchdog, self._heartbeat):
            if task is not None:
                task.cancel()
        try:
            # Clients are told and closed (within close_timeout each) while the
            # runs stop and what they wrote last reaches the store (within
            # drain_timeout): the two bounds overlap, they do not add up.
            await asyncio.gather(
                asyncio.gather(*(c.shutdown() for c in list(self._conns)), return_exceptions=True),
                self.runs.stop(),
            )
            if self._uvicorn is not None:
                # the SSE streams end (their clients resume elsewhere), HTTP connections close
                if self._asgi is not None:
                    self._asgi.drop_streams()
                await self._uvicorn.close(self.config.close_timeout)
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            await self.feeds.close()
            try:
                await asyncio.wait_for(self.store.close(), STORE_CLOSE_TIMEOUT)
            except Exception as exc:
                log.warning("closing: the store did not close cleanly: %s: %s", type(exc).__name__, exc)
        finally:
            self._closed.set()

    async def __aenter__(self) -> Gateway:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Run until cancelled (or until ``close``)."""
        if self.runs.loop is None:  # not started
            await self.start()
        await self._closed.wait()

    @property
    def url(self) -> str:
        """The ``ws://`` URL clients connect to.

        Raises:
            RuntimeError: ``port=None``: the gateway listens on nothing (mounted: ``asgi()``).
        """
        return f"ws://{self._address()}/"

    @property
    def http_url(self) -> str:
        """The ``http://`` URL of the web UI (raises as ``url`` does)."""
        return f"http://{self._address()}/"

    def _address(self) -> str:
        if self.port is None:
            raise RuntimeError("this gateway listens on no port (port=None): its clients come through gw.asgi()")
        return _hostport(self.host, self.port)

    # --- runs ---------------------------------------------------------------------

    def pipe(self, sid: str) -> WebPipe:
        """The Pipe of session ``sid``: the open run's, or a new run's.

        A new run gets a new epoch; clients still on an ended run of the same
        sid are moved to it with a fresh ``welcome``.  Callable from any thread.

        Raises:
            ValueError: ``sid`` is not 1-128 chars of ``[A-Za-z0-9._:-]``.
            RuntimeError: the gateway is not started or is closing.
        """
        return self.runs.pipe(sid)

    def start_run(self, sid: str, app_name: str, value: Any) -> WebPipe:
        """Start a run of the registered app ``app_name`` under ``sid``.

        Raises:
            ProtocolError: ``no_app`` if no such app, ``sid_taken`` if ``sid``
                has a run that has not ended.
        """
        return self.runs.start_run(sid, app_name, value)

    def asgi(self) -> HttpApi:
        """The whole gateway as an ASGI app, made once (docs/http.md).

        The WebSocket protocol at any path of the mount (``gateway/asgi_ws.py``),
        REST and SSE under ``/api/v1``, and the native front's routes: the web
        UI, ``/client/``, ``/metrics``, ``/healthz``, ``/apps``.

        Mount it in FastAPI or Starlette and start the gateway in the host
        app's lifespan::

            gw = Gateway(apps={"demo": demo})

            @asynccontextmanager
            async def lifespan(app):
                async with gw:
                    yield

            app = Starlette(lifespan=lifespan)      # or FastAPI(lifespan=lifespan)
            app.mount("/agents", gw.asgi())

        The gateway's own port serves it too, with the default front
        (``Config.front="uvicorn"``); give ``port=None`` to listen only
        through the mount.
        """
        if self._asgi is None:
            from .http_api import HttpApi  # Starlette: only for those who use it

            self._asgi = HttpApi(self)
        return self._asgi

    async def sweep(self) -> int:
        """Forget ended runs whose logs the store has expired; returns how many."""
        return await self.runs.sweep()

    async def reap(self) -> int:
        """End the runs whose writer's lease lapsed, on any node (stores with leases); returns how many."""
        return await self.runs.reap()

    async def _sweep_forever(self) -> None:
        period = min(60.0, max(1.0, self.store.retention.ttl_after_end))
        leases = leases_of(self.store)
        if leases is not None and leases.lease_ttl is not None:
            # a dead writer's run is ended within about two lease periods
            period = min(period, leases.lease_ttl / 2)
        while True:
            await asyncio.sleep(period)
            for job in (self.runs.sweep, self.runs.reap, self.runs.refresh_apps):
                try:
                    await job()
                except Exception as exc:  # the store is down: again next period
                    log.warning(
                        "janitor: %s failed (%s: %s); trying again in %.1fs",
                        job.__name__,
                        type(exc).__name__,
                        exc,
                        period,
                    )

    # --- connections ------------------------------------------------------------------

    def _handler(self, ws: WebSocket) -> Awaitable[None]:
        """websockets' handler: the new client's ``Connection.serve``, which websockets awaits.

        A function that returns that coroutine, not a coroutine that awaits
        it: every idle client would keep this frame too (a quarter of a kB).
        The connection says when it is gone (``Services.gone``: ``_gone``).
        """
        forget_handshake(ws)
        return self.connected(Connection, ws).serve()

    def connected(self, kind: type[Connection], ws: Socket) -> Connection:
        """A client of either front is in: its ``Connection`` (of ``kind``), counted and known.

        The native front's is a ``Connection`` over websockets' connection;
        the ASGI front's an ``AsgiConnection`` over an ``AsgiSocket``
        (``gateway/asgi_ws.py``).  Both count as ``front="ws"``.
        """
        conn = kind(self._services, ws, beat=self.heartbeat.slot())
        self._conns.add(conn)
        self.heartbeat.add(conn)
        self.metrics.ws.connections_total += 1
        self.metrics.ws.connections_open += 1
        self._changed_conns()
        return conn

    def _gone(self, conn: Connection) -> None:
        self._conns.discard(conn)
        self.heartbeat.discard(conn)
        self.http.release(conn.ws)
        self.metrics.ws.connections_open -= 1
        self._changed_conns()

    def _changed_conns(self) -> None:
        changed, self._conns_changed = self._conns_changed, None
        if changed is not None:
            changed.set()

    async def wait_connections(self, pred: Callable[[int], bool]) -> None:
        """Return once ``pred(number of open client connections)`` is true.

        ``await gw.wait_connections(lambda n: n == 0)``: for operators draining
        a node before a deploy, and for tests.
        """
        while not pred(len(self._conns)):
            if self._conns_changed is None:
                self._conns_changed = asyncio.Event()
            await self._conns_changed.wait()

    def drop_connections(self, sid: str | None = None) -> int:
        """Abort the TCP connections of ``sid`` (all if None), abruptly.  For tests and ops."""
        n = 0
        for c in list(self._conns):
            if sid is None or c.sid == sid:
                c.ws.transport.abort()
                n += 1
        return n

    async def _watch_stalls(self) -> None:
        """Drop clients whose socket took no byte for ``stall_timeout`` while it had bytes for them.

        The heartbeat cannot: its ping waits behind the frame that does not
        drain (and it leaves such clients to this watchdog).
        """
        limit = self.config.stall_limit
        if limit is None:
            return
        loop = asyncio.get_running_loop()
        # Every client is looked at once a round of ``limit / 4`` seconds, a
        # slice of them every ``TICK`` (as the heartbeat pings): no look at
        # thousands of clients at once, which would hold every event meanwhile.
        period = limit / 4
        ticks = max(1, int(period / TICK))
        round_: list[Connection] = []
        at = step = 0
        while True:
            await asyncio.sleep(period / ticks)
            if at >= len(round_):
                round_, at = list(self._conns), 0
                step = -(-len(round_) // ticks)  # ceil: the round ends within its ticks
            now = loop.time()
            conns = self._conns
            for c in round_[at : at + step]:
                if c not in conns:  # gone since the round began
                    continue
                since = c.sending_since
                # Bytes wait in the socket with no send waiting on them when
                # frames were pushed (Connection.push) and nothing followed.
                pending = c.ws.transport.get_write_buffer_size()
                if since is None and not pending:
                    c.stall_mark = None
                    continue
                # Progress is any byte the client took: a slow reader is not stalled.
                mark = c.stall_mark
                if mark is None or mark[0] != pending or (since is not None and mark[1] < since):
                    c.stall_mark = mark = (pending, now)  # it moved (or a new frame): the clock restarts
                if now - mark[1] > limit:
                    log.info("dropping a client of %r that took no byte for %.1fs", c.sid, now - mark[1])
                    self.metrics.ws.stalled += 1
                    c.ws.transport.abort()
            at += step


#: ``tune_gc``'s collection thresholds (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Tune Python's garbage collector for a long-running gateway (``wirepipe serve`` does this).

    Call it once the process has started (imports done, gateway listening):
    what exists then is moved out of the collector's way (``gc.freeze``),
    and young objects are collected less often (``GC_THRESHOLDS``).  A busy
    gateway allocates many short-lived objects; with the defaults the full
    collections that follow took 100 ms and more with 500 sessions on Redis
    (the latency tail of ``python -m bench.scale``), and about 15 ms after.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def forget_handshake(ws: WebSocket) -> None:
    """Drop what websockets keeps of a finished opening handshake and nothing reads again.

    Each connection keeps its request and response (``ws.request``,
    ``ws.response``) for its whole life; their headers were a quarter of an
    idle connection's memory.  They are emptied in place (the objects stay,
    for whoever reads ``ws.request.path``).  The front door read what it
    needed before the upgrade (``HttpFront.process_request``).  The
    per-connection closure through which websockets calls
    ``_select_subprotocol`` goes too: the protocol falls back to its own
    method, which nothing calls after the handshake.
    """
    for message in (ws.request, ws.response):
        if message is not None:
            message.headers.clear()
    try:  # delattr, not vars(): that would give the protocol a dict of its own, a kB
        delattr(ws.protocol, "select_subprotocol")
    except AttributeError:  # websockets put none there (a later version)
        pass


#: The attributes websockets gives a connection in ``connection_made``, a loop turn after making it.
LATE_ATTRIBUTES = ("transport", "recv_messages")


def share_attribute_names() -> None:
    """Let every websockets connection of this process keep its attributes inline.

    CPython 3.11 keeps an object's attributes in an array beside a table of
    names shared by its class, but the table takes new names only while the
    class has few instances: a name that did not get in gives each object
    that sets it a dict of its own (1.3 kB more per websockets connection).
    websockets sets two attributes in ``connection_made``, a loop turn after
    the connection object is made; when the first clients of the process come
    in a burst (a gateway restarted under its clients' reconnections), three
    connections are made before that turn, the table closes without those two
    names, and every connection after pays the dict: 12% more memory per idle
    client in one run of ``python -m bench --only idle`` in four.  An object
    that sets them before any connection exists puts them in the table.  On
    other Pythons, or once the process has had connections, this does nothing.
    """
    probe = WebSocket.__new__(WebSocket)
    for name in LATE_ATTRIBUTES:
        setattr(probe, name, None)


def websocket_connection(server: Server, options: dict[str, Any]) -> Callable[[], WebSocket]:
    """What ``serve(**options)`` makes for each TCP connection: websockets' connection of ``server``.

    For the ``uvicorn`` front, which hands it each upgrade (``gateway/uvicorn_front.py``);
    ``serve`` keeps its own factory to itself.
    """
    select = options["select_subprotocol"]

    def connection() -> WebSocket:
        conn: WebSocket
        protocol = ServerProtocol(
            extensions=options["extensions"],
            subprotocols=options["subprotocols"],
            select_subprotocol=lambda _protocol, offered: select(conn, offered),
            max_size=options["max_size"],
            logger=options["logger"],
        )
        conn = WebSocket(
            protocol,
            server,
            ping_interval=options["ping_interval"],
            ping_timeout=options["ping_timeout"],
            close_timeout=options["close_timeout"],
            write_limit=options["write_limit"],
        )
        return conn

    return connection


def _select_subprotocol(ws: WebSocket, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``wirepipe.v1`` if offered; none offered is v1 too; only unknown ones: HTTP 400."""
    if not offered:
        return None
    if SUBPROTOCOL in offered:
        return Subprotocol(SUBPROTOCOL)
    raise NegotiationError(f"unsupported subprotocols {', '.join(offered)}; this is {SUBPROTOCOL}")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
