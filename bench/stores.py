"""Store benchmark: MemoryStore vs RedisStore, measured in one run.

(a) ``append`` in batches of 100 events (64-byte text deltas, so the
    snapshot's open text grows as it would with an LLM stream): events/s.
(b) ``read`` of 10,000 retained events from seq 0, the way a connection's
    pump does it (``limit`` 1000, ``max_bytes`` 512 KiB, until caught up): ms.

RedisStore is measured with its default checkpointing (a snapshot every 256
events) and with ``snapshot_every=1`` (a snapshot stored with every batch).
Runs are interleaved and the median is reported.

With ``--redis-cluster URL`` RedisStore is measured on that Redis Cluster too.

Usage: python -m bench.stores [--events 20000] [--read 10000] [--repeat 5]
       [--redis redis://127.0.0.1:6379/0] [--redis-cluster URL] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.connection import BATCH_BYTES
from gateway.stores import Appended, MemoryStore, Retention, Store
from protocol import encode_event

BATCH = 100
PAYLOAD = "x" * 54  # with a 10-char counter: 64-byte deltas, as in ``python -m bench``

Opener = Callable[[], AbstractAsyncContextManager[Store]]


def events(n: int) -> list[Appended]:
    ts = time.time()
    out = []
    for seq in range(1, n + 1):
        d = {"id": "t1", "delta": f"{seq:010d}{PAYLOAD}"}
        out.append(Appended(seq, "text", d, encode_event(seq, "text", ts, d)))
    return out


async def bench_append(store: Store, evs: list[Appended]) -> float:
    await store.create("bench", "e1")
    t0 = time.perf_counter()
    for i in range(0, len(evs), BATCH):
        await store.append("bench", evs[i : i + BATCH])
    return len(evs) / (time.perf_counter() - t0)


async def bench_read(store: Store, evs: list[Appended]) -> float:
    await store.create("bench", "e1")
    for i in range(0, len(evs), 1000):
        await store.append("bench", evs[i : i + 1000])
    t0 = time.perf_counter()
    cursor = 0
    while cursor < len(evs):
        raws = await store.read("bench", cursor, limit=1000, max_bytes=BATCH_BYTES)
        cursor += len(raws)
    return (time.perf_counter() - t0) * 1000


def openers(url: str, cluster_url: str | None = None) -> dict[str, Opener]:
    retention = Retention(max_events=1_000_000, max_bytes=1 << 30)

    @asynccontextmanager
    async def memory() -> AsyncIterator[Store]:
        s = MemoryStore(retention)
        try:
            yield s
        finally:
            await s.close()

    def redis(url: str = url, cluster: bool = False, **kw: Any) -> Opener:
        @asynccontextmanager
        async def opened() -> AsyncIterator[Store]:
            from redis.asyncio import Redis
            from redis.asyncio.cluster import RedisCluster

            from gateway.stores.redis import RedisStore

            prefix = f"wirepipe-bench:{uuid.uuid4().hex[:8]}:"
            s = RedisStore(url, cluster=cluster, retention=retention, prefix=prefix, **kw)
            try:
                yield s
            finally:
                await s.close()
                r = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
                keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
                if keys:
                    await r.unlink(*keys)
                await r.aclose()

        return opened

    out = {"memory": memory, "redis": redis(), "redis_snapshot_every_1": redis(snapshot_every=1)}
    if cluster_url:
        out["redis_cluster"] = redis(cluster_url, cluster=True)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    appended = events(args.events)
    readable = events(args.read)
    runs: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeat):  # interleaved, so drift hits every backend alike
        for name, opener in openers(args.redis, args.redis_cluster).items():
            r = runs.setdefault(name, {"append_events_per_s": [], "read_ms": []})
            async with opener() as store:
                r["append_events_per_s"].append(await bench_append(store, appended))
            async with opener() as store:
                r["read_ms"].append(await bench_read(store, readable))
    result: dict[str, Any] = {"events": args.events, "batch": BATCH, "read": args.read, "repeat": args.repeat}
    for name, r in runs.items():
        result[f"{name}.append_events_per_s"] = round(statistics.median(r["append_events_per_s"]))
        result[f"{name}.read_ms"] = round(statistics.median(r["read_ms"]), 2)
    result["runs"] = {f"{n}.{k}": [round(x, 2) for x in v] for n, r in runs.items() for k, v in r.items()}
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        prog="python -m bench.stores", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=20_000, help="events appended, in batches of 100")
    p.add_argument("--read", type=int, default=10_000, help="events read back")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--redis-cluster", help="also measure RedisStore on this Redis Cluster (any node's URL)")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    res = asyncio.run(main(a))
    for k, v in res.items():
        if k != "runs":
            print(f"{k:40} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
