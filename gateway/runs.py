"""The runs of one gateway: the registry of sessions in this process, and the app runner.

``Runs`` is where a reader finds everything about the life of a run here:
the session of each sid and its Pipe (``pipe``), starting a registered app
(``start_run``) and ending it with the right final status (``_run_app``),
clients that wait for a run that has not started (``await_session``), what a
client of a sid whose log is missing gets (``missing_log``), forgetting
ended runs once their logs expired (``sweep``), ending the runs of writers
that died on any node (``reap``, on a store with leases), and stopping every run when
the gateway closes (``stop``).  Connections use it; it knows nothing of
sockets but the one a waiting client may close.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from protocol import ErrorCode, Kind, ProtocolError, RunState, StoreUnavailable, is_final
from protocol.codec import SID_RE

from .config import App, Config
from .metrics import Metrics
from .middleware import Middleware
from .pipe import WebPipe
from .sessions import Limits, Session, ending, failed_ending, on_loop
from .stores import Leases, Store, leases_of, queue_of

if TYPE_CHECKING:
    from .connection import Socket

log = logging.getLogger("wirepipe")

#: The ``detail`` of a run that another node ended because its writer's lease lapsed.
LAPSED_DETAIL = "the writer's lease lapsed (its process died or lost the store)"
#: Seconds a queued start holds its sid against other starts while it waits for a worker
#: (a worker takes a start whose reservation lapsed too, unless another run took the sid).
START_TTL = 300.0


class Runs:
    """The sessions this process writes, and the registered apps it runs."""

    def __init__(
        self,
        store: Store,
        config: Config,
        apps: dict[str, App],
        metrics: Metrics,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.store = store
        self.middleware = tuple(middleware)
        self.config = config
        self.apps = apps
        self.metrics = metrics
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the gateway starts
        self.closing = False
        #: The session of each sid run here (the latest run), and its Pipe.
        self.sessions: dict[str, Session] = {}
        self._pipes: dict[str, WebPipe] = {}
        self._born: dict[str, asyncio.Future[Session]] = {}  # sids clients wait for
        self._born_waiters: dict[str, int] = {}
        #: Apps that worker processes run (refreshed by the janitor; ``refresh_apps``).
        self.remote_apps: list[str] = []

    # --- sessions ---------------------------------------------------------------------

    def pipe(self, sid: str, *, reserved_by: str | None = None) -> WebPipe:
        """The Pipe of session ``sid``: the open run's, or a new run's (see ``Gateway.pipe``).

        ``reserved_by``: a new run takes the sid over from this queued
        start's reservation (``wirepipe worker``).
        """
        if not SID_RE.fullmatch(sid):
            raise ValueError(f"invalid sid {sid!r}: 1-128 chars of [A-Za-z0-9._:-]")
        loop = self.loop
        if loop is None or self.closing:
            raise RuntimeError("the gateway is not running")
        if not on_loop(loop):

            async def make() -> WebPipe:
                return self.pipe(sid, reserved_by=reserved_by)

            return asyncio.run_coroutine_threadsafe(make(), loop).result()
        s = self.sessions.get(sid)
        if s is None or s.ended:
            cfg = self.config
            limits = Limits(cfg.backlog_events, cfg.backlog_bytes, cfg.inbox_messages, cfg.inbox_bytes)
            s = Session(
                sid,
                self.store,
                loop,
                predecessor=s,
                limits=limits,
                middleware=self.middleware,
                reserved_by=reserved_by,
                metrics=self.metrics,
            )
            self._pipes[sid] = WebPipe(s)
            self.sessions[sid] = s
            fut = self._born.pop(sid, None)
            if fut is not None and not fut.done():
                fut.set_result(s)
        return self._pipes[sid]

    def local_session(self, sid: str, epoch: str) -> Session | None:
        """The session of ``sid`` if this process writes it, in ``epoch``."""
        s = self.sessions.get(sid)
        return s if s is not None and s.epoch == epoch else None

    def missing_log(self, sid: str) -> Exception:
        """What a client of ``sid`` gets when its log is not in the store.

        If this process runs the session, its log was lost (a store restarted
        without persistence) and is being re-created: retry soon.  Otherwise
        there is no such session.
        """
        s = self.sessions.get(sid)
        if s is not None and not s.finished:
            s.poke()
            return StoreUnavailable(f"the log of {sid!r} is being re-created")
        return ProtocolError(ErrorCode.NO_SESSION, f"no session {sid!r}")

    async def await_session(
        self, sid: str, ws: Socket, *, starter: bool = False, not_epoch: str | None = None
    ) -> Session | None:
        """The session a new client of ``sid`` joins; waits for a run if there is none.

        Returns None for a log served from the store alone (its run is not
        in this process).  A run refused because another node holds the sid
        counts as none, except for its ``starter``, who gets ``sid_taken``.
        A log of epoch ``not_epoch`` counts as none (the ended run that a
        queued start replaces).

        Raises:
            ProtocolError: ``no_session`` when the gateway does not wait for runs.
            StoreUnavailable: the store fails while the run's log is created.
            ConnectionClosed: the client left while waiting.
        """
        while True:
            s = self.sessions.get(sid)
            if s is not None and s.refused and not starter:
                s = None
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
            info = await self.store.info(sid)
            if info is not None and info.epoch != not_epoch:
                return None
            if not self.config.wait_for_run and not starter:
                raise ProtocolError(ErrorCode.NO_SESSION, f"no session {sid!r}")
            fut = self._born.get(sid)
            if fut is None or fut.done():
                fut = self._born[sid] = asyncio.get_running_loop().create_future()
            closed: asyncio.Future[Any] = asyncio.ensure_future(ws.wait_closed())
            waiting: set[asyncio.Future[Any]] = {fut, closed}
            created = getattr(self.store, "wait_created", None)
            if created is not None:  # a store shared with other nodes tells when a log appears
                waiting.add(asyncio.ensure_future(created(sid, 1.0, other_than=not_epoch)))
            self._born_waiters[sid] = self._born_waiters.get(sid, 0) + 1
            try:
                # A run started here resolves fut; one started on another node
                # sharing the store shows up in the store: look again now and then.
                await asyncio.wait(waiting, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiting:
                    if w is not fut:
                        w.cancel()
                left = self._born_waiters[sid] - 1
                if left:
                    self._born_waiters[sid] = left
                else:  # nobody waits for this sid any more: forget it
                    del self._born_waiters[sid]
                    if self._born.get(sid) is fut and not fut.done():
                        del self._born[sid]
            if closed.done():
                await ws.recv()  # raises ConnectionClosed: the client left

    # --- apps --------------------------------------------------------------------------

    async def start(self, sid: str, app_name: str, value: Any) -> str | None:
        """A client's ``hello.start``: run ``app_name`` here, or queue it for a worker that runs it.

        Returns, for a queued start, the epoch of the ended run whose log it
        will replace (None: none): the starter waits for another one.

        Raises:
            ProtocolError: ``no_app`` if neither this process nor a live
                worker runs it; ``sid_taken`` if ``sid`` has a run (or a
                queued start) that has not ended, on any node;
                ``unavailable`` if the app's start queue is full.
            StoreUnavailable: the store cannot be reached.
        """
        if app_name in self.apps:
            self.start_run(sid, app_name, value)
            return None
        queue, leases = queue_of(self.store), leases_of(self.store)
        if queue is None or leases is None or app_name not in await queue.advertised():
            raise ProtocolError(ErrorCode.NO_APP, f"no app {app_name!r}")
        s = self.sessions.get(sid)
        if s is not None and not s.ended:
            raise ProtocolError(ErrorCode.SID_TAKEN, f"sid {sid!r} already has a run")
        holder = f"start-{secrets.token_hex(8)}"
        old = await self.store.info(sid)
        if not await leases.reserve(sid, holder, START_TTL) and not (
            await ending(self.store, sid, leases.lease_ttl or 1.0) and await leases.reserve(sid, holder, START_TTL)
        ):
            raise ProtocolError(ErrorCode.SID_TAKEN, f"sid {sid!r} already has a run (on another node)")
        try:
            queued = await queue.enqueue_start(app_name, {"sid": sid, "input": value, "holder": holder})
        except BaseException:
            await asyncio.shield(self._unreserve(leases, sid, holder))
            raise
        if not queued:
            await self._unreserve(leases, sid, holder)
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"the start queue of {app_name!r} is full; retry")
        self.metrics.runs_started += 1
        log.info("session %s: a run of %s queued for a worker", sid, app_name)
        return old.epoch if old is not None else None

    @staticmethod
    async def _unreserve(leases: Leases, sid: str, holder: str) -> None:
        """A start that was not queued gives its sid back (best effort: it lapses anyway)."""
        try:
            await leases.release(sid, holder)
        except Exception as exc:
            log.warning("session %s: its reservation stays until it lapses: %s: %s", sid, type(exc).__name__, exc)

    async def refresh_apps(self) -> None:
        """Learn which apps worker processes run (for ``/apps``).

        Raises:
            StoreUnavailable: the store cannot be reached.
        """
        queue = queue_of(self.store)
        if queue is not None:
            self.remote_apps = await queue.advertised()

    def start_run(self, sid: str, app_name: str, value: Any, *, reserved_by: str | None = None) -> WebPipe:
        """Start a run of the registered app ``app_name`` under ``sid`` (see ``Gateway.start_run``)."""
        app = self.apps.get(app_name)
        if app is None:
            raise ProtocolError(ErrorCode.NO_APP, f"no app {app_name!r}")
        s = self.sessions.get(sid)
        if s is not None and not s.ended:
            raise ProtocolError(ErrorCode.SID_TAKEN, f"sid {sid!r} already has a run")
        pipe = self.pipe(sid, reserved_by=reserved_by)
        session = self.sessions[sid]
        session.app = app_name
        session.task = asyncio.ensure_future(self._run_app(app, pipe, value, session))
        self.metrics.runs_started += 1
        return pipe

    async def _run_app(self, app: App, pipe: WebPipe, value: Any, session: Session) -> None:
        if leases_of(self.store) is not None:
            # The sid must be ours on every node first: a run refused
            # (sid_taken) never calls the app.
            try:
                await asyncio.shield(session.ready)
            except asyncio.CancelledError:
                pipe.close(RunState.CANCELLED, detail=pipe.cancel_reason or "cancelled")
                return
            except Exception:
                return
        pipe.emit("status", {"state": RunState.RUNNING})
        started = time.monotonic()
        log.info("run %s started: app %s", pipe.sid, session.app)
        try:
            if inspect.iscoroutinefunction(app):
                await app(pipe, value)
            else:
                result = await asyncio.to_thread(app, pipe, value)
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            self._ended(pipe, session, started, RunState.CANCELLED, pipe.cancel_reason or "cancelled")
            return
        except Exception as exc:
            log.exception("app run %s failed", pipe.sid)
            self._ended(pipe, session, started, RunState.FAILED, _public_detail(exc))
            return
        if pipe.cancelled.is_set():
            self._ended(pipe, session, started, RunState.CANCELLED, pipe.cancel_reason or "cancelled")
        else:
            self._ended(pipe, session, started, RunState.DONE)

    @staticmethod
    def _ended(pipe: WebPipe, session: Session, started: float, state: RunState, detail: str | None = None) -> None:
        """End the run ``state`` unless the app ended it already, and say how it ended in one line."""
        pipe.close(state, detail=detail)
        final = session.final_status or {"state": state, "detail": detail}
        shown = f" ({final['detail']})" if final.get("detail") else ""
        log.info("run %s ended %s after %.1f s%s", pipe.sid, final["state"], time.monotonic() - started, shown)

    # --- the end ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Forget ended runs whose logs the store has expired; returns how many.

        Only runs whose end is stored count: a run that ended before its log
        was even created is not forgotten until its log exists and expires.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """
        gone = [sid for sid, s in list(self.sessions.items()) if s.finished and await self.store.info(sid) is None]
        for sid in gone:
            s = self.sessions.get(sid)
            if s is not None and s.finished:  # not replaced by a new run meanwhile
                del self.sessions[sid]
                del self._pipes[sid]
        return len(gone)

    async def reap(self) -> int:
        """End the runs whose writer's lease lapsed (their node died); returns how many.

        For each sid whose lease expired, on any node: take the lease
        (atomically: one node wins), close its open asks (``answer`` by
        ``closed``), append ``status failed`` with ``LAPSED_DETAIL``, end the
        log and give the lease up.  Nothing on a store without leases.

        Raises:
            StoreUnavailable: the store cannot be reached (the next sweep retries).
        """
        leases = leases_of(self.store)
        if leases is None:
            return 0
        n = 0
        for sid in await leases.lapsed():
            s = self.sessions.get(sid)
            if s is not None and not s.finished:
                continue  # written here: its own renewer keeps (or loses) the lease
            holder = f"reaper-{secrets.token_hex(8)}"
            if not await leases.claim(sid, holder):
                continue  # still held: renewed since, or another node reaps it
            try:
                if await self._finalise(leases, sid, holder):
                    n += 1
            finally:
                await leases.release(sid, holder)
        return n

    async def _finalise(self, leases: Leases, sid: str, holder: str) -> bool:
        """End a dead writer's run under ``holder``'s lease; False if it had ended (or has no log)."""
        info = await self.store.info(sid)
        if info is None or info.ended:
            return False
        snapshot, head = await self.store.snapshot(sid)
        status = snapshot.get("status")
        ended = isinstance(status, dict) and is_final(Kind.STATUS, status)
        asks = [ask["id"] for ask in snapshot.get("asks") or ()]
        events = failed_ending(head, asks, None if ended else LAPSED_DETAIL)
        # Ended first, then the closing events: whoever sees the final status
        # finds the log already ended (its retention already counting).
        await leases.end(sid, holder=holder)
        if events:
            await leases.append(sid, events, epoch=info.epoch, holder=holder)
        log.warning("session %s: its writer's lease lapsed; the run is ended failed here", sid)
        return True

    def forget(self, session: Session) -> None:
        """Drop a finished run's session (a worker keeps nothing of the runs it ended)."""
        if self.sessions.get(session.sid) is session and session.finished:
            del self.sessions[session.sid]
            del self._pipes[session.sid]

    async def stop(self, reason: str = "the gateway is shutting down") -> None:
        """Cancel the runs (their status says ``reason``); give their last events ``drain_timeout`` to be stored."""
        self.closing = True
        for s in list(self.sessions.values()):
            if s.task is not None and not s.task.done():
                if s.cancel_reason is None:
                    s.cancel_reason = reason
                s.task.cancel()
        tasks = [s.task for s in self.sessions.values() if s.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        sessions = list(self.sessions.values())
        drains = [asyncio.ensure_future(s.drained()) for s in sessions]
        if drains:
            await asyncio.wait(drains, timeout=self.config.drain_timeout)
        for s, fut in zip(sessions, drains, strict=True):
            fut.cancel()
            if s.backlog or not s.writer.done():
                if s.backlog:
                    log.error(
                        "closing: session %s: %d events not stored (%s)",
                        s.sid,
                        s.backlog,
                        s.trouble or "the store did not answer",
                    )
                s.writer.cancel()
        await asyncio.gather(*(s.writer for s in sessions), return_exceptions=True)
        for born in self._born.values():
            born.cancel()


def _public_detail(exc: BaseException) -> str:
    """What clients see of a failed run: the type and the first line, short.

    The full text (which may quote inputs, configs or environments) stays in
    the gateway's log.
    """
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
