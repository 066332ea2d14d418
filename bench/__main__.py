"""Benchmarks, all measured in one run so that ratios compare like with like.

(a) N ``set_message`` calls of 64-byte strings from an agent thread, through
    the gateway, to one client in another process: events/s end to end.
(b) The same payloads through a bare ``websockets`` server that sends one
    MessagePack frame per message: the ceiling, measured in this same run.
(c) Replay of 10,000 missed events after a reconnect with a resume token.
(d) Peak RSS of this process (gateway and baseline server) and of the receiver.

Usage: python -m bench [--n 100000] [--replay 10000] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve

from bench.receiver import peak_rss_mb
from gateway import Gateway, MemoryStore
from gateway.stores import Retention

PAYLOAD = "x" * 54  # with a 10-char counter: 64-byte strings


class Receiver:
    def __init__(self, url: str, sid: str, n: int, *, replay: bool = False) -> None:
        args = [sys.executable, "-m", "bench.receiver", url, sid, str(n)] + (["--replay"] if replay else [])
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent
        )

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = await asyncio.to_thread(self.proc.stdout.readline)
        if not text:
            raise RuntimeError(f"receiver exited with {self.proc.wait()}")
        return json.loads(text)  # type: ignore[no-any-return]

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _messages(n: int) -> list[str]:
    return [f"{i:010d}{PAYLOAD}" for i in range(n)]


async def bench_gateway(n: int) -> dict[str, float]:
    msgs = _messages(n)
    retention = Retention(max_events=n + 10, max_bytes=1 << 30)
    async with Gateway(port=0, store=MemoryStore(retention)) as gw:
        pipe = gw.pipe("bench")
        rx = Receiver(gw.url, "bench", n)
        await rx.line()  # ready (hello sent)
        await pipe.drained()
        started = threading.Event()
        t0 = 0.0

        def agent() -> None:
            nonlocal t0
            t0 = time.time()
            started.set()
            for m in msgs:
                pipe.set_message(m)

        th = threading.Thread(target=agent)
        th.start()
        done = await rx.line()
        th.join()
        rx.finish()
        return {"events_per_s": n / (done["done"] - t0), "frames": done["frames"], "rss": done["rss_mb"]}


async def bench_bare(n: int) -> dict[str, float]:
    msgs = _messages(n)
    t0 = 0.0
    finished = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        nonlocal t0
        await ws.recv()  # the hello
        t0 = time.time()
        ts = time.time()
        for i, m in enumerate(msgs, 1):  # one frame per message, no batching or replay: the bare baseline
            await ws.send(msgpack.packb({"t": "ev", "seq": i, "k": "text", "ts": ts, "d": {"id": "t1", "delta": m}}))
        await finished.wait()

    async with serve(handler, "127.0.0.1", 0, subprotocols=["wirepipe.v1"]) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        rx = Receiver(f"ws://127.0.0.1:{port}/", "bare", n)
        await rx.line()
        done = await rx.line()
        finished.set()
        rx.finish()
    return {"events_per_s": n / (done["done"] - t0), "frames": done["frames"]}


async def bench_replay(n: int) -> float:
    async with Gateway(port=0) as gw:
        pipe = gw.pipe("replay")
        pipe.set_message("start")
        await pipe.drained()
        rx = Receiver(gw.url, "replay", n, replay=True)
        await rx.line()  # connected once, then gone
        for m in _messages(n):
            pipe.set_message(m)
        await pipe.drained()
        rx.go()
        out = await rx.line()
        rx.finish()
        return float(out["replay_ms"])


async def main(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"gateway": [], "bare": [], "ratio": [], "replay_ms": []}
    frames = 0.0
    rx_rss = 0.0
    for _ in range(args.repeat):  # interleaved, so drift hits both sides alike
        b = await bench_bare(args.n)
        g = await bench_gateway(args.n)
        runs["bare"].append(b["events_per_s"])
        runs["gateway"].append(g["events_per_s"])
        runs["ratio"].append(g["events_per_s"] / b["events_per_s"])
        frames = g["frames"]
        rx_rss = max(rx_rss, g["rss"])
        runs["replay_ms"].append(await bench_replay(args.replay))
    med = {k: statistics.median(v) for k, v in runs.items()}
    peak_mb = peak_rss_mb()
    return {
        "n": args.n,
        "repeat": args.repeat,
        "gateway_events_per_s": round(med["gateway"]),
        "bare_events_per_s": round(med["bare"]),
        "ratio_gateway_over_bare": round(med["ratio"], 2),
        "gateway_frames_for_n_events": int(frames),
        "replay_events": args.replay,
        "replay_ms": round(med["replay_ms"], 1),
        "peak_rss_mb_server_process": round(peak_mb, 1),
        "peak_rss_mb_receiver": round(rx_rss, 1),
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--replay", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    result = asyncio.run(main(a))
    for k, v in result.items():
        if k != "runs":
            print(f"{k:32} {v}")
    print(f"{'runs':32} {json.dumps(result['runs'])}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
