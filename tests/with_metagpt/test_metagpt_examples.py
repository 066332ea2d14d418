"""Each example runs offline, as a user would run it, and ends well."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.metagpt,
    pytest.mark.usefixtures("require_metagpt"),
    # MetaGPT 0.8.2 on pydantic 2.14 and google-generativeai: their warnings, not ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, root: Path) -> str:
    """Run ``examples/<name>`` to its end (bounded); returns its stdout."""
    env = dict(os.environ, METAGPT_PROJECT_ROOT=str(root))
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and any kernel it started
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    assert not orphan_kernels(root)
    return out


def orphan_kernels(root: Path) -> list[object]:
    """Jupyter kernels started by an example (they inherit its METAGPT_PROJECT_ROOT) still alive."""
    import psutil  # installed with MetaGPT (requirements/metagpt-lock.txt)

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel" in " ".join(p.info["cmdline"] or []) and (
                p.environ().get("METAGPT_PROJECT_ROOT") == str(root)
            ):
                found.append(p)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(found, timeout=15)
    for p in alive:
        p.kill()
    return list(alive)


def test_queue_relay(tmp_path: Path) -> None:
    out = run_example("queue_relay.py", "--delay", "0", root=tmp_path)
    assert "gap-free True" in out and "status done" in out


def test_log_redirect(tmp_path: Path) -> None:
    out = run_example("log_redirect.py", "--level", "DEBUG", root=tmp_path)
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("log_redirect: 1 text streams") and summary.endswith("status done")
    assert "[DEBUG]" in out and "[text stream " in out


def test_pipe_agent(tmp_path: Path) -> None:
    out = run_example("pipe_agent.py", "--delay", "0", root=tmp_path)
    assert "tasks {'1': 'done', '2': 'done', '3': 'done'}, status done" in out


def test_human_confirm(tmp_path: Path) -> None:
    change = "change task 2: also count the letters"
    out = run_example("human_confirm.py", "--delay", "0", "--answer", change, root=tmp_path)
    assert "proposed plan" in out and f"[stdout] reviewer: {change}" in out
    assert out.strip().splitlines()[-1] == "human_confirm: 5 reviews, status done"


DOCS = {"README.md": "## MetaGPT", "docs/metagpt.md": "## The adapter"}

SERVE_SNIPPET = """
import asyncio, sys
from gateway import Gateway, MemoryStore
from gateway.client import Client

import snippet  # the user's module: the documentation's code, as is

async def main():
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore(),
                       apps={"di": snippet.app}) as gw:
        start = {"app": "di", "input": "Count the words of this short sentence"}
        async with Client(gw.url, "doc-1", start=start) as c:
            async for ev in c:
                if ev.k == "ask":
                    await c.reply(ev.d["id"], "confirm")
                if ev.k == "code":
                    print("code", ev.d["task"], flush=True)
                if ev.k == "status" and ev.d["state"] in ("done", "failed", "cancelled"):
                    print("status", ev.d["state"], ev.d.get("detail", ""), flush=True)
                    return

asyncio.run(main())
"""


def python_block(doc: str, section: str) -> str:
    """The first ```python block after ``section`` in ``doc``, as it is written there."""
    text = (EXAMPLES.parent / doc).read_text()
    after = text[text.index(section) :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_the_documented_snippet_runs_on_a_fresh_machine(doc: str, tmp_path: Path) -> None:
    """No MetaGPT config anywhere, no root set: the snippet must import and run as written."""
    code = python_block(doc, DOCS[doc])
    assert "from gateway.integrations.metagpt import attach" in code
    (tmp_path / "snippet.py").write_text(code)
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("METAGPT_PROJECT_ROOT", "WIREPIPE_METAGPT_ROOT")}
    env.update(
        HOME=str(tmp_path / "home"),
        TMPDIR=str(tmp_path / "tmp"),
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(EXAMPLES.parent)]),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SNIPPET],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    assert out.strip().splitlines()[-1] == "status done", out
    assert "code 3" in out  # the DataInterpreter really ran the plan's last task
    root = tmp_path / "tmp" / f"wirepipe-metagpt-{os.getuid()}"
    assert (root / "config" / "config2.yaml").exists()  # prepare() wrote the offline config
    assert not orphan_kernels(root)
