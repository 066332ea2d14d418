"""The whole gateway from one ASGI app: ``gw.asgi()`` mounted in FastAPI under uvicorn.

The wire tests run through the ASGI front too (``pytest.mark.fronts``,
tests/conftest.py); these are what only the ASGI front has to show: the JS
client through a FastAPI mount, the web UI's files, ``/metrics``, the front
door, the connection cap, the stall watchdog and the heartbeat's part.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from http_support import MOUNT, client, serve
from prometheus_client import CONTENT_TYPE_LATEST
from support import MS, TIMEOUT, Scrape, final
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway import Gateway, MemoryStore, WebPipe
from gateway.asgi_ws import AsgiConnection
from gateway.client import Client
from gateway.http_front import STATIC
from protocol import SUBPROTOCOL, packb

ROOT = Path(__file__).resolve().parents[2]

#: The JS client (clients/js/src) in Node: start a run of ``review``, answer its ask, print every event.
NODE_SCRIPT = """
import { connect } from %s;
const [url, sid] = process.argv.slice(-2);
const c = connect(url, { sid, start: { app: 'review', input: 'the notes' } });
c.on('event', async (ev) => {
  console.log(JSON.stringify({ seq: ev.seq, k: ev.k, d: ev.d }));
  if (ev.k === 'ask') console.log(JSON.stringify({ replied: (await c.reply(ev.d.id, 'yes')).ok }));
  if (ev.k === 'status' && ['done', 'failed', 'cancelled'].includes(ev.d.state)) { c.close(); process.exit(0); }
});
c.on('error', (e) => { if (e.fatal) { console.error(JSON.stringify(e)); process.exit(2); } });
"""


async def review(pipe: WebPipe, value: Any) -> None:
    pipe.set_message(f"reviewing {value}")
    answer = await pipe.ask("Ship it?", choices=["yes", "no"])
    pipe.emit("log", {"level": "INFO", "msg": f"answer: {answer}"})


def gateway(**kw: Any) -> Gateway:
    return Gateway(host="127.0.0.1", port=0, store=MemoryStore(), apps={"review": review}, **kw)


async def test_the_js_client_runs_a_run_through_a_fastapi_mount() -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "clients" / "js" / "node_modules" / "ws").is_dir():
        pytest.fail("node and clients/js/node_modules are needed (./run test installs them)")
    gw = gateway()
    async with serve(gw, fastapi=True) as served:
        url = f"ws://127.0.0.1:{served.port}{MOUNT}/"
        index = json.dumps((ROOT / "clients" / "js" / "src" / "index.js").as_uri())
        proc = await asyncio.create_subprocess_exec(
            node,
            "--input-type=module",
            "-e",
            NODE_SCRIPT % index,
            url,
            "js-1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert proc.returncode == 0, err.decode()
        lines = [json.loads(line) for line in out.decode().splitlines()]
        assert {"replied": True} in lines
        evs = [x for x in lines if "seq" in x]
        assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))  # every event once, in order
        assert {"level": "INFO", "msg": "answer: yes"} in [e["d"] for e in evs]
        assert evs[-1]["d"]["state"] == "done"
        # the client was served by the ASGI front, and counted as a WebSocket client
        assert gw.metrics.ws.connections_total == 1


async def test_the_web_ui_the_js_client_and_metrics_from_the_mount() -> None:
    gw = gateway()
    async with serve(gw, fastapi=True) as served, client() as http:
        base = f"http://127.0.0.1:{served.port}{MOUNT}"
        page = await http.get(f"{base}/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.content == (STATIC / "index.html").read_bytes()
        assert page.headers["x-content-type-options"] == "nosniff"
        js = await http.get(f"{base}/client/wirepipe.js")
        assert js.status_code == 200 and js.headers["content-type"] == "text/javascript; charset=utf-8"
        assert (await http.get(f"{base}/client/../../pyproject.toml")).status_code == 404
        assert (await http.get(f"{base}/healthz")).text == "ok\n"
        assert (await http.get(f"{base}/apps")).json() == {"apps": ["review"]}
        assert (await http.post(f"{base}/healthz")).status_code == 405
        async with Client(f"ws://127.0.0.1:{served.port}{MOUNT}/", "m-1", start={"app": "review"}) as c:
            ask = (await c.until(lambda e: e.k == "ask"))[-1]
            assert (await c.reply(ask.d["id"], "no")).ok
            await c.until(final)
        metrics = await http.get(f"{base}/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"] == CONTENT_TYPE_LATEST
        scraped = Scrape(metrics.text)
        assert scraped.value("wirepipe_connections_total", front="ws") == 1
        assert scraped.value("wirepipe_events_sent_total", front="ws") >= 4


async def test_the_front_door_the_subprotocol_and_the_connection_cap() -> None:
    gw = gateway(max_connections=1)
    async with serve(gw) as served:
        url = f"ws://127.0.0.1:{served.port}{MOUNT}/"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        # the page's own origin gets in
        async with connect(url, origin=f"http://127.0.0.1:{served.port}", subprotocols=[SUBPROTOCOL]) as ws:  # type: ignore[arg-type,list-item]
            assert ws.subprotocol == SUBPROTOCOL
            # the one slot is taken: 503 with Retry-After, as on the native front
            with pytest.raises(InvalidStatus) as full:
                async with connect(url):
                    pass
            assert full.value.response.status_code == 503
            assert full.value.response.headers["Retry-After"] == "1"
        await asyncio.wait_for(gw.wait_connections(lambda n: n == 0), TIMEOUT)
        async with connect(url):  # the slot is free again
            pass
    assert gw.metrics.ws.refused == {"forbidden": 1, "capacity": 1}


async def test_a_stalled_client_is_dropped_and_the_heartbeat_leaves_asgi_clients_to_uvicorn() -> None:
    gw = gateway(stall_timeout=100 * MS, heartbeat=60.0)
    async with serve(gw) as served:
        pipe = gw.pipe("stall")
        url = f"ws://127.0.0.1:{served.port}{MOUNT}/"
        async with connect(url, max_queue=1, compression=None, subprotocols=[SUBPROTOCOL]) as stalled:  # type: ignore[list-item]
            await stalled.send(packb({"t": "hello", "sid": "stall"}))
            await stalled.recv()  # the welcome; then it reads no more
            (conn,) = list(gw._conns)
            assert isinstance(conn, AsgiConnection)
            gw.heartbeat.tick(conn.beat, 0.0)  # the gateway's heartbeat does not ping it (uvicorn does)
            assert gw.metrics.ws.heartbeat_timeouts == 0
            stalled.transport.pause_reading()
            for _ in range(8000):  # far more than the sockets' buffers hold
                pipe.emit("output", {"id": "c", "stream": "stdout", "text": os.urandom(1000).hex()})
            await asyncio.wait_for(gw.wait_connections(lambda n: n == 0), TIMEOUT)
            assert gw.metrics.ws.stalled == 1
            stalled.transport.abort()
