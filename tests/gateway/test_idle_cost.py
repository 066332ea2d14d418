"""What an idle client costs the gateway, and the machinery that keeps it small.

An idle watcher (parked at the head of its log) holds its ``Connection``, its
rules and the one task that reads its socket: no pump task (the feed pushes
to it and wakes a new one when needed), no keepalive task (one heartbeat
task pings every client), no zlib state (permessage-deflate without context
takeover), no handshake headers.  ``python -m bench --only idle`` measures
the memory; these tests pin each piece, with real clients on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from support import TIMEOUT, Raw, native
from test_stalled_clients import _masked  # the raw handshake of a frozen client
from websockets.asyncio.client import connect
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.frames import Frame
from websockets.typing import ExtensionParameter, Subprotocol

from gateway import Gateway, MemoryStore
from gateway.compression import COMPRESS_MIN_BYTES, LeanDeflate
from gateway.connection import Connection
from gateway.heartbeat import MAX_SLICES, PING, TICK
from protocol import SUBPROTOCOL, StoreUnavailable, packb


def conns(gw: Gateway) -> list[Connection]:
    return list(gw._conns)


def log(msg: str) -> dict[str, Any]:
    return {"k": "log", "d": {"level": "INFO", "msg": msg}}


def logged(e: Any, msg: str | None = None) -> bool:
    return bool(e.k == "log" and (msg is None or e.d["msg"] == msg))


async def parked(gw: Gateway, n: int) -> list[Connection]:
    """The ``n`` connections of ``gw``, once each pump task has parked and ended."""
    await asyncio.wait_for(gw.wait_connections(lambda k: k == n), TIMEOUT)
    out = conns(gw)
    for c in out:
        task = c._pump_task
        if task is not None:
            await asyncio.wait_for(asyncio.wait((task,)), TIMEOUT)
    return out


# --- an idle client ---------------------------------------------------------------------------


async def test_an_idle_client_has_no_pump_task_keepalive_task_zlib_state_or_headers(raw: Any) -> None:
    async with Gateway(port=0, store=MemoryStore()) as gw:
        pipe = gw.pipe("idle")
        async with raw(gw.url) as a, raw(gw.url) as b:  # websockets' client: deflate offered
            for r in (a, b):
                assert (await r.hello("idle", live=True)).t == "welcome"
            pipe.set_message(log("x" * (4 * COMPRESS_MIN_BYTES)))  # compressed on the wire
            pipe.set_message(log("small"))
            for r in (a, b):
                evs = await r.events(lambda e: logged(e, "small"))
                assert [len(e.d["msg"]) for e in evs if logged(e)] == [4 * COMPRESS_MIN_BYTES, 5]
            served = await parked(gw, 2)
            feed = gw.feeds.get("idle")
            assert feed is not None
            assert not [t for t in asyncio.all_tasks() if t.get_name() == "wirepipe-pump"]
            for c in served:
                ws = native(c)
                assert c._pump_task is None and c in feed.parked  # the feed pushes to it
                assert ws.keepalive_task is None  # the gateway's heartbeat pings it
                (ext,) = ws.protocol.extensions
                assert isinstance(ext, LeanDeflate)
                assert not hasattr(ext, "encoder") and not hasattr(ext, "decoder")  # no zlib state
                assert ws.request is not None and len(ws.request.headers) == 0
                assert ws.response is not None and len(ws.response.headers) == 0
                assert "select_subprotocol" not in vars(ws.protocol)
                assert not hasattr(c, "__dict__") and not hasattr(c.rules, "__dict__")
            assert served[0].rules.limits is served[1].rules.limits  # one for the gateway
            # a parked client still gets what comes next, pushed
            pipe.set_message(log("later"))
            for r in (a, b):
                assert (await r.events(logged))[-1].d["msg"] == "later"


async def test_a_client_with_a_full_window_gets_a_pump_task_again_and_parks_after_its_ack(raw: Any) -> None:
    """The window closes while parked: the feed wakes a pump task, which waits for the ack (a
    future made then), sends the rest, and parks again, its task ended."""
    async with Gateway(port=0, store=MemoryStore()) as gw:
        pipe = gw.pipe("win")
        async with raw(gw.url) as r:
            welcome = await r.hello("win", live=True, window=2)
            h = welcome.head
            (c,) = await parked(gw, 1)
            for i in range(5):
                pipe.set_message(log(f"m{i}"))
            got = await r.events(lambda e: e.seq == h + 2)
            task = c._pump_task
            assert task is not None and not task.done()  # woken, waiting for the ack
            await r.send({"t": "ack", "seq": h + 2})
            got += await r.events(lambda e: e.seq == h + 4)
            await r.send({"t": "ack", "seq": h + 4})
            got += await r.events(lambda e: e.seq == h + 5)
            assert [e.d["msg"] for e in got] == [f"m{i}" for i in range(5)]
            await r.send({"t": "ack", "seq": h + 5})
            (c,) = await parked(gw, 1)
            assert c._pump_task is None and c._acked is None


async def test_a_failing_pump_ends_the_idle_reader_with_its_error(raw: Any) -> None:
    """The pump runs in a task of its own and the reader in the connection's: a store error in
    the pump still reaches the client as ``unavailable`` (1013), as when both were tasks."""

    class Flaky(MemoryStore):
        down = False

        async def fetch(self, sid: str, after: int, *, limit: int = 1000, max_bytes: int = 1 << 20) -> Any:
            if self.down:
                raise StoreUnavailable("the test took the store down")
            return await super().fetch(sid, after, limit=limit, max_bytes=max_bytes)

    store = Flaky()
    async with Gateway(port=0, store=store) as gw:
        pipe = gw.pipe("flaky")
        async with raw(gw.url) as r:
            assert (await r.hello("flaky", live=True)).t == "welcome"
            await parked(gw, 1)
            store.down = True
            pipe.close()  # the end of the log: the feed and then the pump look at the store
            code, frames = await r.closed()
        assert code == 1013
        assert [f.code for f in frames if f.t == "error"] == ["unavailable"]


# --- permessage-deflate -----------------------------------------------------------------------


class RecordingDeflate(PerMessageDeflate):
    """The client's real permessage-deflate, noting for each message received whether it came compressed."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.received: list[tuple[bool, int]] = []  # (compressed, bytes on the wire)

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode.value in (1, 2):
            self.received.append((frame.rsv1, len(frame.data)))
        return super().decode(frame, max_size=max_size)


