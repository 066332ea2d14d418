"""The adapter's hooks into MetaGPT: ``install()`` puts them in, once per process.

Theory of operation
-------------------
MetaGPT (0.8.2) reports what it does through process-wide hooks: ONE
LLM-stream function (``set_llm_stream_logfunc``), loguru's global logger and
the builtin ``input()``; for plans, tasks, code and messages it has no hook
at all.  So ``install()`` puts, once per process, a thin wrapper on each of
those hooks and on a few MetaGPT methods (the ``_hook_*`` functions below,
one per kind of event), and every wrapper asks one ContextVar, ``run.RUN``,
which run the calling code belongs to.  ``attach`` sets it.  Code outside
any run sees MetaGPT behave exactly as before.

What becomes which event (docs/protocol.md section 5; ``mapping.py`` builds them):

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

Each ``_wrap_*`` function takes the original (and what it needs besides) and
returns its replacement; ``_patch`` records the original, so that a failed
install leaves MetaGPT as it was.  MetaGPT is imported inside ``_install``.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from .mapping import code_event, log_event, output_events, plain, tool_events
from .run import RUN, STREAM, Run, attach
from .setup import is_quiet

__all__ = ["install", "installed", "quiet_now"]

log = logging.getLogger("wirepipe.metagpt")

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


def installed() -> bool:
    """True once ``install()`` has put the hooks in."""
    return _installed


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
    from metagpt.roles.di import data_interpreter as data_interpreter_module  # isort: skip
    import metagpt.logs as mlogs
    from metagpt.actions.di import ask_review
    from metagpt.actions.di.execute_nb_code import ExecuteNbCode
    from metagpt.environment.base_env import Environment
    from metagpt.provider.base_llm import BaseLLM
    from metagpt.provider.human_provider import HumanProvider
    from metagpt.strategy import planner as planner_mod
    from metagpt.strategy.planner import Planner

    _hook_llm(mlogs, BaseLLM)
    _hook_logs(mlogs)
    _hook_tool_output(mlogs)
    _hook_human_input(mlogs, ask_review, HumanProvider)
    _hook_plans(planner_mod, Planner, Role, DataInterpreter)
    _hook_code(ExecuteNbCode)
    _hook_prints(data_interpreter_module)
    _hook_messages(Role, Environment)
    _hook_stream_pipe(Role)


# --- 1. LLM tokens -> text ------------------------------------------------------------


def _hook_llm(mlogs: Any, BaseLLM: Any) -> None:
    """The ONE process-wide LLM-stream function, routed by ``RUN``; one stream per ``aask``."""
    mlogs.set_llm_stream_logfunc(functools.partial(_llm_stream, getattr(mlogs, "_llm_stream_log", None)))
    _patch(BaseLLM, "aask", _wrap_llm_aask)


def _llm_stream(previous: Callable[[Any], Any] | None, msg: Any) -> None:
    run = RUN.get()
    if run is None:
        if previous is not None and not is_quiet():
            previous(msg)
        return
    run.check_cancelled()
    run.token(msg if isinstance(msg, str) else str(msg))


def _wrap_llm_aask(orig: Any) -> Any:
    async def aask(self: Any, *args: Any, **kwargs: Any) -> Any:
        run = RUN.get()
        if run is None:
            return await orig(self, *args, **kwargs)
        run.check_cancelled()
        stream = run.new_id("llm")
        token = STREAM.set(stream)
        answer = None
        try:
            answer = await orig(self, *args, **kwargs)
            return answer
        finally:
            STREAM.reset(token)
            run.end_stream(stream, answer)

    return aask


# --- 2. loguru records -> log ---------------------------------------------------------


def _hook_logs(mlogs: Any) -> None:
    """A loguru sink after MetaGPT's own handlers, put back whenever MetaGPT resets them."""
    global _mlogs
    _mlogs = mlogs
    _patch(mlogs, "define_log_level", _wrap_define_log_level)
    if is_quiet():
        quiet_now()
    else:
        _add_sink()


_mlogs: Any = None
_define_lock = threading.Lock()


def quiet_now() -> None:
    """``setup.quiet()`` once the hooks are in: make MetaGPT's handlers again, without the terminal."""
    if _mlogs is not None:
        _mlogs.define_log_level(print_level=getattr(_mlogs, "_print_level", "INFO"))


