"""The whole gateway as one ASGI app (Starlette) for uvicorn, FastAPI, Starlette: REST and SSE under ``/api/v1``.

Besides the API, the app serves what the native front serves: the
WebSocket protocol ``wirepipe.v1`` (an ASGI ``websocket`` scope at any path
of the mount: ``gateway/asgi_ws.py``), and ``/healthz``, ``/apps``,
``/metrics``, the web UI and the JS client under ``/client/``
(``HttpFront.route``, the same answers).

The OpenAI-compatible routes under ``/v1`` (``gateway/openai_api.py``,
docs/openai.md) are mounted here too and pass the same rules; their errors
take OpenAI's shape (``error_response(openai=True)``).

``Gateway.asgi()`` builds it (Starlette is imported then, never by ``import
gateway``); the gateway's own port serves it with the ``uvicorn`` front
(``gateway/uvicorn_front.py``); docs/http.md is the user's
reference, ``gateway/openapi.py`` the machine-readable one.

Theory of operation
-------------------
The REST routes are a second door to the same rules the WebSocket obeys,
not a second set of rules:

- **who gets in**: the front door (``FrontDoor.refusal``: Origin and Host,
  docs/security.md) runs first, on every request, before any route;
  ``Authorization: Bearer <credential>`` is what ``hello.auth`` carries, handed
  to the same ``auth`` hook with the request's sid (``""`` for a request that
  names none); without a hook every request gets ``Gateway.default_grant``;
- **how often**: one ``protocol.server.RateLimiter`` per client address
  (``Config.rate`` / ``Config.burst``), the WebSocket's per-connection
  bucket; over it a request gets 429 ``rate_limited``.  The buckets are kept
  for the ``LIMITERS`` most recent addresses (the least recently seen is
  forgotten first, and comes back with a full bucket);
- **what a request does**: an answer, a message or a cancel is the
  protocol's ``reply``, ``send`` or ``cancel`` frame, with the
  ``Idempotency-Key`` header as its ``rid`` (a random one without it), run by
  the session exactly as ``gateway/connection.py`` runs a client's frame:
  ``Session.handle`` decides once per rid (the same key gets the first
  outcome, whichever transport carried it), refuses viewers and runs the
  middleware.  A run written by another node gets the request handed on
  through the store (``hand_on``, the connection's ``_not_local``), or
  ``not_here``;
- **errors** are the protocol's codes, ``{"error": {"code", "message"}}``,
  with the HTTP status of ``STATUS``.

The SSE route (``gateway/sse.py``) follows a log as a WebSocket pump does.
Every body is read with a bound (``Config.max_frame``); nothing here parses
HTTP itself.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import secrets
import time
from base64 import b64encode
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from protocol import (
    Cancel,
    ErrorCode,
    Grant,
    ProtocolError,
    Replied,
    Reply,
    StoreUnavailable,
    check_value,
)
from protocol.codec import MAX_ID, SID_RE
from protocol.errors import REFUSALS
from protocol.frames import Send as SendFrame
from protocol.server import RateLimiter, ServerConnection

from .chat import error_body
from .connection import relay
from .front import FIXES, redacting_logger
from .http_front import Reply as HttpReply
from .middleware import apply_requests
from .openapi import openapi

if TYPE_CHECKING:
    from .server import Gateway
    from .sse import EventStream

log = logging.getLogger("wirepipe.http")

#: Where every route lives (under the mount point of a host app).
PREFIX: Final = "/api/v1"
#: Where the OpenAI-compatible routes live (``gateway/openai_api.py``): a client's ``base_url``.
OPENAI_PREFIX: Final = "/v1"
#: Client addresses whose rate-limit buckets are kept (see the module docstring).
LIMITERS: Final = 4096

#: The HTTP status of each protocol error code (docs/http.md keeps the same table).
STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.NO_HELLO: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.BAD_TOKEN: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.REFUSED: 403,
    ErrorCode.NO_SESSION: 404,
    ErrorCode.NO_APP: 404,
    ErrorCode.UNKNOWN_ASK: 404,
    ErrorCode.SID_TAKEN: 409,
    ErrorCode.ASK_CLOSED: 409,
    ErrorCode.ENDED: 409,
    ErrorCode.LAGGED: 410,
    ErrorCode.TOO_BIG: 413,
    ErrorCode.NOT_HERE: 421,
    ErrorCode.BAD_VALUE: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.INBOX_FULL: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.SHUTDOWN: 503,
}
#: Codes after which the same request may succeed later: they carry ``Retry-After``.
RETRY: Final = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.INBOX_FULL, ErrorCode.UNAVAILABLE, ErrorCode.SHUTDOWN})

#: What a refused request's ``message`` says when the session gave only a code.
MESSAGES: Final[dict[str, str]] = REFUSALS

#: Headers a cross-origin page that ``allow_origins`` lets in may send and read.
CORS_HEADERS: Final = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Wirepipe-Session"
CORS_EXPOSE: Final = "Retry-After, X-Wirepipe-Session"


class ApiError(Exception):
    """A request refused with a protocol error code (answered as JSON by ``error_response``).

    ``param``: the request field at fault, for the OpenAI routes' error shape.
    """

    def __init__(
        self, code: ErrorCode, message: str, headers: dict[str, str] | None = None, *, param: str | None = None
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.param = param


#: The codes of an HTTP error no route raised (``HttpApi._no_route``): HTTP-only, not the protocol's.
NO_ROUTE: Final = {404: "not_found", 405: "method_not_allowed"}


def error_response(
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    openai: bool = False,
    param: str | None = None,
    **extra: Any,
) -> JSONResponse:
    """``{"error": {"code", "message"}}`` with the status of ``code`` (``STATUS``).

    ``openai``: OpenAI's shape instead, ``{"error": {"message", "type",
    "param", "code"}}`` (``gateway.chat.error_body``), for the routes under ``/v1``.
    """
    err = ErrorCode(code)
    out = dict(headers or {})
    if err in RETRY:
        out.setdefault("Retry-After", "1")
    status = STATUS[err]
    if openai:
        return JSONResponse(error_body(status, err.value, message, param), status, out)
    return JSONResponse({"error": {"code": err.value, "message": message}, **extra}, status, out)


def is_openai(path: str) -> bool:
    """True for a path of the OpenAI-compatible routes (``gateway/openai_api.py``)."""
    return path.startswith(OPENAI_PREFIX + "/")


# --- JSON of MessagePack values ----------------------------------------------------------------


def dumps(value: Any) -> str:
    """``value`` (a decoded MessagePack value) as compact JSON on one line.

    JSON has no bytes, no non-string keys but numbers, booleans and null,
    and no NaN: bytes become base64 strings, other keys their string form,
    NaN and the infinities null (``jsonable``).  A value without them is
    dumped as it is.
    """
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(jsonable(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def jsonable(v: Any) -> Any:
    """``v`` with what JSON cannot hold replaced (see ``dumps``)."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return b64encode(bytes(v)).decode("ascii")
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {_key(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, (bytes, bytearray, memoryview)):
        return b64encode(bytes(k)).decode("ascii")
    return json.dumps(jsonable(k))  # 1 -> "1", True -> "true", None -> "null"


# --- the app ----------------------------------------------------------------------------------


class HttpApi:
    """The ASGI app of one gateway's HTTP API (``Gateway.asgi()``); see the module docstring."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        #: The REST and SSE fronts' counters (``front="rest"`` / ``"sse"`` in /metrics).
        #: REST counts each request as a connection.
        self.rest = gw.metrics.front("rest")
        self.sse = gw.metrics.front("sse")
        #: The OpenAI-compatible routes' counters (``front="openai"``): requests, chat replies streamed.
        self.openai = gw.metrics.front("openai")
        self._limiters: OrderedDict[str, RateLimiter] = OrderedDict()
        #: The open SSE streams (``drop_streams``).
        self.streams: set[EventStream] = set()
        #: Set (and replaced) whenever a stream ends: ``wait_streams``.
        self._streams_changed = asyncio.Condition()
        p = PREFIX
        self.routes = [
            Route(f"{p}/openapi.json", self.openapi, methods=["GET"]),
            Route(f"{p}/apps", self.apps, methods=["GET"]),
            Route(f"{p}/sessions", self.list_sessions, methods=["GET"]),
            Route(f"{p}/sessions", self.start, methods=["POST"]),
            Route(f"{p}/sessions/{{sid}}", self.session, methods=["GET"]),
            Route(f"{p}/sessions/{{sid}}/asks/{{ask}}", self.answer, methods=["POST"]),
            Route(f"{p}/sessions/{{sid}}/messages", self.message, methods=["POST"]),
            Route(f"{p}/sessions/{{sid}}/cancel", self.cancel, methods=["POST"]),
            Route(f"{p}/sessions/{{sid}}/events", self.events, methods=["GET"]),
        ]
        from .openai_api import OpenAiApi  # the OpenAI-compatible door to the same rules

        self.chat = OpenAiApi(self)
        self.routes += self.chat.routes
        self.app = Starlette(
            routes=self.routes, exception_handlers={ApiError: self._api_error, HTTPException: self._no_route}
        )
        # uvicorn's access log carries query strings (an EventSource's ?auth=):
        # the same filter as the WebSocket's log redacts them (docs/security.md).
        for name in ("uvicorn.access", "uvicorn.error"):
            redacting_logger(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":  # wirepipe.v1 (gateway/asgi_ws.py), at any path of the mount
            from .asgi_ws import serve_websocket

            await serve_websocket(self.gw, scope, receive, send)
            return
        if kind != "http":
            if kind == "lifespan":  # the host app's lifespan starts the gateway
                await self.app(scope, receive, send)
                return
            raise RuntimeError(f"the gateway's ASGI app serves http and websocket, not {kind!r}")
        path = route_path(scope)
        openai = is_openai(path)
        if not path.startswith(PREFIX + "/") and not openai:
            # The native front's routes and files: /healthz, /apps, /metrics, the web UI, /client/.
            await self._front(scope, receive, send, path)
            return
        headers = Headers(scope=scope)
        refusal = self.gw.front.refusal(headers)
        if refusal is not None:
            # As the WebSocket front logs them: once, at INFO, no query string.
            log.info(
                "refused HTTP request for %.200s: %s (Origin %.200r, Host %.200r); %s",
                scope.get("path", ""),
                refusal,
                headers.get("origin"),
                headers.get("host"),
                FIXES.get(refusal, ""),
            )
            (self.openai if openai else self.rest).refuse("forbidden")
            await error_response(ErrorCode.FORBIDDEN, refusal, openai=openai)(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is not None and scope["method"] == "OPTIONS":
            # A CORS preflight of a page the front door let in (its own origin, or allow_origins).
            # The OpenAI SDKs send headers of their own (X-Stainless-*): the /v1 routes allow
            # what the preflight asks for, the origin being one the front door lets in.
            allowed = headers.get("access-control-request-headers") if openai else None
            cors = {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": allowed or CORS_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            }
            await Response(status_code=204, headers=cors)(scope, receive, send)
            return
        if origin is not None:
            send = _with_cors(send, origin)
        await self.app(scope, receive, send)

    async def _front(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """A route of the native front (``HttpFront.route``), with its front door: the same answer."""
        http = self.gw.http
        headers_in = Headers(scope=scope)
        reply = http.refuse(headers_in, path)
        if reply is None:
            if scope["method"] not in ("GET", "HEAD"):
                reply = HttpReply.text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed\n", ("Allow", "GET, HEAD"))
            else:
                reply = http.route(path, headers_in.get("origin"))
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.header_list()]
        await send({"type": "http.response.start", "status": reply.status.value, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else reply.body})

    # --- the rules every route shares ---------------------------------------------------------

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        openai = is_openai(route_path(request.scope))
        front = self.openai if openai else self.sse if request.url.path.endswith("/events") else self.rest
        front.error(exc.code)
        return error_response(exc.code, exc.message, exc.headers, openai=openai, param=exc.param)

    async def _no_route(self, request: Request, exc: Exception) -> Response:
        """An unknown path under ``/api/v1`` or ``/v1`` (404), or a method a route does not take (405):
        the JSON error shape of its routes, with an HTTP-only code (docs/http.md, "Errors")."""
        assert isinstance(exc, HTTPException)
        code = NO_ROUTE.get(exc.status_code, "bad_request")
        message = f"{request.method} {route_path(request.scope)}: {exc.detail}"
        openai = is_openai(route_path(request.scope))
        (self.openai if openai else self.rest).error(code)
        body = error_body(exc.status_code, code, message) if openai else {"error": {"code": code, "message": message}}
        return JSONResponse(body, exc.status_code, dict(exc.headers or {}))

    def _running(self) -> None:
        runs = self.gw.runs
        if runs.loop is None:
            raise ApiError(ErrorCode.UNAVAILABLE, "the gateway is not started")
        if runs.closing:
            raise ApiError(ErrorCode.SHUTDOWN, "the gateway is shutting down")

    def _limit(self, request: Request) -> None:
        """Charge the client's bucket, or refuse with ``rate_limited`` (429)."""
        cfg = self.gw.config
        key = request.client.host if request.client is not None else ""
        now = time.monotonic()
        bucket = self._limiters.get(key)
        if bucket is None:
            bucket = self._limiters[key] = RateLimiter(cfg.rate, cfg.burst, now)
            if len(self._limiters) > LIMITERS:
                self._limiters.popitem(last=False)
        else:
            self._limiters.move_to_end(key)
        if not bucket.allow(now):
            raise ApiError(ErrorCode.RATE_LIMITED, "too many requests: slow down and re-send with the same key")

    async def _grant(self, request: Request, sid: str, *, query_auth: bool = False) -> Grant:
        """The request's grant, as ``hello.auth`` gets one (``Connection._authorize``).

        Raises:
            ApiError: ``unauthorized`` (401) when the hook refuses the credential.
        """
        gw = self.gw
        if gw.auth is None:
            return gw.default_grant
        credential = None
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            credential = value.strip()
        elif query_auth:  # EventSource sends no headers: ?auth= as the web UI's WebSocket does
            credential = request.query_params.get("auth")
        verdict = gw.auth(credential, sid)
        grant = await verdict if inspect.isawaitable(verdict) else verdict
        if grant is None:
            raise ApiError(
                ErrorCode.UNAUTHORIZED, "missing or bad credentials", {"WWW-Authenticate": 'Bearer realm="wirepipe"'}
            )
        return Grant(grant)

    async def _enter(self, request: Request, sid: str, *, front: str = "rest", query_auth: bool = False) -> Grant:
        """What every route does first: count it, check the gateway runs, the rate, the sid, the grant."""
        if front == "rest":
            self.rest.connections_total += 1
        self._running()
        self._limit(request)
        if sid and not SID_RE.fullmatch(sid):
            raise ApiError(ErrorCode.BAD_FRAME, "a sid is 1-128 chars of [A-Za-z0-9._:-]")
        return await self._grant(request, sid, query_auth=query_auth)

    async def _body(self, request: Request) -> tuple[dict[str, Any], int]:
        """The JSON object the request carries (``{}`` for none) and its size; at most ``max_frame`` bytes."""
        limit = self.gw.config.max_frame
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(ErrorCode.TOO_BIG, f"the body is over {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(ErrorCode.TOO_BIG, f"the body is over {limit} bytes")
            chunks.append(chunk)
        if not size:
            return {}, 0
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            raise ApiError(ErrorCode.BAD_FRAME, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(ErrorCode.BAD_FRAME, "the body must be a JSON object")
        return body, size

    @staticmethod
    def _rid(request: Request) -> str:
        rid = request.headers.get("idempotency-key")
        if rid is None:
            return f"http-{secrets.token_hex(8)}"
        if not 0 < len(rid) <= MAX_ID:
            raise ApiError(ErrorCode.BAD_FRAME, f"an Idempotency-Key is 1-{MAX_ID} characters")
        return rid

    # --- routes -------------------------------------------------------------------------------

    async def openapi(self, request: Request) -> Response:
        self._limit(request)
        return JSONResponse(openapi(request.scope.get("root_path", "")))

    async def apps(self, request: Request) -> Response:
        await self._enter(request, "")
        gw = self.gw
        return JSONResponse({"apps": sorted(set(gw.apps) | set(gw.runs.remote_apps))})

    async def list_sessions(self, request: Request) -> Response:
        """The runs this node writes (a store shared by nodes has no listing of its own)."""
        await self._enter(request, "")
        sids = sorted(self.gw.runs.sessions)
        described = await asyncio.gather(*(self._describe(sid, full=False) for sid in sids))
        return JSONResponse({"sessions": [d for d in described if d is not None]})

    async def session(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        await self._enter(request, sid)
        described = await self._describe(sid, full=True)
        if described is None:
            raise ApiError(ErrorCode.NO_SESSION, f"no session {sid!r}")
        return Response(dumps(described), media_type="application/json")

    async def _describe(self, sid: str, *, full: bool) -> dict[str, Any] | None:
        """A session as the API shows it: its log's position and state (None: no log)."""
        try:
            got = await snapshot_of(self.gw, sid)
        except StoreUnavailable as exc:
            raise ApiError(ErrorCode.UNAVAILABLE, "the session store is unreachable; retry") from exc
        if got is None:
            return None
        info, snapshot, at = got
        status = snapshot.get("status")
        s = self.gw.runs.local_session(sid, info.epoch)
        out: dict[str, Any] = {
            "sid": sid,
            "epoch": info.epoch,
            "state": status.get("state") if isinstance(status, dict) else None,
            "app": s.app if s is not None else None,
            "started": s.started if s is not None else None,
            "first": info.first,
            "head": info.head,
            "ended": info.ended,
            "asks": snapshot.get("asks") or [],
        }
        if full:
            out["snapshot"] = snapshot
            out["snapshot_head"] = at
        return out

    async def start(self, request: Request) -> Response:
        body, _ = await self._body(request)
        sid, app = body.get("sid"), body.get("app")
        if not isinstance(sid, str) or not isinstance(app, str) or not app:
            raise ApiError(ErrorCode.BAD_FRAME, 'the body is {"sid": ..., "app": ..., "input": ...}')
        grant = await self._enter(request, sid)
        value = body.get("input")
        if check_value(value) is not None:
            raise ApiError(ErrorCode.BAD_VALUE, "the input nests too deep")
        if grant is not Grant.OPERATOR:
            raise ApiError(ErrorCode.FORBIDDEN, "a viewer cannot start a run")
        try:
            await self.gw.runs.start(sid, app, value)
        except ProtocolError as exc:
            raise ApiError(exc.code, exc.msg) from None
        except StoreUnavailable as exc:
            raise ApiError(ErrorCode.UNAVAILABLE, "the session store is unreachable; retry") from exc
        s = self.gw.runs.sessions.get(sid)
        if app in self.gw.apps and s is not None:
            return JSONResponse({"sid": sid, "app": app, "epoch": s.epoch}, 201)
        return JSONResponse({"sid": sid, "app": app, "epoch": None}, 202)  # queued for a worker

    async def answer(self, request: Request) -> Response:
        sid, ask = request.path_params["sid"], request.path_params["ask"]
        if not 0 < len(ask) <= MAX_ID:
            raise ApiError(ErrorCode.UNKNOWN_ASK, "no such ask")

        def frame(body: dict[str, Any], rid: str) -> Reply:
            if "value" not in body:
                raise ApiError(ErrorCode.BAD_FRAME, 'the body is {"value": ...}')
            return Reply(ask, rid, body["value"])

        return await self._request(request, sid, frame)

    async def message(self, request: Request) -> Response:
        def frame(body: dict[str, Any], rid: str) -> SendFrame:
            if "data" not in body:
                raise ApiError(ErrorCode.BAD_FRAME, 'the body is {"data": ...}')
            return SendFrame(body["data"], rid)

        return await self._request(request, request.path_params["sid"], frame)

    async def cancel(self, request: Request) -> Response:
        def frame(body: dict[str, Any], rid: str) -> Cancel:
            reason = body.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise ApiError(ErrorCode.BAD_FRAME, "a reason is a string")
            return Cancel(rid, reason)

        return await self._request(request, request.path_params["sid"], frame)

    async def _request(
        self, request: Request, sid: str, make: Callable[[dict[str, Any], str], Reply | SendFrame | Cancel]
    ) -> Response:
        """A reply, send or cancel: run once per rid by the session (see the module docstring)."""
        grant = await self._enter(request, sid)
        body, size = await self._body(request)
        frame = make(body, self._rid(request))
        value = frame.value if isinstance(frame, Reply) else frame.data if isinstance(frame, SendFrame) else None
        if check_value(value) is not None:
            r = Replied(frame.rid, False, ErrorCode.BAD_VALUE)
        else:
            try:
                r = await submit(self.gw, sid, frame, grant, size)
            except StoreUnavailable as exc:
                raise ApiError(ErrorCode.UNAVAILABLE, "the session store is unreachable; retry") from exc
        if r.ok:
            return JSONResponse({"ok": True, "rid": r.rid})
        code = r.err or ErrorCode.INTERNAL
        self.rest.error(code)
        return error_response(code, MESSAGES.get(code, code), rid=r.rid)

    async def events(self, request: Request) -> Response:
        from .sse import open_stream

        sid = request.path_params["sid"]
        grant = await self._enter(request, sid, front="sse", query_auth=True)
        return await open_stream(self, request, sid, grant)

    # --- streams ------------------------------------------------------------------------------

    def drop_streams(self, sid: str | None = None) -> int:
        """End the SSE streams of ``sid`` (all if None) now; their clients reconnect.  For tests and ops."""
        n = 0
        for s in list(self.streams):
            if sid is None or s.sid == sid:
                s.stop()
                n += 1
        return n

    async def wait_streams(self, pred: Callable[[int], bool]) -> None:
        """Return once ``pred(number of open SSE streams)`` is true."""
        async with self._streams_changed:
            await self._streams_changed.wait_for(lambda: pred(len(self.streams)))

    async def stream_changed(self) -> None:
        async with self._streams_changed:
            self._streams_changed.notify_all()


def route_path(scope: Scope) -> str:
    """The request's path inside the mount (Starlette's ``Mount`` keeps the whole path and sets ``root_path``)."""
    path: str = scope.get("path", "") or "/"
    root: str = scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def _with_cors(send: Send, origin: str) -> Send:
    """``send`` that adds the CORS headers for ``origin`` (which the front door let in) to the response."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
            headers.add_vary_header("Origin")
        await send(message)

    return sending


# --- requests ---------------------------------------------------------------------------------


async def snapshot_of(gw: Gateway, sid: str) -> tuple[Any, dict[str, Any], int] | None:
    """(info, snapshot, seq it is as of) of ``sid``'s log, of one epoch; None: no log.

    info, snapshot, info, as ``Connection._restart`` reads them: a log replaced
    in between (a new run) is read again.

    Raises:
        StoreUnavailable: the store cannot be reached.
    """
    store = gw.store
    while True:
        before = await store.info(sid)
        if before is None:
            return None
        snapshot, at = await store.snapshot(sid)
        info = await store.info(sid)
        if info is None:
            return None
        if before.epoch == info.epoch:
            return info, snapshot, at


async def submit(gw: Gateway, sid: str, frame: Reply | SendFrame | Cancel, grant: Grant, size: int) -> Replied:
    """Run a request against the current run of ``sid``, here or on the node that writes it.

    Here: ``Session.handle`` with the middleware, as ``Connection._handle``.
    Elsewhere: ``hand_on``.

    Raises:
        StoreUnavailable: the store cannot be reached.
    """
    s = gw.runs.sessions.get(sid)
    if s is not None and not s.refused:
        local = not s.ended
        if not local:  # an ended run here: is it still the sid's current one?
            info = await gw.store.info(sid)
            local = info is None or info.epoch == s.epoch
        if local:
            chain = gw.middleware
            passes = (lambda f: apply_requests(chain, sid, f, grant)) if chain else None
            return s.handle(frame, grant, size, passes)
    return await hand_on(gw, sid, frame, grant, size)


async def hand_on(gw: Gateway, sid: str, frame: Reply | SendFrame | Cancel, grant: Grant, size: int) -> Replied:
    """A request for a run this process does not write: handed to its writer through the store.

    ``Connection``'s own path (``gateway.connection.relay``), for the log's
    current epoch: ``no_session`` without a log.
    """
    info = await gw.store.info(sid)
    if info is None:
        raise ApiError(ErrorCode.NO_SESSION, f"no session {sid!r}")
    rules = ServerConnection()
    rules.grant, rules.epoch = grant, info.epoch
    return await relay(gw.store, gw.middleware, sid, frame, rules, size)
