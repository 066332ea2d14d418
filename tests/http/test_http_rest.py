"""The REST routes under a real uvicorn, next to WebSocket clients of the same gateway.

docs/http.md is the reference; each test checks what a client of one
transport sees of a request made over the other.
"""

from __future__ import annotations

import asyncio
from typing import Any

from http_support import client, serve
from store_factories import delete_prefix, redis_prefix, require_redis
from support import TIMEOUT, scrape

from gateway import Config, Gateway, MemoryStore, RedisStore
from gateway.client import Client
from protocol import Grant


def gateway(**kw: Any) -> Gateway:
    kw.setdefault("store", MemoryStore())
    return Gateway(host="127.0.0.1", port=0, **kw)


async def test_confirm_by_rest_closes_the_ask_for_a_websocket_watcher() -> None:
    async with serve(gateway()) as srv, client() as http:
        pipe = srv.gw.pipe("job")
        asking = asyncio.ensure_future(pipe.ask("Proceed?", choices=["yes", "no"]))
        async with Client(srv.gw.url, "job") as ws:
            ask = (await ws.until(lambda e: e.k == "ask"))[-1]
            url = srv.url(f"/sessions/job/asks/{ask.d['id']}")
            r = await http.post(url, json={"value": "yes"}, headers={"Idempotency-Key": "k1"})
            assert r.status_code == 200, r.text
            assert r.json() == {"ok": True, "rid": "k1"}
            assert await asyncio.wait_for(asking, TIMEOUT) == "yes"
            answer = (await ws.until(lambda e: e.k == "answer"))[-1]
            assert answer.d == {"id": ask.d["id"], "value": "yes", "by": "client"}
            # The same key again: the first outcome, and nothing done twice.
            again = await http.post(url, json={"value": "no"}, headers={"Idempotency-Key": "k1"})
            assert (again.status_code, again.json()) == (200, {"ok": True, "rid": "k1"})
            # Another key, or the WebSocket client: the ask is closed for both.
            other = await http.post(url, json={"value": "no"}, headers={"Idempotency-Key": "k2"})
            assert other.status_code == 409
            assert other.json()["error"]["code"] == "ask_closed"
            assert (await ws.reply(ask.d["id"], "no")).err == "ask_closed"
            snap = (await http.get(srv.url("/sessions/job"))).json()
            assert snap["asks"] == [] and snap["snapshot"]["asks"] == []
            pipe.emit("log", {"level": "INFO", "msg": "after"})
            evs = await ws.until(lambda e: e.k == "log")
            assert [e.k for e in evs].count("answer") == 0  # one answer event in all


async def test_a_websocket_answer_first_and_rest_gets_ask_closed() -> None:
    async with serve(gateway()) as srv, client() as http:
        pipe = srv.gw.pipe("race")
        asking = asyncio.ensure_future(pipe.ask("Pick", choices=[1, 2]))
        async with Client(srv.gw.url, "race") as ws:
            ask = (await ws.until(lambda e: e.k == "ask"))[-1]
            assert (await ws.reply(ask.d["id"], 2, rid="same")).ok
            # The REST request with the WebSocket's rid gets that first outcome.
            url = srv.url(f"/sessions/race/asks/{ask.d['id']}")
            r = await http.post(url, json={"value": 1}, headers={"Idempotency-Key": "same"})
            assert r.status_code == 200
            r = await http.post(url, json={"value": 1})
            assert r.status_code == 409 and r.json()["error"]["code"] == "ask_closed"
            assert await asyncio.wait_for(asking, TIMEOUT) == 2


