"""One MetaGPT run on a pipe: ``Run`` (the per-run emitter), ``attach``, ``run_in_thread``.

    from gateway.integrations.metagpt import attach
    async with attach(pipe, log_level="INFO"):
        await role.run(idea)

``attach`` sets ``RUN``, the ContextVar every hook (``hooks.py``) asks which
run the calling code belongs to; a ContextVar follows asyncio tasks and is
copied into an ``asyncio.run`` thread started under
``contextvars.copy_context()``, so two runs at once never see each other's
events.  ``run_in_thread`` is the queue relay of docs/metagpt.md; ``new_executor``
gives a DataInterpreter a notebook of its own.  MetaGPT is imported lazily.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, TypeVar

from protocol.events import LOG_LEVELS

from .mapping import message_event, plain, plan_event
from .setup import prepare

__all__ = [
    "RUN",
    "RUN_THREAD_NAME",
    "STREAM",
    "ReviewExit",
    "Run",
    "attach",
    "current_run",
    "new_executor",
    "run_in_thread",
]

log = logging.getLogger("wirepipe.metagpt")

T = TypeVar("T")

#: The run the calling code belongs to (set by ``attach``); every hook asks it.
RUN: contextvars.ContextVar[Run | None] = contextvars.ContextVar("wirepipe_run", default=None)
#: The text stream id of the LLM call the calling code is in (set by the ``aask`` hook).
STREAM: contextvars.ContextVar[str | None] = contextvars.ContextVar("wirepipe_llm_stream", default=None)
_run_ids = itertools.count(1)
#: The name of ``run_in_thread``'s threads.
RUN_THREAD_NAME: Final = "wirepipe-metagpt-run"

#: loguru's level numbers, so a level can be checked without importing loguru.
_LEVELS: Final = LOG_LEVELS


class ReviewExit(asyncio.CancelledError):
    """A human answered ``exit``: MetaGPT would ``exit()`` the process; the run ends cancelled."""


def current_run() -> Run | None:
    """The run the calling code belongs to, or None."""
    return RUN.get()


def new_executor(timeout: int = 600, *, quiet: bool = True) -> Any:
    """An ``ExecuteNbCode`` with a notebook of its own (and, if ``quiet``, no terminal echo).

    MetaGPT's default notebook is ONE object shared by every ``ExecuteNbCode``:
    two runs would see each other's cells.  Hand each DataInterpreter one of
    these: ``DataInterpreter(execute_code=new_executor())``.
    """
    prepare()
    import nbformat
    from metagpt.actions.di.execute_nb_code import ExecuteNbCode

    ex = ExecuteNbCode(nb=nbformat.v4.new_notebook(), timeout=timeout)
    if quiet:
        from rich.console import Console

        ex.console = Console(quiet=True)
    return ex


# --- one run ------------------------------------------------------------------------


class Run:
    """What the adapter knows about one attached run.  ``attach`` makes it."""

    def __init__(
        self,
        pipe: Any,
        *,
        log_level: str | int = "INFO",
        review_timeout: float | None = None,
        review_default: str = "confirm",
        input_timeout: float | None = None,
        input_default: str = "",
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.pipe = pipe
        self.log_level = _LEVELS.get(str(log_level).upper(), 20) if isinstance(log_level, str) else int(log_level)
        self.review_timeout = review_timeout
        self.review_default = review_default
        self.input_timeout = input_timeout
        self.input_default = input_default
        #: The pipe's event loop: where ``pipe.ask`` must run.
        self.loop = loop
        self.prefix = f"mg{next(_run_ids)}"
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._streamed: dict[str, int] = {}
        self._plans = 0
        self.executors: list[Any] = []
        self.running_task: str | None = None
        self.active = False
        self._task: asyncio.Task[Any] | None = None
        self._task_loop: asyncio.AbstractEventLoop | None = None

    # -- writing ---------------------------------------------------------------

    def emit(self, k: str, d: dict[str, Any]) -> int:
        """Append one event to the pipe; never raises into MetaGPT (a failure is logged)."""
        try:
            return int(self.pipe.set_message({"k": k, "d": d}) or 0)
        except Exception:
            log.exception("wirepipe.metagpt: could not emit a %r event", k)
            return 0

    def new_id(self, kind: str) -> str:
        with self._lock:
            return f"{self.prefix}{kind}{next(self._ids)}"

    def check_cancelled(self) -> None:
        """Raise ``CancelledError`` if a client cancelled the run, or its task was cancelled.

        The second matters because a cancel can be swallowed on its way:
        nbclient turns one into ``DeadKernelError``, which MetaGPT handles.
        """
        ev = getattr(self.pipe, "cancelled", None)
        if ev is not None and ev.is_set():
            raise asyncio.CancelledError("cancelled by a client")
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not in a coroutine (a sync hook called from a thread)
            return
        if task is not None and task.cancelling():
            raise asyncio.CancelledError("cancelled")

    # -- asking ----------------------------------------------------------------

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
        """Ask the clients (the pipe's ``ask``) without blocking any event loop.

        Works from the pipe's loop and from a run's own thread loop; while it
        waits, the run's status is ``waiting``.
        """
        self.check_cancelled()
        kwargs = dict(choices=choices, default=default, timeout=timeout, **extra)
        if other:
            kwargs["other"] = True
        self.emit("status", {"state": "waiting"})
        try:
            here = asyncio.get_running_loop()
            if self.loop is None or self.loop is here:
                return await self.pipe.ask(prompt, **kwargs)
            fut = asyncio.run_coroutine_threadsafe(self.pipe.ask(prompt, **kwargs), self.loop)
            return await asyncio.wrap_future(fut)
        finally:
            if not getattr(self.pipe, "closed", False):
                self.emit("status", {"state": "running"})

    async def review(self, prompt: str, trigger: str) -> str:
        """A MetaGPT review (plan, task or code): ``confirm``, ``change ...`` or ``exit``."""
        value = await self.ask(
            prompt,
            choices=["confirm", "exit"],
            other=True,
            default=self.review_default,
            timeout=self.review_timeout,
            kind="review",
            trigger=trigger,
        )
        return self.default_if_none(value, self.review_default)

    def exit(self) -> ReviewExit:
        """End the run ``cancelled`` (a human said exit); returns the exception to raise."""
        close = getattr(self.pipe, "close", None)
        if close is not None:
            try:
                close("cancelled", "exit")
            except Exception:
                log.exception("wirepipe.metagpt: closing the pipe failed")
        return ReviewExit("a human answered exit")

    @staticmethod
    def default_if_none(value: Any, default: str) -> str:
        if value is None:
            return default
        return value if isinstance(value, str) else str(value)

    # -- LLM streams -------------------------------------------------------------

    def token(self, delta: str) -> None:
        stream = STREAM.get()
        if stream is None:  # a token outside BaseLLM.aask: the pipe's own stream
            self.pipe.set_message(delta)
            return
        with self._lock:
            self._streamed[stream] = self._streamed.get(stream, 0) + 1
        self._text(delta, stream)

    def _text(self, delta: str, stream: str, end: bool = False) -> None:
        text = getattr(self.pipe, "text", None)
        if text is not None:
            text(delta, id=stream, end=end)
        elif delta:  # a plain StreamPipe: no stream ids
            self.pipe.set_message(delta)

    def end_stream(self, stream: str, answer: Any) -> None:
        with self._lock:
            sent = self._streamed.pop(stream, 0)
        try:
            if not sent and isinstance(answer, str) and answer:
                self._text(answer, stream)  # a non-streaming LLM: one delta
            self._text("", stream, end=True)
        except Exception:
            log.exception("wirepipe.metagpt: could not end text stream %s", stream)

    # -- plans, messages -----------------------------------------------------------

    def plan(self, plan: Any, *, proposed: bool = False) -> None:
        with self._lock:
            self._plans += 1
        d = plan_event(plan, self.running_task)
        if proposed:
            d["proposed"] = True
        self.emit("plan", d)

    def task(self, task_id: str, status: str, result: Any = None) -> None:
        d: dict[str, Any] = {"id": str(task_id), "status": status}
        if result is not None:
            d["result"] = plain(result)
        self.emit("task", d)

    def message(self, msg: Any, name: str | None = None) -> None:
        key = getattr(msg, "id", None) or str(id(msg))
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        self.emit("message", message_event(msg, name))

    # -- lifetime ----------------------------------------------------------------

    def _bind(self, task: asyncio.Task[Any] | None, loop: asyncio.AbstractEventLoop) -> None:
        self._task, self._task_loop = task, loop
        self.active = True
        on_cancel = getattr(self.pipe, "on_cancel", None)
        if on_cancel is not None:
            on_cancel(self._on_cancel)

    def _on_cancel(self, reason: Any = None) -> None:
        task, loop = self._task, self._task_loop
        if not self.active or task is None or loop is None or task.done():
            return
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # that loop is already closed
            pass

    async def _cleanup(self) -> None:
        """Shut down the Jupyter kernels this run started."""
        for ex in list(self.executors):
            try:
                await ex.terminate()
            except Exception:
                log.exception("wirepipe.metagpt: shutting down a kernel failed")
        self.executors.clear()


class attach:
    """``async with attach(pipe, ...) as run:``: report the MetaGPT run inside to ``pipe``.

    ``pipe`` is a ``WebPipe`` (or anything with its interface).  Options:
    ``log_level`` (loguru records below it are not sent), ``review_timeout``
    and ``review_default`` (a review ask left unanswered that long settles to
    the default), ``input_timeout`` and ``input_default`` (the same for
    ``HumanProvider`` asks), and ``loop``: the pipe's event loop, needed only
    when attaching inside a thread of your own (``run_in_thread`` passes it).

    Raises:
        asyncio.CancelledError: on entry, if a client already cancelled the run.
        ImportError: MetaGPT is not installed.
    """

    def __init__(self, pipe: Any, **options: Any) -> None:
        self.run = Run(pipe, **options)
        self._token: contextvars.Token[Run | None] | None = None

    async def __aenter__(self) -> Run:
        from .hooks import installed

        if not installed():  # the first import of MetaGPT takes seconds: not on this loop
            await asyncio.to_thread(prepare)
        run = self.run
        here = asyncio.get_running_loop()
        if run.loop is None:
            run.loop = getattr(run.pipe, "loop", None) or here
        self._token = RUN.set(run)
        run._bind(asyncio.current_task(), here)
        if getattr(run.pipe, "cancelled", None) is not None and run.pipe.cancelled.is_set():
            await self.__aexit__(None, None, None)
            raise asyncio.CancelledError("cancelled by a client")
        return run

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        run = self.run
        run.active = False
        interrupted = False
        try:
            # Kernels are processes: shut them down even if cancelled meanwhile.
            cleanup = asyncio.ensure_future(run._cleanup())
            while not cleanup.done():
                try:
                    await asyncio.shield(cleanup)
                except asyncio.CancelledError:
                    interrupted = True
        finally:
            if self._token is not None:
                RUN.reset(self._token)
                self._token = None
        if interrupted and et is None:
            raise asyncio.CancelledError


async def run_in_thread(pipe: Any, main: Callable[..., Awaitable[T]], /, *args: Any, **options: Any) -> T:
    """Run ``await main(*args)`` attached to ``pipe`` in a new thread with its own event loop.

    The queue relay (docs/metagpt.md): the agent runs in ``asyncio.run`` in a
    thread, every event goes through the pipe (whose writes are thread-safe,
    one gap-free order), and nothing the agent does can block the caller's
    loop.  Call it on the pipe's loop.  Cancelling the caller cancels the
    run in the thread and waits until it has cleaned up.  ``options`` go to
    ``attach``.

    Raises:
        Whatever ``main`` raises (a ``BaseException`` that is not an
        ``Exception``, such as ``SystemExit``, as ``RuntimeError``: it must not
        stop the caller's loop); ``asyncio.CancelledError`` if cancelled.
    """
    home = asyncio.get_running_loop()
    options.setdefault("loop", getattr(pipe, "loop", None) or home)
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    lock = threading.Lock()
    state: dict[str, Any] = {"task": None, "loop": None, "cancel": False}

    async def runner() -> T:
        with lock:
            state["task"], state["loop"] = asyncio.current_task(), asyncio.get_running_loop()
            early = state["cancel"]
        if early:
            raise asyncio.CancelledError
        async with attach(pipe, **options):
            return await main(*args)

    def worker() -> None:
        try:
            result = asyncio.run(runner())
        except asyncio.CancelledError:
            done.cancel()
        except Exception as exc:
            done.set_exception(exc)
        except BaseException as exc:  # noqa: B036 - SystemExit must not reach the caller's loop
            done.set_exception(RuntimeError(f"the MetaGPT run raised {exc!r}"))
        else:
            done.set_result(result)

    def cancel_thread() -> None:
        with lock:
            state["cancel"] = True
            task, loop = state["task"], state["loop"]
        if task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # its loop is closed: the run is over
                pass

    ctx = contextvars.copy_context()
    # One name for every run thread: jupyter_core's run_sync (kernel start)
    # keeps a helper thread per calling thread NAME, forever.
    thread = threading.Thread(target=ctx.run, args=(worker,), name=RUN_THREAD_NAME, daemon=True)
    thread.start()
    waiter = asyncio.wrap_future(done)
    try:
        return await asyncio.shield(waiter)
    except asyncio.CancelledError:
        cancel_thread()
        while not waiter.done():
            try:
                await asyncio.shield(waiter)
            except asyncio.CancelledError:
                continue
            except BaseException:
                break
        raise
