"""Store factories: every backend the suites run against.

Every backend is one entry of ``STORE_FACTORIES``: an async context manager
that takes a ``Retention`` and yields a fresh, empty store, closing it on
exit.  The shared store suite (``tests/stores``) runs once per entry, and so do the
gateway tests that take the ``gw`` fixture.  A backend that needs a service adds
its marks to ``STORE_MARKS`` (the Redis one: ``[pytest.mark.redis]``), so
``-m "not redis"`` deselects it.

Redis: ``WIREPIPE_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).  Each
store gets a key prefix of its own and its keys are deleted afterwards.  If
the server cannot be reached the Redis tests are skipped, or fail when the
``CI`` variable is set (CI starts Redis, so there it is a broken setup).

Redis Cluster (``cluster``): a real 3-master cluster on loopback that the
session fixture ``redis_cluster`` (``tests/conftest.py``) starts once per run
with ``start_cluster`` and kills at the end; the fixtures that parametrize over
the backends request it for this one.  Its stores also get a prefix of
their own, deleted afterwards on every master.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from servers import REDIS_CLI, REDIS_SERVER, PrivateCluster
from support import missing

from gateway.stores import MemoryStore, Retention, Store

REDIS_URL = os.environ.get("WIREPIPE_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Filled by the first ``require_redis``: [None] if Redis answered, else [why not].
_redis_status: list[str | None] = []

StoreFactory = Callable[[Retention], AbstractAsyncContextManager[Store]]


@asynccontextmanager
async def memory_store(retention: Retention) -> AsyncIterator[Store]:
    store = MemoryStore(retention)
    try:
        yield store
    finally:
        await store.close()


def require_redis() -> str:
    """The Redis URL, after checking (once per run) that the server answers.

    Skips the calling test if it does not, or fails it when ``CI`` is set.
    """
    if not _redis_status:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
            _redis_status.append(None)
        except Exception as exc:  # any failure means: no usable server
            _redis_status.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()
    why = _redis_status[0]
    if why is not None:
        missing(f"Redis is unreachable at {REDIS_URL} ({why})", "start redis-server")
    return REDIS_URL


def redis_prefix() -> str:
    """A key prefix no other test (or earlier run against the shared server) uses."""
    return f"wirepipe-test:{uuid.uuid4().hex[:12]}:"


async def delete_prefix(prefix: str, *, cluster: PrivateCluster | None = None) -> None:
    """Delete every key under ``prefix`` (on the shared Redis, or on every master of ``cluster``)."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    # the cluster client SCANs every master and UNLINKs the keys slot by slot
    client = Redis.from_url(REDIS_URL) if cluster is None else RedisCluster.from_url(cluster.url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def redis_store(retention: Retention) -> AsyncIterator[Store]:
    from gateway.stores.redis import RedisStore

    url = require_redis()
    prefix = redis_prefix()
    store = RedisStore(url, retention=retention, prefix=prefix)
    try:
        yield store
    finally:
        try:
            await store.close()
        finally:
            await delete_prefix(prefix)


#: The session's Redis Cluster once ``start_cluster`` made it.
_cluster: list[PrivateCluster] = []


def new_cluster(workdir: Path, extra: tuple[str, ...] = ()) -> PrivateCluster:
    """A started 3-master Redis Cluster on loopback ports (``extra``: more redis-server options).

    Skips the calling test if redis-server or redis-cli is missing (fails it under CI).
    """
    if REDIS_SERVER is None or REDIS_CLI is None:
        missing(
            "redis-server or redis-cli is not installed",
            "apt-get install redis-server redis-tools, or scripts/bootstrap.sh --redis",
        )
    cluster = PrivateCluster(workdir, extra=extra)
    cluster.start()
    return cluster


def start_cluster(workdir: Path) -> PrivateCluster:
    """Start the session's cluster (for the ``redis_cluster`` fixture)."""
    cluster = new_cluster(workdir)
    _cluster.append(cluster)
    return cluster


def stop_cluster(cluster: PrivateCluster) -> None:
    if cluster in _cluster:
        _cluster.remove(cluster)
    cluster.kill()


def running_cluster() -> PrivateCluster:
    """The session's cluster; the test (or its fixture) must request ``redis_cluster``."""
    if not _cluster:
        raise RuntimeError("no Redis Cluster: request the redis_cluster fixture first")
    return _cluster[-1]


@asynccontextmanager
async def cluster_store(retention: Retention) -> AsyncIterator[Store]:
    from gateway.stores.redis import RedisStore

    cluster = running_cluster()
    prefix = redis_prefix()
    store = RedisStore(cluster.url, cluster=True, retention=retention, prefix=prefix)
    try:
        yield store
    finally:
        try:
            await store.close()
        finally:
            await delete_prefix(prefix, cluster=cluster)


#: backend id -> factory.
STORE_FACTORIES: dict[str, StoreFactory] = {"memory": memory_store, "redis": redis_store, "cluster": cluster_store}
#: backend id -> pytest marks for its tests.
STORE_MARKS: dict[str, list[Any]] = {
    "redis": [pytest.mark.redis],
    "cluster": [pytest.mark.redis, pytest.mark.cluster],
}
#: backend id -> the fixture it needs (requested by the fixtures that parametrize over backends).
STORE_FIXTURES: dict[str, str] = {"cluster": "redis_cluster"}
