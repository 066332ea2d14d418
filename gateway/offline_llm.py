"""Moved: the scripted LLM lives in ``gateway.integrations.metagpt.offline_llm`` now.

A shim for the old path; it re-exports that module's public API.
"""

from __future__ import annotations

from .integrations.metagpt.offline_llm import *  # noqa: F403 - its public API, as it was
from .integrations.metagpt.offline_llm import __all__ as __all__
