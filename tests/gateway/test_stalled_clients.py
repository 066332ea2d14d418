"""A client that stops reading (a frozen tab, a sleeping laptop: a zero TCP
window) is dropped after ``stall_timeout`` and never holds the gateway's
shutdown.  Before, websockets' own keepalive waited behind the stuck frame,
the connection stayed open for good, and ``close()`` (so SIGTERM) hung.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from support import TIMEOUT

from gateway import Gateway, MemoryStore
from protocol import packb


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.fixture
def frozen_client() -> Iterator[Any]:
    """``open(port, sid)``: a WebSocket client that says hello, then never reads a byte."""
    socks: list[socket.socket] = []

    def open_frozen(port: int, sid: str) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window, never read
        s.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        s.sendall(_masked(packb({"t": "hello", "sid": sid})))  # pipelined after the upgrade
        socks.append(s)
        return s

    yield open_frozen
    for s in socks:
        s.close()


def _wait_reset(s: socket.socket) -> None:
    """Block until the gateway drops the connection (reading drains what it had sent)."""
    s.settimeout(TIMEOUT)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass


async def test_a_client_that_reads_nothing_is_dropped(frozen_client: Any) -> None:
    async with Gateway(port=0, store=MemoryStore(), stall_timeout=0.3) as gw:
        pipe = gw.pipe("frozen")
        for _ in range(3000):  # ~6 MB: far more than the socket buffers hold
            pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "x" * 2000}})
        frozen_client(gw.port, "frozen")
        await asyncio.wait_for(gw.wait_connections(lambda n: n == 1), TIMEOUT)
        # The gateway cannot tell a slow reader from a frozen one until the
        # socket takes nothing for stall_timeout; then the watchdog drops it.
        await asyncio.wait_for(gw.wait_connections(lambda n: n == 0), TIMEOUT)
        assert gw.metrics.ws.stalled == 1  # ...and was dropped as stalled
        assert b'wirepipe_stalled_clients_total{front="ws"} 1.0' in generate_latest(gw.registry)


async def test_the_watchdog_looks_at_a_slice_of_the_clients_a_tick_and_at_every_one_a_round(
    frozen_client: Any,
) -> None:
    """With a stall limit of 1.6 s, a round of 0.4 s in four ticks of 0.1 s: each looks at two of
    the five clients (``TICK``), and every one of them is dropped."""
    async with Gateway(port=0, store=MemoryStore(), stall_timeout=1.6) as gw:
        pipe = gw.pipe("frozen-many")
        for _ in range(3000):
            pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "x" * 2000}})
        for _ in range(5):
            frozen_client(gw.port, "frozen-many")
        await asyncio.wait_for(gw.wait_connections(lambda n: n == 5), TIMEOUT)
        await asyncio.wait_for(gw.wait_connections(lambda n: n == 0), TIMEOUT)
        assert gw.metrics.ws.stalled == 5


async def test_shutdown_is_not_held_by_a_client_that_reads_nothing(frozen_client: Any) -> None:
    gw = Gateway(port=0, store=MemoryStore(), close_timeout=0.5)  # stall_timeout: 20 s heartbeat
    await gw.start()
    pipe = gw.pipe("frozen-close")
    for _ in range(3000):
        pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "x" * 2000}})
    s = frozen_client(gw.port, "frozen-close")
    reset = asyncio.ensure_future(asyncio.to_thread(_wait_reset, s))
    await asyncio.wait_for(gw.close(), TIMEOUT)  # before: never returned
    await asyncio.wait_for(reset, TIMEOUT)


async def test_a_client_that_stops_reading_what_was_pushed_to_it_is_dropped(frozen_client: Any) -> None:
    """Frames the feed pushes to a parked client (``Connection.push``) can leave bytes in its
    socket with no send waiting on them (here the write limit is never reached); the watchdog
    judges those too.  The heartbeat leaves a client with unread bytes to the watchdog."""
    async with Gateway(port=0, store=MemoryStore(), stall_timeout=0.3, write_limit=64 << 20) as gw:
        pipe = gw.pipe("pushed")
        frozen_client(gw.port, "pushed")
        await asyncio.wait_for(gw.wait_connections(lambda n: n == 1), TIMEOUT)
        for _ in range(3000):
            pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "x" * 2000}})
        await asyncio.wait_for(gw.wait_connections(lambda n: n == 0), TIMEOUT)
        assert gw.metrics.ws.stalled == 1
        assert gw.metrics.ws.heartbeat_timeouts == 0


async def test_a_reset_client_takes_no_more_pushed_frames(caplog: pytest.LogCaptureFixture) -> None:
    """Before: a burst written on the loop after the client's RST kept writing to the closed
    transport (asyncio's "socket.send() raised exception" per event) and counted it as sent."""
    async with Gateway(port=0, store=MemoryStore()) as gw:
        pipe = gw.pipe("reset")
        pipe.set_message("first")
        await pipe.drained()
        s = socket.socket()
        s.connect(("127.0.0.1", gw.port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        s.sendall(_masked(packb({"t": "hello", "sid": "reset", "live": True})))

        # Parked at the head: new events are pushed to it inside set_message.
        async def parked() -> None:
            while (feed := gw.feeds.get("reset")) is None or not feed.parked:
                await asyncio.sleep(0)  # loop turns, no clock

        await asyncio.wait_for(parked(), TIMEOUT)
        sent = gw.metrics.ws.events_out
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # an RST, at once
        # Written in one go on the loop: the gateway hears of the reset only
        # when a write meets it.
        for i in range(50):
            pipe.set_message(f"token {i} ")
        await asyncio.wait_for(gw.wait_connections(lambda n: n == 0), TIMEOUT)
        pipe.close()
    assert gw.metrics.ws.events_out - sent <= 1  # at most the write that met the reset
    assert not [r for r in caplog.records if "socket.send() raised exception" in r.getMessage()]


async def test_no_heartbeat_and_no_stall_timeout_runs_no_stall_watchdog(frozen_client: Any) -> None:
    """``--heartbeat 0`` without ``--stall-timeout``: no stall rule.  Before, the watchdog slept
    0 s in a loop (a core at 100%) and dropped any client with a byte unread at once."""
    async with Gateway(port=0, store=MemoryStore(), heartbeat=0) as gw:
        assert gw.config.stall_limit is None
        assert gw._watchdog is not None
        await asyncio.wait_for(gw._watchdog, TIMEOUT)  # it ended: nothing to watch
        pipe = gw.pipe("no-heartbeat")
        for _ in range(3000):  # far more than the socket buffers hold: bytes wait for the client
            pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "x" * 2000}})
        frozen_client(gw.port, "no-heartbeat")
        await asyncio.wait_for(gw.wait_connections(lambda n: n == 1), TIMEOUT)
        assert gw.metrics.ws.stalled == 0
    assert Gateway(port=0, heartbeat=0, stall_timeout=5).config.stall_limit == 5
