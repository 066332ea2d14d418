"""Getting MetaGPT ready in this process: its root, a config, the adapter's hooks.

Nothing here runs at import.  ``prepare_environment()`` is the part that must
precede the first ``import metagpt`` (MetaGPT reads its root and config at
import time and fails without an ``llm:`` block); ``prepare()`` does it, then
imports MetaGPT, registers the offline scripted LLM and installs the hooks.
``attach``, ``run_in_thread``, ``new_executor`` and the apps call ``prepare()``
on first use; code that imports MetaGPT itself first calls it explicitly.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["available", "prepare", "prepare_environment"]

#: The first line of a config file that wirepipe wrote.
CONFIG_HEADER = "# written by wirepipe: the offline scripted LLM; see docs/metagpt.md"


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
    if not available():
        raise ImportError("MetaGPT is not installed: see docs/metagpt.md")
    prepare_environment(root)
    from metagpt.const import METAGPT_ROOT

    from .hooks import install
    from .offline_llm import register

    register()
    install()
    return Path(METAGPT_ROOT)


def prepare_environment(root: str | os.PathLike[str] | None = None) -> None:
    """The part of ``prepare`` that must precede ``import metagpt``; imports nothing.

    Sets ``METAGPT_PROJECT_ROOT`` and writes the offline config if none
    exists (see ``prepare``).  Does nothing once MetaGPT is imported, or if
    it is not installed.
    """
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
            lines = [CONFIG_HEADER, "llm:"]
            lines += [f"  {k}: {_yaml_scalar(v)}" for k, v in offline_llm_config().items()]
            cfg.write_text("\n".join(lines) + "\n")


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else str(v)
