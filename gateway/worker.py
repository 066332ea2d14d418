"""Agents anywhere: a Pipe straight to Redis, and the worker that runs queued starts.

Neither needs a WebSocket server.  Clients connect to any gateway sharing
the Redis (``wirepipe serve --redis URL``) and see the run as if it ran
there: its events, its asks (answered through any gateway: the writer takes
requests through Redis), its cancel.  docs/scaling.md draws the topology.

``open_pipe(redis, sid)`` (async) and ``open_pipe_sync(redis, sid)`` (any
thread: a Celery, arq or RQ task, a Ray actor, a plain script) give an agent
a Pipe whose writer lives in the calling process::

    async with open_pipe("redis://127.0.0.1:6379/0", "job-42") as pipe:
        pipe.set_message("working...")
        answer = await pipe.ask("Deploy?", choices=["yes", "no"])

Leaving the block ends the run: ``done``, ``failed`` (an exception; its type
and first line are shown to clients) or ``cancelled``; what was written is
stored before it returns (within ``drain_timeout``).  A sid with a live run
on any node raises ``ProtocolError`` ``sid_taken``.

``Worker`` (``wirepipe worker --redis URL --app NAME=module:callable``) runs
the apps that gateways queue: a gateway started without an app queues a
client's ``hello.start`` of it on a Redis Streams consumer group; a worker
takes it (XREADGROUP), takes the sid over from the gateway's reservation,
acknowledges it and runs it, at most ``concurrency`` at a time.  A start a
worker took and never acknowledged (it died first) is claimed by another
worker after ``claim_idle`` seconds (XAUTOCLAIM).  A worker that dies
mid-run loses its lease and any gateway ends the run ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from protocol import ProtocolError, RunState, StoreUnavailable

from .config import App, Config
from .metrics import Metrics
from .middleware import Middleware
from .pipe import WebPipe
from .runs import Runs, _public_detail
from .sessions import Limits, Session
from .stores import Retention

log = logging.getLogger("wirepipe.worker")

__all__ = ["Worker", "open_pipe", "open_pipe_sync"]


def _store(redis: Any, **kw: Any) -> tuple[Any, bool]:
    """A RedisStore for ``redis`` (a URL, or a store the caller owns), and whether we own it."""
    from .stores.redis import RedisStore  # needs the redis package (pip install wirepipe[redis])

    if isinstance(redis, RedisStore):
        return redis, False
    return RedisStore(redis, **kw), True


@contextlib.asynccontextmanager
async def open_pipe(
    redis: Any,
    sid: str,
    *,
    prefix: str = "wirepipe:",
    retention: Retention | None = None,
    lease_ttl: float = 10.0,
    limits: Limits | None = None,
    drain_timeout: float = 5.0,
    middleware: Sequence[Middleware] = (),
) -> AsyncIterator[WebPipe]:
    """A new run of ``sid`` whose events go straight to Redis; ended when the block is left.

    ``redis`` is a ``redis://`` URL or a ``RedisStore`` (then ``prefix``,
    ``retention`` and ``lease_ttl`` are its own).  Gateways see the run if
    they share the Redis and the key prefix.  A client's ``cancel`` sets
    ``pipe.cancelled`` and cancels the task that entered the block (as a
    gateway cancels the apps it runs): the run then ends ``cancelled``.
    ``middleware`` passes every event first (docs/middleware.md): a
    gateway's own ``--middleware`` applies only to runs it writes.

    Raises:
        ProtocolError: ``sid_taken``: a live run of ``sid`` exists on some node.
        StoreUnavailable: Redis cannot be reached now (once the run started,
            its writes are retried for as long as it takes instead).
        ValueError: ``sid`` is not 1-128 chars of ``[A-Za-z0-9._:-]``, or a
            malformed URL.
    """
    from protocol.codec import SID_RE

    if not SID_RE.fullmatch(sid):
        raise ValueError(f"invalid sid {sid!r}: 1-128 chars of [A-Za-z0-9._:-]")
    store, owned = _store(redis, prefix=prefix, retention=retention, lease_ttl=lease_ttl)
    try:
        await store.info(sid)  # reachable now, or StoreUnavailable at once
    except BaseException:
        if owned:
            await store.close()
        raise
    session = Session(sid, store, asyncio.get_running_loop(), limits=limits, middleware=middleware)
    pipe = WebPipe(session)
    try:
        await session.ready  # the sid is ours on every node, and its log exists
        session.task = asyncio.current_task()  # what a client's cancel cancels
        try:
            yield pipe
        except asyncio.CancelledError:
            pipe.close(RunState.CANCELLED, detail=pipe.cancel_reason or "cancelled")
            raise
        except BaseException as exc:
            pipe.close(RunState.FAILED, detail=_public_detail(exc))
            raise
        else:
            if pipe.cancelled.is_set():
                pipe.close(RunState.CANCELLED, detail=pipe.cancel_reason or "cancelled")
            else:
                pipe.close(RunState.DONE)
        finally:
            try:
                await asyncio.wait_for(asyncio.shield(session.writer), drain_timeout)
            except TimeoutError:
                log.error(
                    "session %s: %d events not stored in %.1fs (%s)",
                    sid,
                    session.backlog,
                    drain_timeout,
                    session.trouble,
                )
    finally:
        if not session.writer.done():
            session.writer.cancel()
            await asyncio.gather(session.writer, return_exceptions=True)
        if owned:
            await store.close()


@contextlib.contextmanager
def open_pipe_sync(redis: str, sid: str, **kw: Any) -> Iterator[WebPipe]:
    """``open_pipe`` for code without an event loop: the Pipe's loop runs in a thread of its own.

    The Pipe's methods are safe from any thread: ``set_message``,
    ``get_message``, ``ask_sync``, ``cancelled``.  Takes ``open_pipe``'s
    keyword arguments.  A client's ``cancel`` only sets ``pipe.cancelled``
    here (there is no task to cancel): check it between steps.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"wirepipe-pipe-{sid}", daemon=True)
    thread.start()
    cm = open_pipe(redis, sid, **kw)
    try:
        pipe = asyncio.run_coroutine_threadsafe(cm.__aenter__(), loop).result()
        try:
            yield pipe
        except BaseException as exc:
            asyncio.run_coroutine_threadsafe(cm.__aexit__(type(exc), exc, exc.__traceback__), loop).result()
            raise
        else:
            asyncio.run_coroutine_threadsafe(cm.__aexit__(None, None, None), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


class Worker:
    """Runs the apps gateways queue, from a Redis shared with them.  ``wirepipe worker``.

    Raises (at ``start``):
        StoreUnavailable: Redis cannot be reached.
    """

    def __init__(
        self,
        redis: Any,
        apps: Mapping[str, App],
        *,
        concurrency: int = 4,
        claim_idle: float = 30.0,
        config: Config | None = None,
        prefix: str = "wirepipe:",
        retention: Retention | None = None,
        lease_ttl: float = 10.0,
        name: str | None = None,
        middleware: Sequence[Middleware] = (),
        cluster: bool = False,
    ) -> None:
        if not apps:
            raise ValueError("a worker needs at least one app")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not claim_idle > 0:
            raise ValueError("claim_idle must be positive")
        kw: dict[str, Any] = {"prefix": prefix, "retention": retention, "lease_ttl": lease_ttl}
        if cluster:
            kw["cluster"] = True
        self.store, self._owns_store = _store(redis, **kw)
        self.apps = dict(apps)
        self.concurrency = concurrency
        self.claim_idle = claim_idle
        self.config = config or Config()
        #: This worker's consumer name in the group (unique per process).
        self.name = name or f"worker-{secrets.token_hex(6)}"
        self.metrics = Metrics()
        self.runs = Runs(self.store, self.config, self.apps, self.metrics, middleware)
        self._running: set[asyncio.Task[None]] = set()
        # starts read from Redis beyond the room there was (one read takes up to
        # `room` from each app's stream): run as room frees, before reading more
        self._backlog: list[tuple[str, bytes, dict[str, Any]]] = []
        self._room = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        #: Starts this worker took (acknowledged), and runs it finished.
        self.taken = 0
        self.finished = 0
        self._changed = asyncio.Event()

    async def start(self) -> Worker:
        self.runs.loop = asyncio.get_running_loop()
        lease = self.store.lease_ttl or 10.0
        await self.store.start_groups(sorted(self.apps))
        await self.store.advertise(sorted(self.apps), lease, self.name)
        self._tasks = [
            asyncio.create_task(self._take_forever(), name="wirepipe-worker-take"),
            asyncio.create_task(self._advertise_forever(lease), name="wirepipe-worker-advertise"),
        ]
        return self

    async def close(self) -> None:
        """Stop taking starts, cancel the runs (they end ``cancelled``), store their ends.

        Starts it read and did not begin stay pending in the group: another
        worker claims them after ``claim_idle``.
        """
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.store.withdraw(sorted(self.apps), self.name)  # gateways stop queueing for it
        except StoreUnavailable as exc:
            log.warning("worker %s: its apps stay advertised until that lapses: %s", self.name, exc)
        await self.runs.stop("the worker is shutting down")
        for t in list(self._running):
            t.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        if self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> Worker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def until(self, *, taken: int = 0, finished: int = 0) -> None:
        """Return once this worker took ``taken`` starts and finished ``finished`` runs (tests, monitoring)."""
        while self.taken < taken or self.finished < finished:
            self._changed.clear()
            await self._changed.wait()

    def _bump(self) -> None:
        self._changed.set()

    # --- taking starts --------------------------------------------------------------

    async def _take_forever(self) -> None:
        """Take starts while there is room; reclaim abandoned ones every ``claim_idle / 2``.

        Never ends but by cancellation: a store error is retried with
        backoff, a lost consumer group (Redis lost its data) is made again,
        anything else is logged and retried.
        """
        loop = asyncio.get_running_loop()
        apps = sorted(self.apps)
        next_reclaim = 0.0
        delay = 0.05
        while True:
            async with self._room:
                await self._room.wait_for(lambda: len(self._running) < self.concurrency)
            room = self.concurrency - len(self._running)
            try:
                if not self._backlog:
                    if loop.time() >= next_reclaim:
                        for app in apps:
                            self._backlog += await self.store.reclaim_starts(app, self.name, self.claim_idle, room)
                        next_reclaim = loop.time() + self.claim_idle / 2
                    if not self._backlog:
                        block = min(2.0, self.claim_idle / 2)
                        self._backlog += await self.store.take_starts(apps, self.name, room, block)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):  # Redis lost the group (a restart without persistence)
                    log.warning("worker %s: the start queue's group is gone; making it again", self.name)
                    with contextlib.suppress(Exception):
                        await self.store.start_groups(apps)
                else:
                    log.warning(
                        "worker %s: cannot take starts (%s: %s); retrying in %.2fs",
                        self.name,
                        type(exc).__name__,
                        exc,
                        delay,
                        exc_info=not isinstance(exc, StoreUnavailable),
                    )
                await asyncio.sleep(delay)  # backoff
                delay = min(delay * 2, 2.0)
                continue
            for app, entry_id, start in self._backlog[:room]:
                task = asyncio.create_task(self._run(app, entry_id, start), name=f"wirepipe-worker-run-{app}")
                self._running.add(task)
                task.add_done_callback(self._done)
            del self._backlog[:room]

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("worker %s: a run task failed", self.name, exc_info=task.exception())

        async def notify() -> None:
            async with self._room:
                self._room.notify_all()

        asyncio.ensure_future(notify())

    async def _run(self, app: str, entry_id: bytes, start: dict[str, Any]) -> None:
        sid, holder = start.get("sid"), start.get("holder")
        session: Session | None = None
        try:
            if not isinstance(sid, str) or not isinstance(holder, str):
                log.warning("worker %s: a malformed start of %s dropped", self.name, app)
            else:
                try:
                    self.runs.start_run(sid, app, start.get("input"), reserved_by=holder)
                    session = self.runs.sessions[sid]
                    await asyncio.shield(session.ready)  # the sid is ours: the start is taken
                except (ProtocolError, ValueError) as exc:
                    # Another run has the sid (started meanwhile, or this start's
                    # earlier taker is still alive), or it runs here already.
                    log.warning("worker %s: the start of %s under %r dropped: %s", self.name, app, sid, exc)
                    refused, session = session, None
                    if refused is not None:
                        await asyncio.shield(refused.writer)
                        self.runs.forget(refused)
        finally:
            await self._ack(app, entry_id)
        self.taken += 1
        self._bump()
        if session is None:
            return
        log.info("worker %s: running %s under %r", self.name, app, sid)
        try:
            if session.task is not None:
                await asyncio.shield(session.task)
            await asyncio.shield(session.writer)
        finally:
            self.runs.forget(session)
            self.finished += 1
            self._bump()

    async def _ack(self, app: str, entry_id: bytes) -> None:
        delay = 0.05
        while True:
            try:
                await self.store.ack_start(app, entry_id)
                return
            except StoreUnavailable as exc:
                log.warning("worker %s: cannot acknowledge a start (%s); retrying", self.name, exc)
                await asyncio.sleep(delay)  # backoff
                delay = min(delay * 2, 2.0)
            except Exception as exc:  # the entry or its group is gone (Redis lost its data): nothing to ack
                log.warning("worker %s: a start's acknowledgement failed: %s: %s", self.name, type(exc).__name__, exc)
                return

    async def _advertise_forever(self, lease: float) -> None:
        """Tell gateways which apps this worker runs, every third of ``lease``."""
        while True:
            await asyncio.sleep(lease / 3)  # a timer, not a synchronisation
            try:
                await self.store.advertise(sorted(self.apps), lease, self.name)
            except Exception as exc:  # the next period tries again
                log.warning("worker %s: cannot advertise its apps: %s: %s", self.name, type(exc).__name__, exc)