def _wrap_define_log_level(orig: Any) -> Any:
    def define_log_level(*args: Any, **kwargs: Any) -> Any:
        with _define_lock:
            # It removes every handler, ours too, then adds one on sys.stderr:
            # when quiet, that "stderr" is the metagpt logger at DEBUG.
            module = orig.__globals__
            real = module.get("sys")
            if is_quiet() and real is not None:
                module["sys"] = _NoTerminal
            try:
                result = orig(*args, **kwargs)
            finally:
                if real is not None:
                    module["sys"] = real
            _add_sink()
        return result

    return define_log_level


class _ToDebugLog:
    """A stream whose lines go to the ``metagpt`` logger at DEBUG (MetaGPT's terminal output, when quiet)."""

    logger = logging.getLogger("metagpt")

    @classmethod
    def write(cls, text: str) -> int:
        if text.strip():
            cls.logger.debug("%s", text.rstrip("\n"))
        return len(text)

    @staticmethod
    def flush() -> None:
        return None


def quiet_loguru_default() -> None:
    """Before MetaGPT's first import, when quiet: loguru's default stderr handler to the DEBUG log.

    ``metagpt.const`` logs at import, before ``metagpt.logs`` replaces that
    handler with its own.
    """
    from loguru import logger

    try:
        logger.remove(0)  # loguru's default handler; gone already if anyone configured loguru
    except ValueError:
        return
    logger.add(_loguru_to_debug, level="DEBUG", format="{level} {name}: {message}")


def _loguru_to_debug(message: Any) -> None:
    _ToDebugLog.write(str(message))


def _hook_prints(*modules: Any) -> None:
    """MetaGPT modules that ``print()`` (a DataInterpreter prints each cell's result): to the DEBUG log when quiet."""
    for module in modules:
        _originals.append((module, "print", builtins.print))
        module.print = _print


def _print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
    if file is not None or not is_quiet():
        builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    _ToDebugLog.write((" " if sep is None else sep).join(map(str, args)) + ("\n" if end is None else end))


class _NoTerminal:
    """What ``metagpt.logs`` sees as ``sys`` while ``define_log_level`` runs quietly."""

    stderr = _ToDebugLog
    stdout = _ToDebugLog


def _add_sink() -> None:
    global _sink_id
    from loguru import logger

    _sink_id = logger.add(_log_sink, level=0, format="{message}", catch=True)


def _log_sink(message: Any) -> None:
    run = RUN.get()
    if run is None or getattr(_in_sink, "busy", False):
        return
    record = message.record
    if record["level"].no < run.log_level:
        return
    _in_sink.busy = True
    try:
        run.emit("log", log_event(record))
    finally:
        _in_sink.busy = False


# --- 3. tool output -> tool (newer MetaGPT only) --------------------------------------


def _hook_tool_output(mlogs: Any) -> None:
    if hasattr(mlogs, "set_tool_output_logfunc"):
        previous = getattr(mlogs, "_tool_output_log", None)
        mlogs.set_tool_output_logfunc(functools.partial(_tool_output, previous))


