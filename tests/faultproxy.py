"""A TCP proxy for fault injection: cut, black-hole, delay, and drop a reply.

    async with FaultProxy(upstream_port) as proxy:
        store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0")
        proxy.drop_reply_after(b"EVALSHA")  # Redis applies it; the reply is lost
        await proxy.dropped.wait()

Everything binds to 127.0.0.1.  Faults act on the bytes, the way a network
does; the proxy knows nothing of Redis but a marker to look for.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


class _Pair:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.doomed = False  # the next reply on this pair is dropped

    def abort(self) -> None:
        for w in (self.client, self.server):
            w.transport.abort()


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.pairs: set[_Pair] = set()
        #: Cleared: no byte moves either way (a black hole); set: traffic flows.
        self.flowing = asyncio.Event()
        self.flowing.set()
        #: Seconds each chunk is held before it is forwarded.
        self.delay = 0.0
        #: Set when a reply was dropped (see ``drop_reply_after``).
        self.dropped = asyncio.Event()
        #: Connections accepted so far.
        self.accepted = 0
        #: While False, new connections are refused (the upstream "is down").
        self.accepting = True
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    # --- faults ---------------------------------------------------------------------

    def cut(self) -> int:
        """Abort every open connection (both sides see a reset); returns how many."""
        n = len(self.pairs)
        for p in list(self.pairs):
            p.abort()
        self.pairs.clear()
        return n

    def drop_reply_after(self, marker: bytes) -> None:
        """The next command containing ``marker`` reaches the server; its reply is
        dropped and the connection cut, as if the link died right after the server
        applied it.  ``dropped`` is set when that happened."""
        self.dropped.clear()
        self._marker = marker

    # --- plumbing -----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if not self.accepting:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer)
        self.pairs.add(pair)
        tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer, pair, upstream=True)),
            asyncio.ensure_future(self._pump(up_reader, writer, pair, upstream=False)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pair.abort()
            self.pairs.discard(pair)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, pair: _Pair, *, upstream: bool) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                data = await src.read(65536)
                if not data:
                    return
                await self.flowing.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)  # the injected latency itself
                if upstream and self._marker is not None and self._marker in data:
                    self._marker = None
                    pair.doomed = True
                elif not upstream and pair.doomed:
                    pair.abort()  # the server applied the command; its reply never arrives
                    self.dropped.set()
                    return
                dst.write(data)
                await dst.drain()
