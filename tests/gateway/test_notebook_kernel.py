"""The notebook side on a real ipykernel, executed by nbclient (no browser).

The Python blocks of docs/notebook.md, in order, are one notebook: they
start a gateway in the kernel (loopback), ``watch`` a run of the demo agent,
answer its ask from code, wait for the end and show the snapshot, then
follow the run with a ``Client`` task.  nbclient records the widget state a
front end would get (the traitlets sync), so the test reads the widget's
model as JupyterLab would: status done, every task done, no open ask.  The
README's example runs in a kernel with ``await main()``, as the docs say,
and ``asyncio.run`` fails there as the docs say.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from support import MS

ROOT = Path(__file__).resolve().parents[2]
#: Starting a kernel and running a few cells on a loaded 2-core machine.
CELL_TIMEOUT = int(60_000 * MS)


def python_blocks(markdown: Path) -> list[str]:
    """The fenced ```python blocks of ``markdown``, in order."""
    return re.findall(r"^```python\n(.*?)^```$", markdown.read_text(), re.DOTALL | re.MULTILINE)


def notebook(*cells: str) -> Any:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


async def execute(nb: Any, tmp_path: Path) -> Any:
    """Run every cell on a fresh ipykernel (the repository importable), raising on a cell's error."""
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},
        store_widget_state=True,
    )
    # nbclient starts the kernel with this process's environment: the
    # checkout is importable in it as here (PYTHONPATH or the editable install).
    await client.async_execute()
    return nb


def text_of(cell: Any) -> str:
    """What a cell printed or returned, as text."""
    out = []
    for o in cell.outputs:
        out.append(o.get("text", ""))
        out.append(o.get("data", {}).get("text/plain", ""))
    return "".join(out)


def widget_states(nb: Any) -> dict[str, dict[str, Any]]:
    """model_id -> synced state of every anywidget model, as nbclient saved it in the notebook."""
    saved = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return {mid: m["state"] for mid, m in saved.items() if m["model_name"] == "AnyModel"}


async def test_the_docs_notebook_runs_and_the_widget_state_is_the_run(tmp_path: Path) -> None:
    blocks = python_blocks(ROOT / "docs" / "notebook.md")
    assert len(blocks) >= 4, "docs/notebook.md lost its examples"
    secret = "s3cret-" + "x" * 8
    nb = notebook(
        *blocks,
        "snap = await task\nprint('task:', snap.status['state'], len(lines), 'log lines')",
        # A credential is never widget state: a second widget with one.
        f"w2 = watch(gw.url, 'run-1', auth={secret!r})\nprint('w2:', await w2.wait(), w2.needs_auth)",
    )
    nb = await execute(nb, tmp_path)
    outputs = [text_of(c) for c in nb.cells]

    # The widget is the cell's output, as a widget view (JupyterLab renders the model).
    shown = [o for c in nb.cells for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert shown, outputs
    model_id = shown[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    state = widget_states(nb)[model_id]
    assert state["sid"] == "run-1" and state["url"].startswith("ws://127.0.0.1:")
    assert state["base"] == state["url"].replace("ws://", "http://", 1)
    assert state["status"] == "done"
    assert state["plan"]["goal"] == "Summarise a small data set"
    assert [t["status"] for t in state["plan"]["tasks"]] == ["done", "done", "done"]
    assert state["asks"] == [] and state["error"] == "" and state["conn"] == "open"
    assert state["needs_auth"] is False

    joined = "\n".join(outputs)
    assert "Ship the result? ['yes', 'no']" in joined
    assert "True" in joined  # the reply was taken
    assert "done\n[('1', 'done'), ('2', 'done'), ('3', 'done')]" in joined
    # The snapshot shows as HTML and Markdown.
    snap = next(o for c in nb.cells for o in c.outputs if "text/html" in o.get("data", {}))
    assert "<b>run</b>: <code>done</code>" in snap["data"]["text/html"]
    assert "3/3 done" in snap["data"]["text/markdown"]
    # The Client task replayed the run and returned its snapshot.
    assert re.search(r"task: done [1-9]\d* log lines", joined), joined
    assert "w2: done True" in joined
    saved = json.dumps(nb.metadata["widgets"])
    assert secret not in saved and secret not in json.dumps([c.outputs for c in nb.cells])


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("## In 20 lines", 1)[1]
    return python_blocks_of(block)[0]


def python_blocks_of(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)


async def test_the_readme_example_runs_in_a_kernel_with_await(tmp_path: Path) -> None:
    *body, last = readme_example().rstrip().splitlines()
    assert last.startswith("asyncio.run(main())") and "await main()" in last, last  # the README says so
    as_in_a_notebook = "\n".join(body) + "\nawait main()\n"
    nb = notebook(
        "import asyncio\ntry:\n    asyncio.run(asyncio.sleep(0))\nexcept RuntimeError as exc:\n    print(exc)",
        as_in_a_notebook,
    )
    nb = await execute(nb, tmp_path)
    assert "cannot be called from a running event loop" in text_of(nb.cells[0])
    out = text_of(nb.cells[1])
    assert "ask" in out and "human said yes" in out and "'state': 'done'" in out, out


def test_the_core_imports_without_anywidget_and_the_widget_says_what_to_install() -> None:
    """anywidget is an extra: the core never imports it, and gateway.notebook names the extra."""
    code = (
        "import sys\n"
        "sys.modules['anywidget'] = None  # as if not installed\n"
        "import gateway, gateway.client, gateway.cli, protocol\n"
        "c = gateway.client.Client('ws://127.0.0.1:1/', 's')\n"
        "try:\n"
        "    c.widget()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "pip install 'wirepipe[notebook]'" in out.stdout, out.stdout