def _tool_output(previous: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
    run = RUN.get()
    if run is None:
        return previous(*args, **kwargs) if previous else None
    output = kwargs.get("output", args[0] if args else None)
    _emit_tools(run, output, kwargs.get("tool_name", args[1] if len(args) > 1 else ""))
    return None


def _emit_tools(run: Run, output: Any, tool_name: str) -> None:
    for d in tool_events(output, tool_name):
        run.emit("tool", d)


# --- 4. human input -> ask ------------------------------------------------------------


def _hook_human_input(mlogs: Any, ask_review: Any, HumanProvider: Any) -> None:
    """Newer MetaGPT's input function, else 0.8.2's ``AskReview.run``; and ``HumanProvider.aask``."""
    if hasattr(mlogs, "set_human_input_func"):
        previous = getattr(mlogs, "_get_human_input", input)
        mlogs.set_human_input_func(functools.partial(_human_input, previous))
    else:
        _patch(ask_review.AskReview, "run", functools.partial(_wrap_ask_review, ask_review))
    _patch(HumanProvider, "aask", functools.partial(_wrap_human_aask, mlogs))


async def _human_input(previous: Any, prompt: str = "", *args: Any, **kwargs: Any) -> Any:
    run = RUN.get()
    if run is None:
        if asyncio.iscoroutinefunction(previous):
            return await previous(prompt, *args, **kwargs)
        return previous(prompt)
    value = await run.ask(prompt, default=run.input_default or None, timeout=run.input_timeout, kind="input")
    return run.default_if_none(value, run.input_default)


def _wrap_human_aask(mlogs: Any, orig: Any) -> Any:
    async def aask(self: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        run = RUN.get()
        if run is None:
            return await orig(self, msg, *args, **kwargs)
        mlogs.logger.info("It's your turn, please type in your response. You may also refer to the context below")
        value = await run.ask(
            str(msg),
            default=run.input_default or None,
            timeout=run.input_timeout,
            kind="input",
        )
        rsp = run.default_if_none(value, run.input_default)
        if rsp in ("exit", "quit"):
            raise run.exit()
        return rsp

    return aask


def _wrap_ask_review(ask_review: Any, orig: Any) -> Any:
    """AskReview.run as in MetaGPT 0.8.2, awaiting the pipe instead of calling ``input()``."""
    ReviewConst = ask_review.ReviewConst
    # Records keep MetaGPT's module name, as if AskReview had logged them.
    mlogger = ask_review.logger.patch(lambda r: r.update(name=ask_review.__name__))

    async def run(
        self: Any,
        context: list[Any] | None = None,
        plan: Any = None,
        trigger: str = ReviewConst.TASK_REVIEW_TRIGGER,
    ) -> tuple[str, bool]:
        current = RUN.get()
        if current is None:
            mine: tuple[str, bool] = await orig(self, context=context or [], plan=plan, trigger=trigger)
            return mine
        context = context or []
        if plan:
            mlogger.info("Current overall plan:")
            mlogger.info(
                "\n".join(f"{task.task_id}: {task.instruction}, is_finished: {task.is_finished}" for task in plan.tasks)
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
        confirmed = rsp.lower() in ReviewConst.CONTINUE_WORDS or ReviewConst.CONTINUE_WORDS[0] in rsp.lower()
        return rsp, confirmed

    return run


# --- 5. the planner -> plan, task ------------------------------------------------------


def _hook_plans(planner_mod: Any, Planner: Any, Role: Any, DataInterpreter: Any) -> None:
    from metagpt.actions.di.write_plan import update_plan_from_rsp

    _patch(planner_mod, "precheck_update_plan_from_rsp", functools.partial(_wrap_precheck, update_plan_from_rsp))
    _patch(Planner, "update_plan", _wrap_update_plan)
    _patch(Planner, "confirm_task", _wrap_confirm_task)
    _patch(Role, "_act_on_task", _wrap_act_on_task)
    _patch(DataInterpreter, "_act_on_task", _wrap_act_on_task)


def _wrap_precheck(update_plan_from_rsp: Callable[[str, Any], Any], orig: Any) -> Any:
    """WritePlan's answer passed its check: send the plan it proposes, before its review."""

    def precheck(rsp: str, current_plan: Any) -> Any:
        ok, err = orig(rsp, current_plan)
        run = RUN.get()
        if run is not None and ok:
            proposal = copy.deepcopy(current_plan)
            try:
                update_plan_from_rsp(rsp, proposal)
            except Exception:  # precheck said it applies; be safe anyway
                return ok, err
            run.plan(proposal, proposed=True)
        return ok, err

    return precheck


def _wrap_update_plan(orig: Any) -> Any:
    async def update_plan(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await orig(self, *args, **kwargs)
        run = RUN.get()
        if run is not None:
            run.plan(self.plan)
        return result

    return update_plan


def _wrap_confirm_task(orig: Any) -> Any:
    async def confirm_task(self: Any, task: Any, task_result: Any, review: str) -> Any:
        run = RUN.get()
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


def _wrap_act_on_task(orig: Any) -> Any:
    async def _act_on_task(self: Any, current_task: Any) -> Any:
        run = RUN.get()
        if run is None:
            return await orig(self, current_task)
        run.running_task = current_task.task_id
        run.task(current_task.task_id, "running")
        result = await orig(self, current_task)
        if not getattr(result, "is_success", True):
            run.task(current_task.task_id, "failed", getattr(result, "result", None))
        return result

    return _act_on_task


# --- 6. code and its output -> code, output -------------------------------------------


def _hook_code(ExecuteNbCode: Any) -> None:
    defaults = ExecuteNbCode.__init__.__defaults__
    shared_nb = defaults[0] if defaults else None  # MetaGPT's one notebook for every instance
    _patch(ExecuteNbCode, "run", functools.partial(_wrap_execute, shared_nb))
    _patch(ExecuteNbCode, "reset", _wrap_reset)
    _patch(ExecuteNbCode, "build", _wrap_build)


def _wrap_build(orig: Any) -> Any:
    # When quiet, the kernel (a process) writes its stdout and stderr to
    # <root>/logs/kernels.log, not to the gateway's terminal.
    async def build(self: Any) -> Any:
        client = getattr(self, "nb_client", None)
        if not is_quiet() or client is None:
            return await orig(self)
        from .setup import logs_dir

        folder = logs_dir()
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "kernels.log", "ab") as out:  # the kernel holds its own copy of the fd
            start = client.start_new_kernel
            client.start_new_kernel = functools.partial(start, stdout=out, stderr=out)
            try:
                return await orig(self)
            finally:
                del client.start_new_kernel

    return build


def _wrap_execute(shared_nb: Any, orig: Any) -> Any:
    async def run_code(self: Any, code: str, language: str = "python") -> Any:
        run = RUN.get()
        if run is None:
            return await orig(self, code, language)
        run.check_cancelled()
        if self not in run.executors:
            run.executors.append(self)
            if is_quiet() and not getattr(getattr(self, "console", None), "quiet", True):
                self.console.quiet = True  # it echoes each cell's code to the terminal
        if shared_nb is not None and self.nb is shared_nb and self.nb_client.kc is None:
            _own_notebook(self)
        cid = run.new_id("c")
        run.emit("code", code_event(cid, language, code, run.running_task))
        first = len(self.nb.cells)
        outputs, success = await orig(self, code, language)
        run.check_cancelled()
        if language == "python":
            cell = self.nb.cells[first] if len(self.nb.cells) > first else None
            events, errors = output_events(cid, cell.get("outputs", []) if cell else [])
            for d in events:
                run.emit("output", d)
            if not success and not errors:
                run.emit("output", {"id": cid, "stream": "error", "text": plain(outputs)})
        return outputs, success

    return run_code


def _own_notebook(ex: Any) -> None:
    import nbformat
    from nbclient import NotebookClient

    log.warning("wirepipe.metagpt: ExecuteNbCode used MetaGPT's shared notebook; gave it its own")
    ex.nb = nbformat.v4.new_notebook()
    ex.nb_client = NotebookClient(ex.nb, timeout=ex.timeout)


def _wrap_reset(orig: Any) -> Any:
    # 0.8.2's reset() starts a kernel on the old NotebookClient and then
    # replaces that client: the kernel is orphaned.  And it is what runs
    # when a cancel reaches a cell (nbclient: DeadKernelError).
    async def reset(self: Any) -> None:
        run = RUN.get()
        if run is None:
            await orig(self)
            return None
        from nbclient import NotebookClient

        await self.terminate()
        run.check_cancelled()
        self.nb_client = NotebookClient(self.nb, timeout=self.timeout)  # started by build()
        return None

    return reset


# --- 7. messages, once each, whichever way they travel -> message ---------------------


def _hook_messages(Role: Any, Environment: Any) -> None:
    _patch(Role, "publish_message", _wrap_publish)
    _patch(Role, "put_message", _wrap_deliver)
    _patch(Environment, "publish_message", _wrap_deliver)


def _wrap_publish(orig: Any) -> Any:
    def publish_message(self: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        run = RUN.get()
        if run is not None and msg:
            run.message(msg, name=getattr(self, "name", None) or None)
        return orig(self, msg, *args, **kwargs)

    return publish_message


def _wrap_deliver(orig: Any) -> Any:
    def deliver(self: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        run = RUN.get()
        if run is not None and msg:
            run.message(msg)
        return orig(self, msg, *args, **kwargs)

    return deliver


# --- 8. the Pipe scheme: a role handed a stream_pipe reports to it --------------------


def _hook_stream_pipe(Role: Any) -> None:
    _patch(Role, "run", _wrap_role_run)


def _wrap_role_run(orig: Any) -> Any:
    async def run_role(self: Any, *args: Any, **kwargs: Any) -> Any:
        pipe = (getattr(self, "model_extra", None) or {}).get("stream_pipe")
        current = RUN.get()
        if pipe is None or not hasattr(pipe, "set_message") or (current is not None and current.pipe is pipe):
            return await orig(self, *args, **kwargs)
        async with attach(pipe):
            return await orig(self, *args, **kwargs)

    return run_role
