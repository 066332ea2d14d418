"""The notebook widget in a real JupyterLab and Notebook 7, in Debian's chromium.

A real Jupyter server (``python -m jupyterlab``: loopback, ``--no-browser``,
token auth, port 0, a temporary root and Jupyter dirs, killed at teardown)
runs a real ipykernel; a real gateway (in the test's loop, letting Jupyter's
origin in) runs the demo agent, which asks a question.  The notebook's cell
calls ``watch(..., auth=..., start=...)``; the widget's view gets the
operator's credential from the kernel, shows the run, the test clicks the
ask's answer in the widget, and the run ends done, in the widget and in the
kernel (a second cell prints what ``w.wait()`` returned).

Screenshots of the widget land in tests/e2e/artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from playwright.async_api import expect
from support import MS, TIMEOUT

from gateway import Gateway, MemoryStore
from gateway.integrations.demo import app as demo_app

pytestmark = [pytest.mark.browser, pytest.mark.timeout(int(300 * MS * 1000))]

ROOT = Path(__file__).resolve().parents[2]
#: Jupyter's own bundles: Notebook 7 (7.6) raises now and then while it loads
#: ("reading 'schema'"), widget or not; an exception of the widget's code has its own frame on top.
JUPYTER_OWN = re.compile(r"/static/(notebook|lab)/[\w.-]+\.js")
#: JupyterLab's first load (a few MB of JavaScript) on a loaded 2-core machine.
LOAD_MS = 80_000 * MS * 1000


@dataclass
class Jupyter:
    """A running Jupyter server: its URL, token and notebook folder."""

    #: "lab" (JupyterLab, ``python -m jupyterlab``) or "notebook7" (``python -m notebook``).
    ui: str
    url: str
    token: str
    root: Path
    output: deque[str]

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")


@pytest.fixture(scope="module", params=["lab", "notebook7"])
def jupyter(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """JupyterLab or Notebook 7 on 127.0.0.1, port 0, with a token, in temporary dirs; stopped at teardown.

    Each UI from its own server command, as its users start it (Notebook 7's
    pages served by ``jupyter lab`` raise errors of their own).
    """
    ui: str = request.param
    base = tmp_path_factory.mktemp("jupyter")
    dirs = {name: base / name for name in ("root", "config", "data", "runtime", "settings", "workspaces", "ipython")}
    for d in dirs.values():
        d.mkdir()
    if ui == "lab":  # no news toast over the notebook (Notebook 7 has no such plugin, nor its settings)
        notes = dirs["settings"] / "@jupyterlab" / "apputils-extension"
        notes.mkdir(parents=True)
        (notes / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab" if ui == "lab" else "notebook",
            "--no-browser",
            "--allow-root",  # CI runs as root
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={dirs['root']}",
            "--LabApp.extension_manager=readonly",  # never asks a package index
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    output: deque[str] = deque(maxlen=400)
    url = ""
    try:
        # The server says where it listens; a server that dies says why.
        for line in proc.stdout:
            output.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+/)(?:lab|tree)\?token=", line)
            if found:
                url = found.group(1)
                break
        if not url:
            pytest.fail(f"the Jupyter server ({ui}) did not start:\n" + "".join(output))
        # Keep reading, so the server never blocks on a full pipe.
        threading.Thread(target=lambda: output.extend(proc.stdout or ()), daemon=True).start()
        yield Jupyter(ui, url, token, dirs["root"], output)
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: The operator's credential: without it a connection is a viewer (it cannot answer).
OPERATOR = "op-" + secrets.token_hex(8)


@pytest.fixture
async def gw(jupyter: Jupyter) -> AsyncIterator[Gateway]:
    """A gateway on loopback with the demo agent, that lets Jupyter's pages in; operators need ``OPERATOR``."""

    def auth(credential: str | None, sid: str) -> str:
        return "operator" if credential == OPERATOR else "viewer"

    async with Gateway(
        host="127.0.0.1",
        port=0,
        store=MemoryStore(),
        apps={"demo": demo_app},
        auth=auth,
        allow_origins=[jupyter.origin],
    ) as gw:
        yield gw


def write_notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


def notebook_url(jupyter: Jupyter, name: str) -> str:
    """The URL that opens notebook ``name``; in JupyterLab with a fresh workspace (no tabs of earlier tests)."""
    if jupyter.ui == "lab":
        return f"{jupyter.url}lab/tree/{name}?reset&token={jupyter.token}"
    return f"{jupyter.url}notebooks/{name}?token={jupyter.token}"


def notebook_panel(page: Any) -> Any:
    """The notebook on screen (JupyterLab keeps other tabs in the page, hidden)."""
    return page.locator(".jp-NotebookPanel:visible")


