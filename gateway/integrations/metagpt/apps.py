"""MetaGPT apps for the gateway: ``async def app(pipe, input)``.

    from gateway.integrations.metagpt.apps import data_interpreter, team
    Gateway(apps={"data_interpreter": data_interpreter, "team": team})

A client starts one with ``hello.start = {"app": "data_interpreter", "input": ...}``.
``input`` is the idea as a string, or a map (every key optional):

- ``idea``: what to do.
- ``review``: ask a human to review the plan and each task (``data_interpreter``,
  default true) or let a human be the critic (``team``, default false).
- ``review_timeout`` (seconds) and ``review_default`` (``"confirm"``; the
  team's human critic: ``"No critique."``): an unanswered ask settles to the
  default after that long.
- ``llm``: ``"offline"`` (default: the scripted LLM of ``offline_llm.py``)
  or ``"config"`` (the LLM of MetaGPT's ``config2.yaml``; see docs/metagpt.md).
- ``log_level``: the lowest loguru level sent as ``log`` events (``"INFO"``).
- ``delay``: seconds between the offline LLM's tokens (default 0.01).
- ``rounds``: the team's rounds (default 3).

The gateway ends the run (``done``, ``failed``, ``cancelled``) when the app
returns, raises or is cancelled.  Importing this module raises ImportError
when MetaGPT is not installed (that is how ``wirepipe demo`` knows to offer
only its scripted demo agent); otherwise it has no side effect: MetaGPT is
set up (``prepare``) and imported when an app first runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from .hooks import installed
from .offline_llm import DemoScript, use
from .run import attach, new_executor, run_in_thread
from .setup import available, configured_llm_is_scripted, prepare

log = logging.getLogger("wirepipe.metagpt")

if not available():
    raise ImportError("MetaGPT is not installed: see docs/metagpt.md")

__all__ = ["Options", "data_interpreter", "team"]

DEFAULT_IDEA = "Count the words of this sentence and report the most common one"


@dataclass
class Options:
    """An app's ``input``, checked."""

    idea: str = DEFAULT_IDEA
    review: bool = True
    review_timeout: float | None = None
    review_default: str = "confirm"
    llm: str = "offline"
    log_level: str = "INFO"
    delay: float = 0.01
    rounds: int = 3
    bug: bool = False

    @classmethod
    def parse(cls, value: Any, **defaults: Any) -> Options:
        """Options from a string idea, a map, or None.

        Raises:
            ValueError: an unknown key, or a value of the wrong type.
        """
        opts = cls(**defaults)
        if value is None:
            return opts
        if isinstance(value, str):
            opts.idea = value or DEFAULT_IDEA
            return opts
        if not isinstance(value, dict):
            raise ValueError("input must be an idea (a string) or a map")
        for key, v in value.items():
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown input key {key!r}")
            setattr(opts, key, v)
        try:
            opts.idea = str(opts.idea or DEFAULT_IDEA)
            opts.review = bool(opts.review)
            opts.review_timeout = None if opts.review_timeout is None else float(opts.review_timeout)
            opts.review_default = str(opts.review_default)
            opts.delay = max(0.0, float(opts.delay))
            opts.rounds = max(1, min(int(opts.rounds), 20))
            opts.bug = bool(opts.bug)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad input: {exc}") from None
        if opts.llm not in ("offline", "config"):
            raise ValueError("llm must be 'offline' or 'config'")
        return opts

    def attach_options(self) -> dict[str, Any]:
        return {
            "log_level": self.log_level,
            "review_timeout": self.review_timeout,
            "review_default": self.review_default,
            "input_timeout": self.review_timeout,
            "input_default": self.review_default,
        }

    def llm_context(self) -> contextlib.AbstractContextManager[Any]:
        if self.llm == "offline":
            return use(DemoScript(bug=self.bug), delay=self.delay)
        return contextlib.nullcontext()


#: The ``detail`` of the ``status`` event while MetaGPT is imported (the first run of a process).
LOADING_DETAIL: Final = "loading MetaGPT"
#: The ``detail`` of a ``status`` event when ``llm: "config"`` finds no LLM configured.
NO_LLM_CONFIGURED: Final = (
    'llm "config": MetaGPT has no LLM configured (no llm: block in ~/.metagpt/config2.yaml), '
    "so this run uses the offline scripted LLM; see docs/metagpt.md"
)


