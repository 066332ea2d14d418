"""The ``wirepipe`` command: help, refusals, and a real serve + watch round trip.

Subprocesses run the installed ``wirepipe`` script (or ``python -m
gateway.cli`` when it is missing) from the repository root; each one is
killed in a ``finally`` so a failing test leaves nothing behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from asyncio.subprocess import PIPE, Process
from pathlib import Path
from typing import Any

import pytest
from support import TIMEOUT

from gateway.cli import EXIT_CANNOT_BIND, PER_REQUEST_LOGGERS, main

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).parent / "wirepipe"
WIREPIPE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gateway.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WIREPIPE_SECRET", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def spawn(*args: str, stdin: int | None = None) -> Process:
    return await asyncio.create_subprocess_exec(
        *WIREPIPE, *args, stdin=stdin, stdout=PIPE, stderr=PIPE, cwd=ROOT, env=_env()
    )


async def reap(*procs: Process | None) -> None:
    """Kill whatever is still running, and wait for it."""
    for p in procs:
        if p is not None and p.returncode is None:
            p.kill()
            await p.wait()


async def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``wirepipe args`` to completion (bounded by TIMEOUT)."""
    p = await spawn(*args, stdin=PIPE if stdin is not None else None)
    try:
        out, err = await asyncio.wait_for(p.communicate(stdin), TIMEOUT)
    finally:
        await reap(p)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[Any, str, str]:
    """``gateway.cli.main(argv)`` in-process; returns (exit code, stdout, stderr).

    ``main`` sets the levels of loggers (``_setup_logging``: websockets' and
    uvicorn's per-request ones quieted above DEBUG), as a command does for its
    process; they are put back, so that later tests in this process hear them.
    """
    touched = [logging.getLogger(name) for name in (*PER_REQUEST_LOGGERS, "traitlets")]
    levels = [lg.level for lg in touched]
    try:
        with pytest.raises(SystemExit) as exc:
            main(argv)
    finally:
        for lg, level in zip(touched, levels, strict=True):
            lg.setLevel(level)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


# --- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--help"], ["serve", "demo", "watch"]),
        (["serve", "--help"], ["--port", "--secret", "--app", "--retain-events"]),
        (["demo", "--help"], ["--port", "--host"]),
        (["watch", "--help"], ["--sid", "--start", "--input", "--no-input", "--json", "--log-level", "--retries"]),
        (["worker", "--help"], ["--redis", "--app", "--concurrency", "--claim-idle", "--lease-ttl"]),
    ],
)
def test_help_exits_0(argv: list[str], expect: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(argv, capsys)
    assert code == 0
    assert out.startswith("usage: wirepipe")
    for flag in expect:
        assert flag in out


async def test_installed_script_help() -> None:
    code, out, err = await run("--help")
    assert code == 0, err
    assert "usage: wirepipe" in out and "watch" in out


def test_no_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main([], capsys)
    assert code == 2 and "usage: wirepipe" in err


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["worker", "--app", "a=json:dumps"], "--redis URL is required"),
        (["worker", "--redis", "redis://127.0.0.1:1/0"], "at least one --app"),
    ],
)
def test_a_worker_without_redis_or_apps_is_a_clear_error(
    argv: list[str], why: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WIREPIPE_REDIS", raising=False)
    code, _, err = run_main(argv, capsys)
    assert code == 2 and why in err


async def test_serve_on_a_public_address_needs_a_secret() -> None:
    code, out, err = await run("serve", "--host", "0.0.0.0", "--port", "0")
    assert code != 0
    assert "refusing to bind 0.0.0.0 without --secret" in err
    assert "Traceback" not in err
    assert "serving" not in out  # it exited before binding anything


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("nonsense", "--app takes NAME=module:callable"),
        ("=gateway.integrations.demo:app", "--app takes NAME=module:callable"),
        ("demo=gateway.integrations.demo", "--app takes NAME=module:callable"),
        ("demo=no_such_module_for_wirepipe:app", "cannot load app"),
        ("demo=gateway.integrations.demo:no_such_attr", "cannot load app"),
    ],
)
def test_bad_app_spec_is_a_clear_error(spec: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["serve", "--port", "0", "--app", spec], capsys)
    assert code == 2
    assert "argument --app" in err and why in err
    assert "serving" not in out


# --- serve + watch ------------------------------------------------------------------------------


async def start_server() -> tuple[Process, str]:
    server = await spawn("serve", "--port", "0", "--app", "demo=gateway.integrations.demo:app")
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), TIMEOUT)).decode()
        m = re.search(r"(ws://127\.0\.0\.1:\d+/)", line)
        assert m, f"no ws:// URL in the first line: {line!r}"
    except BaseException:
        await reap(server)
        raise
    return server, m.group(1)


async def stop_server(server: Process) -> tuple[int, str, str]:
    server.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(server.communicate(), TIMEOUT)
    assert server.returncode is not None
    return server.returncode, out.decode(), err.decode()


