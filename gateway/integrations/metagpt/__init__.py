"""The MetaGPT integration: one call wires a MetaGPT run to a pipe.

    from gateway.integrations.metagpt import attach, new_executor, prepare

    prepare()  # only if your module imports metagpt itself, at its top: see below
    from metagpt.roles.di.data_interpreter import DataInterpreter

    async def app(pipe, input):
        async with attach(pipe, log_level="INFO"):
            await DataInterpreter(execute_code=new_executor()).run(input)

Where the code lives, one module per job:

- ``setup.py``: ``available()``, ``prepare()`` (MetaGPT's root, a config,
  the scripted LLM registered, the hooks installed), ``prepare_environment()``
  (the part that must precede ``import metagpt``), ``quiet()`` (MetaGPT off
  the terminal), ``configured_llm_is_scripted()``.
- ``run.py``: ``Run`` (one run's emitter: ids, asks, reviews, text streams),
  ``attach``, ``run_in_thread``, ``new_executor``, ``current_run``.
- ``hooks.py``: ``install()``: the wrappers on MetaGPT's process-wide hooks
  and methods, each asking which run the calling code belongs to.
- ``mapping.py``: MetaGPT objects (plans, messages, cell outputs, log
  records, tool output) -> wirepipe events.
- ``offline_llm.py``: ``ScriptedLLM``, a MetaGPT provider answering from a
  script, and ``use()``: every run works offline.
- ``apps.py``: the gateway apps ``data_interpreter`` and ``team``.

Importing this package (or any module in it) has no side effect: it does not
import MetaGPT, writes no file and sets no environment variable.  MetaGPT
reads its root and config when it is first imported and fails without an
``llm:`` block, so ``prepare()`` must run before that: ``attach``,
``run_in_thread``, ``new_executor``, the apps and ``wirepipe demo`` call it
themselves.  A module of yours that imports MetaGPT at its top calls
``prepare()`` first, as above (README and docs/metagpt.md show it).

The one deliberate exception is the old path ``gateway.metagpt``: a shim
kept for code written against it, which calls ``prepare_environment()`` when
imported, because that code (the README snippet of wirepipe 0.1) puts its
own ``from metagpt... import ...`` right after ``from gateway.metagpt import
...`` and relies on it.  New code uses this package.

The core (``protocol``, ``gateway`` outside ``gateway.integrations``) never
imports this package nor MetaGPT.  See docs/metagpt.md.
"""

from __future__ import annotations

from .hooks import install
from .offline_llm import use
from .run import RUN_THREAD_NAME, ReviewExit, Run, attach, current_run, new_executor, run_in_thread
from .setup import available, configured_llm_is_scripted, prepare, prepare_environment, quiet

__all__ = [
    "RUN_THREAD_NAME",
    "ReviewExit",
    "Run",
    "attach",
    "available",
    "configured_llm_is_scripted",
    "current_run",
    "install",
    "new_executor",
    "prepare",
    "prepare_environment",
    "quiet",
    "run_in_thread",
    "use",
]
