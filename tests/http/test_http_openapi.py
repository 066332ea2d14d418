"""The OpenAPI 3.1 document: served, valid (openapi-spec-validator), and the same routes as the app."""

from __future__ import annotations

from typing import Any

from http_support import client, serve
from openapi_spec_validator import validate
from starlette.routing import Route

from gateway import Gateway, MemoryStore
from gateway.http_api import OPENAI_PREFIX, PREFIX


async def test_the_document_is_served_valid_and_matches_the_routes() -> None:
    gw = Gateway(host="127.0.0.1", port=0, store=MemoryStore())
    async with serve(gw) as srv, client() as http:
        r = await http.get(srv.url("/openapi.json"))
        assert r.status_code == 200
        doc: dict[str, Any] = r.json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert doc["servers"] == [{"url": "/agents"}]  # where the host app mounted it
    documented = {
        (path, method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    routed = set()
    for route in srv.api.routes:
        assert isinstance(route, Route)
        assert route.path.startswith((PREFIX + "/", OPENAI_PREFIX + "/"))
        routed |= {(route.path, m) for m in route.methods or () if m != "HEAD"}
    assert documented == routed
    # Every error status a route documents names the codes it stands for.
    for item in doc["paths"].values():
        for op in item.values():
            if isinstance(op, dict) and "responses" in op:
                assert "200" in op["responses"] or "201" in op["responses"]
