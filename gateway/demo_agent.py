"""Moved: the scripted demo agent lives in ``gateway.integrations.demo`` now.

A shim for the old path (``--app demo=gateway.demo_agent:app`` keeps working).
"""

from __future__ import annotations

from .integrations.demo import app

__all__ = ["app"]