async def _ready(pipe: Any, opts: Options) -> None:
    """MetaGPT imported and set up (``prepare``), saying so on ``pipe`` when it takes a while.

    Its first import takes seconds: the run's ``status`` says ``loading
    MetaGPT`` meanwhile.  A run that asked for ``llm: "config"`` when
    MetaGPT's config is the offline one ``prepare`` wrote gets a ``status``
    and a ``log`` event saying so, and the gateway's log a warning.
    """
    if not installed():
        _status(pipe, LOADING_DETAIL)
        started = time.monotonic()
        await asyncio.to_thread(prepare)
        _status(pipe, f"MetaGPT loaded in {time.monotonic() - started:.1f} s")
    else:
        await asyncio.to_thread(prepare)  # quick: only what a config change needs
    if opts.llm == "config" and await asyncio.to_thread(configured_llm_is_scripted):
        log.warning("run %s: %s", getattr(pipe, "sid", "?"), NO_LLM_CONFIGURED)
        _status(pipe, NO_LLM_CONFIGURED)
        pipe.set_message({"k": "log", "d": {"level": "WARNING", "msg": NO_LLM_CONFIGURED, "logger": "wirepipe"}})


def _status(pipe: Any, detail: str) -> None:
    pipe.set_message({"k": "status", "d": {"state": "running", "detail": detail}})


async def data_interpreter(pipe: Any, input: Any = None) -> None:
    """A MetaGPT DataInterpreter on ``input``'s idea, with human reviews (``review``).

    It runs in a thread of its own (the queue relay), so its Jupyter kernel
    and blocking calls never stall the gateway; its kernel has a notebook of
    its own and is shut down however the run ends.
    """
    opts = Options.parse(input, review=True)
    await _ready(pipe, opts)
    await run_in_thread(pipe, _data_interpreter, opts, **opts.attach_options())


async def _data_interpreter(opts: Options) -> None:
    from metagpt.roles.di.data_interpreter import DataInterpreter

    with opts.llm_context():
        di = DataInterpreter(auto_run=not opts.review, execute_code=new_executor())
        await di.run(opts.idea)


async def team(pipe: Any, input: Any = None) -> None:
    """A MetaGPT Team of two roles: a Writer drafts, a Critic critiques, the Writer revises.

    With ``review``, the Critic is a human (MetaGPT's ``is_human``): its
    critique is an ``ask``.  Runs on the gateway's loop (no blocking step).
    """
    opts = Options.parse(input, review=False, review_default="No critique.")
    await _ready(pipe, opts)
    from metagpt.team import Team

    writer_cls, critic_cls = _team_roles()
    async with attach(pipe, **opts.attach_options()):
        with opts.llm_context():
            company = Team()
            company.hire([writer_cls(), critic_cls(is_human=opts.review)])
            company.run_project(opts.idea)
            # Team.run would do this loop too, but it swallows a failure
            # (it logs and serializes the team); the gateway must see it.
            for _ in range(opts.rounds):
                if company.env.is_idle:
                    break
                await company.env.run()


_roles: tuple[type, type] | None = None


def _team_roles() -> tuple[type, type]:
    """The Writer and Critic role classes (built on first use: they need MetaGPT)."""
    global _roles
    if _roles is not None:
        return _roles
    from metagpt.actions import Action, UserRequirement
    from metagpt.roles import Role

    def latest(history: list[Any], cause: type) -> str:
        for msg in reversed(history):
            if msg.cause_by == f"{cause.__module__}.{cause.__name__}":
                return str(msg.content)
        return ""

    class WriteDraft(Action):  # type: ignore[misc]
        name: str = "WriteDraft"

        async def run(self, history: list[Any]) -> str:
            idea = latest(history, UserRequirement) or DEFAULT_IDEA
            critique = latest(history, Critique)
            prompt = f"## Draft request\nIdea: {idea}\n"
            if critique:
                prompt += f"\n## Critique\n{critique}\n\n"
            prompt += (
                "Write a short draft (three sentences at most) for the idea. "
                "If a critique is given above, revise the draft to answer it."
            )
            return str(await self._aask(prompt))

    class Critique(Action):  # type: ignore[misc]
        name: str = "Critique"

        async def run(self, history: list[Any]) -> str:
            draft = latest(history, WriteDraft)
            prompt = (
                f"## Critique request\nDraft:\n{draft}\n\n"
                "Give a short critique of the draft, starting with 'Critique:'."
            )
            return str(await self._aask(prompt))

    class Writer(Role):  # type: ignore[misc]
        name: str = "Ada"
        profile: str = "Writer"

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.set_actions([WriteDraft])
            self._watch([UserRequirement, Critique])

    class Critic(Role):  # type: ignore[misc]
        name: str = "Cy"
        profile: str = "Critic"

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.set_actions([Critique])
            self._watch([WriteDraft])

    _roles = (Writer, Critic)
    return _roles
