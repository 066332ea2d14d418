"""Moved: the scripted LLM lives in ``gateway.integrations.metagpt.offline_llm`` now.

A shim for the old path; it re-exports that module's public API.
"""

from __future__ import annotations

from .integrations.metagpt.offline_llm import (
    OFFLINE_API_TYPE,
    OFFLINE_MODEL,
    DemoScript,
    Script,
    offline_llm_config,
    register,
    scripted_llm_class,
    use,
)

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
