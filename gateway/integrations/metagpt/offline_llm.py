"""A scripted LLM for MetaGPT: canned answers streamed token by token, offline.

``ScriptedLLM`` is a MetaGPT provider (a ``BaseLLM``) whose answers come from
a *script* instead of a model.  It streams through MetaGPT's own path
(``metagpt.logs.log_llm_stream``), so everything that watches a real model's
tokens sees these the same way, with no network and no key.

Two ways to select it:

- **By config**, the way MetaGPT selects every provider: ``register()`` adds
  it to ``LLM_REGISTRY`` under an existing ``LLMType`` value (the enum is
  closed), ``metagpt``, for the model name ``wirepipe-scripted``.  Any other
  model under ``api_type: metagpt`` still gets MetaGPT's own provider.
  ``offline_llm_config()`` is that config block.
- **Per run**: ``with use(script):`` makes every LLM that MetaGPT creates or
  calls in this context scripted, whatever ``config2.yaml`` says.  MetaGPT
  creates some actions inline with a default ``Context()`` (the planner's
  ``WritePlan()``), which never see a role's config; only this reaches them.

``DemoScript`` answers MetaGPT's own prompts (WritePlan, WriteAnalysisCode,
the react-mode think step, CheckData) and the team prompts of
``apps.py``, so a real DataInterpreter run makes a plan, writes
code that really runs in a Jupyter kernel, and ends.

This module imports MetaGPT lazily: importing it needs no MetaGPT.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol

__all__ = [
    "OFFLINE_API_TYPE",
    "OFFLINE_MODEL",
    "DemoScript",
    "Script",
    "offline_llm_config",
    "register",
    "scripted_llm_class",
    "use",
]

#: An existing ``LLMType`` value: MetaGPT refuses unknown ``api_type`` values.
OFFLINE_API_TYPE: Final = "metagpt"
#: The model name that selects the scripted provider under ``OFFLINE_API_TYPE``.
OFFLINE_MODEL: Final = "wirepipe-scripted"

_TOKEN = re.compile(r"\S+\s*|\s+")


class Script(Protocol):
    """What a ``ScriptedLLM`` asks for its answers."""

    def answer(self, messages: list[dict[str, Any]]) -> str:
        """The whole answer to one chat call (OpenAI-style messages)."""
        ...


def offline_llm_config(**overrides: Any) -> dict[str, Any]:
    """The ``llm:`` block of a MetaGPT config that selects the scripted LLM.

    ``calc_usage`` is off: counting tokens makes tiktoken fetch an encoding.
    """
    cfg: dict[str, Any] = {
        "api_type": OFFLINE_API_TYPE,
        "model": OFFLINE_MODEL,
        "api_key": "offline",
        "base_url": "http://127.0.0.1:9/offline",  # never contacted
        "calc_usage": False,
        "stream": True,
    }
    cfg.update(overrides)
    return cfg


# --- per-run selection ----------------------------------------------------------

_FORCED: contextvars.ContextVar[tuple[Script, float] | None] = contextvars.ContextVar(
    "wirepipe_scripted_llm", default=None
)


@contextmanager
def use(script: Script | None = None, *, delay: float = 0.0) -> Iterator[Script]:
    """Within this context every MetaGPT LLM is a ``ScriptedLLM`` answering from ``script``.

    ``delay`` is the pause between streamed tokens, in seconds (0: none, but
    the stream still yields to the event loop between tokens).  The context
    is a ContextVar: tasks and ``asyncio.run`` threads started inside inherit
    it, concurrent runs with other scripts are unaffected.
    """
    register()
    script = script if script is not None else DemoScript()
    token = _FORCED.set((script, delay))
    try:
        yield script
    finally:
        _FORCED.reset(token)


# --- the provider -----------------------------------------------------------------

_lock = threading.Lock()
_cls: type | None = None
_registered = False


def scripted_llm_class() -> type:
    """The ``ScriptedLLM`` class (a MetaGPT ``BaseLLM``; built on first use).

    Raises:
        ImportError: MetaGPT is not installed.
    """
    global _cls
    with _lock:
        if _cls is None:
            _cls = _build_class()
        return _cls


def _build_class() -> type:
    from metagpt.const import USE_CONFIG_TIMEOUT
    from metagpt.provider.base_llm import BaseLLM

    class ScriptedLLM(BaseLLM):  # type: ignore[misc]
        """A MetaGPT provider that streams a script's answers token by token."""

        def __init__(self, config: Any, script: Script | None = None, delay: float = 0.0) -> None:
            self.config = config
            self.model = getattr(config, "model", None) or OFFLINE_MODEL
            self.pricing_plan = None
            self.cost_manager = None
            self._script = script if script is not None else DemoScript()
            self._delay = delay

        def _current(self) -> tuple[Script, float]:
            forced = _FORCED.get()
            return forced if forced is not None else (self._script, self._delay)

        def _reply(self, text: str) -> dict[str, Any]:
            return {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0},
            }

        async def _achat_completion(
            self, messages: list[dict[str, Any]], timeout: int = USE_CONFIG_TIMEOUT
        ) -> dict[str, Any]:
            script, _ = self._current()
            return self._reply(script.answer(messages))

        async def acompletion(
            self, messages: list[dict[str, Any]], timeout: int = USE_CONFIG_TIMEOUT
        ) -> dict[str, Any]:
            return await self._achat_completion(messages, timeout=timeout)

        async def _achat_completion_stream(
            self, messages: list[dict[str, Any]], timeout: int = USE_CONFIG_TIMEOUT
        ) -> str:
            # Looked up at call time: log_llm_stream reads the function that
            # set_llm_stream_logfunc installed last.
            from metagpt.logs import log_llm_stream

            script, delay = self._current()
            text = script.answer(messages)
            for token in _TOKEN.findall(text):
                log_llm_stream(token)
                await asyncio.sleep(delay)
            log_llm_stream("\n")  # as every MetaGPT provider ends a stream
            return text

    return ScriptedLLM


