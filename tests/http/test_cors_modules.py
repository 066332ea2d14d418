"""The JS client and its vendored msgpack are importable from pages of other origins the gateway allows.

A module script of another origin is fetched with CORS: its reply needs
``Access-Control-Allow-Origin``.  Both fronts answer ``/client/`` and
``/vendor/`` through ``HttpFront.route``; each is asked here over real
HTTP: the native one (websockets) and ``gw.asgi()`` mounted under uvicorn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from http_support import MOUNT, client, serve

from gateway import Config, Gateway, MemoryStore

ALLOWED = "http://127.0.0.1:9"
OTHER = "http://127.0.0.1:10"
MODULES = ["/client/wirepipe.js", "/client/codes.js", "/vendor/msgpack/index.mjs"]


@asynccontextmanager
async def front(kind: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """An HTTP client and the base URL of a gateway that allows ``ALLOWED``, through the ``kind`` front."""
    gw = Gateway("127.0.0.1", 0, store=MemoryStore(), config=Config(allow_origins=(ALLOWED,)))
    if kind == "native":
        async with gw, client() as http:
            yield http, f"http://127.0.0.1:{gw.port}"
    else:
        async with serve(gw) as served, client() as http:
            yield http, f"http://127.0.0.1:{served.port}{MOUNT}"


@pytest.mark.parametrize("kind", ["native", "asgi"])
async def test_the_client_modules_carry_cors_headers_for_allowed_origins(kind: str) -> None:
    async with front(kind) as (http, base):
        for path in MODULES:
            r = await http.get(base + path, headers={"Origin": ALLOWED})
            assert r.status_code == 200, path
            assert r.headers["content-type"] == "text/javascript; charset=utf-8"
            assert r.headers["access-control-allow-origin"] == ALLOWED
            assert r.headers["vary"] == "Origin"
            # the same file for the gateway's own page (no Origin: a same-origin
            # module script may send none): no grant, and caches still keyed by Origin
            own = await http.get(base + path)
            assert own.status_code == 200 and own.content == r.content
            assert "access-control-allow-origin" not in own.headers and own.headers["vary"] == "Origin"
        missing = await http.get(base + "/client/nope.js", headers={"Origin": ALLOWED})
        assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == ALLOWED

        # an origin the front door does not allow: refused, no grant
        refused = await http.get(base + MODULES[0], headers={"Origin": OTHER})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers

        # the web UI's own files are not for other origins' pages
        page = await http.get(base + "/app.js", headers={"Origin": ALLOWED})
        assert page.status_code == 200 and "access-control-allow-origin" not in page.headers
