"""Every command the README, docs/*.md and the examples' docstrings print works as printed from a fresh clone.

A fresh clone has no active venv: ``wirepipe``, ``python`` or ``uvicorn``
alone are not there (``./run wirepipe``, ``./run python`` are).  The
commands are read from the shell blocks (```sh, ```console), from inline
code that starts with ``./run``, ``python`` or ``.venv/``, and from the
indented usage lines of the examples' docstrings; each must start with a
program a fresh clone has, and what it names must exist: a ``./run``
command, a ``wirepipe`` subcommand and each of its flags, a script, a
module, an example's flags.  Inline mentions of ``wirepipe SUB --flag`` in
prose (the command's name, as installed) are checked for the subcommand
and flags too.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "clients" / "js" / "README.md"]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
#: What a fresh clone on Debian can run (with ./run's bootstrap, npm and redis as docs say).
PROGRAMS = {
    "./run",
    "cd",
    "curl",
    "npm",
    "pip",
    "python3",
    "redis-server",
    "redis-cli",
    "examples/cluster.sh",
    "git",
    "node",
}
#: Names that only an active venv (or an installed wirepipe) puts on PATH.
VENV_ONLY = {"wirepipe", "python", "uvicorn", "pytest", "ruff", "mypy"}
#: Modules and names in docs that stand for the reader's own.
PLACEHOLDERS = {"my_module", "my_policies", "module"}


def _fenced_shell(text: str) -> list[str]:
    lines: list[str] = []
    for block in re.findall(r"^```(?:sh|bash|console|shell)\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _inline(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    # a command, not a name: a program and something for it to do ("`./run`" alone names the script)
    return [s for s in spans if re.match(r"(\./run|python3?|\.venv/\S+|uvicorn) \S", s)]


def _docstring_usage(path: Path) -> list[str]:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return [line.strip() for line in doc.splitlines() if line.startswith("    ") and not line.startswith("     ")]


def commands() -> list[tuple[str, str]]:
    """(where, command line) for every command printed to be run."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        where = doc.relative_to(ROOT).as_posix()
        found += [(where, line) for line in _fenced_shell(text) + _inline(text)]
    for example in EXAMPLES:
        where = example.relative_to(ROOT).as_posix()
        found += [(where, line) for line in _docstring_usage(example) if line.split()[0] in PROGRAMS | VENV_ONLY]
    return found


