"""``./run wirepipe`` and ``./run python``: the venv's commands, from the caller's directory, bootstrapped first.

The script runs for real, from a copy of the repository's ``run`` and
``scripts/bootstrap.sh`` whose ``.venv`` is this interpreter's venv and whose
stamps say it is up to date (so bootstrap installs nothing, as on a second
run), called from another directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def a_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "wirepipe"
    for rel in (
        "run",
        "scripts/bootstrap.sh",
        "pyproject.toml",
        "requirements/dev.txt",
        "requirements/metagpt-lock.txt",
    ):
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, clone / rel)
    (clone / ".venv").symlink_to(sys.prefix)
    stamps = clone / ".stamps"
    stamps.mkdir()
    for name, files in (
        ("core", ("pyproject.toml", "requirements/dev.txt")),
        ("metagpt", ("requirements/metagpt-lock.txt",)),
    ):
        # bootstrap.sh's hash_of: sha256 of the files' bytes in order, first 16 hex digits
        digest = hashlib.sha256(b"".join((clone / f).read_bytes() for f in files)).hexdigest()[:16]
        (stamps / name).write_text(digest)
    return clone


def test_run_wirepipe_and_python_work_from_the_callers_directory(tmp_path: Path) -> None:
    clone = a_clone(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_module.py").write_text("async def my_app(pipe, input):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["../wirepipe/run", *args], cwd=mine, env=env, capture_output=True, text=True, timeout=120
        )

    where = run("python", "-c", "import os, sys; print(os.getcwd()); print(sys.prefix)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(mine), str(clone / ".venv")]  # the clone's venv, called from mine/
    assert where.stderr == ""  # bootstrap had nothing to install

    served = run("wirepipe", "serve", "--app", "mine=my_module:my_app", "--help")
    assert served.returncode == 0, served.stderr
    assert "usage: wirepipe serve" in served.stdout

    usage = run()
    assert usage.returncode == 2 and "./run wirepipe ARGS..." in usage.stdout
