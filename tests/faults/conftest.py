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
from servers import REDIS_SERVER, GatewayProcess, PrivateRedis
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

    def make(port: int, redis_url: str, secret: str, *extra: str, cluster: bool = False) -> GatewayProcess:
        g = GatewayProcess(port, redis_url, secret, *extra, cluster=cluster)
        g.start()
        made.append(g)
        return g

    yield make
    for g in made:
        g.kill()