def _simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line: no comments, no env assignments, split at && || | ;."""
    words = [w.strip("()") for w in shlex.split(line, comments=True)]
    out: list[list[str]] = [[]]
    for w in words:
        if w in ("&&", "||", "|", ";"):
            out.append([])
        elif w and not (not out[-1] and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w)):
            out[-1].append(w)
    return [c for c in out if c]


@cache
def _wirepipe_help(sub: str) -> str:
    argv = [sys.executable, "-m", "gateway.cli", *([sub] if sub else []), "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"}, timeout=60)
    return done.stdout if done.returncode == 0 else ""


def _flags(args: list[str]) -> list[str]:
    """The ``--flags`` of ``args`` (without their ``=value``)."""
    return [a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2]


def _module_exists(name: str) -> bool:
    if name.split(".")[0] in PLACEHOLDERS:
        return True
    rel = Path(*name.split("."))
    if (ROOT / rel.with_suffix(".py")).is_file() or (ROOT / rel / "__init__.py").is_file():
        return True
    return importlib.util.find_spec(name.split(".")[0]) is not None


def _check_wirepipe(args: list[str]) -> list[str]:
    if not args:
        return ["wirepipe with no subcommand"]
    sub, rest = args[0], args[1:]
    text = _wirepipe_help(sub)
    if not text:
        return [f"no wirepipe subcommand {sub!r}"]
    problems = [f"wirepipe {sub} has no {flag}" for flag in _flags(rest) if not re.search(rf"{flag}\b", text)]
    for i, a in enumerate(rest[:-1]):
        if a in ("--app", "--middleware"):
            spec = rest[i + 1].split("=", 1)[-1]
            if ":" not in spec or not _module_exists(spec.split(":", 1)[0]):
                problems.append(f"{a} {rest[i + 1]}: no such module")
    return problems


def _check_python(args: list[str], cwd: Path) -> list[str]:
    if args[:1] == ["-m"]:
        module = args[1]
        if not _module_exists(module):
            return [f"no module {module}"]
        rest = args[2:]
        if module == "uvicorn" and "--app-dir" in rest:
            app_dir = cwd / rest[rest.index("--app-dir") + 1]
            target = next(a for a in rest if ":" in a and not a.startswith("-"))
            if not (app_dir / (target.split(":")[0] + ".py")).is_file():
                return [f"uvicorn: no {target} in {app_dir}"]
            return []
        source = "".join(p.read_text() for p in (ROOT / Path(*module.split("."))).parent.glob("*.py"))
    else:
        script = cwd / args[0]
        if not script.is_file():
            return [f"no script {args[0]}"]
        source, rest = script.read_text(), args[1:]
    return [f"python {' '.join(args[:2])}: no {flag}" for flag in _flags(rest) if f'"{flag}"' not in source]


def check(line: str) -> list[str]:
    """What is wrong with ``line`` as a command run in a fresh clone's root (nothing: [])."""
    problems: list[str] = []
    cwd = ROOT
    run_commands = set(re.findall(r"^  ([a-z]+)\)$", (ROOT / "run").read_text(), re.M))
    for cmd in _simple_commands(line):
        if "..." in cmd:  # prose: "./run python ..." stands for any arguments
            cmd = cmd[: cmd.index("...")]
        prog, args = cmd[0], cmd[1:]
        if prog == "cd":
            cwd = cwd / args[0] if args and not args[0].startswith("path/") else cwd
            continue
        if prog in VENV_ONLY or prog.startswith(".venv/"):
            problems.append(f"{prog}: not on PATH in a fresh clone (./run {prog.rsplit('/', 1)[-1]} ...)")
            continue
        if prog not in PROGRAMS:
            problems.append(f"{prog}: not a program a fresh clone has")
            continue
        if prog != "./run":
            continue
        if args[:1] in ([], ["wirepipe"], ["python"]) and "..." in line:
            continue
        if not args or args[0] not in run_commands:
            problems.append(f"./run has no command {args[:1]}")
        elif args[0] == "demo":
            problems += _check_wirepipe(args)
        elif args[0] == "wirepipe":
            problems += _check_wirepipe(args[1:])
        elif args[0] == "python":
            problems += _check_python(args[1:], cwd)
        elif args[0] == "bench":
            source = "".join(p.read_text() for p in (ROOT / "bench").glob("*.py"))
            problems += [f"./run bench has no {flag}" for flag in _flags(args[1:]) if f'"{flag}"' not in source]
    return problems


ALL = commands()


def test_the_docs_print_commands() -> None:
    """The extraction works: the commands this file is about are found (one from each kind of place)."""
    lines = [line for _, line in ALL]
    assert "./run demo" in " ".join(lines)
    assert any(line.startswith("./run wirepipe watch ") for line in lines)
    assert any(where.startswith("examples/") and line.startswith("./run python examples/") for where, line in ALL)
    assert any(where == "docs/http.md" and line.startswith("curl ") for where, line in ALL)


@pytest.mark.parametrize(("where", "line"), ALL, ids=[f"{w}:{line[:40]}" for w, line in ALL])
def test_a_printed_command_works_from_a_fresh_clone(where: str, line: str) -> None:
    assert check(line) == [], f"{where}: {line}"


def test_the_check_catches_what_a_fresh_clone_lacks() -> None:
    assert check("wirepipe serve --port 8765") != []
    assert check("python examples/queue_relay.py") != []
    assert check(".venv/bin/python -m bench.pipe_cost") != []
    assert check("./run wirepipe serve --no-such-flag") != []
    assert check("./run wirepipe sever") != []
    assert check("./run python examples/no_such.py") != []
    assert check("./run python examples/human_confirm.py --no-such-flag") != []
    assert check("./run deploy") != []
    assert check("./run wirepipe serve --app x=no_such_module_here:app") != []
    assert check("./run wirepipe serve --port 8765 --app mine=my_module:my_app") == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_wirepipe_subcommands_and_flags_named_in_prose_exist(doc: Path) -> None:
    """``wirepipe serve --lease-ttl`` in a sentence names a real flag of a real subcommand."""
    prose = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    problems = []
    for span in re.findall(r"`wirepipe ([a-z]+(?: [^`\n]*)?)`", prose):
        words = [w for w in shlex.split(span) if not w.startswith("$")]
        problems += _check_wirepipe(words)
    assert problems == []
