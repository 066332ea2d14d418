"""Without MetaGPT, a folder named ``metagpt`` on sys.path is not MetaGPT.

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

REPO = Path(__file__).resolve().parents[2]


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
        import gateway.metagpt
        try:
            gateway.metagpt.prepare()
        except ImportError as exc:
            print("prepare:", exc)
        try:
            import gateway.metagpt_apps
        except ImportError as exc:
            print("apps:", exc)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(REPO), str(site)])}
    env.pop("PYTHONHOME", None)
    # -S: no site-packages but the copy (the venv's own one has MetaGPT)
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "find_spec: True" in out.stdout  # the trap is really there
    assert "prepare: MetaGPT is not installed" in out.stdout
    assert "apps: MetaGPT is not installed" in out.stdout
