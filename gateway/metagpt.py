"""Moved: the MetaGPT adapter lives in ``gateway.integrations.metagpt`` now.

This module is a shim for code written against the old path; it re-exports
the adapter's public API.  New code imports ``gateway.integrations.metagpt``.

It is the one deliberate exception to "importing an integration has no side
effect": importing it calls ``prepare_environment()`` (sets
``METAGPT_PROJECT_ROOT`` and, if no MetaGPT config exists, writes the
offline one), as this module always did, because the old README snippet
imports MetaGPT right after ``from gateway.metagpt import ...`` and needs
MetaGPT's root and config to be there first.  With the new path, call
``gateway.integrations.metagpt.prepare()`` before your own MetaGPT imports.
"""

from __future__ import annotations

from .integrations.metagpt import *  # noqa: F403 - the adapter's public API, as it was
from .integrations.metagpt import __all__ as __all__
from .integrations.metagpt import prepare_environment

# The deliberate exception (see above): before the importer's own ``import metagpt``.
prepare_environment()
