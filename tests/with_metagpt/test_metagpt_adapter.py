"""The adapter's hooks one at a time, and the core's independence from MetaGPT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mg_helpers import drive, final_status, of, texts

from gateway.client import Client

pytestmark = [
    pytest.mark.metagpt,
    # MetaGPT 0.8.2 on pydantic 2.14 and google-generativeai: their warnings, not ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

REPO = Path(__file__).resolve().parents[2]


def test_the_integration_imports_without_metagpt() -> None:
    # The core's side of it: tests/gateway/test_metagpt_absent.py.
    code = textwrap.dedent("""
        import sys
        sys.modules["metagpt"] = None  # as if not installed
        import gateway.integrations.metagpt as mg
        import gateway.integrations.metagpt.offline_llm, gateway.integrations.demo
        import gateway.metagpt, gateway.offline_llm, gateway.demo_agent  # the old paths
        assert not [m for m in sys.modules if m.startswith("metagpt.")]
        try:
            mg.prepare()
        except ImportError as exc:
            print("prepare:", exc)
        try:
            import gateway.integrations.metagpt.apps
        except ImportError as exc:
            print("apps:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "prepare: MetaGPT is not installed" in out.stdout
    assert "apps: MetaGPT is not installed" in out.stdout


def _fresh_machine(tmp: Path) -> dict[str, str]:
    """An environment with an empty HOME and temp dir and no MetaGPT root set: a new user's."""
    env = {k: v for k, v in os.environ.items() if k not in ("METAGPT_PROJECT_ROOT", "WIREPIPE_METAGPT_ROOT")}
    for name in ("home", "tmp"):
        (tmp / name).mkdir()
    env.update(HOME=str(tmp / "home"), TMPDIR=str(tmp / "tmp"), PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    return env


def _files(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())


IMPORT_AND_REPORT = textwrap.dedent("""
    import importlib, json, os, sys
    before = dict(os.environ)
    for name in sys.argv[1:]:
        importlib.import_module(name)
    after = dict(os.environ)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    print(json.dumps({"changed": changed, "metagpt": "metagpt" in sys.modules}))
""")


def _import_on_a_fresh_machine(tmp: Path, *modules: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_AND_REPORT, *modules],
        cwd=tmp,
        env=_fresh_machine(tmp),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    report["files"] = _files(tmp)
    return report


def test_importing_the_integration_has_no_side_effect(tmp_path: Path) -> None:
    report = _import_on_a_fresh_machine(
        tmp_path,
        "gateway.integrations",
        "gateway.integrations.metagpt",
        *(f"gateway.integrations.metagpt.{m}" for m in ("setup", "run", "hooks", "mapping", "offline_llm", "apps")),
        "gateway.integrations.demo",
        "gateway.offline_llm",
        "gateway.metagpt_apps",
        "gateway.demo_agent",
    )
    assert report == {"changed": [], "metagpt": False, "files": []}


def test_the_old_path_prepares_metagpts_environment_on_import(tmp_path: Path) -> None:
    # The one deliberate exception (gateway/metagpt.py): and the check above can see a write.
    report = _import_on_a_fresh_machine(tmp_path, "gateway.metagpt")
    root = f"tmp/wirepipe-metagpt-{os.getuid()}"
    assert report == {"changed": ["METAGPT_PROJECT_ROOT"], "metagpt": False, "files": [f"{root}/config/config2.yaml"]}
    assert (tmp_path / root / "config/config2.yaml").read_text().startswith("# written by wirepipe")


def test_the_old_paths_are_the_new_objects(metagpt_root: Any) -> None:
    import gateway.demo_agent
    import gateway.integrations.demo
    import gateway.integrations.metagpt as new
    import gateway.integrations.metagpt.apps
    import gateway.integrations.metagpt.offline_llm
    import gateway.metagpt as old
    import gateway.metagpt_apps
    import gateway.offline_llm

    for name in old.__all__:
        assert getattr(old, name) is getattr(new, name), name
    for name in gateway.offline_llm.__all__:
        assert getattr(gateway.offline_llm, name) is getattr(gateway.integrations.metagpt.offline_llm, name), name
    assert gateway.metagpt_apps.data_interpreter is gateway.integrations.metagpt.apps.data_interpreter
    assert gateway.metagpt_apps.team is gateway.integrations.metagpt.apps.team
    assert gateway.demo_agent.app is gateway.integrations.demo.app


async def test_log_records_follow_the_level_of_their_run(gw: Any) -> None:
    from metagpt.logs import logger

    from gateway.integrations.metagpt import attach

    pipe = gw.pipe("logs-1")
    async with pipe, attach(pipe, log_level="WARNING"):
        logger.info("not sent")
        logger.warning("sent")
        logger.error("sent too")
    logger.warning("outside any run: not sent")
    async with Client(gw.url, "logs-1") as c:
        events = await drive(c)
    assert [(d["level"], d["msg"]) for d in of(events, "log")] == [("WARNING", "sent"), ("ERROR", "sent too")]
    assert of(events, "log")[0]["logger"] == __name__


async def test_llm_calls_stream_as_text_through_metagpts_own_path(gw: Any) -> None:
    from metagpt.logs import log_llm_stream

    from gateway.integrations.metagpt import attach
    from gateway.integrations.metagpt.offline_llm import OFFLINE_MODEL, use

    pipe = gw.pipe("text-1")
    async with pipe, attach(pipe) as run:
        with use():
            from metagpt.context import Context

            llm = Context().llm()
            assert type(llm).__name__ == "ScriptedLLM" and llm.model == OFFLINE_MODEL
            first = await llm.aask("## Draft request\nIdea: tea\n")
            await llm.aask("anything")
        log_llm_stream("a token outside any LLM call")
        assert run.pipe is pipe
    async with Client(gw.url, "text-1") as c:
        events = await drive(c)
    streams = texts(events)
    assert len(streams) == 3
    assert [s.strip() for s in streams.values()] == [first, "OK.", "a token outside any LLM call"]
    assert len(of(events, "text")) > 10  # token by token, not one delta per call


def test_config_selects_the_scripted_provider(metagpt_root: Any) -> None:
    from metagpt.configs.llm_config import LLMConfig
    from metagpt.provider.llm_provider_registry import create_llm_instance
    from metagpt.provider.metagpt_api import MetaGPTLLM

    from gateway.integrations.metagpt.offline_llm import offline_llm_config, scripted_llm_class

    llm = create_llm_instance(LLMConfig(**offline_llm_config()))
    assert isinstance(llm, scripted_llm_class())
    other = create_llm_instance(LLMConfig(**offline_llm_config(model="gpt-4o")))
    assert isinstance(other, MetaGPTLLM)  # any other model: MetaGPT's own provider


async def test_a_role_given_a_stream_pipe_reports_to_it(gw: Any) -> None:
    from metagpt.actions import Action
    from metagpt.roles import Role

    from gateway.integrations.metagpt import current_run, install, use

    install()

    # MetaGPT is not followed by mypy (follow_imports = "skip"): Action and Role are Any.
    class Say(Action):  # type: ignore[misc]
        async def run(self, history: Any) -> str:
            assert (run := current_run()) is not None and run.pipe is pipe
            draft: str = await self._aask("## Draft request\nIdea: biscuits\n")
            return draft

    class Speaker(Role):  # type: ignore[misc]
        name: str = "Bo"
        profile: str = "Speaker"

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.set_actions([Say])

    pipe = gw.pipe("stream-pipe-1")
    async with pipe:
        with use():
            await Speaker(stream_pipe=pipe).run("biscuits")
    assert current_run() is None
    async with Client(gw.url, "stream-pipe-1") as c:
        events = await drive(c)
    assert final_status(events)["state"] == "done"
    assert [d.get("name") for d in of(events, "message")] == [None, "Bo"]
    assert "biscuits" in "".join(texts(events).values())


def test_tool_output_becomes_tool_events(metagpt_root: Any) -> None:
    import metagpt.logs

    from gateway.integrations.metagpt import Run, hooks

    # 0.8.2 has no set_tool_output_logfunc: the adapter feature-detects it.
    assert not hasattr(metagpt.logs, "set_tool_output_logfunc")

    class Pipe:
        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []

        def set_message(self, msg: Any) -> int:
            self.events.append(msg)
            return len(self.events)

    class Item:  # the shape of newer MetaGPT's ToolLogItem
        def __init__(self, name: str, value: Any, type_: str = "str") -> None:
            self.name, self.value, self.type_ = name, value, type_

    pipe = Pipe()
    run = Run(pipe)
    hooks._emit_tools(run, [Item("search", {"hits": 2}, "dict"), Item("end_marker", "")], "")
    hooks._emit_tools(run, {"name": "shell", "type": "str", "value": "ok"}, "")
    assert pipe.events == [
        {"k": "tool", "d": {"name": "search", "type": "dict", "value": {"hits": 2}}},
        {"k": "tool", "d": {"name": "shell", "type": "str", "value": "ok"}},
    ]
