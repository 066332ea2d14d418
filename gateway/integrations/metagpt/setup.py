"""Getting MetaGPT ready in this process: its root, a config, the adapter's hooks.

Nothing here runs at import.  ``prepare_environment()`` is the part that must
precede the first ``import metagpt`` (MetaGPT reads its root and config at
import time and fails without an ``llm:`` block); ``prepare()`` does it, then
imports MetaGPT, registers the offline scripted LLM and installs the hooks.
``attach``, ``run_in_thread``, ``new_executor`` and the apps call ``prepare()``
on first use; code that imports MetaGPT itself first calls it explicitly.
``quiet()`` keeps MetaGPT off the terminal (the ``wirepipe`` command calls
it below ``--log-level DEBUG``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["available", "configured_llm_is_scripted", "is_quiet", "logs_dir", "prepare", "prepare_environment", "quiet"]

#: The first line of a config file that wirepipe wrote.
CONFIG_HEADER = "# written by wirepipe: the offline scripted LLM; see docs/metagpt.md"

log = logging.getLogger("wirepipe.metagpt")

_prepare_lock = threading.RLock()
_prepared = False
#: ``quiet()`` was called: MetaGPT keeps off the terminal in this process.
_quiet = False


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
    global _prepared
    if not available():
        raise ImportError("MetaGPT is not installed: see docs/metagpt.md")
    with _prepare_lock:
        prepare_environment(root)
        first = not _prepared
        started = time.monotonic()
        caught: list[warnings.WarningMessage] = []
        with contextlib.ExitStack() as stack:
            if _quiet and first:
                caught = stack.enter_context(warnings.catch_warnings(record=True))
                warnings.simplefilter("default")
                if sys.modules.get("metagpt") is None:
                    from .hooks import quiet_loguru_default

                    quiet_loguru_default()
            from metagpt.const import METAGPT_ROOT

            from .hooks import install
            from .offline_llm import register

            register()
            install()
        for w in caught:  # what its first import warned about (deprecations of its deps)
            log.debug("MetaGPT's import warned: %s: %s", w.category.__name__, str(w.message).strip())
        _prepared = True
    if first:
        log.info(
            "MetaGPT loaded in %.1f s; its log files: %s%s",
            time.monotonic() - started,
            logs_dir(),
            " (not the terminal: --log-level DEBUG shows it here)" if _quiet else "",
        )
    return Path(METAGPT_ROOT)


def quiet() -> Path:
    """Keep MetaGPT off the terminal in this process; returns the folder its output goes to.

    ``wirepipe serve``, ``demo`` and ``worker`` call it unless ``--log-level
    DEBUG``, so that their terminal shows the gateway's log, not MetaGPT's.
    From then on (before or after ``prepare()``): MetaGPT's loguru records go
    to its own log file only (``<root>/logs/<date>.txt``, DEBUG and up, which
    MetaGPT writes anyway) and to the ``metagpt`` logger at DEBUG instead of
    stderr; its Jupyter kernels' stdout and stderr go to
    ``<root>/logs/kernels.log``; a notebook executor's echo of the code is
    off; the warnings its first import raises go to ``wirepipe.metagpt`` at
    DEBUG; and LLM tokens streamed outside any run are dropped (inside a run
    they are ``text`` events, as always).  Once set, it stays for the process.
    """
    global _quiet
    _quiet = True
    from .hooks import installed, quiet_now

    if installed():
        quiet_now()
    return logs_dir()


def is_quiet() -> bool:
    """True once ``quiet()`` was called."""
    return _quiet


def logs_dir() -> Path:
    """Where MetaGPT writes its logs in this process: ``<its root>/logs``."""
    metagpt = sys.modules.get("metagpt.const")
    if metagpt is not None:
        return Path(metagpt.METAGPT_ROOT) / "logs"
    return _root(None) / "logs"


def configured_llm_is_scripted() -> bool:
    """True if MetaGPT's config (``config2.yaml``, read now) selects the offline scripted LLM.

    That is the config ``prepare`` writes when the user has none, so a run
    asking for ``llm: "config"`` then gets the scripted LLM.  Call after
    ``prepare()``.
    """
    from metagpt.config2 import Config

    from .offline_llm import OFFLINE_API_TYPE, OFFLINE_MODEL

    llm = Config.default().llm
    return str(getattr(llm.api_type, "value", llm.api_type)) == OFFLINE_API_TYPE and llm.model == OFFLINE_MODEL


def _root(root: str | os.PathLike[str] | None) -> Path:
    """MetaGPT's root as ``prepare_environment`` chooses it."""
    where = (
        root
        or os.environ.get("METAGPT_PROJECT_ROOT")
        or os.environ.get("WIREPIPE_METAGPT_ROOT")
        or Path(tempfile.gettempdir()) / f"wirepipe-metagpt-{os.getuid()}"
    )
    return Path(where).expanduser().resolve()


def prepare_environment(root: str | os.PathLike[str] | None = None) -> None:
    """The part of ``prepare`` that must precede ``import metagpt``; imports nothing.

    Sets ``METAGPT_PROJECT_ROOT`` and writes the offline config if none
    exists (see ``prepare``).  Does nothing once MetaGPT is imported, or if
    it is not installed.
    """
    if sys.modules.get("metagpt") is None and available():
        path = _root(root)
        os.environ["METAGPT_PROJECT_ROOT"] = str(path)
        cfg = path / "config" / "config2.yaml"
        if not cfg.exists() and not (Path.home() / ".metagpt" / "config2.yaml").exists():
            from .offline_llm import offline_llm_config

            cfg.parent.mkdir(parents=True, exist_ok=True)
            lines = [CONFIG_HEADER, "llm:"]
            lines += [f"  {k}: {_yaml_scalar(v)}" for k, v in offline_llm_config().items()]
            cfg.write_text("\n".join(lines) + "\n")


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else str(v)
