"""The receiving side of the benchmarks, run as its own process.

Usage: python -m bench.receiver URL SID N [--replay]
Prints one JSON line per milestone on stdout; reads "go" lines on stdin.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import msgpack
from websockets.asyncio.client import connect


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across fork+exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def count(frame: dict) -> int:
    """Events in one frame, and the highest seq."""
    t = frame.get("t")
    if t == "ev":
        return frame["seq"]
    if t == "batch":
        return frame["evs"][-1]["seq"]
    return -1


async def receive(url: str, sid: str, n: int) -> None:
    async with connect(url, subprotocols=["wirepipe.v1"], max_size=None) as ws:
        await ws.send(msgpack.packb({"t": "hello", "sid": sid, "live": True}))
        say(ready=True)
        seq = 0
        frames = 0
        while seq < n:
            frame = msgpack.unpackb(await ws.recv())
            if frame.get("t") in ("ev", "batch"):
                frames += 1
                seq = max(seq, count(frame))
        say(done=time.time(), frames=frames, rss_mb=peak_rss_mb())


async def replay(url: str, sid: str, n: int) -> None:
    async with connect(url, subprotocols=["wirepipe.v1"], max_size=None) as ws:
        await ws.send(msgpack.packb({"t": "hello", "sid": sid, "live": True}))
        w = msgpack.unpackb(await ws.recv())
    say(gone=True, head=w["head"])
    await asyncio.to_thread(sys.stdin.readline)  # the parent wrote n events meanwhile
    t0 = time.perf_counter()
    async with connect(url, subprotocols=["wirepipe.v1"], max_size=None) as ws:
        await ws.send(
            msgpack.packb({"t": "hello", "sid": sid, "resume": w["resume"], "epoch": w["epoch"], "after": w["head"]})
        )
        welcome = msgpack.unpackb(await ws.recv())
        assert welcome["recovered"], welcome
        seq = w["head"]
        target = w["head"] + n
        while seq < target:
            seq = max(seq, count(msgpack.unpackb(await ws.recv())))
    say(replay_ms=(time.perf_counter() - t0) * 1000)


if __name__ == "__main__":
    url, sid, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(replay(url, sid, n) if "--replay" in sys.argv else receive(url, sid, n))
