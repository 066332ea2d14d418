"""The Pipe: what an agent writes to (docs/protocol.md section 9).

``WebPipe`` has the interface of MetaGPT's ``StreamPipe`` (docs/metagpt.md,
"The adapter"): ``set_message``, ``get_message``, ``msg2stream`` (an SSE
``chat.completion.chunk`` line by default, as MetaGPT's), plus
``ask`` for a human's answer and ``close`` for the end of the run.  Every
write is safe from the event loop and from any thread, and never waits for a
client.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from types import TracebackType
from typing import Any

from protocol import FINAL_STATES, Kind, RunState, check_event, encode_event, ev_frame
from protocol.codec import text_head

from .chat import Renderer, chunk, sse
from .sessions import Session, on_loop

_pipe_ids = itertools.count(1)


class WebPipe:
    """The agent's end of one session.  Get one from ``Gateway.pipe(sid)``."""

    def __init__(self, session: Session) -> None:
        self._s = session
        self._text_lock = threading.Lock()
        #: The open text stream: its id and ``codec.text_head`` of it (None: no stream is open).
        self._stream: tuple[str, bytes] | None = None
        self._texts = itertools.count(1)
        self._prefix = f"p{next(_pipe_ids)}t"

    # --- identity -------------------------------------------------------------

    @property
    def sid(self) -> str:
        return self._s.sid

    @property
    def epoch(self) -> str:
        return self._s.epoch

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The gateway's event loop, where asks are settled."""
        return self._s.loop

    @property
    def head(self) -> int:
        """The seq of the last event written."""
        return self._s.head

    @property
    def closed(self) -> bool:
        """True once the final ``status`` was written."""
        return self._s.ended

    @property
    def cancelled(self) -> threading.Event:
        """Set when a client sends ``cancel``; a long-running agent should check it.

        A ``threading.Event`` (``.is_set()``, ``.wait(timeout)`` from a
        thread) that is also truthy once set: ``if pipe.cancelled: return``.
        """
        return self._s.cancelled

    @property
    def cancel_reason(self) -> str | None:
        return self._s.cancel_reason

    def on_cancel(self, fn: Any) -> None:
        """Call ``fn(reason)`` (on the event loop) when a client cancels the run."""
        self._s.on_cancel.append(fn)

    # --- writing ----------------------------------------------------------------

    def emit(self, k: str, d: Any) -> int:
        """Append one event of kind ``k``; returns its seq (0 if the run has ended or a
        middleware dropped it).

        Raises:
            ValueError: ``k`` is not a non-empty string, a known kind's
                payload lacks a required key, or ``d`` cannot be encoded
                (nests deeper than ``protocol.MAX_DEPTH`` maps/arrays, a map
                key that is not a string or a number).  Nothing is appended and no seq is used.
            BacklogFull: the store has been unreachable so long that the
                session's backlog is full (docs/reliability.md).
        """
        why = check_event(k, d)
        if why is not None:
            raise ValueError(why)
        return self._s.emit(k, d)

    def set_message(self, msg: Any) -> int:
        """Append ``msg`` as an event; returns its seq.

        A ``str`` becomes a ``text`` delta on the current text stream; a dict
        ``{"k": kind, "d": payload}`` (or an object with ``k`` and ``d``)
        becomes that event; an object with ``role`` and ``content`` (such as
        MetaGPT's ``Message``) becomes a ``message`` event.

        Raises:
            TypeError: ``msg`` is none of those.
            ValueError: a known kind's payload lacks a required key, or the
                payload cannot be encoded (see ``emit``).
            BacklogFull: see ``emit``.
        """
        if isinstance(msg, str):  # most writes: a delta of the current text stream
            # The same as self.text(msg), inlined.  Reading the stream needs
            # no lock (an attribute read is atomic, and its id and head come
            # in one tuple); opening one does, so that two threads do not open two.
            stream = self._stream
            if stream is None:
                stream = self._open_text()
            return self._s.emit("text", {"id": stream[0], "delta": msg}, checked=True, plain=True, text=stream[1])
        if isinstance(msg, dict):
            k: Any = msg.get("k")
            d = msg.get("d")
            if k is None and "k" not in msg:
                raise TypeError("set_message takes a str or a {'k': kind, 'd': payload} dict")
        else:
            ev = _as_event(msg)
            if ev is None:
                raise TypeError(f"set_message cannot send a {type(msg).__name__}")
            k, d = ev
        why = check_event(k, d)
        if why is not None:
            raise ValueError(why)
        return self._s.emit(k, d)

    def _open_text(self) -> tuple[str, bytes]:
        """The current text stream (id, head), a new one if none is open.  Under the text lock."""
        with self._text_lock:
            return self._stream or self._new_stream()

    def _new_stream(self) -> tuple[str, bytes]:
        tid = f"{self._prefix}{next(self._texts)}"
        self._stream = stream = (tid, text_head(tid))
        return stream

    def text(self, delta: str, *, id: str | None = None, end: bool = False) -> int:
        """Append a ``text`` delta to stream ``id`` (default: the current stream)."""
        head = None
        with self._text_lock:
            if id is None:
                id, head = self._stream or self._new_stream()
                if end:
                    self._stream = None
        d: dict[str, Any] = {"id": id, "delta": delta}
        if end:
            d["end"] = True
        # An empty end is how a run closes its stream: it always fits the backlog.
        built = isinstance(delta, str) and isinstance(id, str)
        text = head if built and not end else None  # {"id", "delta"} of the open stream
        return self._s.emit(Kind.TEXT, d, checked=built, plain=built, force=end and not delta, text=text)

    def end_text(self) -> int:
        """End the current text stream; the next ``str`` starts a new one.  0 if none is open."""
        with self._text_lock:
            if self._stream is None:
                return 0
        return self.text("", end=True)

    def msg2stream(self, msg: Any, format: str = "sse") -> bytes:
        """What ``msg`` would be on a stream, without appending it (docs/openai.md, "msg2stream").

        ``format="sse"`` (the default: MetaGPT's ``StreamPipe.msg2stream``
        contract, so code written for it can yield this into an HTTP
        response): one server-sent event, ``data: `` and a
        ``chat.completion.chunk`` whose ``delta.content`` is ``msg``: a str
        as it is, None as null, anything ``set_message`` takes (an event, a
        message) rendered as markdown as ``/v1/chat/completions`` renders it
        (``gateway.chat.Renderer``, every log level); then a blank line, which
        ends the event (MetaGPT writes one newline only).

        ``format="frame"``: the ``ev`` frame bytes ``msg`` would become; the
        seq in it is the next one, the real event may get a later one.

        Raises:
            ValueError: another ``format``.
        """
        ev: tuple[str, Any] | None
        if format == "sse":
            if msg is None or isinstance(msg, str):
                content = msg
            else:
                ev = _as_event(msg) or (Kind.MESSAGE.value, {"role": "agent", "content": msg})
                content, _ = Renderer(level=0).event(*ev)
            body = chunk(f"chatcmpl-{self.epoch}", int(time.time()), self._s.app or "wirepipe", content)
            return sse(body).encode()
        if format != "frame":
            raise ValueError(f"format is 'sse' or 'frame', not {format!r}")
        if isinstance(msg, str):
            stream = self._stream
            ev = Kind.TEXT.value, {"id": stream[0] if stream else f"{self._prefix}0", "delta": msg}
        else:
            # The same event set_message would append; anything else is wrapped.
            ev = _as_event(msg) or (Kind.MESSAGE.value, {"role": "agent", "content": msg})
        k, d = ev
        return ev_frame(encode_event(self._s.head + 1, k, time.time(), d))

    # --- reading what clients send -----------------------------------------------

    def get_message(self, timeout: float | None = 3) -> Any:
        """The ``data`` of the next client ``send``, or None after ``timeout`` seconds.

        Blocks the calling thread.  On the event loop's own thread it never
        blocks (that would stop the gateway): it returns what is queued, or None.
        """
        if on_loop(self._s.loop):
            return self._s.take_nowait()
        fut = asyncio.run_coroutine_threadsafe(self.aget_message(timeout), self._s.loop)
        return fut.result()

    async def aget_message(self, timeout: float | None = None) -> Any:
        """The ``data`` of the next client ``send``; None after ``timeout`` seconds."""
        return await self._s.take(timeout)

    # --- asking a human ---------------------------------------------------------

    async def ask(
        self,
        prompt: str,
        choices: list[Any] | None = None,
        default: Any = None,
        timeout: float | None = None,
        *,
        other: bool = False,
        **extra: Any,
    ) -> Any:
        """Ask every client; the first valid ``reply`` wins and is returned.

        With ``choices``, a reply must be one of them unless ``other`` is true.
        After ``timeout`` seconds the ask settles to ``default``.  If the run
        has ended, returns ``default`` at once.
        """
        return await self._s.ask(prompt, choices=choices, default=default, timeout=timeout, other=other, **extra)

    def ask_sync(
        self,
        prompt: str,
        choices: list[Any] | None = None,
        default: Any = None,
        timeout: float | None = None,
        *,
        other: bool = False,
        **extra: Any,
    ) -> Any:
        """Blocking ``ask`` for agent threads.

        Raises:
            RuntimeError: called on the event loop's thread (it would
                deadlock the gateway; use ``await pipe.ask(...)``).
        """
        if on_loop(self._s.loop):
            raise RuntimeError("ask_sync() on the event loop would block it; await pipe.ask()")
        coro = self.ask(prompt, choices, default, timeout, other=other, **extra)
        return asyncio.run_coroutine_threadsafe(coro, self._s.loop).result()

    # --- the end ------------------------------------------------------------------

    def close(self, state: str = RunState.DONE, detail: str | None = None) -> None:
        """Append the final ``status`` (``done``, ``failed`` or ``cancelled``); idempotent.

        Raises:
            ValueError: ``state`` is not a final state.
        """
        if state not in FINAL_STATES:  # before end_text: a refused close appends nothing
            raise ValueError(f"close state must be one of {sorted(FINAL_STATES)}, not {state!r}")
        self.end_text()
        self._s.close(state, detail)

    async def drained(self) -> None:
        """Wait until everything written so far is in the store (readable by clients)."""
        await self._s.drained()

    def __enter__(self) -> WebPipe:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._finish(et)

    async def __aenter__(self) -> WebPipe:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish(et)

    def _finish(self, et: type[BaseException] | None) -> None:
        if et is None:
            self.close(RunState.DONE)
        elif issubclass(et, (asyncio.CancelledError, KeyboardInterrupt)):
            self.close(RunState.CANCELLED)
        else:
            self.close(RunState.FAILED, detail=et.__name__)


def _as_event(msg: Any) -> tuple[str, Any] | None:
    """The (kind, payload) a non-str ``set_message`` argument becomes, or None."""
    if isinstance(msg, dict):
        return (msg["k"], msg.get("d")) if "k" in msg else None
    k = getattr(msg, "k", None)
    if isinstance(k, str):
        return k, getattr(msg, "d", None)
    role, content = getattr(msg, "role", None), getattr(msg, "content", None)
    if role is not None and content is not None:
        m: dict[str, Any] = {"role": str(role), "content": content}
        for key in ("name", "cause_by", "sent_from"):
            v = getattr(msg, key, None)
            if v:
                m["cause" if key == "cause_by" else key] = str(v)
        return Kind.MESSAGE.value, m
    return None
