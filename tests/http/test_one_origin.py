"""``wirepipe serve``: the page, the WebSocket, REST and SSE on one host and port (docs/http.md, "Fronts").

A real ``wirepipe serve`` process (the default front, ``uvicorn``) runs the
demo app; one run is started by REST, followed by SSE and by a WebSocket
client at once, confirmed by REST, and the server is then stopped with the
SSE stream still open.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from asyncio.subprocess import PIPE, Process
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import TIMEOUT

from gateway.client import Client

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).parent / "wirepipe"
WIREPIPE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gateway.cli"]
INPUT = {"steps": 1, "delay": 0}


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The ``data:`` objects of an SSE response, as they come (``reset`` events are skipped)."""
    kind = "message"
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            if kind == "message":
                yield json.loads(line[6:])
            kind = "message"


async def test_serve_answers_the_page_the_websocket_rest_and_sse_on_one_port() -> None:
    server: Process = await asyncio.create_subprocess_exec(
        *WIREPIPE,
        "serve",
        "--port",
        "0",
        "--app",
        "demo=gateway.integrations.demo:app",
        stdout=PIPE,
        stderr=PIPE,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), TIMEOUT)).decode()
        m = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        port = int(m.group(1))
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            page = await http.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert (await http.get("/api/v1/apps")).json() == {"apps": ["demo"]}
            started = await http.post("/api/v1/sessions", json={"sid": "one", "app": "demo", "input": INPUT})
            assert started.status_code == 201, started.text

            async with http.stream("GET", "/api/v1/sessions/one/events") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                seen = sse_events(stream)
                async with Client(f"ws://127.0.0.1:{port}/", "one") as ws:
                    ask = await until(ws, lambda e: e.k == "ask")
                    sse_ask = await anext_where(seen, lambda e: e["k"] == "ask")
                    assert sse_ask["seq"] == ask.seq and sse_ask["d"]["id"] == ask.d["id"]
                    answered = await http.post(
                        f"/api/v1/sessions/one/asks/{ask.d['id']}",
                        json={"value": "yes"},
                        headers={"Idempotency-Key": "k1"},
                    )
                    assert answered.json() == {"ok": True, "rid": "k1"}
                    done = await until(ws, lambda e: e.k == "status" and e.d["state"] != "running")
                    assert done.d["state"] == "done"
                    assert (await anext_where(seen, lambda e: e["k"] == "status" and e["d"]["state"] != "running"))[
                        "seq"
                    ] == done.seq
                # the server stops with the SSE stream still open: it ends, the process exits 0
                server.send_signal(signal.SIGTERM)
                async for _ in seen:
                    pass
        out, err = await asyncio.wait_for(server.communicate(), TIMEOUT)
        assert server.returncode == 0, err
        assert "Traceback" not in err.decode(), err.decode()
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def until(client: Client, pred: Any) -> Any:
    """The client's first event for which ``pred`` is true."""

    async def first() -> Any:
        async for ev in client:
            if pred(ev):
                return ev
        raise AssertionError("the client ended first")

    return await asyncio.wait_for(first(), TIMEOUT)


async def anext_where(events: AsyncIterator[dict[str, Any]], pred: Any) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for e in events:
            if pred(e):
                return e
        raise AssertionError("the stream ended first")

    return await asyncio.wait_for(first(), TIMEOUT)


async def test_a_gateway_made_with_no_port_listens_on_nothing() -> None:
    from gateway import Gateway, MemoryStore

    async with Gateway(port=None, store=MemoryStore()) as gw:
        assert gw.port is None
        with pytest.raises(RuntimeError, match="port=None"):
            print(gw.url)
        assert gw.asgi() is gw.asgi()  # what serves it is the host app's mount


def test_an_unknown_front_is_refused() -> None:
    from gateway import Config

    with pytest.raises(ValueError, match="front must be one of uvicorn, websockets"):
        Config(front="native")


@pytest.mark.parametrize("front", ["uvicorn", "websockets"])
async def test_a_port_in_use_raises_and_the_gateway_still_closes(front: str) -> None:
    import socket

    from gateway import Gateway, MemoryStore

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        gw = Gateway(port=taken.getsockname()[1], store=MemoryStore(), front=front)
        with pytest.raises(OSError):
            await gw.start()
        await asyncio.wait_for(gw.close(), TIMEOUT)
    finally:
        taken.close()


async def test_an_unknown_route_gets_the_json_error_shape_of_its_api() -> None:
    from gateway import Gateway, MemoryStore

    async with Gateway(port=0, store=MemoryStore()) as gw, httpx.AsyncClient(base_url=gw.http_url[:-1]) as http:
        r = await http.get("/api/v1/nope")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found" and "/api/v1/nope" in r.json()["error"]["message"]
        r = await http.delete("/api/v1/sessions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert "GET" in r.headers["allow"]
        r = await http.get("/v1/nope")  # the OpenAI-compatible routes answer in OpenAI's shape
        assert r.status_code == 404
        assert r.json()["error"] == {
            "message": "GET /v1/nope: Not Found",
            "type": r.json()["error"]["type"],
            "param": None,
            "code": "not_found",
        }
