"""Packaging: one version everywhere."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import gateway

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "clients" / "js"


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
