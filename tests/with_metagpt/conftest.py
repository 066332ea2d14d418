"""Fixtures for the MetaGPT tests (marker ``metagpt``): real MetaGPT 0.8.2, offline.

MetaGPT is imported once per process, with its root (logs, workspace) in a
temporary directory; every LLM is the scripted one of ``gateway.integrations.metagpt.offline_llm``.
Runs go through a real gateway on a loopback port and the real Python client.
After each test, every process the test started (Jupyter kernels, example
scripts) must be gone: the check waits on their exit, never on a clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import missing

from gateway.integrations.metagpt import available


@pytest.fixture(scope="session")
def require_metagpt() -> None:
    """Skip without MetaGPT (fail when ``CI`` is set: ``./run test`` installs it)."""
    # Not find_spec("metagpt"): a folder named metagpt on sys.path would pass it
    # (this folder used to be tests/metagpt, and pytest puts tests/ on sys.path).
    if not available():  # pragma: no cover - without MetaGPT
        missing("MetaGPT is not installed", "scripts/bootstrap.sh --metagpt")


@pytest.fixture(scope="session")
def metagpt_root(require_metagpt: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """MetaGPT imported, rooted in a scratch directory, hooks installed."""
    from gateway.integrations.metagpt import prepare

    return prepare(tmp_path_factory.mktemp("metagpt-root"))


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Any:
    """Fail a test that leaves a child process (a Jupyter kernel) behind."""
    if not available():  # without MetaGPT no test here starts a process to leave behind
        yield
        return
    import psutil  # installed with MetaGPT (requirements/metagpt-lock.txt)

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    new = [p for p in me.children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(new, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, f"processes left running: {alive}"


@pytest.fixture
async def gw(metagpt_root: Any) -> AsyncIterator[Any]:
    from gateway import Gateway, MemoryStore
    from gateway.config import App
    from gateway.integrations.metagpt.apps import data_interpreter, team

    apps: dict[str, App] = {"data_interpreter": data_interpreter, "team": team}
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore(), apps=apps) as g:
        yield g
