"""The MetaGPT adapter: one call wires a MetaGPT run to a pipe.

    from gateway.metagpt import attach
    async with attach(pipe, log_level="INFO"):
        await role.run(idea)

Theory of operation
-------------------
MetaGPT (0.8.2) reports what it does through process-wide hooks: ONE
LLM-stream function (``set_llm_stream_logfunc``), loguru's global logger and
the builtin ``input()``; for plans, tasks, code and messages it has no hook
at all.  So ``install()`` puts, once per process, a thin wrapper on each of
those hooks and on a few MetaGPT methods (listed in ``_install``), and every
wrapper asks one ContextVar, ``_RUN``, which run the calling code belongs to.
``attach`` sets it.  A ContextVar follows asyncio tasks and is copied into an
``asyncio.run`` thread started under ``contextvars.copy_context()``, so two
runs at once, on one loop or in threads, never see each other's events, and
code outside any run sees MetaGPT behave exactly as before.

What becomes which event (PROTOCOL.md section 5):

- LLM tokens -> ``text``: one stream id per LLM call (``BaseLLM.aask``), the
  call ends its stream with ``end: True``.  A non-streaming LLM's answer is
  sent as one delta.
- loguru records at or above the run's level -> ``log``.
- ``set_tool_output_logfunc`` (newer MetaGPT only) -> ``tool``.
- the planner -> ``plan`` (a proposal before its review carries
  ``proposed: true``; the applied plan follows), ``task`` updates.
- ``ExecuteNbCode.run`` -> ``code``, then one ``output`` per cell output.
- messages published or delivered to roles -> ``message``, once per message.
- human input -> ``ask`` and its ``answer``; while it waits the run's status
  is ``waiting``.

Human input never blocks an event loop.  0.8.2's ``AskReview.run`` is a
coroutine that calls the blocking ``input()``: it is replaced by the same
logic awaiting the pipe's ``ask`` (``HumanProvider.aask`` likewise).  On the
pipe's own loop that is ``await pipe.ask``; from a run's thread loop the ask
is scheduled on the pipe's loop and awaited from there, so cancelling the run
withdraws it.  Newer MetaGPT's ``set_human_input_func`` is used when present.
An ``exit`` answer, where MetaGPT would call ``exit()``, ends the run
``cancelled`` instead of the gateway process.

Cancelling: a client's ``cancel`` cancels the task that entered ``attach``
(and the gateway cancels the app's task); ``run_in_thread`` carries a cancel
into the thread's loop and waits for it to clean up.  However the run ends,
``attach`` shuts down the Jupyter kernels it started.

MetaGPT is imported lazily, in functions: importing this module needs none.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import functools
import itertools
import logging
import os
import re
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

__all__ = [
    "Run",
    "ReviewExit",
    "attach",
    "available",
    "current_run",
    "install",
    "new_executor",
    "prepare",
    "run_in_thread",
]

log = logging.getLogger("wirepipe.metagpt")

T = TypeVar("T")

_RUN: contextvars.ContextVar[Run | None] = contextvars.ContextVar("wirepipe_run", default=None)
_STREAM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "wirepipe_llm_stream", default=None
)
_run_ids = itertools.count(1)
#: The name of ``run_in_thread``'s threads.
RUN_THREAD_NAME: Final = "wirepipe-metagpt-run"

#: loguru's level numbers, so a level can be checked without importing loguru.
_LEVELS: Final = {
    "TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50,
}
#: MetaGPT's answers that mean "go on" / "stop" (actions/di/ask_review.py ReviewConst).
_EXIT_WORDS: Final = ("exit",)
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ReviewExit(asyncio.CancelledError):
    """A human answered ``exit``: MetaGPT would ``exit()`` the process; the run ends cancelled."""


def current_run() -> Run | None:
    """The run the calling code belongs to, or None."""
    return _RUN.get()


# --- setting MetaGPT up ----------------------------------------------------------------


def prepare(root: str | os.PathLike[str] | None = None) -> Path:
    """Get MetaGPT ready in this process: its root, a config, the adapter's hooks.

    Before MetaGPT's first import: ``METAGPT_PROJECT_ROOT`` (where it writes
    ``logs/``, ``workspace/`` and tool schemas) is set to ``root``, else to
    ``$METAGPT_PROJECT_ROOT``, ``$WIREPIPE_METAGPT_ROOT``, or a scratch
    directory in the temp dir; and if no ``config2.yaml`` exists there nor in
    ``~/.metagpt``, one selecting the offline scripted LLM is written
    (``import metagpt`` fails without an ``llm:`` block).  Then MetaGPT is
    imported, the scripted provider registered and the hooks installed.
    Returns MetaGPT's root.  Idempotent; once MetaGPT is imported, ``root``
    can no longer change anything.

    Raises:
        ImportError: MetaGPT is not installed.
    """
    if not available():
        raise ImportError("MetaGPT is not installed: see docs/metagpt.md")
    _prepare_env(root)
    from metagpt.const import METAGPT_ROOT

    from . import offline_llm

    offline_llm.register()
    install()
    return Path(METAGPT_ROOT)


def available() -> bool:
    """True if ``import metagpt`` would import the MetaGPT package.

    Not merely ``find_spec("metagpt")``: any folder named ``metagpt`` on
    ``sys.path`` (a checkout's ``tests/metagpt``, say) is a namespace package
    to it, with no file behind it.  The real package has an ``__init__.py``,
    which the spec names as its origin; a regular package anywhere on the
    path wins over a namespace folder, so this is what the import will get.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("metagpt")
    except (ImportError, ValueError):  # a broken entry in sys.modules / sys.path
        return False
    return spec is not None and spec.origin is not None and spec.has_location


def _prepare_env(root: str | os.PathLike[str] | None = None) -> None:
    """The part of ``prepare`` that must precede ``import metagpt``; imports nothing.

    Run when this module is imported, so that a user's own
    ``from metagpt... import ...`` placed after ``import gateway.metagpt``
    finds a root and a config.
    """
    import sys

    if sys.modules.get("metagpt") is None and available():
        where = (
            root
            or os.environ.get("METAGPT_PROJECT_ROOT")
            or os.environ.get("WIREPIPE_METAGPT_ROOT")
            or Path(tempfile.gettempdir()) / f"wirepipe-metagpt-{os.getuid()}"
        )
        path = Path(where).expanduser().resolve()
        os.environ["METAGPT_PROJECT_ROOT"] = str(path)
        cfg = path / "config" / "config2.yaml"
        if not cfg.exists() and not (Path.home() / ".metagpt" / "config2.yaml").exists():
            from .offline_llm import offline_llm_config

            cfg.parent.mkdir(parents=True, exist_ok=True)
            lines = ["# written by wirepipe: the offline scripted LLM; see docs/metagpt.md", "llm:"]
            lines += [f"  {k}: {_yaml_scalar(v)}" for k, v in offline_llm_config().items()]
            cfg.write_text("\n".join(lines) + "\n")


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else str(v)


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
        self.log_level = _LEVELS.get(str(log_level).upper(), 20) if isinstance(
            log_level, str
        ) else int(log_level)
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
        stream = _STREAM.get()
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
        d = _plan_map(plan, self.running_task)
        if proposed:
            d["proposed"] = True
        self.emit("plan", d)

    def task(self, task_id: str, status: str, result: Any = None) -> None:
        d: dict[str, Any] = {"id": str(task_id), "status": status}
        if result is not None:
            d["result"] = _plain(result)
        self.emit("task", d)

    def message(self, msg: Any, name: str | None = None) -> None:
        key = getattr(msg, "id", None) or str(id(msg))
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        content = getattr(msg, "content", "")
        d: dict[str, Any] = {"role": str(getattr(msg, "role", "") or ""), "content": _plain(content)}
        sent_from = getattr(msg, "sent_from", "") or ""
        name = name or (str(sent_from).rsplit(".", 1)[-1] if sent_from else None)
        if name:
            d["name"] = name
        cause = getattr(msg, "cause_by", "") or ""
        if cause:
            d["cause"] = str(cause).rsplit(".", 1)[-1]
        self.emit("message", d)

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
        if not _installed:  # the first import of MetaGPT takes seconds: not on this loop
            await asyncio.to_thread(prepare)
        run = self.run
        here = asyncio.get_running_loop()
        if run.loop is None:
            run.loop = getattr(run.pipe, "loop", None) or here
        self._token = _RUN.set(run)
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
                _RUN.reset(self._token)
                self._token = None
        if interrupted and et is None:
            raise asyncio.CancelledError


async def run_in_thread(
    pipe: Any, main: Callable[..., Awaitable[T]], /, *args: Any, **options: Any
) -> T:
    """Run ``await main(*args)`` attached to ``pipe`` in a new thread with its own event loop.

    The design note's queue relay: the agent runs in ``asyncio.run`` in a
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


# --- the hooks ----------------------------------------------------------------------

_install_lock = threading.Lock()
_installed = False
_originals: list[tuple[Any, str, Any]] = []
_sink_id: int | None = None
_in_sink = threading.local()


def install() -> None:
    """Install the adapter's hooks into MetaGPT (idempotent; ``attach`` calls it).

    Needed by itself only for the Pipe scheme, ``DataInterpreter(stream_pipe=pipe)``:
    after ``install()``, a role given a ``stream_pipe`` reports to it whenever
    it runs.  Outside any run the hooks do nothing.

    Raises:
        ImportError: MetaGPT is not installed.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        try:
            _install()
        except BaseException:  # an unexpected MetaGPT: leave it as it was
            for owner, name, original in reversed(_originals):
                setattr(owner, name, original)
            _originals.clear()
            raise
        _installed = True


def _patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, name)
    _originals.append((owner, name, original))
    wrapper = make(original)
    if callable(original) and callable(wrapper):
        functools.update_wrapper(wrapper, original)
    setattr(owner, name, wrapper)


