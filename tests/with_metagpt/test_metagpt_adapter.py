"""The adapter's hooks one at a time, and the core's independence from MetaGPT."""

from __future__ import annotations

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


def test_core_and_adapter_import_without_metagpt() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["metagpt"] = None  # as if not installed
        import protocol, gateway, gateway.server, gateway.cli
        import gateway.metagpt, gateway.offline_llm
        assert not [m for m in sys.modules if m.startswith("metagpt.")]
        try:
            gateway.metagpt.prepare()
        except ImportError as exc:
            print("prepare:", exc)
        try:
            import gateway.metagpt_apps
        except ImportError as exc:
            print("apps:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "prepare: MetaGPT is not installed" in out.stdout
    assert "apps: MetaGPT is not installed" in out.stdout


async def test_log_records_follow_the_level_of_their_run(gw: Any) -> None:
    from metagpt.logs import logger

    from gateway.metagpt import attach

    pipe = gw.pipe("logs-1")
    async with pipe, attach(pipe, log_level="WARNING"):
        logger.info("not sent")
        logger.warning("sent")
        logger.error("sent too")
    logger.warning("outside any run: not sent")
    async with Client(gw.url, "logs-1") as c:
        events = await drive(c)
    assert [(d["level"], d["msg"]) for d in of(events, "log")] == [
        ("WARNING", "sent"), ("ERROR", "sent too")
    ]
    assert of(events, "log")[0]["logger"] == __name__


async def test_llm_calls_stream_as_text_through_metagpts_own_path(gw: Any) -> None:
    from metagpt.logs import log_llm_stream

    from gateway.metagpt import attach
    from gateway.offline_llm import OFFLINE_MODEL, use

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

    from gateway.offline_llm import offline_llm_config, scripted_llm_class

    llm = create_llm_instance(LLMConfig(**offline_llm_config()))
    assert isinstance(llm, scripted_llm_class())
    other = create_llm_instance(LLMConfig(**offline_llm_config(model="gpt-4o")))
    assert isinstance(other, MetaGPTLLM)  # any other model: MetaGPT's own provider


async def test_a_role_given_a_stream_pipe_reports_to_it(gw: Any) -> None:
    from metagpt.actions import Action
    from metagpt.roles import Role

    from gateway.metagpt import current_run, install
    from gateway.offline_llm import use

    install()

    class Say(Action):
        async def run(self, history: Any) -> str:
            assert current_run() is not None and current_run().pipe is pipe
            return await self._aask("## Draft request\nIdea: biscuits\n")

    class Speaker(Role):
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

    from gateway import metagpt as adapter

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
    run = adapter.Run(pipe)
    adapter._emit_tools(run, [Item("search", {"hits": 2}, "dict"), Item("end_marker", "")], "")
    adapter._emit_tools(run, {"name": "shell", "type": "str", "value": "ok"}, "")
    assert pipe.events == [
        {"k": "tool", "d": {"name": "search", "type": "dict", "value": {"hits": 2}}},
        {"k": "tool", "d": {"name": "shell", "type": "str", "value": "ok"}},
    ]
