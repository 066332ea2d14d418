"""Helpers of the HTTP API tests (tests/http, tests/e2e): a real uvicorn, a host app mounting ``gw.asgi()``.

The host app is what docs/http.md tells users to write: a Starlette app
whose lifespan starts the gateway, with ``gw.asgi()`` mounted under
``/agents``.  uvicorn runs in the test's own event loop on a socket the
test bound first (port 0), so the test knows the port at once and the
gateway's lifespan start is awaited on an event: no polling, no sleeps.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from support import TIMEOUT

from gateway import Gateway
from gateway.http_api import HttpApi

MOUNT = "/agents"


class AsgiGateway(Gateway):
    """A gateway whose clients come in through ``gw.asgi()`` under uvicorn (``serve``): ``url`` is the mount's.

    Made with ``port=None``, it listens on nothing of its own; ``port`` is the host app's once served.
    """

    served: Served | None = None

    @property
    def url(self) -> str:
        assert self.served is not None, "not served yet"
        return f"ws://127.0.0.1:{self.served.port}{MOUNT}/"

    @property
    def http_url(self) -> str:
        assert self.served is not None, "not served yet"
        return f"http://127.0.0.1:{self.served.port}{MOUNT}/"


@dataclass
class Served:
    """A gateway's HTTP API under uvicorn: ``base`` is the URL of ``/api/v1``."""

    gw: Gateway
    api: HttpApi
    port: int
    base: str
    server: uvicorn.Server

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@asynccontextmanager
async def serve(
    gw: Gateway, mount: str = MOUNT, routes: Sequence[BaseRoute] = (), *, fastapi: bool = False
) -> AsyncIterator[Served]:
    """uvicorn on 127.0.0.1 (port 0) serving a Starlette app that mounts ``gw.asgi()`` at ``mount``.

    The gateway starts in the app's lifespan and closes in it; ``routes`` are
    the host app's own (a page of the same origin, for a browser).  With
    ``fastapi`` the host app is a FastAPI app, as docs/http.md shows.
    """
    up = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with gw:
            up.set()
            yield

    api = gw.asgi()
    host: Any
    if fastapi:
        from fastapi import FastAPI

        host = FastAPI(lifespan=lifespan, routes=list(routes))
        host.mount(mount, api)
    else:
        host = Starlette(lifespan=lifespan, routes=[*routes, Mount(mount, app=api)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    config = uvicorn.Config(host, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        done, _ = await asyncio.wait(
            {task, asyncio.ensure_future(up.wait())}, timeout=TIMEOUT, return_when="FIRST_COMPLETED"
        )
        if task in done:
            task.result()
            raise RuntimeError("uvicorn stopped before the gateway started")
        assert up.is_set(), "the gateway did not start"
        yield Served(gw, api, port, f"http://127.0.0.1:{port}{mount}/api/v1", server)
    finally:
        api.drop_streams()
        server.should_exit = True
        await asyncio.wait_for(task, TIMEOUT)
        sock.close()


def client(**kw: Any) -> httpx.AsyncClient:
    kw.setdefault("timeout", TIMEOUT)
    return httpx.AsyncClient(**kw)


@dataclass
class SseEvent:
    """One event of a ``text/event-stream`` as an EventSource would dispatch it."""

    event: str = "message"
    id: str | None = None
    data: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def seq(self) -> int:
        return int(self.json["seq"])


@dataclass
class SseReader:
    """Parses the lines of a stream (the WHATWG rules the tests need: fields, comments, blank lines)."""

    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    _cur: dict[str, str] = field(default_factory=dict)
    _data: list[str] = field(default_factory=list)

    def line(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._data and not self._cur:
                return None
            ev = SseEvent(self._cur.get("event", "message"), self._cur.get("id"), "\n".join(self._data))
            self._cur, self._data = {}, []
            return ev
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "retry":
            self.retry = int(value)
        else:
            self._cur[name] = value
        return None


class SseStream:
    """The events of one streamed response, read in steps (``events``)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SseReader()
        self._lines = response.aiter_lines()

    async def events(self, until: Callable[[SseEvent], bool]) -> list[SseEvent]:
        """Events until ``until(event)`` is true (included), or the stream ends."""
        out: list[SseEvent] = []

        async def go() -> None:
            async for line in self._lines:
                ev = self.parser.line(line)
                if ev is not None:
                    out.append(ev)
                    if until(ev):
                        return

        await asyncio.wait_for(go(), TIMEOUT)
        return out

    async def comment(self, text: str) -> None:
        """Read until the comment ``text`` (``: text``) came."""

        async def go() -> None:
            async for line in self._lines:
                self.parser.line(line)
                if text in self.parser.comments:
                    return

        await asyncio.wait_for(go(), TIMEOUT)
