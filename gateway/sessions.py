"""Sessions: the writer side of one run in this process.

A ``Session`` owns what only the writer may own: the next seq, the open asks,
the messages clients sent to the agent, the reply outcomes by ``rid``, and
the cancel flag.  Agent threads append through ``emit`` under a plain lock
(seq assignment and encoding happen there, so any number of threads get one
gap-free order); a flusher on the event loop hands the pending events to the
store in batches.  Readers never touch a session: they read the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgpack

from protocol import (
    ErrorCode,
    Grant,
    Kind,
    Replied,
    RunState,
    encode_event,
    is_final,
)
from protocol.events import FINAL_STATES

from .stores import Appended, Store

log = logging.getLogger("wirepipe.session")

#: Reply outcomes remembered per session, for idempotent re-sends by rid.
MAX_REMEMBERED_RIDS: Final = 10_000
#: Events handed to the store in one append, at most (a long backlog is
#: written in slices, so that no single store call blocks for long).
MAX_FLUSH_BATCH: Final = 1000
#: Kinds whose payload the snapshot reducer keeps: they are decoded back from
#: the encoded event so that an agent mutating its dict later changes nothing.
_KEPT_KINDS: Final = frozenset({Kind.PLAN, Kind.TASK, Kind.ASK, Kind.STATUS})


class Flag(threading.Event):
    """A ``threading.Event`` that is also truthy when set: ``if pipe.cancelled: ...``."""

    def __bool__(self) -> bool:
        return self.is_set()


class Session:
    """The writer side of one run: seq, asks, inbox, replies, cancel."""

    def __init__(
        self,
        sid: str,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        predecessor: Session | None = None,
    ) -> None:
        self.sid = sid
        self.epoch = secrets.token_hex(8)
        self.store = store
        self.loop = loop
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: list[Appended] = []
        self._flushing = False
        self._drained: list[asyncio.Future[None]] = []
        self._ask_ids = itertools.count(1)
        self.ended = False
        self.predecessor = predecessor
        self._end_stored = False
        self.ready: asyncio.Task[None] = loop.create_task(self._create())
        self.asks: dict[str, tuple[dict[str, Any], asyncio.Future[Any]]] = {}
        self.settled: set[str] = set()
        self.replies: OrderedDict[str, Replied] = OrderedDict()
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = Flag()
        self.cancel_reason: str | None = None
        self.on_cancel: list[Callable[[str | None], None]] = []
        self.task: asyncio.Future[Any] | None = None  # the app run, when the gateway started it
        self.dropped = 0

    # --- writing (any thread) ---------------------------------------------

    @property
    def head(self) -> int:
        """The last seq handed out (not necessarily stored yet)."""
        return self._seq

    def emit(self, k: str, d: Any, ts: float | None = None) -> int:
        """Append one event; returns its seq (0 if the run has ended).  Never blocks on I/O."""
        with self._lock:
            if self.ended:
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("session %s: %s event after the run ended: dropped", self.sid, str(k))
                return 0
            self._seq = seq = self._seq + 1
            raw = encode_event(seq, k, time.time() if ts is None else ts, d)
            if k in _KEPT_KINDS:
                d = msgpack.unpackb(raw, raw=False)["d"]
            self._pending.append(Appended(seq, k, d, raw))
            if is_final(k, d):
                self.ended = True
            kick = not self._flushing
            self._flushing = True
        if kick:
            if _on_loop(self.loop):
                self.loop.call_soon(self._start_flush)
            else:
                try:
                    self.loop.call_soon_threadsafe(self._start_flush)
                except RuntimeError:  # loop closed: the gateway is gone
                    pass
        return seq

    def _start_flush(self) -> None:
        self.loop.create_task(self._flush())

    async def _create(self) -> None:
        if self.predecessor is not None:
            # The run this one replaces may still be writing its last events
            # and ending its log: it finishes first, then the new log is made.
            await self.predecessor.drained()
            self.predecessor = None
        await self.store.create(self.sid, self.epoch)

    async def _flush(self) -> None:
        await self.ready
        while True:
            with self._lock:
                batch = self._pending[:MAX_FLUSH_BATCH]
                del self._pending[:MAX_FLUSH_BATCH]
                if not batch and not self.ended:
                    self._flushing = False  # under the lock: the next emit starts a new flush
                    break
            if batch:
                await self._retry(self.store.append, self.sid, batch)
                continue
            # After the final status nothing more can be emitted: end the log
            # while still flushing, so that drained() waits for this too.
            if not self._end_stored:
                self._end_stored = True
                await self._retry(self.store.end, self.sid)
            with self._lock:
                self._flushing = False
            break
        futs, self._drained = self._drained, []
        for fut in futs:
            if not fut.done():
                fut.set_result(None)

    async def _retry(self, op: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a store write until it succeeds: events are never dropped for a store hiccup."""
        delay = 0.05
        while True:
            try:
                await op(*args)
                return
            except (KeyError, ValueError):
                raise  # a bug, not a hiccup
            except Exception:
                log.exception("session %s: store write failed; retrying in %.2fs", self.sid, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def drained(self) -> None:
        """Wait until every event emitted so far is in the store."""
        await self.ready
        with self._lock:
            if not self._flushing:
                return
            fut = self.loop.create_future()
            self._drained.append(fut)
        await fut

    # --- asks (event loop) --------------------------------------------------

    async def ask(
        self,
        prompt: str,
        *,
        choices: list[Any] | None = None,
        default: Any = None,
        timeout: float | None = None,
        other: bool = False,
        **extra: Any,
    ) -> Any:
        """Append an ``ask`` and wait for its answer (``default`` after ``timeout``)."""
        ask_id = f"a{next(self._ask_ids)}"
        d: dict[str, Any] = {"id": ask_id, "prompt": prompt, **extra}
        if choices is not None:
            d["choices"] = list(choices)
            if other:
                d["other"] = True
        if default is not None:
            d["default"] = default
        if timeout is not None:
            d["timeout"] = timeout
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.asks[ask_id] = (d, fut)
        if not self.emit(Kind.ASK, d):
            del self.asks[ask_id]
            return default
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self.settle(ask_id, default, by="timeout")
            return fut.result()
        finally:
            if not fut.done():  # the asking coroutine was cancelled
                self.asks.pop(ask_id, None)
                self.settled.add(ask_id)
                fut.cancel()
                self.emit(Kind.ANSWER, {"id": ask_id, "value": None, "by": "closed"})

    def settle(self, ask_id: str, value: Any, *, by: str) -> bool:
        """First answer wins: resolve the ask and append ``answer``.  False if not open."""
        entry = self.asks.pop(ask_id, None)
        if entry is None:
            return False
        self.settled.add(ask_id)
        _, fut = entry
        self.emit(Kind.ANSWER, {"id": ask_id, "value": value, "by": by})
        if not fut.done():
            fut.set_result(value)
        return True

    def answer(self, ask_id: str, value: Any, *, by: str = "client") -> str | None:
        """Settle an ask from outside; returns None on success or the error code."""
        entry = self.asks.get(ask_id)
        if entry is None:
            return ErrorCode.ASK_CLOSED if ask_id in self.settled else ErrorCode.UNKNOWN_ASK
        d, _ = entry
        choices = d.get("choices")
        if choices is not None and not d.get("other") and value not in choices:
            return ErrorCode.BAD_VALUE
        self.settle(ask_id, value, by=by)
        return None

    # --- requests from clients (event loop) --------------------------------

    def _remember(self, r: Replied) -> Replied:
        self.replies[r.rid] = r
        if len(self.replies) > MAX_REMEMBERED_RIDS:
            self.replies.popitem(last=False)
        return r

    def request(self, rid: str, grant: Grant, act: Callable[[], str | None]) -> Replied:
        """Run one client request once per rid; the same rid gets the first outcome."""
        done = self.replies.get(rid)
        if done is not None:
            return done
        if grant is not Grant.OPERATOR:
            return self._remember(Replied(rid, False, ErrorCode.FORBIDDEN))
        err = act()
        return self._remember(Replied(rid, err is None, err))

    def deliver(self, data: Any) -> str | None:
        """A client ``send``: queue ``data`` for the agent's ``get_message``."""
        if self.ended:
            return ErrorCode.ENDED
        self.inbox.put_nowait(data)
        return None

    def cancel(self, reason: str | None) -> str | None:
        """A client ``cancel``: flag the run, and stop it if the gateway started it."""
        if self.ended:
            return ErrorCode.ENDED
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()
            for fn in list(self.on_cancel):
                try:
                    fn(reason)
                except Exception:
                    log.exception("session %s: cancel callback failed", self.sid)
            if self.task is not None:
                self.task.cancel()
        return None

    # --- the end ------------------------------------------------------------

    def close(self, state: str = RunState.DONE, detail: str | None = None) -> None:
        """Append the final ``status`` (once); open asks are closed first."""
        if state not in FINAL_STATES:
            raise ValueError(f"close state must be one of {sorted(FINAL_STATES)}, not {state!r}")
        if self.ended:
            return
        if not _on_loop(self.loop):
            # Open asks live on the loop, and their answers must precede the
            # final status: do the whole close there.
            try:
                asyncio.run_coroutine_threadsafe(self._aclose(state, detail), self.loop).result()
            except RuntimeError:  # the loop is closed: nobody is left to tell
                pass
            return
        self._close_asks()
        d: dict[str, Any] = {"state": state}
        if detail is not None:
            d["detail"] = detail
        self.emit(Kind.STATUS, d)

    async def _aclose(self, state: str, detail: str | None) -> None:
        self.close(state, detail)

    def _close_asks(self) -> None:
        for ask_id in list(self.asks):
            entry = self.asks.pop(ask_id)
            self.settled.add(ask_id)
            self.emit(Kind.ANSWER, {"id": ask_id, "value": None, "by": "closed"})
            if not entry[1].done():
                entry[1].cancel()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
