"""The bare baseline of ``python -m bench``: a plain ``websockets`` server, in a process of its own.

It is what the gateway is compared with: one MessagePack frame per message,
the same 64-byte payloads and the same event fields as the gateway's frames,
sent with ``await ws.send`` to every client of the session in turn
(lossless: a slow client holds the writer back), and nothing else: no
store, no batching, no replay, no asks.  A client says ``hello`` with a
``sid`` and gets ``{"t": "welcome", "head": 0}``.

It speaks the stdin/stdout protocol of ``bench/gateway_proc.py`` (same
modes and arguments), so the bench drives both alike:

    python bench/bare_proc.py throughput --n 100000      # as fast as it can, to sid "bench"
    python bench/bare_proc.py many --sessions 500 --rate 10 --seconds 15   # sids s0..s499
    python bench/bare_proc.py idle                        # accepts and holds, writes nothing

Prints ``{"url", "pid"}`` once listening, waits for ``go``, writes, prints
``{"t0", "written"}``; at the next line ``{"redis_calls": {}}``; exits when
stdin closes.  With ``WIREPIPE_BENCH_PROFILE=PATH`` it runs under cProfile
and writes its stats to ``PATH.bare.<mode>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import msgpack
from pace import paced  # this script's folder: bench/
from websockets.asyncio.server import ServerConnection, serve

PAYLOAD = "x" * 54  # with a 10-char counter: 64-byte strings, as in bench/gateway_proc.py
CONNS: dict[str, list[ServerConnection]] = {}
SEQ: dict[str, int] = {}


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


async def line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def handler(ws: ServerConnection) -> None:
    hello = msgpack.unpackb(await ws.recv())
    sid = str(hello.get("sid", ""))
    await ws.send(msgpack.packb({"t": "welcome", "sid": sid, "head": SEQ.get(sid, 0)}))
    conns = CONNS.setdefault(sid, [])
    conns.append(ws)
    try:
        await ws.wait_closed()
    finally:
        conns.remove(ws)


async def send(sid: str, text: str) -> None:
    """One event of session ``sid``: one frame, encoded once, sent to each of its clients in turn."""
    seq = SEQ[sid] = SEQ.get(sid, 0) + 1
    frame = msgpack.packb({"t": "ev", "seq": seq, "k": "text", "ts": time.time(), "d": {"id": "t1", "delta": text}})
    for ws in list(CONNS.get(sid, ())):
        await ws.send(frame)


async def many(sids: list[str], rate: float, seconds: float) -> int:
    """The schedule of ``gateway_proc.many`` (``pace.paced``)."""
    written = 0
    async for g in paced(len(sids), rate, seconds):
        await send(sids[g % len(sids)], f"{g:010d}{PAYLOAD}")
        written += 1
    return written


async def main(a: argparse.Namespace) -> None:
    async with serve(handler, "127.0.0.1", 0, subprotocols=["wirepipe.v1"]) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        say(url=f"ws://127.0.0.1:{port}/", pid=os.getpid(), gateway="bare websockets")
        await line()  # go
        t0 = time.time()
        if a.mode == "throughput":
            for i in range(a.n):
                await send("bench", f"{i:010d}{PAYLOAD}")
            written = a.n
        elif a.mode == "many":
            written = await many([f"s{i}" for i in range(a.sessions)], a.rate, a.seconds)
        else:
            written = 0
        say(t0=t0, written=written)
        await line()  # the clients have everything
        say(redis_calls={})
        await line()  # the parent has read what it needs: close


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--store", default="none")  # accepted for symmetry with gateway_proc.py
    p.add_argument("--redis", default="")
    p.add_argument("mode", choices=["throughput", "many", "idle"])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args()
    profile = os.environ.get("WIREPIPE_BENCH_PROFILE")
    if profile:  # cProfile stats of the whole process, to PROFILE.bare.<mode> (as gateway_proc.py)
        import cProfile

        cProfile.run("asyncio.run(main(args))", f"{profile}.bare.{args.mode}")
    else:
        asyncio.run(main(args))