async def test_bad_value_unknown_ask_and_errors_as_json() -> None:
    async with serve(gateway()) as srv, client() as http:
        pipe = srv.gw.pipe("val")
        asking = asyncio.ensure_future(pipe.ask("Pick", choices=["a", "b"]))
        async with Client(srv.gw.url, "val") as ws:
            ask = (await ws.until(lambda e: e.k == "ask"))[-1]
        url = srv.url(f"/sessions/val/asks/{ask.d['id']}")
        r = await http.post(url, json={"value": "c"})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_value")
        r = await http.post(srv.url("/sessions/val/asks/nope"), json={"value": "a"})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_ask")
        r = await http.post(url, content=b"{not json")
        assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_frame")
        r = await http.post(url, json=[1])
        assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_frame")
        r = await http.post(url, content=b'{"value": "' + b"x" * (srv.gw.config.max_frame + 1) + b'"}')
        assert (r.status_code, r.json()["error"]["code"]) == (413, "too_big")
        r = await http.get(srv.url("/sessions/nothing"))
        assert (r.status_code, r.json()["error"]["code"]) == (404, "no_session")
        r = await http.post(srv.url("/sessions/nothing/cancel"))
        assert (r.status_code, r.json()["error"]["code"]) == (404, "no_session")
        assert not asking.done()
        r = await http.post(url, json={"value": "b"})
        assert r.status_code == 200
        assert await asyncio.wait_for(asking, TIMEOUT) == "b"


def tokens(credential: str | None, sid: str) -> str | None:
    return {"op": "operator", "view": "viewer"}.get(credential or "")


