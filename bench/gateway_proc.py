"""The gateway of ``bench.scale``, in a process of its own (so its CPU can be read from /proc).

Run as a script, with the tree to measure first on PYTHONPATH (it uses only
the API that every version has: ``Gateway``, ``MemoryStore``,
``RedisStore``, ``Retention``, ``pipe``):

    PYTHONPATH=TREE python bench/gateway_proc.py --store redis --redis URL throughput --n 100000
    PYTHONPATH=TREE python bench/gateway_proc.py --store memory many --sessions 500 --rate 10 --seconds 15
    PYTHONPATH=TREE python bench/gateway_proc.py idle           # sid "bench", nothing written
    PYTHONPATH=TREE python bench/gateway_proc.py replay --n 10000   # sid "bench": 1 event, then n at go
    PYTHONPATH=TREE python bench/gateway_proc.py --front asgi throughput   # clients through gw.asgi()

With ``--front asgi`` the clients come in through ``gw.asgi()`` mounted at
``/agents`` in a Starlette app under uvicorn, in this process and event loop
(uvicorn's defaults: its keepalive pings, permessage-deflate when a client
offers it), and the URL printed is the mount's.

Prints JSON lines on stdout: ``{"url", "pid", "gateway"}`` once listening,
then waits for ``go`` on stdin, writes, and prints ``{"t0", "written"}``;
at the next line, ``{"redis_calls"}`` (the Redis commands this process sent
since ``go``, by name: its round trips; a script call counts once).  It
exits when stdin closes.  With ``WIREPIPE_BENCH_PROFILE=PATH`` it runs under
cProfile and writes its stats to ``PATH.<store>.<mode>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pace import paced  # this script's folder: bench/

import gateway
from gateway import Gateway, MemoryStore

try:
    from gateway.server import tune_gc
except ImportError:  # a tree from before it existed (--before)

    def tune_gc() -> None:
        pass


from gateway.stores import Retention

PAYLOAD = "x" * 54  # with a 10-char counter: 64-byte strings, as in ``python -m bench``
CALLS: Counter[str] = Counter()


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def count_redis_calls() -> None:
    """Count every command this process sends to Redis (instrumentation of redis-py's entry points)."""
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    def wrap(cls: Any) -> None:
        inner = cls.execute_command

        async def execute_command(self: Any, *args: Any, **kw: Any) -> Any:
            CALLS[str(args[0]).upper()] += 1
            return await inner(self, *args, **kw)

        cls.execute_command = execute_command

    wrap(Redis)
    wrap(PubSub)
    from redis.asyncio.client import Pipeline

    inner_execute = Pipeline.execute

    async def execute(self: Any, *args: Any, **kw: Any) -> Any:
        CALLS["PIPELINE"] += 1  # one round trip, whatever it carries
        return await inner_execute(self, *args, **kw)

    Pipeline.execute = execute  # type: ignore[method-assign]


async def line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def main(a: argparse.Namespace) -> None:
    if a.store == "redis":
        from gateway import RedisStore

        count_redis_calls()
        retention = Retention(max_events=a.n + 10, max_bytes=1 << 30)
        store: Any = RedisStore(a.redis, retention=retention, prefix="bench:")
    else:
        store = MemoryStore(Retention(max_events=a.n + 10, max_bytes=1 << 30))
    port = None if a.front == "asgi" else 0  # mounted: the host app's uvicorn is the only listener
    knobs = {"front": a.front} if a.front != "asgi" else {}
    async with Gateway(port=port, store=store, **knobs) as gw, front(gw, a.front) as url:
        sids = ["bench"] if a.mode != "many" else [f"s{i}" for i in range(a.sessions)]
        pipes = [gw.pipe(sid) for sid in sids]
        if a.mode == "replay":
            pipes[0].set_message("start")  # the event a client sees before it goes away
        for p in pipes:
            await p.drained()
        say(url=url, pid=__import__("os").getpid(), gateway=gateway.__file__)
        tune_gc()  # as wirepipe serve does once it listens
        await line()  # go
        CALLS.clear()
        t0 = time.time()
        if a.mode == "replay":  # written while the client is away: it resumes after them
            for i in range(a.n):
                pipes[0].set_message(f"{i:010d}{PAYLOAD}")
            written = a.n
        elif a.mode == "idle":
            written = 0
        elif a.mode == "throughput":
            pipe = pipes[0]
            msgs = [f"{i:010d}{PAYLOAD}" for i in range(a.n)]

            def agent() -> None:
                for m in msgs:
                    pipe.set_message(m)

            th = threading.Thread(target=agent)
            th.start()
            await asyncio.to_thread(th.join)
            written = a.n
        else:
            written = await many(pipes, a.rate, a.seconds)
        for p in pipes:
            await p.drained()
        say(t0=t0, written=written)
        await line()  # the clients have everything: what did it cost?
        say(redis_calls=dict(CALLS))
        await line()  # the parent has read what it needs: close


@asynccontextmanager
async def front(gw: Gateway, kind: str) -> AsyncIterator[str]:
    """The URL clients connect to: the gateway's own, or ``gw.asgi()``'s under uvicorn (``--front asgi``)."""
    if kind != "asgi":
        yield gw.url
        return
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = Starlette(routes=[Mount("/agents", app=gw.asgi())])  # the gateway is started: no lifespan
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, backlog=4096)
    server = uvicorn.Server(config)
    # Clients that come before uvicorn has started wait in the socket's backlog.
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/agents/"
    finally:
        server.should_exit = True
        await task


async def many(pipes: list[Any], rate: float, seconds: float) -> int:
    """Every pipe writes ``rate`` events a second, phases spread evenly, for ``seconds`` (``pace.paced``)."""
    written = 0
    async for g in paced(len(pipes), rate, seconds):
        pipes[g % len(pipes)].set_message(f"{g:010d}{PAYLOAD}")
        written += 1
    return written


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--store", choices=["memory", "redis"], default="memory")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--front", choices=["uvicorn", "websockets", "asgi"], default="uvicorn")
    p.add_argument("mode", choices=["throughput", "many", "idle", "replay"])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args()
    profile = __import__("os").environ.get("WIREPIPE_BENCH_PROFILE")
    if profile:  # cProfile stats of the whole process, to PROFILE.<store>.<mode>
        import cProfile

        cProfile.run("asyncio.run(main(args))", f"{profile}.{args.store}.{args.mode}")
    else:
        asyncio.run(main(args))
