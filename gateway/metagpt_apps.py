"""Moved: the MetaGPT apps live in ``gateway.integrations.metagpt.apps`` now.

A shim for the old path (``--app di=gateway.metagpt_apps:data_interpreter``
keeps working); importing it raises ImportError when MetaGPT is not installed.
"""

from __future__ import annotations

from .integrations.metagpt.apps import Options, data_interpreter, team

__all__ = ["Options", "data_interpreter", "team"]