async def test_grants_come_from_the_bearer_credential() -> None:
    async with serve(gateway(auth=tokens)) as srv, client() as http:
        pipe = srv.gw.pipe("g")
        asking = asyncio.ensure_future(pipe.ask("Go?"))
        async with Client(srv.gw.url, "g", auth="view") as ws:
            ask = (await ws.until(lambda e: e.k == "ask"))[-1]
        url = srv.url(f"/sessions/g/asks/{ask.d['id']}")
        r = await http.post(url, json={"value": "x"}, headers={"Authorization": "Bearer view"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await http.post(url, json={"value": "x"})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await http.post(url, json={"value": "x"}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        # A viewer reads.
        r = await http.get(srv.url("/sessions"), headers={"Authorization": "Bearer view"})
        assert r.status_code == 200 and [s["sid"] for s in r.json()["sessions"]] == ["g"]
        r = await http.post(
            srv.url("/sessions"), json={"sid": "n", "app": "x"}, headers={"Authorization": "Bearer view"}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        assert not asking.done()
        r = await http.post(url, json={"value": "x"}, headers={"Authorization": "Bearer op"})
        assert r.status_code == 200
        assert await asyncio.wait_for(asking, TIMEOUT) == "x"


async def test_a_non_loopback_gateway_without_tokens_gives_viewers() -> None:
    gw = gateway(config=Config(default_grant=Grant.VIEWER))
    async with serve(gw) as srv, client() as http:
        srv.gw.pipe("v")
        r = await http.post(srv.url("/sessions/v/cancel"))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")


async def test_origin_and_host_rules() -> None:
    gw = gateway(allow_origins=["https://app.example.com"])
    async with serve(gw) as srv, client() as http:
        srv.gw.pipe("o")
        url = srv.url("/sessions")
        evil = await http.get(url, headers={"Origin": "https://evil.example"})
        assert (evil.status_code, evil.json()["error"]["code"]) == (403, "forbidden")
        assert "access-control-allow-origin" not in evil.headers
        r = await http.post(srv.url("/sessions/o/cancel"), headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        assert not srv.gw.runs.sessions["o"].cancelled.is_set()
        rebinding = await http.get(url, headers={"Host": f"evil.example:{srv.port}"})
        assert rebinding.status_code == 403
        own = await http.get(url, headers={"Origin": f"http://127.0.0.1:{srv.port}"})
        assert own.status_code == 200
        allowed = await http.get(url, headers={"Origin": "https://app.example.com"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        pre = await http.options(
            srv.url("/sessions/o/cancel"),
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 204
        assert "Idempotency-Key" in pre.headers["access-control-allow-headers"]
        m = await scrape(srv.gw)
        assert m.value("wirepipe_connections_refused_total", front="rest", reason="forbidden") == 3


async def demo(pipe: Any, value: Any) -> None:
    """Says hello, echoes the messages it gets until one is "stop", then waits to be cancelled."""
    pipe.emit("log", {"level": "INFO", "msg": f"hello {value}"})
    while True:
        msg = await pipe.aget_message()
        if msg == "stop":
            break
        pipe.emit("log", {"level": "INFO", "msg": f"got {msg}"})
    await asyncio.Event().wait()


async def test_start_send_list_and_cancel() -> None:
    async with serve(gateway(apps={"demo": demo})) as srv, client() as http:
        r = await http.post(srv.url("/sessions"), json={"sid": "run", "app": "demo", "input": "you"})
        assert r.status_code == 201, r.text
        epoch = r.json()["epoch"]
        assert r.json() == {"sid": "run", "app": "demo", "epoch": epoch}
        r = await http.post(srv.url("/sessions"), json={"sid": "run", "app": "demo"})
        assert (r.status_code, r.json()["error"]["code"]) == (409, "sid_taken")
        r = await http.post(srv.url("/sessions"), json={"sid": "x", "app": "nope"})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "no_app")
        async with Client(srv.gw.url, "run") as ws:
            await ws.until(lambda e: e.k == "log" and e.d["msg"] == "hello you")
            r = await http.post(srv.url("/sessions/run/messages"), json={"data": "ping"})
            assert r.status_code == 200
            await ws.until(lambda e: e.k == "log" and e.d["msg"] == "got ping")
            listed = (await http.get(srv.url("/sessions"))).json()["sessions"]
            assert [(s["sid"], s["app"], s["state"], s["epoch"], s["ended"]) for s in listed] == [
                ("run", "demo", "running", epoch, False)
            ]
            assert listed[0]["head"] >= 3 and isinstance(listed[0]["started"], float)
            r = await http.post(srv.url("/sessions/run/cancel"), json={"reason": "enough"})
            assert r.status_code == 200
            final = (await ws.until(lambda e: e.k == "status" and e.d["state"] != "running"))[-1]
            assert final.d == {"state": "cancelled", "detail": "enough"}
        r = await http.post(srv.url("/sessions/run/cancel"))
        assert (r.status_code, r.json()["error"]["code"]) == (409, "ended")
        r = await http.get(srv.url("/apps"))
        assert r.json() == {"apps": ["demo"]}


async def test_the_rate_limit_is_per_client() -> None:
    async with serve(gateway(config=Config(rate=0.001, burst=3))) as srv, client() as http:
        codes = [(await http.get(srv.url("/sessions"))).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = await http.get(srv.url("/sessions"))
        assert r.json()["error"]["code"] == "rate_limited" and r.headers["retry-after"] == "1"
        m = await scrape(srv.gw)
        assert m.value("wirepipe_errors_total", front="rest", code="rate_limited") == 2


async def test_confirm_by_rest_on_a_node_that_does_not_run_the_agent() -> None:
    """The answer goes through the store to the writer (``gateway.connection.relay``), once per key."""
    url, prefix = require_redis(), redis_prefix()
    try:
        await _confirm_on_another_node(url, prefix)
    finally:
        await delete_prefix(prefix)


async def _confirm_on_another_node(url: str, prefix: str) -> None:
    async with (
        Gateway(host="127.0.0.1", port=0, store=RedisStore(url, prefix=prefix)) as writer,
        serve(gateway(store=RedisStore(url, prefix=prefix))) as other,
        client() as http,
    ):
        pipe = writer.pipe("far")
        asking = asyncio.ensure_future(pipe.ask("Proceed?", choices=["yes", "no"]))
        async with Client(writer.url, "far") as ws:
            ask = (await ws.until(lambda e: e.k == "ask"))[-1]
        assert "far" not in other.gw.runs.sessions  # the other node does not write this run
        ask_url = other.url(f"/sessions/far/asks/{ask.d['id']}")
        r = await http.post(ask_url, json={"value": "yes"}, headers={"Idempotency-Key": "k1"})
        assert (r.status_code, r.json()) == (200, {"ok": True, "rid": "k1"}), r.text
        assert await asyncio.wait_for(asking, TIMEOUT) == "yes"
        again = await http.post(ask_url, json={"value": "no"}, headers={"Idempotency-Key": "k1"})
        assert (again.status_code, again.json()) == (200, {"ok": True, "rid": "k1"})
        pipe.close()
