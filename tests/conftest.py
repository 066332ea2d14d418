"""Shared fixtures: a real gateway on 127.0.0.1, raw protocol clients.

Helpers (``MS``, ``TIMEOUT``, ``Raw``, ``final``) live in ``tests/support.py``.

Fronts.  A module marked ``pytest.mark.fronts`` runs each of its tests that
takes a gateway (``gw``, ``make_gw``) once per front: ``uvicorn`` (the
default: the gateway's own port, uvicorn for HTTP and websockets' connection
for the WebSocket) and ``asgi`` (``gw.asgi()`` mounted under ``/agents`` in a
Starlette app under a real uvicorn, ``tests/http_support.py``; the gateway's
``url`` is then the mount's).  ``pytest.mark.fronts("uvicorn", "websockets")``
names the fronts instead: ``websockets`` is ``Config.front="websockets"``,
websockets' server alone.  Elsewhere the front is ``uvicorn``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from servers import PrivateCluster
from store_factories import STORE_FACTORIES, STORE_FIXTURES, STORE_MARKS, start_cluster, stop_cluster
from support import MakeGateway, OpenRaw, Raw
from websockets.asyncio.client import connect

from gateway import Gateway, MemoryStore, Retention
from protocol import SUBPROTOCOL

#: The fronts a ``fronts``-marked module runs against unless it names them (see the module docstring).
FRONTS = ("uvicorn", "asgi")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fronts(*names): run the module's gateway tests once per front (uvicorn, asgi unless named)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    mark = metafunc.definition.get_closest_marker("fronts")
    if "front" in metafunc.fixturenames and mark is not None:
        metafunc.parametrize("front", mark.args or FRONTS, indirect=True)


@pytest.fixture
def front(request: pytest.FixtureRequest) -> str:
    """The front clients come in through: ``uvicorn`` unless the module is marked ``fronts``."""
    return str(getattr(request, "param", "uvicorn"))


@asynccontextmanager
async def started(front: str, **kw: Any) -> AsyncIterator[Gateway]:
    """A gateway on 127.0.0.1, port 0, started, its clients coming in through ``front``; closed afterwards."""
    if front in ("uvicorn", "websockets"):
        if "config" in kw:
            kw["config"] = dataclasses.replace(kw["config"], front=front)
        else:
            kw["front"] = front
        async with Gateway(host="127.0.0.1", port=0, **kw) as g:
            yield g
        return
    from http_support import AsgiGateway, serve

    a = AsgiGateway(host="127.0.0.1", port=None, **kw)
    async with serve(a) as served:  # the host app's lifespan starts and closes it
        a.served = served
        a.port = served.port
        yield a


@pytest.fixture(params=[pytest.param(name, marks=STORE_MARKS.get(name, []), id=name) for name in STORE_FACTORIES])
async def gw(request: pytest.FixtureRequest, front: str) -> AsyncIterator[Gateway]:
    """A started gateway on 127.0.0.1, port 0, closed afterwards: once per store backend (and front)."""
    if request.param in STORE_FIXTURES:
        request.getfixturevalue(STORE_FIXTURES[request.param])
    async with STORE_FACTORIES[request.param](Retention()) as store:
        async with started(front, store=store) as g:
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
async def make_gw(front: str) -> AsyncIterator[MakeGateway]:
    """Factory for started gateways with custom knobs (through ``front``); all are closed afterwards."""
    async with AsyncExitStack() as stack:

        async def make(**kw: Any) -> Gateway:
            kw.setdefault("store", MemoryStore())
            return await stack.enter_async_context(started(front, **kw))

        yield make


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
