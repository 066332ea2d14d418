"""What ``wirepipe demo`` shows while a real MetaGPT run goes: the gateway's lines, nothing of MetaGPT's.

A fresh machine (no MetaGPT config, no root set: ``HOME`` and ``TMPDIR`` of
the test's own) runs ``wirepipe demo`` at the default log level; a client
starts a DataInterpreter run with ``llm: "config"``.  The run's status says
that MetaGPT is loading and that no LLM is configured; the terminal gets
one line per run started and ended and the line that says where MetaGPT's
own output went, and nothing else: no loguru lines, no cell output printed by
MetaGPT, no kernel warnings, no import warnings.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest

from gateway.client import Client
from gateway.integrations.metagpt.apps import LOADING_DETAIL, NO_LLM_CONFIGURED

pytestmark = [pytest.mark.metagpt, pytest.mark.usefixtures("require_metagpt")]

_SCRIPT = Path(sys.executable).parent / "wirepipe"
WIREPIPE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gateway.cli"]
#: A line of the gateway's own log (``gateway/cli.py`` ``_setup_logging``).
GATEWAY_LINE = re.compile(r"\d\d:\d\d:\d\d (INFO|WARNING) wirepipe(\.[a-z]+)*: ")


async def test_demo_keeps_metagpt_off_the_terminal_and_says_what_it_does(tmp_path: Path) -> None:
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("METAGPT_PROJECT_ROOT", "WIREPIPE_METAGPT_ROOT")}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), PYTHONUNBUFFERED="1")
    env.pop("WIREPIPE_SECRET", None)
    proc = await asyncio.create_subprocess_exec(
        *WIREPIPE, "demo", "--port", "0", stdout=PIPE, stderr=PIPE, env=env, cwd=tmp_path, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        m = re.search(r"(ws://127\.0\.0\.1:\d+/)", first)
        assert m, first
        start = {"app": "data_interpreter", "input": {"review": False, "llm": "config", "delay": 0}}
        statuses: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        async with Client(m.group(1), "t1", start=start) as c:
            async for ev in c:
                if ev.k == "status":
                    statuses.append(ev.d)
                    if ev.d["state"] in ("done", "failed", "cancelled"):
                        break
                if ev.k == "log":
                    logs.append(ev.d)
        proc.send_signal(signal.SIGTERM)
        out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the gateway and any kernel it started
            await proc.wait()
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err

    details = [d.get("detail", "") for d in statuses]
    assert statuses[-1]["state"] == "done", statuses
    assert details[:2] == ["", LOADING_DETAIL], details  # the import shows while it takes its seconds
    assert details[2].startswith("MetaGPT loaded in "), details
    assert NO_LLM_CONFIGURED in details
    assert {"level": "WARNING", "msg": NO_LLM_CONFIGURED, "logger": "wirepipe"} in logs

    # The terminal: the banner, then the gateway's own lines, each one line.
    assert out.splitlines()[-1] == "wirepipe: shutting down", out
    assert "63 characters" not in out + err  # what the DataInterpreter's cells printed
    lines = err.splitlines()
    assert all(GATEWAY_LINE.match(line) for line in lines), err
    root = tmp_path / "tmp" / f"wirepipe-metagpt-{os.getuid()}"
    run_lines = [line.split(" ", 1)[1] for line in lines if "run t1" in line]
    assert run_lines[:2] == [
        "INFO wirepipe: run t1 started: app data_interpreter",
        f"WARNING wirepipe.metagpt: run t1: {NO_LLM_CONFIGURED}",
    ]
    assert len(run_lines) == 3 and run_lines[2].startswith("INFO wirepipe: run t1 ended done after "), run_lines
    (loaded,) = [line for line in lines if "MetaGPT loaded in" in line]
    assert f"its log files: {root / 'logs'} (not the terminal: --log-level DEBUG shows it here)" in loaded
    # ... where it went instead
    assert "ready to take on task" in "".join(p.read_text() for p in (root / "logs").glob("2*.txt"))
    assert (root / "logs" / "kernels.log").is_file()  # the kernel's own stdout and stderr
