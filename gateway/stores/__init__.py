"""Stores: where session logs live (``base.Store``), and the backends."""

from .base import Appended, LogInfo, Retention, Store
from .memory import MemoryStore

__all__ = ["Appended", "LogInfo", "MemoryStore", "Retention", "Store"]
