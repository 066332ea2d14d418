"""Plain HTTP on the gateway's port: the web UI, the JS client, health, metrics.

Requests go over raw asyncio streams so that the path reaches the server
byte for byte (no client-side normalisation of ``..`` or ``%2e``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from support import TIMEOUT, scrape

from gateway import Config, Gateway
from gateway.http_front import STATIC, client_dir

#: Both fronts on the gateway's own port: websockets' HTTP, and uvicorn's.
pytestmark = pytest.mark.fronts("uvicorn", "websockets")

ROOT = Path(__file__).resolve().parents[2]
INDEX = STATIC / "index.html"
JS_SRC = ROOT / "clients" / "js" / "src" / "wirepipe.js"


async def get(gw: Gateway, path: str) -> tuple[int, dict[str, str], bytes]:
    """``GET path``; returns (status, headers with lower-case names, body)."""

    async def go() -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status_line, *lines = head.strip().split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            return int(status_line.split()[1]), headers, body
        finally:
            writer.close()

    return await asyncio.wait_for(go(), TIMEOUT)


# --- the UI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/index.html", "/?app=demo"])
async def test_root_serves_the_ui(gw: Gateway, path: str) -> None:
    assert INDEX.is_file(), f"{INDEX} is missing: the gateway has no web UI to serve"
    status, headers, body = await get(gw, path)
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert body == INDEX.read_bytes()
    assert headers["x-content-type-options"] == "nosniff"


async def test_nested_static_files_are_served(gw: Gateway) -> None:
    nested = sorted(p for p in STATIC.rglob("*.mjs") if p.is_file())
    assert nested, "no nested .mjs file under gateway/static: the vendored msgpack (gateway/static/vendor) is missing"
    rel = nested[0].relative_to(STATIC).as_posix()
    status, headers, body = await get(gw, "/" + rel)
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert body == nested[0].read_bytes()


async def test_the_js_client_is_served(gw: Gateway) -> None:
    served = client_dir() / "wirepipe.js"
    assert served.is_file(), f"{served} is missing: the gateway has no JS client to serve"
    status, headers, body = await get(gw, "/client/wirepipe.js")
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert body == served.read_bytes()
    if JS_SRC.is_file() and served.resolve() != JS_SRC.resolve():
        assert body == JS_SRC.read_bytes(), "the packaged JS client is stale"


# --- health and metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/healthz?probe=1"])
async def test_healthz(gw: Gateway, path: str) -> None:
    status, _, body = await get(gw, path)
    assert (status, body) == (200, b"ok\n")


async def test_metrics(gw: Gateway, raw: Any) -> None:
    status, headers, body = await get(gw, "/metrics")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    assert "# TYPE wirepipe_connections_open gauge" in body.decode()
    m = await scrape(gw)
    assert m.value("wirepipe_connections_open", front="ws") == 0
    assert m.value("wirepipe_sessions", state="running") == 0
    gw.pipe("m1").set_message("x")
    async with raw(gw.url) as r:
        await r.hello("m1")
        m = await scrape(gw)
        assert m.value("wirepipe_connections_open", front="ws") == 1
        assert m.value("wirepipe_connections_total", front="ws") == 1
        assert m.value("wirepipe_sessions", state="running") == 1


# --- what must not be served ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/../pyproject.toml",
        "/../../pyproject.toml",
        "/vendor/msgpack/../../../pyproject.toml",
        "/client/../../../pyproject.toml",
        "/client/../../pyproject.toml",
        "/client/../index.html",
        "/%2e%2e/pyproject.toml",
        "/%2E%2E/%2E%2E/pyproject.toml",
        "/..%2fpyproject.toml",
        "/client/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "/client/..%2f..%2f..%2fpyproject.toml",
        "/client/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
        "//etc/passwd",
        "/client//etc/passwd",
        "/client/",
        "/vendor",
    ],
)
async def test_path_traversal_is_404(gw: Gateway, path: str) -> None:
    status, _, body = await get(gw, path)
    assert status == 404, body[:200]
    assert body == b"not found\n"


def _escapes() -> list[str]:
    """Paths that, joined naively to their root, name real files outside it."""
    client = client_dir()
    return [
        "/" + os.path.relpath(ROOT / "pyproject.toml", STATIC),
        "/" + os.path.relpath(STATIC.parent / "server.py", STATIC),
        "/client/" + os.path.relpath(ROOT / "pyproject.toml", client),
        "/client/" + os.path.relpath(STATIC.parent / "server.py", client),
    ]


async def test_escapes_to_real_files_are_404(gw: Gateway) -> None:
    for path in _escapes():
        root = client_dir() if path.startswith("/client/") else STATIC
        rel = path.removeprefix("/client/") if path.startswith("/client/") else path[1:]
        assert (root / rel).is_file(), f"{path} should name a real file, naively"
        status, _, body = await get(gw, path)
        assert (status, body) == (404, b"not found\n"), path


@pytest.mark.parametrize("path", ["/nope", "/nope.html", "/client/nope.js", "/metrics/x"])
async def test_unknown_path_is_404(gw: Gateway, path: str) -> None:
    status, _, body = await get(gw, path)
    assert (status, body) == (404, b"not found\n")


async def test_without_the_ui_only_health_and_metrics_are_served(make_gw: Any) -> None:
    g = await make_gw(config=Config(serve_ui=False))
    for path in ("/", "/index.html", "/client/wirepipe.js", "/app.js"):
        status, _, _ = await get(g, path)
        assert status == 404, path
    assert (await get(g, "/healthz"))[0] == 200
    assert (await get(g, "/metrics"))[0] == 200


async def test_apps_lists_the_registered_app_names(make_gw: Any) -> None:
    import json

    from gateway.integrations.demo import app

    g = await make_gw(apps={"zeta": app, "alpha": app})
    status, headers, body = await get(g, "/apps")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"apps": ["alpha", "zeta"]}


async def test_metrics_count_errors_by_code(gw: Gateway, raw: Any) -> None:
    async with raw(gw.url) as r:
        await r.ws.send("a text frame")  # bad_frame
        await r.closed()
    m = await scrape(gw)
    assert m.value("wirepipe_errors_total", front="ws", code="bad_frame") == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/" + "a" * 256, 404),  # one component over NAME_MAX
        ("/client/" + "b" * 300 + ".js", 404),
        ("/vendor/" + "c" * 1000 + "/x.mjs", 404),
        ("/" + "%61" * 100, 404),  # not decoded: 300 characters
        ("/a\x00b", 400),  # a raw NUL in the request line
        ("/client/a%00.js", 400),
        ("/%00", 400),
    ],
)
async def test_impossible_names_are_answered_without_a_traceback(
    gw: Gateway, path: str, status: int, caplog: pytest.LogCaptureFixture, front: str
) -> None:
    caplog.set_level(logging.DEBUG)
    got, _, body = await get(gw, path)
    assert got == status
    if status == 404 or front == "websockets":  # uvicorn (h11) refuses a NUL in the request line itself
        assert body == (b"not found\n" if status == 404 else b"bad request\n")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
