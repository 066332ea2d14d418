"""SSE under a real uvicorn: follow a run, lose the stream (ended by the server, or the TCP
connection cut), resume by ``Last-Event-ID``: every event once, in order; resets with the
snapshot when the position cannot be recovered (docs/http.md)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from typing import Any

import httpx
from faultproxy import FaultProxy
from http_support import SseEvent, SseReader, SseStream, client, serve
from support import TIMEOUT, missing, scrape

from gateway import Config, Gateway, MemoryStore, Retention
from gateway.client import Client
from protocol import is_final


def gateway(**kw: Any) -> Gateway:
    kw.setdefault("store", MemoryStore())
    return Gateway(host="127.0.0.1", port=0, **kw)


def log(i: int) -> dict[str, Any]:
    return {"level": "INFO", "msg": f"line {i}"}


def seq_is(n: int) -> Any:
    return lambda e: e.event == "message" and e.seq == n


def is_end(e: SseEvent) -> bool:
    return e.event == "message" and is_final(e.json["k"], e.json["d"])


def messages(evs: list[SseEvent]) -> list[SseEvent]:
    return [e for e in evs if e.event == "message"]


async def test_follow_lose_the_stream_and_resume_with_last_event_id() -> None:
    async with serve(gateway()) as srv, client() as http:
        pipe = srv.gw.pipe("s")
        epoch = pipe.epoch
        for i in range(1, 31):
            pipe.emit("log", log(i))
        url = srv.url("/sessions/s/events")
        seen: list[SseEvent] = []
        async with http.stream("GET", url) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            sse = SseStream(r)
            evs = await sse.events(seq_is(20))
            assert sse.parser.retry == 1000
            reset = evs[0]
            assert (reset.event, reset.id) == ("reset", f"{epoch}:0")
            assert reset.json["reason"] == "start" and reset.json["epoch"] == epoch
            assert reset.json["snapshot"]["asks"] == []
            seen += messages(evs)
            assert srv.api.drop_streams("s") == 1  # the server ends the response mid-run
            rest = await sse.events(lambda e: False)  # to the end of the stream
            seen += messages(rest)
        await srv.api.wait_streams(lambda n: n == 0)
        for i in range(31, 61):
            pipe.emit("log", log(i))
        pipe.close()
        async with http.stream("GET", url, headers={"Last-Event-ID": seen[-1].id or ""}) as r:
            evs = await SseStream(r).events(is_end)
        assert all(e.event == "message" for e in evs), "a recovered position gets no reset"
        seen += evs
        assert [e.seq for e in seen] == list(range(1, pipe.head + 1))
        assert [e.id for e in seen] == [f"{epoch}:{n}" for n in range(1, pipe.head + 1)]
        assert seen[0].json == {"seq": 1, "k": "log", "ts": seen[0].json["ts"], "d": log(1)}
        m = await scrape(srv.gw)
        assert m.value("wirepipe_replays_total", front="sse", recovered="true") == 1
        assert m.value("wirepipe_connections_total", front="sse") == 2
        assert m.value("wirepipe_events_sent_total", front="sse") >= pipe.head


async def test_a_cut_connection_resumes_through_a_fault_proxy() -> None:
    async with serve(gateway()) as srv, client() as http, FaultProxy(srv.port) as proxy:
        pipe = srv.gw.pipe("cut")
        url = f"http://127.0.0.1:{proxy.port}/agents/api/v1/sessions/cut/events"
        seen: list[SseEvent] = []
        for i in range(1, 11):
            pipe.emit("log", log(i))
        try:
            async with http.stream("GET", url) as r:
                sse = SseStream(r)
                seen += messages(await sse.events(seq_is(10)))
                assert proxy.cut() == 1  # a reset on both sides, mid-run
                more = await sse.events(lambda e: False)
                seen += messages(more)
        except httpx.TransportError:
            pass  # the cut, as the client sees it
        await srv.api.wait_streams(lambda n: n == 0)  # the server noticed
        for i in range(11, 41):
            pipe.emit("log", log(i))
        pipe.close()
        async with http.stream("GET", url, params={"last_event_id": seen[-1].id or ""}) as r:
            evs = await SseStream(r).events(is_end)
        seen += evs
        assert [e.seq for e in seen] == list(range(1, pipe.head + 1))


async def test_a_position_that_cannot_be_recovered_gets_a_reset_then_events_from_first() -> None:
    store = MemoryStore(Retention(max_events=10))
    async with serve(gateway(store=store)) as srv, client() as http:
        pipe = srv.gw.pipe("r")
        for i in range(1, 51):
            pipe.emit("log", log(i))
        await pipe.drained()
        url = srv.url("/sessions/r/events")
        for position in (f"{pipe.epoch}:3", f"another:{pipe.head}", "garbage"):
            async with http.stream("GET", url, headers={"Last-Event-ID": position}) as r:
                evs = await SseStream(r).events(seq_is(50))
            reset, *rest = evs
            assert reset.event == "reset"
            assert reset.json["reason"] == ("start" if position == "garbage" else "position")
            assert (reset.json["epoch"], reset.json["first"], reset.json["head"]) == (pipe.epoch, 41, 50)
            assert reset.id == f"{pipe.epoch}:40"
            assert [e.seq for e in rest] == list(range(41, 51))
        m = await scrape(srv.gw)
        assert m.value("wirepipe_replays_total", front="sse", recovered="false") == 2


async def test_a_new_run_resets_the_stream_with_its_snapshot() -> None:
    async with serve(gateway()) as srv, client() as http:
        first = srv.gw.pipe("e")
        first.emit("log", log(1))
        async with http.stream("GET", srv.url("/sessions/e/events")) as r:
            sse = SseStream(r)
            await sse.events(seq_is(1))
            first.close()
            await sse.events(is_end)
            await first.drained()
            second = srv.gw.pipe("e")  # the ended run is replaced: a new epoch
            assert second.epoch != first.epoch
            asking = asyncio.ensure_future(second.ask("New?"))
            evs = await sse.events(lambda e: e.event == "message" and e.json["k"] == "ask")
            resets = [e for e in evs if e.event == "reset"]
            assert len(resets) == 1 and resets[0].json["reason"] == "epoch"
            assert resets[0].json["epoch"] == second.epoch
            assert [e.id for e in messages(evs)][-1] == f"{second.epoch}:1"
            asking.cancel()


async def test_heartbeat_comments_while_idle() -> None:
    async with serve(gateway(config=Config(heartbeat=0.05))) as srv, client() as http:
        srv.gw.pipe("h").emit("log", log(1))
        async with http.stream("GET", srv.url("/sessions/h/events")) as r:
            await SseStream(r).comment("ping")


async def test_who_may_follow() -> None:
    def tokens(credential: str | None, sid: str) -> str | None:
        return "viewer" if credential == "view" else None

    async with serve(gateway(auth=tokens)) as srv, client() as http:
        srv.gw.pipe("a").emit("log", log(1))
        url = srv.url("/sessions/a/events")
        r = await http.get(url)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        for headers, params in (({"Authorization": "Bearer view"}, {}), ({}, {"auth": "view"})):
            async with http.stream("GET", url, headers=headers, params=params) as r:
                assert r.status_code == 200
                await SseStream(r).events(seq_is(1))
        r = await http.get(srv.url("/sessions/none/events"), headers={"Authorization": "Bearer view"})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "no_session")
        r = await http.get(url, headers={"Authorization": "Bearer view", "Origin": "https://evil.example"})
        assert r.status_code == 403


async def test_curl_resumes_with_last_event_id() -> None:
    curl = shutil.which("curl")
    if curl is None:
        missing("no curl", "apt-get install curl")
    async with serve(gateway()) as srv:
        pipe = srv.gw.pipe("c")
        for i in range(1, 11):
            pipe.emit("log", log(i))
        proc = await asyncio.create_subprocess_exec(
            curl,
            "-sN",
            "-H",
            f"Last-Event-ID: {pipe.epoch}:5",
            srv.url("/sessions/c/events"),
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        reader, evs = SseReader(), []
        try:

            async def read() -> None:
                assert proc.stdout is not None
                while True:
                    line = (await proc.stdout.readline()).decode()
                    assert line, "curl's stream ended"
                    ev = reader.line(line.rstrip("\n"))
                    if ev is not None:
                        evs.append(ev)
                        if ev.event == "message" and ev.seq == 10:
                            return

            await asyncio.wait_for(read(), TIMEOUT)
        finally:
            proc.terminate()
            await proc.wait()
        assert [e.id for e in evs] == [f"{pipe.epoch}:{n}" for n in range(6, 11)]
        await srv.api.wait_streams(lambda n: n == 0)


async def test_a_websocket_watcher_and_an_sse_follower_see_the_same_run() -> None:
    async with serve(gateway()) as srv, client() as http:
        pipe = srv.gw.pipe("both")
        async with Client(srv.gw.url, "both") as ws, http.stream("GET", srv.url("/sessions/both/events")) as r:
            for i in range(1, 101):
                pipe.emit("log", log(i))
            pipe.close()
            got = await ws.until(lambda e: is_final(e.k, e.d))
            evs = await SseStream(r).events(is_end)
        assert [(e.seq, e.json["k"], e.json["d"]) for e in messages(evs)] == [(e.seq, e.k, e.d) for e in got]


async def test_a_client_that_reads_nothing_is_dropped() -> None:
    """The stream writes a batch at a time and waits for the socket; past stall_timeout it gives up."""
    gw = gateway(config=Config(stall_timeout=0.2))
    async with serve(gw) as srv:
        pipe = srv.gw.pipe("stall")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", srv.port))
            request = f"GET /agents/api/v1/sessions/stall/events HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            await srv.api.wait_streams(lambda n: n == 1)
            big = "x" * 32_000
            for i in range(400):  # ~13 MB: far more than the socket buffers hold
                pipe.emit("log", {"level": "INFO", "msg": f"{i} {big}"})
            await srv.api.wait_streams(lambda n: n == 0)
            assert srv.api.sse.stalled == 1
            assert srv.api.sse.events_out < 400
        finally:
            sock.close()


async def test_the_delivery_lag_is_sampled_for_sse_as_for_the_websocket() -> None:
    """Seqs 1 and 17 are timed (gateway/metrics.py), here each in a write of its own; history is not lag."""
    async with serve(gateway()) as srv, client() as http:
        pipe = srv.gw.pipe("lag")
        async with http.stream("GET", srv.url("/sessions/lag/events")) as r:
            sse = SseStream(r)
            await sse.events(lambda e: e.event == "reset")
            for i in range(1, 21):
                pipe.emit("log", log(i))
                await sse.events(seq_is(i))  # caught up: one event a write
        m = await scrape(srv.gw)
        assert m.value("wirepipe_delivery_lag_seconds_count", front="sse") == 2
        assert m.value("wirepipe_delivery_lag_seconds_count", front="ws") == 0
        async with http.stream("GET", srv.url("/sessions/lag/events")) as r:  # the history, read later
            await SseStream(r).events(seq_is(20))
        m = await scrape(srv.gw)
        assert m.value("wirepipe_events_sent_total", front="sse") == 40
        assert m.value("wirepipe_delivery_lag_seconds_count", front="sse") == 2
