"""wirepipe's gateway: the asyncio world around the sans-I/O ``protocol`` package.

from gateway import Gateway, WebPipe, MemoryStore
"""

from typing import Any

from .config import Config
from .middleware import Middleware
from .pipe import WebPipe
from .server import Gateway
from .stores import MemoryStore, Retention, Store

__all__ = ["Config", "Gateway", "MemoryStore", "Middleware", "RedisStore", "Retention", "Store", "WebPipe"]

# The one place the version is written: pyproject.toml reads it from here
# (setuptools' dynamic version); clients/js/package.json must equal it
# (tests/test_packaging.py).
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "RedisStore":  # imported on first use: the core needs no redis package
        from .stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
