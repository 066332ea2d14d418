"""The gateway beside a bare ``websockets`` server, six workloads, one command, one table.

Every server runs in a process of its own, so that its CPU (user + system,
``/proc/<pid>/stat``) and memory (``VmRSS`` of ``/proc/<pid>/status``) are
its alone: the gateway over a MemoryStore (``bench/gateway_proc.py``) and the
bare baseline (``bench/bare_proc.py``: a plain ``websockets`` server that
sends one MessagePack frame per message, the same 64-byte payloads, and
nothing else).  The clients are Node processes (``bench/watchers.mjs``, the
``ws`` package of ``clients/js``); where no latency is measured they do not
decode frames but read the last ``seq`` from the bytes, and their CPU is
reported beside the server's, so a reader can see that they were not the
bottleneck.  The workloads, each run for the gateway and then for bare:

one      N events (100,000) written as fast as possible, to one client:
         events/s from the first write to the last receipt, server CPU per event.
fanout   N events (10,000) to 100 clients of one session: deliveries/s, server
         CPU per delivery.
rate     a steady 2,000 events/s for 10 s to one client: latency (receipt time
         minus the event's timestamp) p50 / p99, server CPU per event.
many     500 sessions x 2 watchers, 10 events/s each, for 15 s: server CPU per
         delivery, latency p50 / p99.
idle     2,000 connected clients that receive nothing: server memory per
         connection, (VmRSS with them - VmRSS before) / 2,000.
replay   a client resumes with its token after 10,000 missed events: ms from
         its reconnect to the last event (the gateway only: bare has no replay).
         The client reads each frame's last seq without decoding its events,
         so the time is the server's, not the receiver's.

Ratios (gateway / bare) are what to compare: both run on the same machine in
the same run.  The gateway is its default front (``uvicorn``: uvicorn answers
HTTP, websockets' connection takes each WebSocket).  ``--front websockets``
or ``--front asgi`` measures a third server beside the two: the same gateway
with websockets' server alone on its port, or with its clients coming in
through ``gw.asgi()`` mounted in a Starlette app under uvicorn (docs/http.md,
"Fronts"), with the ratios front / bare and front / gateway.  ``--quick``
shrinks every workload to a smoke run of seconds.
With ``--deflate`` every client offers permessage-deflate (``ws``'s default
offer), which both servers accept: the bare one with websockets' defaults
(a compressor and a decompressor kept per connection), the gateway without
context takeover (``gateway/compression.py``); ``--deflate --only idle`` is
the memory of an idle client that negotiated compression.

Usage: python -m bench [--quick] [--deflate] [--front websockets|asgi]
       [--only one,fanout,rate,many,idle,replay] [--json FILE]
       [--n 100000] [--fanout-n 10000] [--clients 100] [--rate 2000] [--rate-seconds 10]
       [--sessions 500] [--watchers 2] [--session-rate 10] [--seconds 15] [--idle 2000]
       [--replay 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scale import GUARD, ROOT, cpu_of, read_json, stop, tell, watchers

WORKLOADS = ("one", "fanout", "rate", "many", "idle", "replay")
KINDS = ("gateway", "bare")
#: The fronts ``--front`` measures beside the gateway's default one.
FRONTS = ("websockets", "asgi")
QUICK = {
    "n": 5_000,
    "fanout_n": 500,
    "clients": 10,
    "rate": 500,
    "rate_seconds": 0.5,
    "sessions": 20,
    "session_rate": 10,
    "seconds": 0.5,
    "idle": 100,
    "replay": 500,
}


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` now (VmRSS), in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def server(kind: str, *args: str) -> subprocess.Popen[str]:
    """The gateway (memory store; ``websockets``, ``asgi``: that front) or the bare baseline, in its own process."""
    script = "bare_proc.py" if kind == "bare" else "gateway_proc.py"
    front = ["--front", kind] if kind in FRONTS else []
    cmd = [sys.executable, str(ROOT / "bench" / script), "--store", "memory", *front, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def burst(kind: str, n: int, clients: int, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """``n`` events as fast as the server writes them, to ``clients`` clients of one session."""
    srv = server(kind, "throughput", "--n", str(n))
    rx: subprocess.Popen[str] | None = None
    try:
        hello = read_json(srv)
        rx = watchers(hello["url"], "bench", clients, "--fast", *flags)
        read_json(rx)  # every client welcomed
        cpu0, rx0 = cpu_of(hello["pid"]), cpu_of(rx.pid)
        tell(srv, "go")
        tell(rx, f"expect {n * clients}")
        report = read_json(rx)["report"]
        cpu, rx_cpu = cpu_of(hello["pid"]) - cpu0, cpu_of(rx.pid) - rx0
        done = read_json(srv)
        if report["events"] != n * clients:
            raise RuntimeError(f"{kind}: {report['events']} of {n * clients} events arrived")
        wall = report["last"] - done["t0"]
        return {
            "deliveries_per_s": round(n * clients / wall),
            "server_cpu_us_per_delivery": round(cpu / (n * clients) * 1e6, 2),
            "server_cpu_percent": round(cpu / wall * 100),
            "receiver_cpu_percent": round(rx_cpu / wall * 100),
            "frames": report["frames"],
            "bytes": report["bytes"],
        }
    finally:
        if rx is not None:
            stop(rx)
        stop(srv)


def steady(
    kind: str, sessions: int, per_sid: int, rate: float, seconds: float, flags: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``sessions`` sessions of ``per_sid`` watchers each, ``rate`` events/s per session, for ``seconds``."""
    args = ["many", "--sessions", str(sessions), "--rate", str(rate), "--seconds", str(seconds)]
    srv = server(kind, *args)
    rx: subprocess.Popen[str] | None = None
    try:
        hello = read_json(srv)
        rx = watchers(hello["url"], f"s:{sessions}", per_sid, *flags)
        read_json(rx)  # every watcher welcomed
        cpu0, rx0 = cpu_of(hello["pid"]), cpu_of(rx.pid)
        tell(rx, "mark")
        tell(srv, "go")
        done = read_json(srv, seconds + GUARD)
        expected = done["written"] * per_sid
        tell(rx, f"expect {expected}")
        report = read_json(rx)["report"]
        cpu, rx_cpu = cpu_of(hello["pid"]) - cpu0, cpu_of(rx.pid) - rx0
        if report["events"] != expected or report["gaps"]:
            raise RuntimeError(f"{kind}: {report['events']} of {expected} events arrived, {report['gaps']} gaps")
        wall = report["last"] - done["t0"]
        return {
            "events_written": done["written"],
            "deliveries": report["events"],
            "latency_p50_ms": round(report["p50_ms"], 3),
            "latency_p99_ms": round(report["p99_ms"], 3),
            "latency_max_ms": round(report["max_ms"], 2),
            "server_cpu_us_per_delivery": round(cpu / max(report["events"], 1) * 1e6, 2),
            "server_cpu_percent": round(cpu / wall * 100),
            "receiver_cpu_percent": round(rx_cpu / wall * 100),
            "frames": report["frames"],
        }
    finally:
        if rx is not None:
            stop(rx)
        stop(srv)


