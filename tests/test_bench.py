"""``python -m bench --quick`` end to end: every workload runs for the gateway and the bare baseline.

A smoke run of a few seconds (marked ``bench``: ``-m "not bench"`` leaves it
out): it starts the gateway and the bare ``websockets`` server in processes
of their own and the Node clients, and checks that the table has every row,
with a number on both sides (the replay on the gateway's only) and a ratio.
It says nothing about speed: numbers from a loaded machine are not asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import TIMEOUT, missing

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    "one client, 5,000 events: events/s",
    "one client: server CPU µs/event",
    "one client: receiver CPU %",
    "fan-out 10 clients x 500: deliveries/s",
    "fan-out: server CPU µs/delivery",
    "fan-out: receiver CPU %",
    "steady 500 events/s: latency p50 ms",
    "steady: latency p99 ms",
    "steady: server CPU µs/event",
    "steady: receiver CPU %",
    "many 20 x 2 at 10/s: server CPU µs/delivery",
    "many: latency p50 ms",
    "many: latency p99 ms",
    "many: receiver CPU %",
    "idle 100 connections: server kB/connection",
    "replay of 500 missed events: ms",
]


@pytest.mark.bench
@pytest.mark.timeout(int(30 * TIMEOUT) + 30)
def test_quick_bench_prints_every_row(tmp_path: Path) -> None:
    if shutil.which("node") is None or not (ROOT / "clients" / "js" / "node_modules" / "ws").is_dir():
        missing("node and the JS client's packages", "scripts/bootstrap.sh --node")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * TIMEOUT,  # a failure guard: the run takes seconds
    )
    assert proc.returncode == 0, proc.stderr
    printed = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    table = json.loads(out.read_text())["table"]
    assert [row["workload"] for row in table] == ROWS
    assert len(printed) == len(ROWS) + 1  # and the header
    for row, line in zip(table, printed[1:], strict=True):
        assert line.startswith(f"| {row['workload']} | {row['gateway']} | {row['bare']} | {row['ratio']} |")
        float(row["gateway"].replace(",", ""))
        if row["workload"].startswith("replay"):
            assert (row["bare"], row["ratio"]) == ("-", "-")  # bare has no replay
        else:
            float(row["bare"].replace(",", ""))
            float(row["ratio"])


@pytest.mark.bench
@pytest.mark.timeout(int(30 * TIMEOUT) + 30)
def test_quick_bench_with_deflate_measures_idle_clients_that_negotiated_compression(tmp_path: Path) -> None:
    if shutil.which("node") is None or not (ROOT / "clients" / "js" / "node_modules" / "ws").is_dir():
        missing("node and the JS client's packages", "scripts/bootstrap.sh --node")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--deflate", "--only", "idle", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["table"]
    assert row["workload"] == "idle 100 connections: server kB/connection (deflate)"
    float(row["gateway"].replace(",", ""))
    float(row["bare"].replace(",", ""))


@pytest.mark.bench
@pytest.mark.timeout(int(30 * TIMEOUT) + 30)
@pytest.mark.parametrize(("front", "title"), [("asgi", "ASGI"), ("websockets", "websockets front")])
def test_quick_bench_measures_another_front_beside_the_gateway_and_bare(tmp_path: Path, front: str, title: str) -> None:
    if shutil.which("node") is None or not (ROOT / "clients" / "js" / "node_modules" / "ws").is_dir():
        missing("node and the JS client's packages", "scripts/bootstrap.sh --node")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--front", front, "--only", "one,idle,replay", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    table = json.loads(out.read_text())["table"]
    assert [row["workload"] for row in table] == [ROWS[0], ROWS[1], ROWS[2], ROWS[14], ROWS[15]]
    printed = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert f"| gateway | {title} |" in printed[0] and f"{title} / gateway" in printed[0]
    for row in table:
        for key in ("gateway", front):
            float(row[key].replace(",", ""))
        if row["workload"].startswith("replay"):
            assert (row["bare"], row["ratio"], row[f"{front}_ratio"]) == ("-", "-", "-")
        else:
            float(row["bare"].replace(",", ""))
            float(row[f"{front}_ratio"])
        if float(row["gateway"].replace(",", "")):  # a smoke run's 0 (receiver CPU %) has no ratio
            float(row[f"{front}_vs_gateway"])


@pytest.mark.bench
@pytest.mark.timeout(int(30 * TIMEOUT) + 30)
@pytest.mark.parametrize(
    "args",
    [
        ["many", "--server", "gateway", "--sessions", "5", "--n", "300"],
        ["many", "--server", "bare", "--sessions", "5", "--n", "300"],
        ["pipe", "--kind", "plan", "--n", "300"],
        ["pipe", "--kind", "text", "--n", "300", "--loop"],
    ],
)
def test_the_counted_workloads_run_and_deliver_everything(args: list[str]) -> None:
    """``python -m bench.instr run ...``: the workload callgrind counts, once, without it (it raises on a loss)."""
    if args[0] == "many" and (
        shutil.which("node") is None or not (ROOT / "clients" / "js" / "node_modules" / "ws").is_dir()
    ):
        missing("node and the JS client's packages", "scripts/bootstrap.sh --node")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.instr", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.bench
@pytest.mark.timeout(int(60 * TIMEOUT) + 60)
def test_instructions_per_event_are_counted_under_callgrind() -> None:
    if shutil.which("valgrind") is None:  # a tool for measuring, not one the project needs
        pytest.skip("valgrind is not installed (apt-get install valgrind)")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.instr", "pipe", "--kind", "text", "--n", "2000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60 * TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ir_total"] > out["ir_baseline"] > 0 and out["ir_per_set_message"] > 0