def _install() -> None:
    # Roles first: importing metagpt.environment first is a circular import.
    from metagpt.roles.role import Role  # isort: skip
    from metagpt.roles.di.data_interpreter import DataInterpreter  # isort: skip
    import metagpt.logs as mlogs
    from metagpt.actions.di import ask_review
    from metagpt.actions.di.execute_nb_code import ExecuteNbCode
    from metagpt.environment.base_env import Environment
    from metagpt.provider.base_llm import BaseLLM
    from metagpt.provider.human_provider import HumanProvider
    from metagpt.strategy import planner as planner_mod
    from metagpt.strategy.planner import Planner

    # 1. LLM tokens: the ONE process-wide function, routed by _RUN.
    previous_stream = getattr(mlogs, "_llm_stream_log", None)

    def llm_stream(msg: Any) -> None:
        run = _RUN.get()
        if run is None:
            if previous_stream is not None:
                previous_stream(msg)
            return
        run.check_cancelled()
        run.token(msg if isinstance(msg, str) else str(msg))

    mlogs.set_llm_stream_logfunc(llm_stream)

    def make_aask(orig: Any) -> Any:
        async def aask(self: Any, *args: Any, **kwargs: Any) -> Any:
            run = _RUN.get()
            if run is None:
                return await orig(self, *args, **kwargs)
            run.check_cancelled()
            stream = run.new_id("llm")
            token = _STREAM.set(stream)
            answer = None
            try:
                answer = await orig(self, *args, **kwargs)
                return answer
            finally:
                _STREAM.reset(token)
                run.end_stream(stream, answer)

        return aask

    _patch(BaseLLM, "aask", make_aask)

    # 2. loguru records -> log events (after MetaGPT's own handlers).
    _add_sink()
    _patch(mlogs, "define_log_level", _make_define_log_level)

    # 3. tool output, where this MetaGPT has it.
    if hasattr(mlogs, "set_tool_output_logfunc"):
        previous_tool = getattr(mlogs, "_tool_output_log", None)

        def tool_output(*args: Any, **kwargs: Any) -> Any:
            run = _RUN.get()
            if run is None:
                return previous_tool(*args, **kwargs) if previous_tool else None
            output = kwargs.get("output", args[0] if args else None)
            _emit_tools(run, output, kwargs.get("tool_name", args[1] if len(args) > 1 else ""))
            return None

        mlogs.set_tool_output_logfunc(tool_output)

    # 4. human input.
    if hasattr(mlogs, "set_human_input_func"):
        previous_input = getattr(mlogs, "_get_human_input", input)

        async def human_input(prompt: str = "", *args: Any, **kwargs: Any) -> Any:
            run = _RUN.get()
            if run is None:
                if asyncio.iscoroutinefunction(previous_input):
                    return await previous_input(prompt, *args, **kwargs)
                return previous_input(prompt)
            value = await run.ask(
                prompt, default=run.input_default or None, timeout=run.input_timeout, kind="input"
            )
            return run.default_if_none(value, run.input_default)

        mlogs.set_human_input_func(human_input)
    else:
        _patch(ask_review.AskReview, "run", _make_ask_review(ask_review))

    def make_human_aask(orig: Any) -> Any:
        async def aask(self: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
            run = _RUN.get()
            if run is None:
                return await orig(self, msg, *args, **kwargs)
            mlogs.logger.info(
                "It's your turn, please type in your response. "
                "You may also refer to the context below"
            )
            value = await run.ask(
                str(msg), default=run.input_default or None, timeout=run.input_timeout,
                kind="input",
            )
            rsp = run.default_if_none(value, run.input_default)
            if rsp in ("exit", "quit"):
                raise run.exit()
            return rsp

        return aask

    _patch(HumanProvider, "aask", make_human_aask)

    # 5. plans and tasks.
    from metagpt.actions.di.write_plan import update_plan_from_rsp

    def make_precheck(orig: Any) -> Any:
        def precheck(rsp: str, current_plan: Any) -> Any:
            ok, err = orig(rsp, current_plan)
            run = _RUN.get()
            if run is not None and ok:
                proposal = copy.deepcopy(current_plan)
                try:
                    update_plan_from_rsp(rsp, proposal)
                except Exception:  # precheck said it applies; be safe anyway
                    return ok, err
                run.plan(proposal, proposed=True)
            return ok, err

        return precheck

    _patch(planner_mod, "precheck_update_plan_from_rsp", make_precheck)

    def make_update_plan(orig: Any) -> Any:
        async def update_plan(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = await orig(self, *args, **kwargs)
            run = _RUN.get()
            if run is not None:
                run.plan(self.plan)
            return result

        return update_plan

    _patch(Planner, "update_plan", make_update_plan)

    def make_confirm(orig: Any) -> Any:
        async def confirm_task(self: Any, task: Any, task_result: Any, review: str) -> Any:
            run = _RUN.get()
            if run is None:
                return await orig(self, task, task_result, review)
            run.task(task.task_id, "done", getattr(task_result, "result", None))
            if run.running_task == task.task_id:
                run.running_task = None
            before = run._plans
            result = await orig(self, task, task_result, review)
            if run._plans == before:  # the plan was not remade: show where it stands
                run.plan(self.plan)
            return result

        return confirm_task

    _patch(Planner, "confirm_task", make_confirm)

    def make_act_on_task(orig: Any) -> Any:
        async def _act_on_task(self: Any, current_task: Any) -> Any:
            run = _RUN.get()
            if run is None:
                return await orig(self, current_task)
            run.running_task = current_task.task_id
            run.task(current_task.task_id, "running")
            result = await orig(self, current_task)
            if not getattr(result, "is_success", True):
                run.task(current_task.task_id, "failed", getattr(result, "result", None))
            return result

        return _act_on_task

    _patch(Role, "_act_on_task", make_act_on_task)
    _patch(DataInterpreter, "_act_on_task", make_act_on_task)

    # 6. code and its output.
    shared_nb = ExecuteNbCode.__init__.__defaults__[0] if ExecuteNbCode.__init__.__defaults__ else None

    def make_execute(orig: Any) -> Any:
        async def run_code(self: Any, code: str, language: str = "python") -> Any:
            run = _RUN.get()
            if run is None:
                return await orig(self, code, language)
            run.check_cancelled()
            if self not in run.executors:
                run.executors.append(self)
            if shared_nb is not None and self.nb is shared_nb and self.nb_client.kc is None:
                _own_notebook(self)
            cid = run.new_id("c")
            d: dict[str, Any] = {"id": cid, "lang": language, "source": code}
            if run.running_task:
                d["task"] = run.running_task
            run.emit("code", d)
            first = len(self.nb.cells)
            outputs, success = await orig(self, code, language)
            run.check_cancelled()
            if language == "python":
                cell = self.nb.cells[first] if len(self.nb.cells) > first else None
                errors = _emit_outputs(run, cid, cell.get("outputs", []) if cell else [])
                if not success and not errors:
                    run.emit("output", {"id": cid, "stream": "error", "text": _plain(outputs)})
            return outputs, success

        return run_code

    _patch(ExecuteNbCode, "run", make_execute)

    def make_reset(orig: Any) -> Any:
        # 0.8.2's reset() starts a kernel on the old NotebookClient and then
        # replaces that client: the kernel is orphaned.  And it is what runs
        # when a cancel reaches a cell (nbclient: DeadKernelError).
        async def reset(self: Any) -> None:
            run = _RUN.get()
            if run is None:
                await orig(self)
                return None
            from nbclient import NotebookClient

            await self.terminate()
            run.check_cancelled()
            self.nb_client = NotebookClient(self.nb, timeout=self.timeout)  # started by build()
            return None

        return reset

    _patch(ExecuteNbCode, "reset", make_reset)

    # 7. messages, once each, whichever way they travel.
    def make_publish(orig: Any) -> Any:
        def publish_message(self: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
            run = _RUN.get()
            if run is not None and msg:
                run.message(msg, name=getattr(self, "name", None) or None)
            return orig(self, msg, *args, **kwargs)

        return publish_message

    def make_deliver(orig: Any) -> Any:
        def deliver(self: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
            run = _RUN.get()
            if run is not None and msg:
                run.message(msg)
            return orig(self, msg, *args, **kwargs)

        return deliver

    _patch(Role, "publish_message", make_publish)
    _patch(Role, "put_message", make_deliver)
    _patch(Environment, "publish_message", make_deliver)

    # 8. the Pipe scheme: a role handed a stream_pipe reports to it.
    def make_role_run(orig: Any) -> Any:
        async def run_role(self: Any, *args: Any, **kwargs: Any) -> Any:
            pipe = (getattr(self, "model_extra", None) or {}).get("stream_pipe")
            current = _RUN.get()
            if pipe is None or not hasattr(pipe, "set_message") or (
                current is not None and current.pipe is pipe
            ):
                return await orig(self, *args, **kwargs)
            async with attach(pipe):
                return await orig(self, *args, **kwargs)

        return run_role

    _patch(Role, "run", make_role_run)


def _make_ask_review(ask_review: Any) -> Callable[[Any], Any]:
    """AskReview.run as in MetaGPT 0.8.2, awaiting the pipe instead of calling ``input()``."""
    ReviewConst = ask_review.ReviewConst
    # Records keep MetaGPT's module name, as if AskReview had logged them.
    mlogger = ask_review.logger.patch(lambda r: r.update(name=ask_review.__name__))

    def make(orig: Any) -> Any:
        async def run(
            self: Any, context: list[Any] | None = None, plan: Any = None,
            trigger: str = ReviewConst.TASK_REVIEW_TRIGGER,
        ) -> tuple[str, bool]:
            current = _RUN.get()
            if current is None:
                mine: tuple[str, bool] = await orig(
                    self, context=context or [], plan=plan, trigger=trigger
                )
                return mine
            context = context or []
            if plan:
                mlogger.info("Current overall plan:")
                mlogger.info(
                    "\n".join(
                        f"{task.task_id}: {task.instruction}, is_finished: {task.is_finished}"
                        for task in plan.tasks
                    )
                )
            mlogger.info("Most recent context:")
            latest_action = context[-1].cause_by if context and context[-1].cause_by else ""
            review_instruction = (
                ReviewConst.TASK_REVIEW_INSTRUCTION
                if trigger == ReviewConst.TASK_REVIEW_TRIGGER
                else ReviewConst.CODE_REVIEW_INSTRUCTION
            )
            prompt = (
                f"This is a <{trigger}> review. Please review output from {latest_action}\n"
                f"{review_instruction}\n"
                f"{ReviewConst.EXIT_INSTRUCTION}\n"
                "Please type your review below:\n"
            )
            rsp = await current.review(prompt, trigger)
            if rsp.lower() in ReviewConst.EXIT_WORDS:
                raise current.exit()
            confirmed = (
                rsp.lower() in ReviewConst.CONTINUE_WORDS
                or ReviewConst.CONTINUE_WORDS[0] in rsp.lower()
            )
            return rsp, confirmed

        return run

    return make


def _make_define_log_level(orig: Any) -> Any:
    def define_log_level(*args: Any, **kwargs: Any) -> Any:
        result = orig(*args, **kwargs)  # it removes every handler, ours too
        _add_sink()
        return result

    return define_log_level


def _add_sink() -> None:
    global _sink_id
    from loguru import logger

    _sink_id = logger.add(_log_sink, level=0, format="{message}", catch=True)


def _log_sink(message: Any) -> None:
    run = _RUN.get()
    if run is None or getattr(_in_sink, "busy", False):
        return
    record = message.record
    level = record["level"]
    if level.no < run.log_level:
        return
    _in_sink.busy = True
    try:
        run.emit("log", {"level": level.name, "msg": str(record["message"]),
                         "logger": str(record["name"] or "")})
    finally:
        _in_sink.busy = False


def _own_notebook(ex: Any) -> None:
    import nbformat
    from nbclient import NotebookClient

    log.warning("wirepipe.metagpt: ExecuteNbCode used MetaGPT's shared notebook; gave it its own")
    ex.nb = nbformat.v4.new_notebook()
    ex.nb_client = NotebookClient(ex.nb, timeout=ex.timeout)


def _emit_outputs(run: Run, cid: str, outputs: list[Any]) -> int:
    """One ``output`` event per cell output; returns how many were errors."""
    errors = 0
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            stream, text = out.get("name", "stdout"), out.get("text", "")
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            text = data.get("text/plain", "")
            if not text:
                text = "[" + ", ".join(sorted(data)) + "]"
            stream = "result"
        elif kind == "error":
            errors += 1
            stream = "error"
            text = _ANSI.sub("", "\n".join(out.get("traceback", [])) or
                             f"{out.get('ename')}: {out.get('evalue')}")
        else:
            continue
        if isinstance(text, list):
            text = "".join(text)
        run.emit("output", {"id": cid, "stream": stream, "text": str(text)})
    return errors


def _emit_tools(run: Run, output: Any, tool_name: str) -> None:
    items = output if isinstance(output, list) else [output]
    for item in items:
        if item is None:
            continue
        if isinstance(item, dict):
            name, typ, value = item.get("name", tool_name), item.get("type", "str"), item.get("value")
        elif hasattr(item, "name") and hasattr(item, "value"):
            name, typ, value = item.name, getattr(item, "type_", "str"), item.value
        else:
            name, typ, value = tool_name or "tool", "str", item
        if name == "end_marker":  # MetaGPT's TOOL_LOG_END_MARKER
            continue
        run.emit("tool", {"name": str(name or tool_name or "tool"), "type": str(typ),
                          "value": _plain(value)})


def _plan_map(plan: Any, running: str | None) -> dict[str, Any]:
    tasks = []
    for t in plan.tasks:
        if t.is_finished:
            status = "done"
        elif t.task_id == running:
            status = "running"
        else:
            status = "pending"
        tasks.append({
            "id": str(t.task_id), "instruction": t.instruction,
            "deps": [str(x) for x in t.dependent_task_ids], "type": t.task_type,
            "status": status,
        })
    return {"goal": plan.goal, "tasks": tasks, "current": plan.current_task_id or None}


def _plain(value: Any) -> Any:
    """``value`` if MessagePack can carry it as is, else its ``str``."""
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


# Before anyone's ``import metagpt``: its root and a config (see ``prepare``).
_prepare_env()
