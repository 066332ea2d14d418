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


# --- the JS package ------------------------------------------------------------------------------

#: What a Node user imports; each must load with nothing but the package and its dependency.
NODE_IMPORTS = """
import { connect, Client, PROTOCOL } from '@wirepipe/client';
import { Snapshot } from '@wirepipe/client/state';
import { closeAction } from '@wirepipe/client/codes';
import { ClientCore } from '@wirepipe/client/core';
import { createRequire } from 'node:module';
const resolved = import.meta.resolve('@wirepipe/client');
console.log(JSON.stringify({
  protocol: PROTOCOL, connect: typeof connect, Client: typeof Client, Snapshot: typeof Snapshot,
  closeAction: typeof closeAction, ClientCore: typeof ClientCore, inProject: resolved.includes('/node_modules/'),
}));
"""


def npm(*args: str, cwd: Path) -> str:
    """``npm args`` in ``cwd`` (the registry only for @msgpack/msgpack, from npm's cache when it has it)."""
    exe = shutil.which("npm")
    if exe is None:
        from support import missing

        missing("npm is not installed", "scripts/bootstrap.sh --node")
    done = subprocess.run(
        [exe, *args, "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"npm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def imports_in_node(project: Path) -> dict[str, object]:
    (project / "check.mjs").write_text(NODE_IMPORTS)
    done = subprocess.run(["node", "check.mjs"], cwd=project, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def a_project(path: Path) -> Path:
    path.mkdir()
    (path / "package.json").write_text(json.dumps({"name": path.name, "version": "1.0.0", "type": "module"}))
    return path


EXPECTED_IMPORTS = {
    "protocol": "wirepipe.v1",
    "connect": "function",
    "Client": "function",
    "Snapshot": "function",
    "closeAction": "function",
    "ClientCore": "function",
    "inProject": True,
}


def test_the_js_package_installs_as_its_readme_says(tmp_path: Path) -> None:
    """From a fresh clone (no node_modules): ``npm pack``'s tarball, and the folder with ``--install-links``."""
    readme = (JS / "README.md").read_text()
    assert "npm install --install-links path/to/wirepipe/clients/js" in readme
    assert "(cd path/to/wirepipe/clients/js && npm pack)" in readme
    assert "npm install path/to/wirepipe/clients/js/wirepipe-client-*.tgz" in readme
    clone = tmp_path / "wirepipe" / "clients" / "js"
    shutil.copytree(JS, clone, ignore=NOT_SOURCE)
    assert not (clone / "node_modules").exists()

    npm("pack", cwd=clone)
    (tarball,) = clone.glob("wirepipe-client-*.tgz")
    assert tarball.name == f"wirepipe-client-{gateway.__version__}.tgz"
    packed = a_project(tmp_path / "from-tarball")
    npm("install", str(tarball), cwd=packed)
    assert imports_in_node(packed) == EXPECTED_IMPORTS

    tarball.unlink()
    linked = a_project(tmp_path / "from-folder")
    npm("install", "--install-links", str(clone), cwd=linked)
    assert imports_in_node(linked) == EXPECTED_IMPORTS
    assert not (clone / "node_modules").exists()  # a copy: the clone is left as it was
