"""wirepipe's gateway: the asyncio world around the sans-I/O ``protocol`` package.

    from gateway import Gateway, WebPipe, MemoryStore
"""

from .pipe import WebPipe
from .server import Config, Gateway
from .stores import MemoryStore, Retention, Store

__all__ = ["Config", "Gateway", "MemoryStore", "Retention", "Store", "WebPipe"]
__version__ = "0.1.0"
