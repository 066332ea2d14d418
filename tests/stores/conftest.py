"""Fixtures of the shared store suite (``test_store_suite.py``); the factories
live in ``tests/store_factories.py``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from store_factories import (
    STORE_FACTORIES,
    STORE_FIXTURES,
    STORE_MARKS,
    StoreFactory,
    delete_prefix,
    redis_prefix,
    require_redis,
)

from gateway.stores import Retention, Store


@pytest.fixture(params=[pytest.param(name, marks=STORE_MARKS.get(name, []), id=name) for name in STORE_FACTORIES])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """``async with make_store(Retention(...)) as store``: a fresh store of this backend."""
    if request.param == "redis":
        require_redis()
    if request.param in STORE_FIXTURES:
        request.getfixturevalue(STORE_FIXTURES[request.param])
    return STORE_FACTORIES[request.param]


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    """A fresh store of this backend with the default retention."""
    async with make_store(Retention()) as s:
        yield s


@pytest.fixture
def redis_url() -> str:
    """The Redis server's URL (the test is skipped, or fails under CI, if it does not answer)."""
    return require_redis()


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A fresh key prefix for Redis-only tests; its keys are deleted afterwards."""
    p = redis_prefix()
    try:
        yield p
    finally:
        await delete_prefix(p)


@pytest.fixture
def sid() -> str:
    """A session id no other test (or earlier run against a shared server) uses."""
    return f"suite-{uuid.uuid4().hex[:12]}"