async def test_serve_and_watch_a_demo_run() -> None:
    server = watch = None
    try:
        server, url = await start_server()
        watch = await spawn(
            "watch",
            url,
            "--sid",
            "s1",
            "--start",
            "demo",
            "--input",
            json.dumps({"steps": 1, "delay": 0}),
            stdin=PIPE,
        )
        out_b, err_b = await asyncio.wait_for(watch.communicate(b"1\n"), TIMEOUT)
        out, err = out_b.decode(), err_b.decode()
        assert watch.returncode == 0, err
        assert out.startswith("wirepipe watch session s1 at ws://127.0.0.1:")
        assert "grant operator" in out
        assert "Plan: Summarise a small data set" in out
        assert re.search(r"1\s+· pending\s+Step 1: load the data", out)  # the plan as it came
        assert "? Ship the result?" in out
        assert "[1] yes   [2] no (default)" in out
        assert "✓ answer: yes (by client)" in out
        assert "The human said 'yes'." in out
        assert "● status: done" in out
        result = out[out.index("Result") :]
        assert "Run done" in result and re.search(r"1\s+✓ done\s+Step 1: load the data\s+step 1 ok", result)
        assert '{"' not in out  # no event as a JSON blob
        # the order a human reads it in
        assert out.index("Plan:") < out.index("? Ship") < out.index("✓ answer") < out.index("status: done")

        code, rest, server_err = await stop_server(server)
        assert code == 0, server_err
        assert "shutting down" in rest
    finally:
        await reap(watch, server)


async def test_watch_a_refused_start_is_a_clear_error() -> None:
    server = None
    try:
        server, url = await start_server()
        code, out, err = await run("watch", url, "--sid", "s2", "--start", "no-such-app")
        assert code == 4  # refused by the gateway (1 is a run that ended failed)
        assert "no_app" in err and "Traceback" not in err
        code, _, server_err = await stop_server(server)
        assert code == 0, server_err
    finally:
        await reap(server)


def test_every_config_knob_has_a_serve_flag() -> None:
    """Config's docstring promises it; a knob added without a flag fails here."""
    import dataclasses

    from gateway.config import Config

    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    spelled = {
        "compression": "--no-compression",
        "serve_ui": "--no-ui",
        "wait_for_run": "--no-wait-for-run",
        "default_grant": "--insecure",
        "allow_origins": "--allow-origin",
        "allow_hosts": "--allow-host",
    }
    missing = [
        f.name for f in dataclasses.fields(Config) if spelled.get(f.name, "--" + f.name.replace("_", "-")) not in out
    ]
    assert missing == []


def test_serve_flags_reach_the_config() -> None:
    from gateway.cli import _add_server_args, _gateway

    parser = argparse.ArgumentParser()
    _add_server_args(parser, 8765)
    args = parser.parse_args(
        [
            "--rate",
            "5",
            "--burst",
            "9",
            "--stall-timeout",
            "3",
            "--no-wait-for-run",
            "--token-ttl",
            "60",
            "--batch-max",
            "10",
            "--close-timeout",
            "1",
            "--write-limit",
            "4096",
            "--rate-strikes",
            "2",
            "--front",
            "websockets",
        ]
    )
    cfg = _gateway(args).config
    assert cfg.front == "websockets"
    assert _gateway(parser.parse_args([])).config.front == "uvicorn"
    assert (
        cfg.rate,
        cfg.burst,
        cfg.stall_timeout,
        cfg.wait_for_run,
        cfg.token_ttl,
        cfg.batch_max,
        cfg.close_timeout,
        cfg.write_limit,
        cfg.rate_strikes,
    ) == (5, 9, 3, False, 60, 10, 1, 4096, 2)


