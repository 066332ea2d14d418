"""Any OpenAI client as a frontend: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Routes of the gateway's ASGI app (``HttpApi``, which mounts them), so a
request passes the same front door (Origin, Host), rate limit, grants
(``Authorization: Bearer``) and request path (``submit``: the session's
``handle`` or the hand-on to the node that runs the agent) as the REST API;
only the shapes are OpenAI's.  docs/openai.md is the user's reference.

Theory of operation
-------------------
``model`` names a registered app (``/v1/models`` lists what ``/api/v1/apps``
lists).  A request belongs to a conversation, and a conversation to one
session (sid), found in this order:

1. the ``X-Wirepipe-Session`` header (API clients that choose their sid);
2. the session line of the latest assistant message in ``messages``
   (``gateway.chat.find_session``): every chat UI sends the history back;
3. none: a new conversation, sid ``chat-<random>``.

What the last user message does depends on the session's run:

- no run, or an ended one: it is the input of a new run of ``model``
  (``Runs.start``, as ``POST /api/v1/sessions``; the request's
  ``wirepipe.input`` replaces it), and the reply follows the run from its
  first event;
- a live run with an open ask: it answers the oldest open ask (a ``reply``
  whose value is the matching choice, ``gateway.chat.match_choice``);
- a live run with no open ask: it is a ``send`` to the agent.

Both are run by ``submit`` with the ``Idempotency-Key`` as rid, and the
reply follows the run from the snapshot's head read just before.

The reply (``ChatReply``) is an SSE stream driven exactly as
``gateway/sse.py``'s (the same feed, cursor rules, bounds, stall and
heartbeat), but writing ``chat.completion.chunk`` events: the session line,
then the events rendered as markdown (``gateway.chat.Renderer``), until the
run asks or ends; then a last chunk with ``finish_reason: "stop"`` and the
``wirepipe`` extension (``session``, ``state``, ``ask``), and ``data: [DONE]``.
An ask already answered when the reply reaches it (by the page, another
client) does not end the turn.  Without ``stream`` the same reply is
gathered and sent as one ``chat.completion``.  Every other client of the
session sees the same events at the same time: the reply reads the log,
it does not take from it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any, Final

import msgpack
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Send

from protocol import FINAL_STATES, ErrorCode, Grant, ProtocolError, Replied, Reply, StoreUnavailable, check_value
from protocol.codec import SID_RE
from protocol.frames import Send as SendFrame
from protocol.server import ConnectionLimits, ServerConnection

from .chat import (
    SESSION_LINE,
    USAGE,
    Renderer,
    Turn,
    chunk,
    completion,
    dumps,
    error_body,
    find_session,
    level_of,
    match_choice,
    message_text,
    sse,
)
from .http_api import MESSAGES, OPENAI_PREFIX, STATUS, ApiError, snapshot_of, submit
from .sse import READY_TIMEOUT, EventStream

if TYPE_CHECKING:
    from .http_api import HttpApi

#: The header that names a conversation's session (docs/openai.md, "The conversation key").
SESSION_HEADER: Final = "X-Wirepipe-Session"
#: Seconds a reply waits for a worker to start a run it queued.
START_TIMEOUT: Final = 30.0


class OpenAiApi:
    """The OpenAI-compatible routes of one ``HttpApi``; see the module docstring."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api
        self.gw = api.gw
        p = OPENAI_PREFIX
        self.routes = [
            Route(f"{p}/models", self.models, methods=["GET"]),
            Route(f"{p}/models/{{model}}", self.model, methods=["GET"]),
            Route(f"{p}/chat/completions", self.completions, methods=["POST"]),
        ]

    # --- models -------------------------------------------------------------------------------

    def _apps(self) -> list[str]:
        gw = self.gw
        return sorted(set(gw.apps) | set(gw.runs.remote_apps))

    async def _enter(self, request: Request, sid: str) -> Grant:
        api = self.api
        api.openai.connections_total += 1
        api._running()
        api._limit(request)
        return await api._grant(request, sid)

    async def models(self, request: Request) -> Response:
        await self._enter(request, "")
        return JSONResponse({"object": "list", "data": [_model(name) for name in self._apps()]})

    async def model(self, request: Request) -> Response:
        await self._enter(request, "")
        name = request.path_params["model"]
        if name not in self._apps():
            raise ApiError(ErrorCode.NO_APP, f"no model {name!r}: GET /v1/models lists them", param="model")
        return JSONResponse(_model(name))

    # --- chat completions ---------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        api, gw = self.api, self.gw
        api.openai.connections_total += 1
        api._running()
        api._limit(request)
        body, size = await api._body(request)
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise ApiError(ErrorCode.BAD_FRAME, "model is the name of an app: GET /v1/models lists them", param="model")
        if not isinstance(messages, list) or not messages:
            raise ApiError(ErrorCode.BAD_FRAME, "messages is a non-empty list of chat messages", param="messages")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise ApiError(ErrorCode.BAD_FRAME, "messages has no user message", param="messages")
        text = message_text(users[-1])
        ext = body.get("wirepipe") or {}
        if not isinstance(ext, dict):
            raise ApiError(ErrorCode.BAD_FRAME, "wirepipe is an object", param="wirepipe")
        if not text.strip() and "input" not in ext:
            raise ApiError(
                ErrorCode.BAD_FRAME, "the last user message has no text (a string, or text parts)", param="messages"
            )
        if body.get("n", 1) != 1:
            raise ApiError(ErrorCode.BAD_FRAME, "n must be 1: a run has one reply", param="n")
        if not isinstance(body.get("stream", False), bool):
            raise ApiError(ErrorCode.BAD_FRAME, "stream is true or false", param="stream")
        try:
            level = level_of(ext.get("log_level"))
        except ValueError as exc:
            raise ApiError(ErrorCode.BAD_FRAME, str(exc), param="wirepipe.log_level") from None
        options = body.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        named = request.headers.get(SESSION_HEADER) or find_session(messages)
        sid = named or f"chat-{secrets.token_hex(6)}"
        if not SID_RE.fullmatch(sid):
            raise ApiError(ErrorCode.BAD_FRAME, f"{SESSION_HEADER} is 1-128 chars of [A-Za-z0-9._:-]")
        grant = await api._grant(request, sid)
        if grant is not Grant.OPERATOR:
            raise ApiError(ErrorCode.FORBIDDEN, "a viewer cannot start or answer runs")
        if model not in self._apps():
            raise ApiError(ErrorCode.NO_APP, f"no model {model!r}: GET /v1/models lists them", param="model")
        try:
            got = await snapshot_of(gw, sid)
            live = got is not None and not got[0].ended and _state(got[1]) not in FINAL_STATES
            if got is not None and live:
                info, snapshot, at = got
                epoch, cursor = info.epoch, at
                await self._continue(request, sid, snapshot, text, grant, size)
            elif got is not None and named is not None:
                # One conversation, one run: a message after its end (a late or repeated
                # answer, a regenerated reply) must not start an agent run of its own.
                raise ApiError(
                    ErrorCode.ENDED,
                    f"the run of session {sid!r} has ended ({_state(got[1]) or 'ended'}): "
                    f"start a new conversation to run {model!r} again",
                    param="messages",
                )
            else:
                value = ext["input"] if "input" in ext else text
                if check_value(value) is not None:
                    raise ApiError(ErrorCode.BAD_VALUE, "the input nests too deep", param="wirepipe.input")
                epoch, cursor = await self._start(sid, model, value, got[0].epoch if got is not None else None), 0
        except StoreUnavailable as exc:
            raise ApiError(ErrorCode.UNAVAILABLE, "the session store is unreachable; retry") from exc
        cfg = gw.config
        rules = ServerConnection(ConnectionLimits(cfg.max_frame, cfg.rate, cfg.burst, cfg.rate_strikes, cfg.batch_max))
        rules.sid, rules.grant = sid, grant
        reply = ChatReply(api, sid, rules, model=model, stream=body.get("stream") is True, level=level, usage=usage)
        reply.begin(epoch, cursor)
        return reply

    async def _continue(
        self, request: Request, sid: str, snapshot: dict[str, Any], text: str, grant: Grant, size: int
    ) -> None:
        """The message of a conversation whose run is live: an answer to its oldest open ask, or a send."""
        asks = snapshot.get("asks") or []
        rid = self.api._rid(request)
        frame: Reply | SendFrame
        if asks:
            ask = asks[0]
            ok, value = match_choice(text, ask)
            if not ok:
                listed = ", ".join(str(c) for c in ask.get("choices") or [])
                raise ApiError(
                    ErrorCode.BAD_VALUE, f"{text.strip()!r} is not one of the choices: {listed}", param="messages"
                )
            frame = Reply(str(ask["id"]), rid, value)
        else:
            frame = SendFrame(text, rid)
        r: Replied = await submit(self.gw, sid, frame, grant, size)
        if not r.ok:
            code = ErrorCode(r.err or ErrorCode.INTERNAL)
            raise ApiError(code, MESSAGES.get(code, code.value), param="messages")

    async def _start(self, sid: str, model: str, value: Any, old: str | None) -> str:
        """Start a run of ``model`` under ``sid``; its epoch once its log exists.

        Raises:
            ApiError: what ``Runs.start`` refuses (``no_app``, ``sid_taken``,
                ``unavailable``), or ``unavailable`` when the run's log did
                not appear in time.
        """
        gw = self.gw
        try:
            await gw.runs.start(sid, model, value)
        except ProtocolError as exc:
            raise ApiError(exc.code, exc.msg) from None
        s = gw.runs.sessions.get(sid)
        if model in gw.apps and s is not None:
            if not s.ready.done():
                await asyncio.wait({s.ready}, timeout=READY_TIMEOUT)
            if s.refused:
                raise ApiError(ErrorCode.SID_TAKEN, f"sid {sid!r} already has a run (on another node)")
            if not s.ready.done() or s.ready.exception() is not None:
                raise ApiError(ErrorCode.UNAVAILABLE, "the run's log could not be created; retry")
            return s.epoch
        # Queued for a worker: wait for its log (of another epoch than the ended run's).
        created = getattr(gw.store, "wait_created", None)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            info = await gw.store.info(sid)
            if info is not None and info.epoch != old:
                return info.epoch
            left = deadline - time.monotonic()
            if created is None or left <= 0:
                raise ApiError(ErrorCode.UNAVAILABLE, "the run was queued and no worker has started it yet")
            await created(sid, min(left, 1.0), other_than=old)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "wirepipe"}