def register() -> None:
    """Register the scripted provider with MetaGPT's ``LLM_REGISTRY`` (idempotent).

    Under ``LLMType("metagpt")``: configs naming ``model: wirepipe-scripted``
    get a ``ScriptedLLM``, every other model MetaGPT's own provider.  Also
    hooks the registry so that ``use()`` can force the scripted LLM.

    Raises:
        ImportError: MetaGPT is not installed.
    """
    global _registered
    cls = scripted_llm_class()
    with _lock:
        if _registered:
            return
        import metagpt.provider  # noqa: F401  (registers the real providers first)
        from metagpt.configs.llm_config import LLMType
        from metagpt.provider.llm_provider_registry import LLM_REGISTRY, register_provider

        llm_type = LLMType(OFFLINE_API_TYPE)
        fallback = LLM_REGISTRY.providers.get(llm_type)

        def scripted_or_metagpt(config: Any) -> Any:
            if getattr(config, "model", None) == OFFLINE_MODEL or fallback is None:
                return cls(config)
            return fallback(config)

        register_provider(llm_type)(scripted_or_metagpt)

        real_get = LLM_REGISTRY.get_provider

        def get_provider(enum: Any) -> Any:
            forced = _FORCED.get()
            if forced is not None:
                script, delay = forced
                return lambda config: cls(config, script, delay)
            return real_get(enum)

        LLM_REGISTRY.get_provider = get_provider
        _registered = True


# --- the demo script ----------------------------------------------------------------

#: The demo plan: a small, real analysis of the run's own idea text.
_DEMO_TASKS: Final[tuple[tuple[str, list[str], str, str], ...]] = (
    ("1", [], "Load the idea text and count its characters", "other"),
    ("2", ["1"], "Count the words of the idea and find the most common one", "eda"),
    ("3", ["2"], "Report the findings in one sentence", "other"),
)

_CODE: Final = {
    "1": 'idea = {idea!r}\nprint(f"{{len(idea)}} characters")',
    "2": (
        "import sys\n"
        "from collections import Counter\n"
        "words = [w.strip('.,;:!?\"').lower() for w in idea.split()]\n"
        "counts = Counter(w for w in words if w)\n"
        "print('counting words case-insensitively', file=sys.stderr)\n"
        'print(f"{{len(words)}} words, {{len(counts)}} distinct")'
    ),
    "3": (
        "top, n = counts.most_common(1)[0] if counts else ('nothing', 0)\n"
        'f"The idea has {{len(idea)}} characters and {{len(words)}} words; '
        'the most common word is {{top!r}} ({{n}}x)."'
    ),
}
#: Task 2 with a bug, for ``DemoScript(bug=True)``: MetaGPT retries it.
_BUGGY_2: Final = "words = idea.split()\nprint(len(wrods))"

_CHANGE = re.compile(r"(?im)^user: ((?:confirm\W+)?.*?\bchange\b.*)$")
_TASK_REF = re.compile(r"(?i)\btask\s*#?\s*(\w+)")