class RecordingFactory(ClientPerMessageDeflateFactory):
    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> PerMessageDeflate:
        ext = super().process_response_params(params, accepted_extensions)
        return RecordingDeflate(
            ext.remote_no_context_takeover,
            ext.local_no_context_takeover,
            ext.remote_max_window_bits,
            ext.local_max_window_bits,
        )


async def test_compression_round_trip_without_context_takeover_and_only_for_large_frames() -> None:
    async with Gateway(port=0, store=MemoryStore()) as gw:
        pipe = gw.pipe("deflate")
        factory = RecordingFactory(client_max_window_bits=True)
        proto = [Subprotocol(SUBPROTOCOL)]
        async with connect(gw.url, subprotocols=proto, compression=None, extensions=[factory]) as ws:
            assert ws.response is not None
            offered = ws.response.headers["Sec-WebSocket-Extensions"]
            assert "server_no_context_takeover" in offered and "client_no_context_takeover" in offered
            (ext,) = ws.protocol.extensions
            assert isinstance(ext, RecordingDeflate)
            r = Raw(ws)
            # The client compresses every message it sends, each on its own.
            assert (await r.hello("deflate", live=True)).t == "welcome"
            for n in range(3):
                await r.send({"t": "ping", "n": n})
                assert (await r.recv()).n == n
            big = "wirepipe " * (COMPRESS_MIN_BYTES // 4)
            pipe.set_message(log(big))
            pipe.set_message(log("tiny"))
            evs = await r.events(lambda e: logged(e, "tiny"))
            assert [e.d["msg"] for e in evs if logged(e)] == [big, "tiny"]
            compressed = [n for z, n in ext.received if z]
            plain = [n for z, n in ext.received if not z]
            assert len(compressed) == 1 and compressed[0] < len(big) // 4  # the big event only
            assert len(plain) >= 5 and max(plain) < COMPRESS_MIN_BYTES  # welcome, pongs, "tiny"
            (served,) = conns(gw)
            (sext,) = native(served).protocol.extensions
            assert not hasattr(sext, "encoder") and not hasattr(sext, "decoder")


async def test_no_compression_when_turned_off(raw: Any) -> None:
    async with Gateway(port=0, store=MemoryStore(), compression=False) as gw:
        gw.pipe("plain")
        async with raw(gw.url) as r:
            assert (await r.hello("plain")).t == "welcome"
            assert r.ws.protocol.extensions == []


# --- the heartbeat ----------------------------------------------------------------------------


def _silent_client(port: int, sid: str) -> socket.socket:
    """A WebSocket client that says hello, then reads everything and never writes: no pong."""
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    s.sendall(_masked(packb({"t": "hello", "sid": sid})))
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    """Everything the gateway sends until it drops the connection."""
    s.settimeout(TIMEOUT)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


async def test_a_client_that_does_not_answer_pings_is_dropped_and_one_that_does_stays(raw: Any) -> None:
    heartbeat = 0.4
    async with Gateway(port=0, store=MemoryStore(), heartbeat=heartbeat) as gw:
        gw.pipe("beat")
        async with raw(gw.url) as alive:  # websockets answers pings by itself
            assert (await alive.hello("beat", live=True)).t == "welcome"
            s = _silent_client(gw.port or 0, "beat")
            try:
                got = await asyncio.wait_for(asyncio.to_thread(_read_until_closed, s), TIMEOUT)
            finally:
                s.close()
            assert bytes([0x89, len(PING)]) + PING in got  # it was pinged...
            # ...and closed 1011 "keepalive ping timeout", as websockets' own keepalive did
            reason = b"keepalive ping timeout"
            assert bytes([0x88, 2 + len(reason), 0x03, 0xF3]) + reason in got
            assert gw.metrics.ws.heartbeat_timeouts == 1
            assert b'wirepipe_heartbeat_timeouts_total{front="ws"} 1.0' in generate_latest(gw.registry)
            # two more rounds: the client that answers was pinged and judged again, and stays
            await asyncio.wait_for(gw.heartbeat.wait_ticks(2 * gw.heartbeat.slices), TIMEOUT)
            (served,) = conns(gw)
            assert native(served).latency > 0  # its pongs came back
            assert gw.metrics.ws.heartbeat_timeouts == 1
            await alive.send({"t": "ping", "n": 7})
            assert (await alive.recv()).n == 7


async def test_the_heartbeat_spreads_clients_over_its_slices(raw: Any) -> None:
    async with Gateway(port=0, store=MemoryStore(), heartbeat=0.4) as gw:
        assert gw.heartbeat.slices == 4  # 0.1 s ticks
        gw.pipe("spread")
        async with raw(gw.url) as a, raw(gw.url) as b, raw(gw.url) as c, raw(gw.url) as d, raw(gw.url) as e:
            for r in (a, b, c, d, e):
                assert (await r.hello("spread")).t == "welcome"
            beats = sorted(x.beat for x in conns(gw))
            assert beats == [0, 0, 1, 2, 3]
            assert sorted(len(s) for s in gw.heartbeat._slots) == [1, 1, 1, 2]
        await gw.wait_connections(lambda n: n == 0)
        assert not any(gw.heartbeat._slots)  # the clients that left are no longer pinged


def test_the_default_heartbeat_ticks_often_and_visits_few() -> None:
    """20 s in 200 ticks of 0.1 s: a thousand clients are five pings a tick, not 250 every 5 s."""
    from gateway.heartbeat import Heartbeat
    from gateway.metrics import FrontMetrics

    hb = Heartbeat(20.0, FrontMetrics("ws"))
    assert hb.slices == MAX_SLICES and hb.interval / hb.slices == TICK
    beats = [hb.slot() for _ in range(1000)]
    assert max(beats.count(s) for s in range(hb.slices)) == 5


BURST = """
import asyncio, gc
from websockets.asyncio.client import connect
from gateway import Gateway, MemoryStore

async def main() -> None:
    async with Gateway(port=0, store=MemoryStore()) as gw:
        clients = await asyncio.gather(*(connect(gw.url, subprotocols=["wirepipe.v1"]) for _ in range(30)))
        await gw.wait_connections(lambda n: n == 30)
        own = [c for c in gw._conns if any(type(r) is dict and "protocol" in r for r in gc.get_referents(c.ws))]
        print(len(own))
        for c in clients:
            await c.close()

asyncio.run(main())
"""


def test_the_first_clients_arriving_at_once_get_no_attribute_dict_each() -> None:
    """``share_attribute_names``: a process's first connections, accepted in one burst, keep their
    attributes inline (CPython 3.11); without it each would carry a dict of its own.  In a fresh
    process, since the layout is decided once per process."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", BURST],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=True,
    )
    assert out.stdout.split() == ["0"]
