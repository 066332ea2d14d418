"""Packaging: one version everywhere, and a wheel that ships everything the gateway serves.

The wheel is built by pip from a copy of the checkout (so no ``build/`` folder
is left in the tree, and none from an earlier build leaks into this one),
with build isolation: the build requirements of pyproject.toml are the ones
tested.  pip needs its package index for them (a local mirror does).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import gateway

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "clients" / "js"
#: Not part of a build: caches, virtualenvs, earlier build output, npm's packages.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "node_modules",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".stamps",
)


# --- one version -------------------------------------------------------------------


def test_pyproject_reads_the_version_from_the_gateway() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "the version is written once, in gateway/__init__.py"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gateway.__version__"}


def test_the_js_package_has_the_python_version() -> None:
    package = json.loads((JS / "package.json").read_text())
    assert package["version"] == gateway.__version__, "bump clients/js/package.json with gateway.__version__"
    lock = json.loads((JS / "package-lock.json").read_text())
    assert (lock["version"], lock["packages"][""]["version"]) == (gateway.__version__,) * 2, (
        "package-lock.json is stale: run npm install in clients/js"
    )


# --- the wheel ---------------------------------------------------------------------------


def build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    out = tmp_path / "dist"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    (wheel,) = out.glob("wirepipe-*.whl")
    return wheel


def test_both_clients_say_the_version_in_their_hello() -> None:
    from gateway.client import CLIENT_NAME

    assert CLIENT_NAME == f"wirepipe-py/{gateway.__version__}"
    js = (JS / "src" / "wirepipe.js").read_text()
    assert f"DEFAULT_CLIENT = 'wirepipe-js/{gateway.__version__}'" in js


def test_the_wheel_ships_types_ui_js_client_and_every_module(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    assert wheel.name.startswith(f"wirepipe-{gateway.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        version = Parser().parsestr(z.read(meta).decode())["Version"]
        shipped_client = z.read("gateway/_jsclient/wirepipe.js")
    assert version == gateway.__version__

    assert {"protocol/py.typed", "gateway/py.typed"} <= names
    static = ROOT / "gateway" / "static"
    ui = {f"gateway/static/{p.relative_to(static).as_posix()}" for p in static.rglob("*") if p.is_file()}
    assert "gateway/static/index.html" in ui
    assert ui <= names, f"static files missing from the wheel: {sorted(ui - names)}"
    js = {f"gateway/_jsclient/{p.name}" for p in (JS / "src").iterdir() if p.suffix in (".js", ".ts")}
    assert "gateway/_jsclient/wirepipe.js" in js
    assert js <= names, f"JS client files missing from the wheel: {sorted(js - names)}"
    assert shipped_client == (JS / "src" / "wirepipe.js").read_bytes()
    # A package left out of [tool.setuptools] packages would be missing here.
    modules = {
        p.relative_to(ROOT).as_posix()
        for pkg in ("protocol", "gateway")
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
