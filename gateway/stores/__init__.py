"""Stores: where session logs live (``base.Store``), and the backends.

``MemoryStore`` is the embedded default; ``RedisStore`` (Redis Streams,
``pip install wirepipe[redis]``) is imported on first use, so the core needs
no redis package.
"""

from typing import Any

from .base import (
    Appended,
    Direct,
    Fetched,
    Fetches,
    FetchFn,
    Leases,
    Listener,
    LogInfo,
    Requests,
    Retention,
    StartQueue,
    Store,
    direct_of,
    fetch,
    fetch_of,
    leases_of,
    queue_of,
    requests_of,
)
from .memory import MemoryStore

__all__ = [
    "Appended",
    "Direct",
    "Fetched",
    "Fetches",
    "FetchFn",
    "Leases",
    "Listener",
    "LogInfo",
    "MemoryStore",
    "RedisStore",
    "Requests",
    "Retention",
    "StartQueue",
    "Store",
    "direct_of",
    "fetch",
    "fetch_of",
    "leases_of",
    "queue_of",
    "requests_of",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
