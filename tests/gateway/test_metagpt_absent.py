"""The core never needs MetaGPT, and a folder named ``metagpt`` on sys.path is not MetaGPT.

The core is ``protocol`` and ``gateway`` outside ``gateway.integrations``:
importing any of it must import neither MetaGPT nor an integration (nor the
old-path shims that load one).

pytest puts ``tests/`` on ``sys.path``, where a ``tests/metagpt`` folder
used to be: to ``find_spec`` that is a namespace package, so the adapter took
MetaGPT for installed and failed later, deep in an import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: The old paths of the MetaGPT integration and the demo agent: shims that import it.
SHIMS = ("gateway.metagpt", "gateway.metagpt_apps", "gateway.offline_llm", "gateway.demo_agent")

CORE_IMPORTS = textwrap.dedent("""
    import importlib, json, pkgutil, sys

    MODE = sys.argv[1]
    SHIMS = set(sys.argv[2].split(","))
    asked = []

    def outside_the_core(name):
        return name.split(".")[0] == "metagpt" or name.startswith("gateway.integrations")

    class Recorder:
        \"\"\"Records every import of MetaGPT or an integration; MetaGPT is 'not installed'.\"\"\"

        def find_spec(self, name, path=None, target=None):
            if outside_the_core(name):
                asked.append(name)
                if name.split(".")[0] == "metagpt":
                    raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    if MODE == "none":
        sys.modules["metagpt"] = None  # as if not installed
    else:  # also sees an import that a try/except ImportError would hide
        sys.meta_path.insert(0, Recorder())

    import protocol, gateway, gateway.server, gateway.cli, gateway.connection  # noqa: E401
    import gateway.sessions, gateway.stores  # noqa: E401
    imported = ["protocol", "gateway", "gateway.server", "gateway.cli", "gateway.connection",
                "gateway.sessions", "gateway.stores"]
    # Not pkgutil.walk_packages: it imports every package it walks into.
    todo = [protocol, gateway]
    while todo:
        pkg = todo.pop()
        for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
            if info.name in SHIMS or outside_the_core(info.name):
                continue
            module = importlib.import_module(info.name)
            imported.append(info.name)
            if info.ispkg:
                todo.append(module)
    loaded = sorted(m for m in sys.modules if sys.modules[m] is not None and (
        outside_the_core(m) or m in SHIMS))
    print(json.dumps({"imported": imported, "loaded": loaded, "asked": asked}))
""")


@pytest.mark.parametrize("mode", ["none", "recorder"])
def test_the_core_never_imports_metagpt_nor_an_integration(mode: str) -> None:
    import json

    out = subprocess.run(
        [sys.executable, "-c", CORE_IMPORTS, mode, ",".join(SHIMS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # the walk really found the core's modules
    assert {"gateway.pipe", "gateway.client", "gateway.front", "gateway.stores.redis"} <= set(seen["imported"])
    assert seen["loaded"] == []
    assert seen["asked"] == []


def _site_without_metagpt(tmp: Path) -> Path:
    """A copy (by symlinks) of this venv's site-packages, minus MetaGPT."""
    site = tmp / "site"
    site.mkdir()
    src = Path(sysconfig.get_paths()["purelib"])
    for entry in src.iterdir():
        if not entry.name.lower().startswith("metagpt") and not entry.name.endswith(".pth"):
            (site / entry.name).symlink_to(entry)
    return site


def test_a_metagpt_folder_on_the_path_is_not_taken_for_metagpt(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    (shadow / "metagpt").mkdir(parents=True)  # empty: a namespace package
    site = _site_without_metagpt(tmp_path)
    code = textwrap.dedent("""
        import importlib.util
        spec = importlib.util.find_spec("metagpt")
        print("find_spec:", spec is not None)
        import gateway.integrations.metagpt as mg
        try:
            mg.prepare()
        except ImportError as exc:
            print("prepare:", exc)
        try:
            import gateway.integrations.metagpt.apps
        except ImportError as exc:
            print("apps:", exc)
        import gateway.metagpt  # the old path: its prepare_environment() must not be fooled
        try:
            import gateway.metagpt_apps
        except ImportError as exc:
            print("old apps:", exc)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(REPO), str(site)])}
    env.pop("PYTHONHOME", None)
    # -S: no site-packages but the copy (the venv's own one has MetaGPT)
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "find_spec: True" in out.stdout  # the trap is really there
    assert "prepare: MetaGPT is not installed" in out.stdout
    assert "apps: MetaGPT is not installed" in out.stdout
    assert "old apps: MetaGPT is not installed" in out.stdout
