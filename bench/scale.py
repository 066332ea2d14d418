"""The gateway over Redis beside the gateway over memory, in one run (and before/after a change).

For each tree (``--before REF`` adds the code of a git ref, exported to a
temporary folder, beside this tree's) and each store, a gateway runs in a
process of its own (``bench/gateway_proc.py``) over a private
``redis-server`` that this bench starts on a free port, and Node clients
(``bench/watchers.mjs``, the ``ws`` package of ``clients/js``) watch it:

(a) throughput: 100,000 64-byte text events written as fast as an agent
    thread can, to one client: events/s from the first write to the last
    receipt;
(b) gateway CPU per event: user + system time of the gateway's process
    (``/proc/<pid>/stat``) over (a), divided by the events;
(c) Redis per event, over (a): the commands the gateway sent (round trips,
    a script call counts once), the commands Redis executed
    (``total_commands_processed``, inside scripts too) and PUBLISHes;
(d) many sessions: 500 sessions x 2 watchers, 10 events/s each, for 15 s:
    latency from the event's timestamp to its receipt (p50, p99, max), how
    long after the last write the last event arrived, the gateway's CPU
    and Redis per event.

Ratios are what to compare: every configuration runs on the same machine in
the same run.  Usage:

    python -m bench.scale [--before main] [--n 100000] [--sessions 500]
        [--watchers 2] [--rate 10] [--seconds 15] [--only throughput,many] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
#: Seconds any one step may take before the bench gives up on it.
GUARD = 180.0


def cpu_of(pid: int) -> float:
    """Seconds of CPU (user + system) process ``pid`` used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_json(proc: subprocess.Popen[str], timeout: float = GUARD) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"{proc.args!r} said nothing in {timeout}s")
    text = proc.stdout.readline()
    if not text:
        raise RuntimeError(f"{proc.args!r} exited with {proc.wait()}")
    return json.loads(text)  # type: ignore[no-any-return]