async def kernel_ready(page: Any) -> None:
    """Until the notebook takes input: its session has a kernel, connected and idle.

    A cell run while the session has no kernel yet is dropped; the toolbar
    names the kernel from the moment the session has one (before that it
    says "No Kernel"), and the execution indicator is idle once it is connected.
    """
    panel = notebook_panel(page)
    await expect(panel.locator(".jp-ToolbarButtonComponent-label", has_text="Python 3 (ipykernel)")).to_be_visible(
        timeout=LOAD_MS
    )
    await expect(panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_visible()


async def run_cell(page: Any, index: int) -> None:
    """Run the notebook's cell ``index`` as a person would: click into it, Shift+Enter."""
    editor = notebook_panel(page).locator(".jp-Cell").nth(index).locator(".cm-content")
    await editor.click()
    await page.keyboard.press("Shift+Enter")


async def test_the_widget_shows_a_run_and_answers_its_ask(
    jupyter: Jupyter, gw: Gateway, open_page: Any, artifacts: Path
) -> None:
    ui = jupyter.ui
    sid = f"nb-{ui}"
    name = f"watch-{ui}.ipynb"
    write_notebook(
        jupyter.root / name,
        "from gateway.notebook import watch\n"
        f"w = watch({gw.url!r}, {sid!r}, auth={OPERATOR!r},\n"
        "          start={'app': 'demo', 'input': {'steps': 2, 'delay': 0}})\n"
        "w",
        "print('kernel:', await w.wait(), [t['status'] for t in w.plan['tasks']])",
    )
    page = await open_page(
        notebook_url(jupyter, name),
        viewport={"width": 1366, "height": 900},
        foreign=JUPYTER_OWN,
    )
    await kernel_ready(page)
    await run_cell(page, 0)

    widget = notebook_panel(page).locator(".wp")  # in the widget's shadow root (Playwright's CSS pierces it)
    await expect(widget).to_have_attribute("data-conn", "open", timeout=LOAD_MS)
    # The view got the credential from the kernel (a message, never widget state): it is an operator.
    assert "waiting for the kernel" in (await widget.get_attribute("data-history") or "")
    await expect(widget.locator(".grant")).to_be_hidden()
    # The run as the web page shows it: the plan, streamed text, code and its output, logs.
    # (render.js marks each event's element with data-k: the selectors below depend on no layout.)
    await expect(widget.locator(".tasks > li")).to_have_count(2)
    await expect(widget.locator('[data-k="output"]')).to_have_count(2)
    await expect(widget.locator('[data-k="code"]').first).to_contain_text("total = sum(range(10))")
    await expect(widget.locator('[data-k="text"]').first).to_be_attached()
    await expect(widget.locator('[data-k="log"]').first).to_contain_text("task 1 started")
    # The demo agent asks; the answer is a click in the widget.
    ask = widget.locator(".ask-card")
    await expect(ask).to_contain_text("Ship the result?")
    await expect(widget.locator(".run")).to_have_attribute("data-state", "waiting")
    await widget.screenshot(path=str(artifacts / f"notebook-{ui}-ask.png"))
    await ask.locator("button.choice", has_text="yes").click()

    await expect(ask).to_have_count(0)
    await expect(widget.locator(".run")).to_have_attribute("data-state", "done")
    await expect(widget.locator('[data-k="answer"]')).to_contain_text("yes")
    await expect(widget.locator('[data-k="message"]').last).to_contain_text("The human said 'yes'.")
    await expect(widget.locator(".tasks > li[data-status='done']")).to_have_count(2)
    feed = widget.locator(".feed")
    for counter in ("duplicates", "gaps", "errors"):
        await expect(feed).to_have_attribute(f"data-{counter}", "0")
    await widget.screenshot(path=str(artifacts / f"notebook-{ui}-done.png"))

    # The kernel followed the same run: its wait() ends done.
    await run_cell(page, 1)
    await expect(notebook_panel(page).locator(".jp-OutputArea-output", has_text="kernel:")).to_contain_text(
        "kernel: done ['done', 'done']"
    )
    await page.screenshot(path=str(artifacts / f"notebook-{ui}-page.png"))
    if ui == "notebook7":  # JupyterLab keeps its side panel on a phone's width: no room for any output
        # On a phone's width the widget is one column (a container query: the cell's width, not the window's).
        await page.set_viewport_size({"width": 390, "height": 844})
        await expect(widget.locator(".layout")).to_have_css("grid-template-columns", re.compile(r"^\S+$"))
        await widget.screenshot(path=str(artifacts / f"notebook-{ui}-phone.png"))


async def test_a_gateway_that_refuses_jupyters_origin_is_named_with_the_fix(
    jupyter: Jupyter, open_page: Any, artifacts: Path
) -> None:
    """Without ``--allow-origin``, the view cannot load; it says which origin to allow."""
    ui = jupyter.ui
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore(), apps={"demo": demo_app}) as gw:
        name = f"refused-{ui}.ipynb"
        write_notebook(
            jupyter.root / name,
            "from gateway.notebook import watch\n"
            f"w = watch({gw.url!r}, 'refused', start={{'app': 'demo', 'input': {{'ask': False, 'delay': 0}}}})\n"
            "w",
        )
        page = await open_page(notebook_url(jupyter, name), foreign=JUPYTER_OWN)
        await kernel_ready(page)
        await run_cell(page, 0)
        widget = notebook_panel(page).locator(".wp")
        await expect(widget.locator(".banner")).to_contain_text(f"--allow-origin {jupyter.origin}", timeout=LOAD_MS)
        await expect(widget).to_have_attribute("data-conn", "closed")
        await widget.screenshot(path=str(artifacts / f"notebook-{ui}-refused.png"))
