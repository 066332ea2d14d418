"""The ``wirepipe`` command: ``serve``, ``demo``, ``watch`` and ``worker``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from protocol import Grant, StoreUnavailable

from .config import FRONTS, App, Config
from .front import is_loopback, normalize_host, normalize_origin
from .middleware import Middleware
from .server import Gateway, tune_gc
from .stores import MemoryStore, Retention, Store


def _import(module: str) -> Any:
    """``importlib.import_module``, with the working directory on the import path first.

    As ``python -m`` and uvicorn do: ``--app mine=my_module:app`` and
    ``--middleware`` name a module of the directory the command runs in, not
    only installed ones, however ``wirepipe`` was started (its script's
    ``sys.path[0]`` is the venv's ``bin/``).
    """
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(module)


#: The exit code of ``serve`` and ``demo`` when the address cannot be listened on (as for a bad flag).
EXIT_CANNOT_BIND: Final = 2


def _load_app(spec: str) -> tuple[str, App]:
    name, sep, target = spec.partition("=")
    module, colon, attr = target.partition(":")
    if not sep or not colon or not name or not module or not attr:
        raise argparse.ArgumentTypeError(f"--app takes NAME=module:callable, not {spec!r}")
    try:
        obj = getattr(_import(module), attr)
    except Exception as exc:  # whatever importing the user's module raised: say it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise argparse.ArgumentTypeError(f"cannot load app {spec!r}: {type(exc).__name__}: {first[:300]}") from exc
    if not callable(obj):
        raise argparse.ArgumentTypeError(f"--app {spec!r}: {target} is a {type(obj).__name__}, not a callable")
    return name, obj


def _load_middleware(spec: str) -> Middleware:
    module, colon, attr = spec.partition(":")
    if not colon or not module or not attr:
        raise argparse.ArgumentTypeError(f"--middleware takes module:name, not {spec!r}")
    try:
        obj = getattr(_import(module), attr)
        mw = obj() if isinstance(obj, type) else obj
    except Exception as exc:  # whatever importing or making it raised: say it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise argparse.ArgumentTypeError(
            f"cannot load middleware {spec!r}: {type(exc).__name__}: {first[:300]}"
        ) from exc
    if not callable(getattr(mw, "on_event", None)) and not callable(getattr(mw, "on_request", None)):
        raise argparse.ArgumentTypeError(f"{spec!r} has neither on_event nor on_request")
    return mw  # type: ignore[no-any-return]


def _origin(value: str) -> str:
    try:
        return normalize_origin(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--allow-origin: {exc}") from None


def _allowed_host(value: str) -> str:
    try:
        return normalize_host(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--allow-host: {exc}") from None


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0 picks a free one), not {n}")
    return n


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


#: The numeric knobs of ``Config``: (field, type, metavar, help).  Each is the flag
#: ``--field-name`` with the field's default; ``_gateway`` hands them all to ``Config``.
_KNOBS: Final[list[tuple[str, Callable[[str], Any], str | None, str]]] = [
    (
        "max_connections",
        _positive,
        "N",
        "open WebSocket connections; over it a handshake gets HTTP 503 with Retry-After",
    ),
    ("max_frame", _positive, "BYTES", "largest client frame, in bytes"),
    ("handshake_timeout", float, "SECONDS", "seconds a client has to send hello"),
    (
        "heartbeat",
        float,
        "SECONDS",
        "WebSocket ping interval and timeout, in seconds; welcome.heartbeat carries it in ms",
    ),
    (
        "backlog_events",
        _positive,
        "N",
        "per session: events written and not yet stored (the store is unreachable) "
        "before the Pipe refuses writes with BacklogFull",
    ),
    ("backlog_bytes", _positive, "BYTES", "per session: bytes of those events"),
    (
        "inbox_messages",
        _positive,
        "N",
        "per session: client sends the agent has not taken before a send gets inbox_full",
    ),
    ("inbox_bytes", _positive, "BYTES", "per session: bytes of those sends"),
    ("drain_timeout", float, "SECONDS", "on shutdown, how long to wait for the store to take what sessions hold"),
    ("write_limit", _positive, "BYTES", "per client: bytes buffered in its socket before the gateway waits for it"),
    ("batch_max", _positive, "N", "most events in one batch frame"),
    (
        "feed_events",
        _positive,
        "N",
        "per watched session: newest events held in memory for its watchers on this node; "
        "a watcher further behind reads the store",
    ),
    ("feed_bytes", _positive, "BYTES", "per watched session: bytes of those events"),
    ("token_ttl", float, "SECONDS", "how long a resume token is valid"),
    ("rate", float, "FRAMES", "per client: frames a second before rate_limited; acks that move the window are free"),
    ("burst", float, "FRAMES", "per client: frames allowed in a burst"),
    ("rate_strikes", _positive, "N", "refused frames before the connection is closed 4429"),
    ("close_timeout", float, "SECONDS", "how long a client has to finish a close before it is dropped"),
    (
        "stall_timeout",
        float,
        "SECONDS",
        "a client that takes no byte for this long is dropped (default: the heartbeat)",
    ),
]


def _add_server_args(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=_port, default=port, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument(
        "--secret",
        default=os.environ.get("WIREPIPE_SECRET"),
        help="HMAC secret for resume tokens (env WIREPIPE_SECRET); required off loopback unless "
        "--insecure; default: random per process (tokens die with it)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind without --secret, and make every client "
        "without a credential an operator there (default: off: on a non-loopback "
        "bind with no --operator-token, clients are viewers)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        type=_origin,
        metavar="ORIGIN",
        help="also accept browser pages from ORIGIN (scheme://host[:port]); repeatable. "
        "'null' allows sandboxed and file:// pages, '*' every origin (unsafe: any "
        "web site can then drive the gateway).  Default: only the gateway's own pages",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        type=_allowed_host,
        metavar="HOST",
        help="also accept requests whose Host header is HOST (host or host:port, e.g. "
        "behind a reverse proxy); repeatable; '*' any.  Default: on a loopback bind "
        "only loopback names (127.x.x.x, localhost, [::1]); elsewhere, unchecked",
    )
    p.add_argument(
        "--operator-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="a credential (hello.auth) that grants operator; repeatable",
    )
    p.add_argument(
        "--viewer-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="a credential that grants viewer; repeatable.  With any token set, "
        "a hello without a valid one is refused (4401)",
    )
    defaults = Config()
    for field, kind, metavar, help_text in _KNOBS:
        default = getattr(defaults, field)
        shown = help_text if default is None else f"{help_text} (default: %(default)s)"
        p.add_argument("--" + field.replace("_", "-"), type=kind, default=default, metavar=metavar, help=shown)
    p.add_argument("--no-compression", action="store_true", help="turn permessage-deflate off")
    p.add_argument(
        "--retain-events",
        type=int,
        default=Retention().max_events,
        help="events kept per session (default: %(default)s)",
    )
    p.add_argument(
        "--retain-bytes", type=int, default=Retention().max_bytes, help="bytes kept per session (default: %(default)s)"
    )
    p.add_argument(
        "--retain-seconds",
        type=float,
        default=Retention().ttl_after_end,
        help="seconds a session is kept after its run ended (default: %(default)s)",
    )
    p.add_argument(
        "--no-wait-for-run",
        action="store_true",
        help="a hello for a sid with no run gets no_session (4404) instead of waiting for one",
    )
    _add_run_args(
        p,
        redis="keep session logs in Redis Streams at URL (env WIREPIPE_REDIS), e.g. "
        "redis://127.0.0.1:6379/0.  Gateways sharing it (and --secret) all serve "
        "every session's events, resume each other's tokens, and take every session's "
        "replies, sends and cancels (handed to the agent's node).  Default: in memory",
        lease="with --redis or --redis-cluster: seconds a run's writer lease lives without a renewal (renewed "
        "every third of it).  A sid leased by a live run on any node gets sid_taken; a run whose node "
        "died is ended failed by another node within about 1.5 times this (docs/stores.md)",
        middleware="pass every event and client request through this middleware (an object, or a "
        "class made with no arguments; see docs/middleware.md); repeatable, in order",
        app="register an app that hello.start can run; repeatable",
    )
    p.add_argument("--no-ui", action="store_true", help="do not serve the web UI")
    p.add_argument(
        "--front",
        choices=FRONTS,
        default=Config().front,
        help="what answers on the port: uvicorn (the page, the WebSocket, REST and SSE, one origin) "
        "or websockets (its server alone: the page and the WebSocket); docs/http.md (default: %(default)s)",
    )


def _add_run_args(p: argparse.ArgumentParser, *, redis: str, lease: str, middleware: str, app: str) -> None:
    """The flags that ``serve`` and ``worker`` share (the help texts say what each does with them)."""
    p.add_argument("--redis", metavar="URL", default=os.environ.get("WIREPIPE_REDIS"), help=redis)
    p.add_argument(
        "--redis-cluster",
        metavar="URL",
        default=os.environ.get("WIREPIPE_REDIS_CLUSTER"),
        help="like --redis, on a Redis Cluster: URL is any one of its nodes, e.g. "
        "redis://10.0.0.1:7000 (the others are found from it; env WIREPIPE_REDIS_CLUSTER)",
    )
    p.add_argument("--lease-ttl", type=float, default=10.0, metavar="SECONDS", help=lease)
    p.add_argument(
        "--middleware", action="append", default=[], type=_load_middleware, metavar="module:name", help=middleware
    )
    p.add_argument("--app", action="append", default=[], type=_load_app, metavar="NAME=module:callable", help=app)
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: %(default)s)",
    )


def _gateway(args: argparse.Namespace, extra_apps: dict[str, App] | None = None) -> Gateway:
    if not is_loopback(args.host) and not args.secret and not args.insecure:
        raise SystemExit(
            f"wirepipe: refusing to bind {args.host} without --secret (or WIREPIPE_SECRET); "
            "pass --insecure to do it anyway"
        )
    tokens = {t: Grant.OPERATOR for t in args.operator_token}
    tokens.update({t: Grant.VIEWER for t in args.viewer_token})
    auth = (lambda cred, sid: tokens.get(cred or "")) if tokens else None
    retention = Retention(args.retain_events, args.retain_bytes, args.retain_seconds)
    store: Store
    if args.redis and args.redis_cluster:
        raise SystemExit("wirepipe: --redis and --redis-cluster (or their WIREPIPE_ variables) exclude each other")
    if args.redis or args.redis_cluster:
        from .stores.redis import RedisStore  # needs the redis package (pip install wirepipe[redis])

        cluster = bool(args.redis_cluster)
        url = args.redis_cluster if cluster else args.redis
        store = RedisStore(url, cluster=cluster, retention=retention, lease_ttl=args.lease_ttl)
    else:
        store = MemoryStore(retention)
    apps = dict(extra_apps or {})
    apps.update(dict(args.app))
    return Gateway(
        args.host,
        args.port,
        store=store,
        secret=args.secret,
        apps=apps,
        auth=auth,
        middleware=args.middleware,
        config=Config(
            **{field: getattr(args, field) for field, *_ in _KNOBS},
            compression=not args.no_compression,
            serve_ui=not args.no_ui,
            wait_for_run=not args.no_wait_for_run,
            # None: operator on loopback, viewer elsewhere (Config.default_grant)
            default_grant=Grant.OPERATOR if args.insecure else None,
            allow_origins=tuple(args.allow_origin),
            allow_hosts=tuple(args.allow_host),
            front=args.front,
        ),
    )


async def _until_signalled() -> None:
    """Return on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
            pass
    await stop.wait()


class CannotBind(Exception):
    """The gateway cannot listen where it was told to; the message says what to pass instead."""


def bind_error(exc: OSError, host: str, port: int) -> str:
    """One line for a failed bind of ``host:port``: what went wrong and the flag that fixes it."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: {host!r} is not an address or a name that resolves; pass --host 127.0.0.1"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use on {host}: pass --port 0 (any free port) or another port"
    if exc.errno == errno.EACCES:
        return f"no permission to listen on {where}: pass --port 0 (any free port) or a port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {where}: {host} is not an address of this machine; "
            "pass --host 127.0.0.1, or --host 0.0.0.0 for every interface"
        )
    return f"cannot listen on {where}: {exc.strerror or exc}"


async def _serve(gw: Gateway, banner: str = "") -> None:
    """Serve until SIGINT or SIGTERM.

    Raises:
        CannotBind: the host and port cannot be listened on (in use, not ours, ...).
    """
    try:
        await gw.start()
    except OSError as exc:
        await gw.close()
        raise CannotBind(bind_error(exc, gw.host, gw.port or 0)) from None
    tune_gc()
    api = f", HTTP API: {gw.http_url}api/v1/" if gw.config.front == "uvicorn" else ""
    print(f"wirepipe serving {gw.url} (web UI: {gw.http_url}{api})", flush=True)
    if gw.apps:
        print(f"apps: {', '.join(sorted(gw.apps))}", flush=True)
    if banner:
        print(banner.replace("{port}", str(gw.port)), flush=True)
    await _until_signalled()
    print("wirepipe: shutting down", flush=True)
    await gw.close()


async def _work(args: argparse.Namespace) -> None:
    from .worker import Worker

    retention = Retention(ttl_after_end=args.retain_seconds)
    worker = Worker(
        args.redis or args.redis_cluster,
        dict(args.app),
        cluster=bool(args.redis_cluster),
        middleware=args.middleware,
        concurrency=args.concurrency,
        claim_idle=args.claim_idle,
        lease_ttl=args.lease_ttl,
        retention=retention,
    )
    await worker.start()
    tune_gc()
    print(f"wirepipe worker {worker.name} taking runs of {', '.join(sorted(worker.apps))}", flush=True)
    await _until_signalled()
    print("wirepipe worker: shutting down", flush=True)
    await worker.close()


#: Loggers that write a line per request or per connection at INFO: above DEBUG, only their warnings.
#: websockets (``wirepipe.ws``) says "HTTP response sent" and "connection closed"; uvicorn's access log.
PER_REQUEST_LOGGERS: Final = ("wirepipe.ws", "uvicorn.access")


def _setup_logging(level: str) -> None:
    """The log of ``serve``, ``demo`` and ``worker``: short lines on stderr, the gateway's own.

    Above DEBUG: no line per request (``PER_REQUEST_LOGGERS``), and MetaGPT
    keeps off the terminal (``gateway.integrations.metagpt.quiet``: its
    output goes to its log files, and to the ``metagpt`` logger at DEBUG;
    a line says where when it loads).  At DEBUG, everything.
    """
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # jupyter_client's "Could not destroy zmq context" as a MetaGPT kernel shuts down
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    from .integrations.metagpt import setup as metagpt_setup  # imports no MetaGPT

    if metagpt_setup.available():
        metagpt_setup.quiet()


def _self_command() -> str:
    """This ``wirepipe`` as the shell that started it can run it again (``./run demo`` has no venv active).

    ``./run wirepipe`` under the clone's ``run`` script (``WIREPIPE_RUN``, its
    name as typed); ``wirepipe`` when that name finds this script on ``PATH``, else its path
    (relative to the working directory when shorter); for ``python -m
    gateway.cli``, that.
    """
    run = os.environ.get("WIREPIPE_RUN")
    if run:  # started by the clone's ./run script, as its user typed it
        return f"{run} wirepipe"
    me = Path(sys.argv[0]).resolve()
    if me.name != "wirepipe":
        return f"{_shortest(sys.executable)} -m gateway.cli"
    found = shutil.which("wirepipe")
    if found is not None and Path(found).resolve() == me:
        return "wirepipe"
    return _shortest(sys.argv[0])


def _shortest(path: str) -> str:
    """``path`` relative to the working directory if that is shorter, else absolute (a relative one keeps a /)."""
    full = os.path.abspath(path)
    rel = os.path.relpath(full)
    return rel if len(rel) < len(full) and os.sep in rel else full


def _demo_apps() -> tuple[dict[str, App], str]:
    from .integrations.demo import app as demo

    apps: dict[str, App] = {"demo": demo}
    try:
        mg = importlib.import_module("gateway.integrations.metagpt.apps")
        for name in ("data_interpreter", "team"):
            if hasattr(mg, name):
                apps[name] = getattr(mg, name)
    except ImportError as exc:  # MetaGPT not installed: the scripted demo agent only
        logging.getLogger("wirepipe").info("MetaGPT apps unavailable: %s", exc)
    default = "data_interpreter" if "data_interpreter" in apps else "demo"
    return apps, default


def _watch_url(value: str) -> str:
    from .watch import gateway_url

    try:
        return gateway_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _retries(value: str) -> int | None:
    from .watch import parse_retries

    try:
        return parse_retries(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--retries takes a count or 'forever': {exc}") from None


def _watch(args: argparse.Namespace) -> int:
    from .watch import WatchOptions, run

    start = None
    if args.start:
        value: Any = args.input
        if args.input is not None:
            try:
                value = json.loads(args.input)
            except json.JSONDecodeError:
                value = args.input
        start = {"app": args.start, "input": value}
    return run(
        WatchOptions(
            url=args.url,
            sid=args.sid,
            auth=args.auth,
            start=start,
            no_input=args.no_input,
            follow=args.follow,
            json=args.json,
            prompt=args.prompt,
            log_level=args.log_level,
            retries=args.retries,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wirepipe",
        description="Stream an AI agent's run to web pages, terminals and notebooks, and answer it.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_serve = sub.add_parser("serve", help="run a gateway", description="Run a wirepipe gateway.")
    _add_server_args(p_serve, 8765)
    p_demo = sub.add_parser(
        "demo",
        help="run the gateway with an offline example agent and its web UI",
        description="Run the gateway with offline example agents (MetaGPT's DataInterpreter on a "
        "scripted LLM when MetaGPT is installed) and print where to watch them.",
    )
    _add_server_args(p_demo, 8765)
    p_watch = sub.add_parser(
        "watch",
        help="watch a session in the terminal and answer its asks",
        description="A terminal client: the plan as a live table, streamed LLM text, code and its "
        "output, logs, and a prompt for each ask (type a choice's number or its text, or any "
        "other answer; Enter takes the default; a refused answer is asked again with the reason).",
        epilog="exit codes: 0 the run ended done; 1 it ended failed or cancelled; 2 a usage "
        "error; 3 the gateway could not be reached (after --retries) or refused the WebSocket "
        "handshake; 4 the gateway refused the session (unauthorized, no_app, sid_taken, "
        "no_session...); 130 Ctrl-C.  A sid with no run yet is waited for.",
    )
    p_watch.add_argument(
        "url",
        type=_watch_url,
        help="the gateway's URL, e.g. ws://127.0.0.1:8765/ (wss:// over TLS); http:// and https:// "
        "(the web UI's address) are taken as ws:// and wss://",
    )
    p_watch.add_argument("--sid", required=True, help="the session id")
    p_watch.add_argument("--auth", help="credential (hello.auth)")
    p_watch.add_argument("--start", metavar="APP", help="start a run of this app under --sid")
    p_watch.add_argument("--input", help="the run's input (JSON, or a plain string)")
    p_watch.add_argument(
        "--no-input",
        action="store_true",
        help="never prompt; only watch (an ask then waits for another client's answer or its timeout)",
    )
    p_watch.add_argument("--follow", action="store_true", help="keep watching after the run ends (the next run too)")
    p_watch.add_argument(
        "--json",
        action="store_true",
        help="for scripts: one event per line on stdout as JSON ({epoch, seq, k, ts, d}), no colours, "
        "notes on stderr, and no prompts unless --prompt",
    )
    p_watch.add_argument(
        "--prompt",
        action="store_true",
        help="with --json: prompt for asks anyway (on stderr; answers are lines of stdin)",
    )
    p_watch.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "OFF"],
        help="the lowest level of the run's log events to show (default: INFO; with --json, every event)",
    )
    p_watch.add_argument(
        "--retries",
        type=_retries,
        default=10,
        metavar="N",
        help="reconnects in a row before giving up with exit code 3, each announced with its "
        "countdown; 'forever' retries until Ctrl-C (default: %(default)s)",
    )
    p_worker = sub.add_parser(
        "worker",
        help="run apps that gateways queue on Redis (no WebSocket server)",
        description="Take the runs of --app that gateways sharing --redis queue (a client's "
        "hello.start), run up to --concurrency at a time, and stream them through Redis to "
        "every gateway (docs/scaling.md).",
    )
    _add_run_args(
        p_worker,
        redis="the Redis the gateways share (env WIREPIPE_REDIS), e.g. redis://127.0.0.1:6379/0",
        lease="seconds a run's writer lease lives without a renewal; a worker that dies mid-run "
        "has its runs ended failed by a gateway within about 1.5 times this (default: %(default)s)",
        middleware="pass every event of the runs here through this middleware (docs/middleware.md; a "
        "gateway's --middleware applies to the runs it writes, not to a worker's); repeatable",
        app="an app this worker runs; repeatable (at least one)",
    )
    p_worker.add_argument(
        "--concurrency", type=_positive, default=4, metavar="N", help="runs at a time (default: %(default)s)"
    )
    p_worker.add_argument(
        "--claim-idle",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a start another worker took and did not acknowledge for this long (it died) is "
        "taken over (default: %(default)s)",
    )
    p_worker.add_argument(
        "--retain-seconds",
        type=float,
        default=Retention().ttl_after_end,
        help="seconds a session is kept after its run ended (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    if args.cmd == "watch":
        return _watch(args)
    _setup_logging(args.log_level.upper())
    if args.cmd == "worker":
        if not args.redis and not args.redis_cluster:
            parser.error("worker: --redis URL is required (or set WIREPIPE_REDIS)")
        if args.redis and args.redis_cluster:
            parser.error("worker: give --redis or --redis-cluster, not both")
        if not args.app:
            parser.error("worker: give at least one --app NAME=module:callable")
        try:
            asyncio.run(_work(args))
        except KeyboardInterrupt:  # pragma: no cover
            pass
        except (StoreUnavailable, ValueError) as exc:  # unreachable, or not a Redis URL
            print(f"wirepipe worker: cannot use Redis at {args.redis or args.redis_cluster}: {exc}", file=sys.stderr)
            return 1
        return 0
    extra: dict[str, App] = {}
    banner = ""
    if args.cmd == "demo":
        extra, default = _demo_apps()
        banner = (
            f"open   http://{args.host}:{{port}}/?app={default}   in a browser to start and watch a run,\n"
            f"or run {_self_command()} watch ws://{args.host}:{{port}}/ --sid demo-1 --start {default}"
        )
    gw = _gateway(args, extra)
    try:
        asyncio.run(_serve(gw, banner))
    except KeyboardInterrupt:  # pragma: no cover
        pass
    except CannotBind as exc:
        print(f"wirepipe {args.cmd}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_BIND
    return 0


if __name__ == "__main__":
    sys.exit(main())