def test_the_wirepipe_command_finds_modules_of_the_current_directory(tmp_path: Path) -> None:
    """As ``python -m`` does: the README's ``--app mine=my_module:my_app`` names a file in ``.``."""
    script = Path(sys.executable).parent / "wirepipe"
    assert script.is_file(), f"{script} is missing: the package is not installed in this venv"
    (tmp_path / "my_policies.py").write_text("from gateway import Middleware\n\nclass Quiet(Middleware):\n    pass\n")
    (tmp_path / "my_module.py").write_text("async def my_app(pipe, input):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [str(script), "serve", "--middleware", "my_policies:Quiet", "--app", "mine=my_module:my_app", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_redis_cluster_flag_makes_a_cluster_store() -> None:
    """``--redis-cluster URL``: a RedisStore on a cluster client (it connects on first use)."""
    from gateway.cli import _add_server_args, _gateway
    from gateway.stores.redis import RedisStore

    parser = argparse.ArgumentParser()
    _add_server_args(parser, 8765)
    store = _gateway(parser.parse_args(["--redis-cluster", "redis://127.0.0.1:7000", "--lease-ttl", "3"])).store
    assert isinstance(store, RedisStore) and store.cluster and store.lease_ttl == 3
    single = _gateway(parser.parse_args(["--redis", "redis://127.0.0.1:6379/0"])).store
    assert isinstance(single, RedisStore) and not single.cluster
    with pytest.raises(SystemExit, match="exclude each other"):
        _gateway(parser.parse_args(["--redis", "redis://127.0.0.1:6379/0", "--redis-cluster", "redis://h:7000"]))


def test_tune_gc_freezes_startup_objects_and_raises_the_thresholds() -> None:
    """What ``wirepipe serve`` and ``wirepipe worker`` do once they listen (in a process of its own)."""
    import subprocess
    import sys

    code = "import gc; from gateway.server import tune_gc, GC_THRESHOLDS; tune_gc(); "
    code += "print(gc.get_threshold() == GC_THRESHOLDS, gc.get_freeze_count() > 0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_load_app_finds_a_module_of_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever calls the parser (not only ``main``): the working directory is on the path, as in uvicorn."""
    from gateway.cli import _load_app, _load_middleware

    (tmp_path / "wp_cwd_module.py").write_text(
        "async def app(pipe, input):\n    pass\n\nclass Policy:\n    def on_event(self, ev):\n        return ev\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "wp_cwd_module", raising=False)
    name, app = _load_app("di=wp_cwd_module:app")
    assert name == "di" and app.__module__ == "wp_cwd_module"
    assert type(_load_middleware("wp_cwd_module:Policy")).__name__ == "Policy"


# --- what the terminal shows --------------------------------------------------------------------


async def test_the_log_at_info_is_one_line_per_run_and_none_per_request() -> None:
    """Pages, the JS client and a run: the gateway's stderr says the run started and ended, nothing else."""
    server = None
    try:
        server, url = await start_server()
        port = int(url.rsplit(":", 1)[1].strip("/"))
        for path in ("/", "/app.js", "/client/wirepipe.js", "/vendor/msgpack/index.mjs", "/healthz", "/nope"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            status = (await asyncio.wait_for(reader.readline(), TIMEOUT)).decode()
            assert status.split()[1] in ("200", "404"), status
            await reader.read()
            writer.close()
        code, out, err = await run(
            "watch", url, "--sid", "r1", "--start", "demo", "--input", '{"steps": 1, "delay": 0}', stdin=b"1\n"
        )
        assert code == 0, err
        code, _, server_err = await stop_server(server)
        assert code == 0, server_err
    finally:
        await reap(server)
    lines = [line.split(" ", 1)[1] for line in server_err.splitlines()]  # without the time
    assert len(lines) == 2, server_err
    assert lines[0] == "INFO wirepipe: run r1 started: app demo"
    assert lines[1].startswith("INFO wirepipe: run r1 ended done after "), server_err


# --- where it cannot listen -----------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["serve", "demo"])
async def test_a_port_in_use_is_one_line_with_the_fix(cmd: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run(cmd, "--port", str(port))
    assert code == EXIT_CANNOT_BIND == 2
    assert err.splitlines() == [
        f"wirepipe {cmd}: port {port} is in use on 127.0.0.1: pass --port 0 (any free port) or another port"
    ]
    assert "serving" not in out


async def test_an_address_not_of_this_machine_is_one_line_with_the_fix() -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine.
    code, out, err = await run("serve", "--host", "192.0.2.1", "--secret", "s", "--operator-token", "t")
    assert code == 2
    assert err.splitlines() == [
        "wirepipe serve: cannot listen on 192.0.2.1:8765: 192.0.2.1 is not an address of this machine; "
        "pass --host 127.0.0.1, or --host 0.0.0.0 for every interface"
    ]
    assert "serving" not in out


@pytest.mark.parametrize("port", ["70000", "-1", "eighty"])
def test_an_invalid_port_is_a_usage_error(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["serve", "--port", port], capsys)
    assert code == 2
    assert err.splitlines()[-1].startswith("wirepipe serve: error: argument --port: ")
    assert "Traceback" not in err and "serving" not in out


async def test_the_demo_banner_prints_a_watch_command_that_runs_from_this_shell(tmp_path: Path) -> None:
    """``./run demo`` activates no venv: the banner's ``watch`` command names this wirepipe by its path."""
    venv_bin = str(Path(sys.executable).parent)
    env = _env()
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    server = await asyncio.create_subprocess_exec(
        *WIREPIPE, "demo", "--port", "0", stdout=PIPE, stderr=PIPE, cwd=tmp_path, env=env
    )
    try:
        assert server.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("or run "):
            line = (await asyncio.wait_for(server.stdout.readline(), TIMEOUT)).decode()
            assert line, f"no watch command in {lines}"
            lines.append(line)
        command = lines[-1].removeprefix("or run ").split()
        url = re.search(r"ws://\S+", lines[0])
        assert url is not None, lines
        assert command[command.index("watch") + 1 :][:3] == [url.group(0), "--sid", "demo-1"]
        prog = command[: command.index("watch")]
        done = await asyncio.create_subprocess_exec(*prog, "watch", "--help", stdout=PIPE, cwd=tmp_path, env=env)
        out, _ = await asyncio.wait_for(done.communicate(), TIMEOUT)
        assert done.returncode == 0 and b"usage: wirepipe watch" in out
    finally:
        await reap(server)