def tell(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def stop(proc: subprocess.Popen[str]) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)
    except (subprocess.TimeoutExpired, BrokenPipeError):
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of the bench's own on a free port, no persistence; killed on exit."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)  # the server is starting: a bench, not a test
        client.close()
        yield url
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def exported(ref: str) -> Iterator[Path]:
    """The tree of git ``ref`` of this repository, in a temporary folder."""
    tmp = Path(tempfile.mkdtemp(prefix="wirepipe-bench-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Redis:
    """Counters of the private server, reset between runs."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def reset(self) -> None:
        self.client.flushall()
        self.client.config_resetstat()

    def counts(self) -> dict[str, int]:
        stats = self.client.info("stats")
        cmds = self.client.info("commandstats")
        out = {"total": int(stats["total_commands_processed"])}
        for name, v in cmds.items():
            out[name.removeprefix("cmdstat_")] = int(v["calls"])
        return out


def gateway(tree: Path, store: str, url: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(ROOT / "bench" / "gateway_proc.py"), "--store", store, "--redis", url, *args]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)


def watchers(url: str, sids: str, per_sid: int, *flags: str) -> subprocess.Popen[str]:
    cmd = ["node", str(ROOT / "bench" / "watchers.mjs"), url, sids, str(per_sid), *flags]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def redis_per_event(r: Redis | None, before: dict[str, int], calls: dict[str, int], events: int) -> dict[str, Any]:
    if r is None:
        return {}
    after = r.counts()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta["info"] = delta.get("info", 0) - 2  # the bench's own INFO calls
    delta["total"] -= 3
    return {
        "redis_round_trips_per_event": round(sum(calls.values()) / events, 3),
        "redis_commands_per_event": round(delta["total"] / events, 2),
        "redis_publish_per_event": round(delta.get("publish", 0) / events, 3),
        "redis_round_trips": calls,
    }


def throughput(tree: Path, store: str, url: str, r: Redis | None, n: int) -> dict[str, Any]:
    gw = gateway(tree, store, url, "throughput", "--n", str(n))
    rx: subprocess.Popen[str] | None = None
    try:
        hello = read_json(gw)
        rx = watchers(hello["url"], "bench", 1)
        read_json(rx)  # ready
        before = r.counts() if r is not None else {}
        cpu0 = cpu_of(hello["pid"])
        tell(gw, "go")
        tell(rx, f"expect {n}")
        report = read_json(rx)["report"]
        cpu = cpu_of(hello["pid"]) - cpu0
        done = read_json(gw)
        tell(gw, "counts")
        done.update(read_json(gw))
        assert report["gaps"] == 0 and report["events"] == n, report
        return {
            "events_per_s": round(n / (report["last"] - done["t0"])),
            "cpu_us_per_event": round(cpu / n * 1e6, 1),
            "frames": report["frames"],
            **redis_per_event(r, before, done["redis_calls"], n),
        }
    finally:
        if rx is not None:
            stop(rx)
        stop(gw)


def many(tree: Path, store: str, url: str, r: Redis | None, a: argparse.Namespace) -> dict[str, Any]:
    args = ["many", "--sessions", str(a.sessions), "--rate", str(a.rate), "--seconds", str(a.seconds)]
    gw = gateway(tree, store, url, *args)
    rx: subprocess.Popen[str] | None = None
    try:
        hello = read_json(gw)
        rx = watchers(hello["url"], f"s:{a.sessions}", a.watchers)
        read_json(rx)  # every watcher welcomed
        before = r.counts() if r is not None else {}
        cpu0 = cpu_of(hello["pid"])
        tell(rx, "mark")
        tell(gw, "go")
        done = read_json(gw, a.seconds + GUARD)
        written = done["written"]
        tell(rx, f"expect {written * a.watchers}")
        try:
            report = read_json(rx)["report"]
        except TimeoutError:
            tell(rx, "report")
            report = read_json(rx)["report"]
        cpu = cpu_of(hello["pid"]) - cpu0
        tell(gw, "counts")
        done.update(read_json(gw))
        wall = report["last"] - done["t0"]
        return {
            "events_written": written,
            "deliveries": report["events"],
            "gaps": report["gaps"],
            "latency_p50_ms": round(report["p50_ms"], 1),
            "latency_p99_ms": round(report["p99_ms"], 1),
            "latency_max_ms": round(report["max_ms"], 1),
            "last_event_after_writes_end_s": round(wall - a.seconds, 2),
            "gateway_cpu_percent": round(cpu / wall * 100),
            "cpu_us_per_delivery": round(cpu / max(report["events"], 1) * 1e6, 1),
            **redis_per_event(r, before, done["redis_calls"], written),
        }
    finally:
        if rx is not None:
            stop(rx)
        stop(gw)


def run(a: argparse.Namespace, trees: dict[str, Path]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with private_redis() as url:
        r = Redis(url)
        for name, tree in trees.items():
            for store in ("memory", "redis"):
                key = f"{name}.{store}"
                rr = r if store == "redis" else None
                if "throughput" in a.only:
                    r.reset()
                    results[f"{key}.throughput"] = throughput(tree, store, url, rr, a.n)
                    print(key, "throughput", json.dumps(results[f"{key}.throughput"]), flush=True)
                if "many" in a.only:
                    r.reset()
                    results[f"{key}.many"] = many(tree, store, url, rr, a)
                    print(key, "many", json.dumps(results[f"{key}.many"]), flush=True)
    return results


def table(results: dict[str, Any], trees: list[str]) -> str:
    """The before/after table: Redis against memory, as ratios, and the absolutes they come from."""
    rows = ["| | " + " | ".join(trees) + " |", "|---|" + "---|" * len(trees)]

    def cell(fn: Any) -> str:
        out = []
        for t in trees:
            try:
                out.append(fn(t))
            except KeyError:
                out.append("-")
        return " | ".join(out)

    def tp(t: str, s: str) -> dict[str, Any]:
        return results[f"{t}.{s}.throughput"]  # type: ignore[no-any-return]

    def mn(t: str, s: str) -> dict[str, Any]:
        return results[f"{t}.{s}.many"]  # type: ignore[no-any-return]

    lines = [
        (
            "throughput, events/s: memory / redis",
            lambda t: f"{tp(t, 'memory')['events_per_s']:,} / {tp(t, 'redis')['events_per_s']:,}",
        ),
        (
            "throughput redis / memory",
            lambda t: f"{tp(t, 'redis')['events_per_s'] / tp(t, 'memory')['events_per_s']:.0%}",
        ),
        (
            "gateway CPU µs/event: memory / redis",
            lambda t: f"{tp(t, 'memory')['cpu_us_per_event']} / {tp(t, 'redis')['cpu_us_per_event']}",
        ),
        (
            "gateway CPU redis / memory",
            lambda t: f"{tp(t, 'redis')['cpu_us_per_event'] / tp(t, 'memory')['cpu_us_per_event']:.2f}x",
        ),
        (
            "redis round trips / commands / publishes per event",
            lambda t: " / ".join(
                str(tp(t, "redis")[k])
                for k in ("redis_round_trips_per_event", "redis_commands_per_event", "redis_publish_per_event")
            ),
        ),
        (
            "many: latency p50 / p99 ms, memory",
            lambda t: f"{mn(t, 'memory')['latency_p50_ms']} / {mn(t, 'memory')['latency_p99_ms']}",
        ),
        (
            "many: latency p50 / p99 ms, redis",
            lambda t: f"{mn(t, 'redis')['latency_p50_ms']} / {mn(t, 'redis')['latency_p99_ms']}",
        ),
        (
            "many: gateway CPU %, memory / redis",
            lambda t: f"{mn(t, 'memory')['gateway_cpu_percent']} / {mn(t, 'redis')['gateway_cpu_percent']}",
        ),
        (
            "many: last event after the writes ended, s (redis)",
            lambda t: f"{mn(t, 'redis')['last_event_after_writes_end_s']}",
        ),
        (
            "many: redis round trips / commands per event",
            lambda t: f"{mn(t, 'redis')['redis_round_trips_per_event']} / {mn(t, 'redis')['redis_commands_per_event']}",
        ),
    ]
    for label, fn in lines:
        rows.append(f"| {label} | {cell(fn)} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--before", help="also measure this git ref (e.g. main), exported to a temporary folder")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--watchers", type=int, default=2)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--only", default="throughput,many")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    a.only = a.only.split(",")
    if shutil.which("redis-server") is None or shutil.which("node") is None:
        sys.exit("bench.scale needs redis-server and node on PATH")
    if a.before:
        with exported(a.before) as old:
            trees = {"before": old, "after": ROOT}
            results = run(a, trees)
    else:
        trees = {"this": ROOT}
        results = run(a, trees)
    print()
    print(table(results, list(trees)))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