def idle(kind: str, conns: int, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """Server memory per connected client that receives nothing."""
    srv = server(kind, "idle")
    rx: subprocess.Popen[str] | None = None
    try:
        hello = read_json(srv)
        before = rss_kb(hello["pid"])
        rx = watchers(hello["url"], "bench", conns, "--fast", *flags)
        read_json(rx)  # every client welcomed
        after = rss_kb(hello["pid"])
        return {
            "connections": conns,
            "rss_before_kb": before,
            "rss_after_kb": after,
            "kb_per_connection": round((after - before) / conns, 2),
        }
    finally:
        if rx is not None:
            stop(rx)
        stop(srv)


def replay(kind: str, n: int, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """A client resumes after ``n`` missed events: ms from its reconnect to the last of them."""
    if kind == "bare":
        return {}  # a bare server has no replay
    srv = server(kind, "replay", "--n", str(n))
    rx: subprocess.Popen[str] | None = None
    try:
        hello = read_json(srv)
        rx = watchers(hello["url"], "bench", 1, "--replay", "--fast", *flags)  # reads seqs, decodes no event
        read_json(rx)  # welcomed, then gone
        tell(srv, "go")
        read_json(srv)  # the n events are written and stored
        tell(rx, f"resume {n}")
        out = read_json(rx)
        if "replay_ms" not in out:
            raise RuntimeError(f"replay: {out}")
        return {"events": n, "replay_ms": round(out["replay_ms"], 1), "frames": out["frames"]}
    finally:
        if rx is not None:
            stop(rx)
        stop(srv)


def run(a: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    f = ("--deflate",) if a.deflate else ()
    jobs: dict[str, Callable[[str], dict[str, Any]]] = {
        "one": lambda k: burst(k, a.n, 1, f),
        "fanout": lambda k: burst(k, a.fanout_n, a.clients, f),
        "rate": lambda k: steady(k, 1, 1, a.rate, a.rate_seconds, f),
        "many": lambda k: steady(k, a.sessions, a.watchers, a.session_rate, a.seconds, f),
        "idle": lambda k: idle(k, a.idle, f),
        "replay": lambda k: replay(k, a.replay, f),
    }
    results: dict[str, Any] = {"params": {k: v for k, v in vars(a).items() if k != "json"}}
    for w in a.only:
        for kind in kinds(a):
            results[f"{w}.{kind}"] = r = jobs[w](kind)
            if r:
                log(f"{w:7} {kind:8} {json.dumps(r)}")
    return results


def kinds(a: argparse.Namespace) -> tuple[str, ...]:
    """The servers measured: the gateway and bare, and the gateway through ``--front``'s front."""
    return ("gateway", a.front, "bare") if a.front else KINDS


def columns(a: argparse.Namespace) -> tuple[str, ...]:
    """The table's columns (``rows``' tuples, the JSON table's keys)."""
    if a.front:
        f = a.front
        return ("workload", "gateway", f, "bare", "ratio", f"{f}_ratio", f"{f}_vs_gateway")
    return ("workload", "gateway", "bare", "ratio")


def rows(results: dict[str, Any], a: argparse.Namespace) -> list[tuple[str, ...]]:
    """(label, gateway, bare, gateway / bare) for every measured line; with ``--front F``
    (label, gateway, F, bare, gateway / bare, F / bare, F / gateway)."""
    spec = [
        ("one", "deliveries_per_s", f"one client, {a.n:,} events: events/s"),
        ("one", "server_cpu_us_per_delivery", "one client: server CPU µs/event"),
        ("one", "receiver_cpu_percent", "one client: receiver CPU %"),
        ("fanout", "deliveries_per_s", f"fan-out {a.clients} clients x {a.fanout_n:,}: deliveries/s"),
        ("fanout", "server_cpu_us_per_delivery", "fan-out: server CPU µs/delivery"),
        ("fanout", "receiver_cpu_percent", "fan-out: receiver CPU %"),
        ("rate", "latency_p50_ms", f"steady {a.rate:,.0f} events/s: latency p50 ms"),
        ("rate", "latency_p99_ms", "steady: latency p99 ms"),
        ("rate", "server_cpu_us_per_delivery", "steady: server CPU µs/event"),
        ("rate", "receiver_cpu_percent", "steady: receiver CPU %"),
        (
            "many",
            "server_cpu_us_per_delivery",
            f"many {a.sessions} x {a.watchers} at {a.session_rate:g}/s: server CPU µs/delivery",
        ),
        ("many", "latency_p50_ms", "many: latency p50 ms"),
        ("many", "latency_p99_ms", "many: latency p99 ms"),
        ("many", "receiver_cpu_percent", "many: receiver CPU %"),
        ("idle", "kb_per_connection", f"idle {a.idle:,} connections: server kB/connection"),
        ("replay", "replay_ms", f"replay of {a.replay:,} missed events: ms"),
    ]
    out = []
    for w, key, label in spec:
        if w not in a.only:
            continue
        g = results.get(f"{w}.gateway", {}).get(key)
        b = results.get(f"{w}.bare", {}).get(key)
        if a.deflate:
            label += " (deflate)"
        if a.front:
            s = results.get(f"{w}.{a.front}", {}).get(key)
            out.append((label, _num(g), _num(s), _num(b), _ratio(g, b), _ratio(s, b), _ratio(s, g)))
        else:
            out.append((label, _num(g), _num(b), _ratio(g, b)))
    return out


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:,}"


def _ratio(x: Any, y: Any) -> str:
    return f"{x / y:.2f}" if isinstance(x, int | float) and isinstance(y, int | float) and y else "-"


def table(lines: list[tuple[str, ...]], a: argparse.Namespace) -> str:
    if a.front:
        f = {"asgi": "ASGI", "websockets": "websockets front"}[a.front]
        text = [
            f"| workload | gateway | {f} | bare websockets | gateway / bare | {f} / bare | {f} / gateway |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        text = ["| workload | gateway | bare websockets | gateway / bare |", "|---|---:|---:|---:|"]
    text += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(text)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="every workload shrunk to a smoke run of seconds")
    p.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")
    p.add_argument(
        "--front",
        choices=FRONTS,
        default=None,
        help="measure the gateway with this front too: websockets (its server alone), "
        "asgi (through gw.asgi() under uvicorn)",
    )
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads to run")
    p.add_argument("--n", type=int, default=100_000, help="events to one client (one)")
    p.add_argument("--fanout-n", type=int, default=10_000, help="events to the fan-out clients")
    p.add_argument("--clients", type=int, default=100, help="fan-out clients")
    p.add_argument("--rate", type=float, default=2_000, help="events/s of the steady workload")
    p.add_argument("--rate-seconds", type=float, default=10)
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--watchers", type=int, default=2, help="watchers per session (many)")
    p.add_argument("--session-rate", type=float, default=10, help="events/s per session (many)")
    p.add_argument("--seconds", type=float, default=15, help="length of the many workload")
    p.add_argument("--idle", type=int, default=2_000, help="idle connections")
    p.add_argument("--replay", type=int, default=10_000, help="missed events to replay")
    p.add_argument("--json", help="also write the results (and the table's rows) to this file")
    a = p.parse_args()
    if a.quick:
        p.set_defaults(**QUICK)
        a = p.parse_args()  # the quick sizes, and any size given on the command line over them
    a.only = [w for w in a.only.split(",") if w]
    unknown = set(a.only) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}: pick from {', '.join(WORKLOADS)}")
    if shutil.which("node") is None or not (ROOT / "clients" / "js" / "node_modules" / "ws").is_dir():
        sys.exit("python -m bench needs node and the JS client's packages (./run bench installs them)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the idle clients' sockets, inherited by the children
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * a.idle + 1024)), hard))
    results = run(a, lambda s: print(s, flush=True))
    lines = rows(results, a)
    print()
    print(table(lines, a))
    if a.json:
        results["table"] = [dict(zip(columns(a), line, strict=True)) for line in lines]
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
