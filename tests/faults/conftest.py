"""Fixtures for the fault suite: private Redis servers, a fault proxy, gateway processes.

Every server here is a real process on 127.0.0.1 that the fixture started
and that is gone when the test ends (the fixture waits for its exit).
Readiness is read from the server's own output, never guessed with a clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from servers import REDIS_SERVER, GatewayProcess, PrivateRedis, WorkerProcess
from store_factories import delete_prefix, redis_prefix, require_redis
from support import missing

pytestmark = pytest.mark.redis


def _redis(tmp_path: Path, *, start: bool = True, **kw: Any) -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        missing("redis-server is not installed", "apt-get install redis-server, or scripts/bootstrap.sh --redis")
    r = PrivateRedis(tmp_path, **kw)
    if start:
        r.start()
    yield r
    r.kill()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis that keeps nothing on disk."""
    yield from _redis(tmp_path)


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis with an append-only file synced on every write."""
    yield from _redis(tmp_path, persistent=True)


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis with 2 MB of memory that refuses writes when full (no eviction)."""
    yield from _redis(tmp_path, extra=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction"))


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis that is not running yet: the test starts it."""
    yield from _redis(tmp_path, start=False)


@pytest.fixture
async def proxied_redis(private_redis: PrivateRedis) -> AsyncIterator[tuple[PrivateRedis, FaultProxy]]:
    async with FaultProxy(private_redis.port) as proxy:
        yield private_redis, proxy


@pytest.fixture
def gateway_process() -> Iterator[Any]:
    made: list[GatewayProcess] = []

    def make(
        port: int, redis_url: str, secret: str, *extra: str, apps: bool = True, cluster: bool = False
    ) -> GatewayProcess:
        g = GatewayProcess(port, redis_url, secret, *extra, apps=apps, cluster=cluster)
        g.start()
        made.append(g)
        return g

    yield make
    for g in made:
        g.kill()


@pytest.fixture
def worker_process() -> Iterator[Any]:
    """``worker_process(redis_url, *flags)``: a started ``wirepipe worker``; killed afterwards."""
    made: list[WorkerProcess] = []

    def make(redis_url: str, *extra: str) -> WorkerProcess:
        w = WorkerProcess(redis_url, *extra)
        made.append(w)
        w.start()
        return w

    yield make
    for w in made:
        w.kill()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the shared Redis; its keys are deleted afterwards."""
    require_redis()
    p = redis_prefix()
    try:
        yield p
    finally:
        await delete_prefix(p)
