"""CPU per event of the write path: ``set_message`` until the event is stored.

No client is connected: this is what every event costs the gateway process
before any watcher (the agent's thread, the check and encode, the session
writer, the store).  The baseline, measured in the same run, is the bare
work any gateway must do: one ``msgpack.packb`` of the same event map.
CPU comes from ``/proc/self/stat`` (user + system of the whole process).

Usage: python -m bench.pipe_cost [--n 200000] [--repeat 3] [--store memory|redis]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import msgpack

from gateway import Gateway, MemoryStore

TICK = os.sysconf("SC_CLK_TCK")


def cpu() -> float:
    """Seconds of CPU (user + system) this process used, from /proc."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


KINDS = [
    ("text", None),  # pipe.set_message(str)
    ("log", {"level": "INFO", "msg": "x" * 40}),
    ("plan", {"goal": "g", "tasks": [{"id": str(i), "instruction": "do", "status": "pending"} for i in range(5)]}),
]


async def gateway_cost(n: int, kind: str, d: object, store_name: str) -> float:
    store = MemoryStore()
    if store_name == "redis":
        from gateway import RedisStore

        store = RedisStore(prefix=f"bench{os.getpid()}:")  # type: ignore[assignment]
    async with Gateway(port=0, store=store) as gw:
        pipe = gw.pipe("cost")
        msg = {"k": kind, "d": d}

        def agent() -> None:
            if kind == "text":
                for _ in range(n):
                    pipe.set_message("x" * 54)
            else:
                for _ in range(n):
                    pipe.set_message(msg)

        await pipe.drained()
        t0 = cpu()
        await asyncio.to_thread(agent)
        await pipe.drained()
        spent = cpu() - t0
        pipe.close()
    return spent / n * 1e6


def baseline_cost(n: int, kind: str, d: object) -> float:
    payload = {"id": "t1", "delta": "x" * 54} if kind == "text" else d
    t0 = cpu()
    for seq in range(n):
        msgpack.packb({"seq": seq, "k": kind, "ts": time.time(), "d": payload}, use_bin_type=True)
    return (cpu() - t0) / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--store", default="memory", choices=["memory", "redis"])
    args = ap.parse_args()
    print("| kind | bare packb, µs/event | gateway write path, µs/event | ratio |")
    print("|---|---|---|---|")
    for kind, d in KINDS:
        base, gw = [], []
        for _ in range(args.repeat):  # interleaved: both see the same machine
            base.append(baseline_cost(args.n, kind, d))
            gw.append(await gateway_cost(args.n, kind, d, args.store))
        b, g = statistics.median(base), statistics.median(gw)
        print(f"| {kind} | {b:.2f} | {g:.2f} | {g / b:.1f}x |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