class DemoScript:
    """Answers MetaGPT's prompts with a small plan, real code and short texts.

    ``prompts`` records every prompt (the messages joined), for tests and for
    showing that a reviewer's words reached the model.  With ``bug=True`` the
    first code for task 2 raises ``NameError``; the retry fixes it.
    """

    def __init__(self, *, bug: bool = False) -> None:
        self.bug = bug
        self.prompts: list[str] = []
        self._lock = threading.Lock()

    def answer(self, messages: list[dict[str, Any]]) -> str:
        prompt = "\n".join(_content(m) for m in messages)
        with self._lock:
            self.prompts.append(prompt)
        if "# Available Task Types:" in prompt:
            return self._plan(prompt)
        if "[improved impl]" in prompt or "# Plan Status" in prompt:
            return self._code(prompt)
        if '"state": bool' in prompt:  # DataInterpreter's react-mode think step
            return '```json\n{"thoughts": "The requirement is fulfilled.", "state": false}\n```'
        if "Check latest data info" in prompt:  # CheckData
            return "```python\n\n```"
        if "## Critique request" in prompt:
            return (
                "Critique: the draft is clear. It could name one concrete next step, "
                "and the last line could be shorter."
            )
        if "## Draft request" in prompt:
            idea = _section(prompt, "Idea:") or "the idea"
            if "\n## Critique\n" in prompt:
                return (
                    f"Revised draft on {idea}: state the goal in one line, "
                    "list two steps, and name the first concrete step: write the test."
                )
            return f"Draft on {idea}: state the goal, list the steps, and ask for feedback early."
        return "OK."

    # -- WritePlan ------------------------------------------------------------

    def _plan(self, prompt: str) -> str:
        current = _json_after(prompt, "## Current Plan")
        if current:
            tasks = [
                {
                    "task_id": t["task_id"],
                    "dependent_task_ids": t.get("dependent_task_ids", []),
                    "instruction": t["instruction"],
                    "task_type": t.get("task_type", "other"),
                    "_done": t.get("is_finished", False),
                }
                for t in current
            ]
        else:
            tasks = [
                {"task_id": i, "dependent_task_ids": d, "instruction": s, "task_type": t, "_done": False}
                for i, d, s, t in _DEMO_TASKS
            ]
        for advice in _CHANGE.findall(prompt):
            _apply_change(tasks, advice.strip())
        for t in tasks:
            del t["_done"]
        return "```json\n" + json.dumps(tasks, indent=4) + "\n```"

    # -- WriteAnalysisCode ------------------------------------------------------

    def _code(self, prompt: str) -> str:
        idea = _section(prompt, "# User Requirement") or ""
        current = _section(prompt, "## Current Task") or ""
        task_id = "1"
        for i, _, instruction, _ in _DEMO_TASKS:
            if current.startswith(instruction):
                task_id = i
        if task_id == "2" and self.bug and "NameError" not in prompt:
            code = _BUGGY_2
        else:
            code = _CODE[task_id].format(idea=idea)
        note = re.search(r"\(reviewer: (.*)\)\s*$", current)
        if note:
            code = f"print({('reviewer: ' + note.group(1))!r})\n" + code
        return f"Here is the code for this step.\n```python\n{code}\n```"


def _content(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    if isinstance(content, list):  # text + images
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def _section(prompt: str, heading: str) -> str | None:
    """The first non-empty line after ``heading`` (or the rest of its line)."""
    at = prompt.find(heading)
    if at < 0:
        return None
    rest = prompt[at + len(heading) :]
    for line in rest.splitlines():
        if line.strip():
            return line.strip()
    return None


def _json_after(prompt: str, heading: str) -> list[dict[str, Any]]:
    at = prompt.find(heading)
    if at < 0:
        return []
    start = prompt.find("[", at)
    if start < 0:
        return []
    try:
        value, _ = json.JSONDecoder().raw_decode(prompt[start:])
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _apply_change(tasks: list[dict[str, Any]], advice: str) -> None:
    """Fold a reviewer's ``change ...`` into the plan, as a model would."""
    ref = _TASK_REF.search(advice.split("change", 1)[-1])
    target = None
    if ref:
        target = next((t for t in tasks if t["task_id"] == ref.group(1)), None)
    if target is None:
        target = next((t for t in tasks if not t["_done"]), None)
    if target is None:
        return
    base = re.sub(r" \(reviewer: .*\)$", "", target["instruction"])
    target["instruction"] = f"{base} (reviewer: {advice})"