def _state(snapshot: dict[str, Any]) -> Any:
    status = snapshot.get("status")
    return status.get("state") if isinstance(status, dict) else None


class ChatReply(EventStream):
    """One chat reply: a run's events from a cursor, as chunks or one completion (see the module docstring)."""

    def __init__(
        self,
        api: HttpApi,
        sid: str,
        rules: ServerConnection,
        *,
        model: str,
        stream: bool,
        level: int | None,
        usage: bool = False,
    ) -> None:
        super().__init__(api, sid, rules, front=api.openai)
        self.model = model
        self.stream = stream
        self.usage = usage
        self.cid = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.renderer = Renderer(level)
        #: The run's latest state and the ask that ended the turn (the ``wirepipe`` extension).
        self.state: str | None = None
        self.ask: dict[str, Any] | None = None
        #: The reply's text so far (without ``stream``), and lines to add before it ends.
        self._parts: list[str] = []
        self._notes: list[str] = []
        self._finished = False
        session = (b"x-wirepipe-session", sid.encode())
        if stream:
            self.raw_headers = [*self.raw_headers, session]
        else:
            self.raw_headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-cache"), session]

    def begin(self, epoch: str, cursor: int) -> None:
        super().begin(epoch, cursor)
        self.epoch = epoch

    def _extra(self) -> dict[str, Any]:
        return {"session": self.sid, "epoch": self.epoch, "state": self.state, "ask": self.ask}

    async def _open(self, send: Send) -> None:
        line = SESSION_LINE.format(sid=self.sid)
        if self.stream:
            first = chunk(self.cid, self.created, self.model, line, role=True, extra={"session": self.sid})
            await self._write(send, sse(first))
        else:
            self._parts.append(line)

    async def _content(self, send: Send, text: str) -> None:
        if self.stream:
            await self._write(send, sse(chunk(self.cid, self.created, self.model, text)))
        else:
            self._parts.append(text)

    async def _events(self, send: Send, epoch: str, raws: list[bytes]) -> None:
        pieces: list[str] = []
        n, turn = 0, None
        for i, raw in enumerate(raws):
            ev: dict[str, Any] = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            n += 1
            k, d = ev.get("k"), ev.get("d")
            piece, turn = self.renderer.event(str(k), d)
            if piece:
                pieces.append(piece)
            if k == "status" and isinstance(d, dict):
                self.state = d.get("state")
            if turn is Turn.ASK and isinstance(d, dict):
                if self._answered(d.get("id"), raws[i + 1 :]):
                    turn = None  # answered already (by another client): the run goes on
                else:
                    self.ask = d
                    self.state = "waiting"
            if turn is not None:
                break
        before = self.rules.cursor
        if pieces:
            await self._content(send, "".join(pieces))
        self.rules.sent(n)
        session = self.api.gw.runs.sessions.get(self.sid)
        marks = session.lag_marks if session is not None and session.epoch == epoch else None
        self.front.delivered(marks, before, n, self._since)
        if turn is not None:
            await self._finish(send)

    def _answered(self, ask_id: Any, later: list[bytes]) -> bool:
        """True if the ask is settled: answered later in the batch, or no longer open in a run written here."""
        s = self.api.gw.runs.local_session(self.sid, self.epoch)
        if s is not None:
            return ask_id not in s.asks
        for raw in later:
            ev = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            if ev.get("k") == "answer" and isinstance(ev.get("d"), dict) and ev["d"].get("id") == ask_id:
                return True
        return False

    async def _finish(self, send: Send) -> None:
        """End the turn: the notes, the last chunk (``finish_reason: stop``) and ``[DONE]``, or the completion."""
        self.ended = self._finished = True
        if self._notes:
            await self._content(send, "".join(self._notes))
        if not self.stream:
            body = completion(self.cid, self.created, self.model, "".join(self._parts), self._extra())
            await self._write(send, dumps(body))
            return
        last = chunk(self.cid, self.created, self.model, finish="stop", extra=self._extra())
        out = sse(last)
        if self.usage:
            # the extension rides on the usage chunk too: a client that reads the last
            # chunk before [DONE] (docs/openai.md) finds the state there either way
            usage = chunk(self.cid, self.created, self.model, "", extra=self._extra())
            out += sse({**usage, "choices": [], "usage": USAGE})
        await self._write(send, out + sse("[DONE]"))

    async def _close(self, send: Send, failure: StoreUnavailable | None) -> None:
        if self._finished:
            return
        if failure is not None and self.stream:
            # The OpenAI SDKs raise an APIError for an `error` in a stream.
            body = error_body(STATUS[ErrorCode.UNAVAILABLE], ErrorCode.UNAVAILABLE, "the session store is unreachable")
            self.ended = self._finished = True
            await self._write(send, sse(body) + sse("[DONE]"))
            return
        if failure is not None:
            self._notes.append("\n\n*(the session store is unreachable: send a message again to continue)*\n")
        elif self.api.gw.runs.closing:
            if self.sid in self.api.gw.runs.sessions:  # its run is this gateway's: it stops with it
                self._notes.append("\n\n*(the gateway is shutting down: this run is cancelled with it)*\n")
                self.state = "cancelled"
            else:  # a worker's (or another node's) run goes on
                self._notes.append("\n\n*(the gateway is shutting down: send a message again to continue)*\n")
        else:
            self._notes.append("\n\n*(this session's log is gone)*\n")
        await self._finish(send)

    async def reset(self, reason: str, *, live: bool = False) -> None:
        """The log moved under the reply: another run of the sid (the turn ends), or retention trimmed it."""
        if reason != "lagged":
            self._notes.append("\n\n*(a new run of this session started)*\n")
            self.ended = True
            return
        got = await snapshot_of(self.api.gw, self.sid)
        if got is None or got[0].epoch != self.epoch:
            self.ended = True
            return
        super().begin(got[0].epoch, got[0].first - 1)
        note = "\n\n*(some events were trimmed by retention before this reply read them)*\n\n"
        if self.stream:
            self._pending.append(sse(chunk(self.cid, self.created, self.model, note)))  # written next
        else:
            self._parts.append(note)

    async def _idle(self, send: Send, changed: asyncio.Event) -> None:
        if self.stream:
            await super()._idle(send, changed)  # a `: ping` comment: SSE clients skip it
            return
        try:  # a JSON body can carry nothing before its end
            await asyncio.wait_for(changed.wait(), self._heartbeat)
        except TimeoutError:
            pass
