"""Shared fixtures: a real gateway on 127.0.0.1, raw protocol clients.

Helpers (``MS``, ``TIMEOUT``, ``Raw``, ``final``) live in ``tests/support.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from servers import PrivateCluster
from store_factories import STORE_FACTORIES, STORE_FIXTURES, STORE_MARKS, start_cluster, stop_cluster
from support import MakeGateway, OpenRaw, Raw
from websockets.asyncio.client import connect

from gateway import Gateway, MemoryStore, Retention
from protocol import SUBPROTOCOL


@pytest.fixture(params=[pytest.param(name, marks=STORE_MARKS.get(name, []), id=name) for name in STORE_FACTORIES])
async def gw(request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    """A started gateway on 127.0.0.1, port 0, closed afterwards: once per store backend."""
    if request.param in STORE_FIXTURES:
        request.getfixturevalue(STORE_FIXTURES[request.param])
    async with STORE_FACTORIES[request.param](Retention()) as store:
        async with Gateway(host="127.0.0.1", port=0, store=store) as g:
            yield g


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCluster]:
    """A real 3-master Redis Cluster on loopback, started once per run and killed at its end."""
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture
async def make_gw() -> AsyncIterator[MakeGateway]:
    """Factory for started gateways with custom knobs; all are closed afterwards."""
    made: list[Gateway] = []

    async def make(**kw: Any) -> Gateway:
        kw.setdefault("store", MemoryStore())
        g = Gateway(host="127.0.0.1", port=0, **kw)
        await g.start()
        made.append(g)
        return g

    yield make
    for g in made:
        await g.close()


@pytest.fixture
def raw() -> OpenRaw:
    """``async with raw(url) as r``: a Raw client over a real socket."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def open_raw(url: str, **kw: Any) -> AsyncIterator[Raw]:
        kw.setdefault("subprotocols", [SUBPROTOCOL])
        async with connect(url, max_size=None, **kw) as ws:
            yield Raw(ws)

    return open_raw
