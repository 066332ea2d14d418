"""Store factories for the shared store suite (``test_store_suite.py``).

Every backend is one entry of ``STORE_FACTORIES``: an async context manager
that takes a ``Retention`` and yields a fresh, empty store, closing it on
exit.  The suite runs once per entry.  A backend that needs a service adds
its marks to ``STORE_MARKS`` (the Redis one: ``[pytest.mark.redis]``), so
``-m "not redis"`` deselects it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from gateway.stores import MemoryStore, Retention, Store

StoreFactory = Callable[[Retention], AbstractAsyncContextManager[Store]]


@asynccontextmanager
async def memory_store(retention: Retention) -> AsyncIterator[Store]:
    store = MemoryStore(retention)
    try:
        yield store
    finally:
        await store.close()


#: backend id -> factory.  Add ``"redis": redis_store`` here.
STORE_FACTORIES: dict[str, StoreFactory] = {"memory": memory_store}
#: backend id -> pytest marks for its tests.
STORE_MARKS: dict[str, list[Any]] = {"redis": [pytest.mark.redis]}


@pytest.fixture(params=[pytest.param(name, marks=STORE_MARKS.get(name, []), id=name) for name in STORE_FACTORIES])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """``async with make_store(Retention(...)) as store``: a fresh store of this backend."""
    return STORE_FACTORIES[request.param]


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    """A fresh store of this backend with the default retention."""
    async with make_store(Retention()) as s:
        yield s


@pytest.fixture
def sid() -> str:
    """A session id no other test (or earlier run against a shared server) uses."""
    return f"suite-{uuid.uuid4().hex[:12]}"
