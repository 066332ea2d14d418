"""Helpers shared by the test suite (import as ``from support import ...``).

``MS`` scales every timeout in the suite (set WIREPIPE_TEST_MS to slow the
whole suite down on a loaded machine); no test sleeps to synchronise.

A test skips only for an optional service or tool that a developer's machine
may lack (Redis, redis-server, chromium, MetaGPT), through ``missing``, which
fails instead when ``CI`` is set: CI installs all of them (``./run test``), so
there a missing one is a broken setup.  A missing part of the product or of
the dev tools (requirements/dev.txt) is a failure everywhere.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, NoReturn, Protocol

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway import Gateway
from gateway.connection import Connection
from gateway.stores import Appended
from protocol import Event, decode_event, decode_server, encode_event, events_of, is_final, packb


def native(conn: Connection) -> ServerConnection:
    """``conn``'s websockets connection: the native front's (the ASGI front's is an ``AsgiSocket``)."""
    assert isinstance(conn.ws, ServerConnection), f"not a native-front connection: {conn.ws!r}"
    return conn.ws


def missing(what: str, fix: str) -> NoReturn:
    """Skip the calling test because ``what`` is missing, or fail it when ``CI`` is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI is set, so the tests that need it must run: {fix}", pytrace=False)
    pytest.skip(f"{what} ({fix}); set CI=1 to make this a failure")


MS = float(os.environ.get("WIREPIPE_TEST_MS", "1")) / 1000
#: The longest any single wait in a test may take before it is a failure.
TIMEOUT = 10_000 * MS


class Raw:
    """A bare protocol client: send frames as maps, receive decoded frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        #: Events received and not handed out yet (the rest of a batch after
        #: ``events``' condition matched, or events that came with a reply).
        self.leftover: list[Event] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(packb(frame))

    async def recv(self) -> Any:
        return decode_server(await asyncio.wait_for(self.ws.recv(), TIMEOUT))

    async def hello(self, sid: str, **kw: Any) -> Any:
        await self.send({"t": "hello", "sid": sid, **kw})
        return await self.recv()

    async def events(self, until: Callable[[Event], bool]) -> list[Event]:
        """Receive events until one satisfies ``until`` (included); other frames are skipped.

        Events after it in the same batch are kept for the next call.
        """
        out: list[Event] = []
        while True:
            if self.leftover:
                evs, self.leftover = self.leftover, []
            else:
                evs = list(events_of(await self.recv()))
            for i, ev in enumerate(evs):
                out.append(ev)
                if until(ev):
                    self.leftover = evs[i + 1 :] + self.leftover
                    return out

    async def collect(self, done: Callable[[list[Any]], bool]) -> list[Any]:
        """Receive frames until ``done(frames_so_far)``; returns them all, in order."""
        frames: list[Any] = []
        while not done(frames):
            frames.append(await self.recv())
        return frames

    async def closed(self) -> tuple[int | None, list[Any]]:
        """Read until the server closes; returns (close code, frames seen)."""
        frames = []
        try:
            while True:
                frames.append(decode_server(await asyncio.wait_for(self.ws.recv(), TIMEOUT)))
        except ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd else None), frames


class OpenRaw(Protocol):
    """The ``raw`` fixture: ``async with raw(url, **connect_kw) as r`` -> a :class:`Raw` client."""

    def __call__(self, url: str, **kw: Any) -> AbstractAsyncContextManager[Raw]: ...


#: The ``make_gw`` fixture: ``await make_gw(**gateway_kw)`` -> a started :class:`Gateway`.
MakeGateway = Callable[..., Awaitable[Gateway]]


def replied(frames: list[Any]) -> list[Any]:
    """The ``replied`` frames among ``frames``."""
    return [f for f in frames if f.t == "replied"]


def answers(frames: list[Any]) -> list[Event]:
    """The ``answer`` events among ``frames`` (inside ``ev`` and ``batch`` frames)."""
    return [e for f in frames for e in events_of(f) if e.k == "answer"]


def final(ev: Event) -> bool:
    """True for the run's final status event."""
    return is_final(ev.k, ev.d)


# --- stores ---------------------------------------------------------------------------


def ev(seq: int, k: str = "log", d: Any = None) -> Appended:
    """One event to append; the default payloads all encode to the same size (for seq < 128)."""
    if d is None:
        d = {"level": "INFO", "msg": f"event {seq:04d}"}
    return Appended(seq, k, d, encode_event(seq, k, 1.0, d))


def seqs(raws: list[bytes]) -> list[int]:
    """The seq of each encoded event."""
    return [decode_event(r).seq for r in raws]


async def started(task: asyncio.Task[Any]) -> None:
    """Let ``task`` run to its first suspension, and check it did suspend."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done(), "wait() returned while there was nothing to wait for"


async def request(r: Raw, frame: dict[str, Any], seen: list[Event] | None = None) -> Any:
    """Send one request frame (reply, send, cancel); its ``replied``.

    Events that arrive before it are added to ``seen`` (they are not lost).
    """
    await r.send(frame)
    frames = await r.collect(lambda fs: any(getattr(f, "t", None) == "replied" for f in fs))
    came = [e for f in frames for e in events_of(f)]
    if seen is not None:
        seen += came
    else:
        r.leftover += came  # the next ``events`` call gets them
    return replied(frames)[-1]


# --- /metrics -------------------------------------------------------------------------


class Scrape:
    """One scrape of a gateway's ``/metrics``, parsed by ``prometheus_client``'s own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels`` (a counter's name ends in ``_total``)."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) == 1, f"{len(found)} samples {name}{labels} in:\n{self.text}"
        return found[0]


async def scrape(gw: Gateway) -> Scrape:
    """``GET /metrics`` over a real socket: 200, Prometheus' content type, parsed."""

    async def go() -> Scrape:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status_line, *lines = head.strip().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
            body = await reader.readexactly(int(headers["content-length"]))
        finally:
            writer.close()
        assert status_line.split()[1] == "200", status_line
        assert headers["content-type"] == CONTENT_TYPE_LATEST
        return Scrape(body.decode())

    return await asyncio.wait_for(go(), TIMEOUT)
