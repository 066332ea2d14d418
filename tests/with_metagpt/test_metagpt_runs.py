"""Real MetaGPT runs (scripted LLM, real Jupyter kernel) watched and steered over a socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mg_helpers import drive, final_status, kinds, of, texts
from support import final

from gateway.client import Client

pytestmark = [
    pytest.mark.metagpt,
    # MetaGPT 0.8.2 on pydantic 2.14 and google-generativeai: their warnings, not ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

IDEA = "Count the words in this short idea"
CHANGE = "change task 2: also count the letters"


def start(app: str, **input: Any) -> dict[str, Any]:
    return {"app": app, "input": {"delay": 0, **input}}


async def test_data_interpreter_streams_every_kind_and_takes_answers(gw: Any) -> None:
    async with Client(gw.url, "di-1", start=start("data_interpreter", idea=IDEA)) as c:
        events = await drive(c, answer=lambda ev: "confirm")

    assert final_status(events)["state"] == "done"
    assert {"plan", "task", "code", "output", "text", "log", "ask", "answer", "message", "status"} <= kinds(events)
    seqs = [ev.seq for ev in events]
    assert seqs == list(range(1, len(seqs) + 1))

    plans = of(events, "plan")
    assert plans[0]["proposed"] is True  # shown before its review
    last = plans[-1]
    assert last["goal"] == IDEA and "proposed" not in last
    assert [t["id"] for t in last["tasks"]] == ["1", "2", "3"]
    assert last["tasks"][1]["deps"] == ["1"]
    assert {t["status"] for t in last["tasks"]} == {"done"}
    assert {tuple(sorted(t)) for t in last["tasks"]} == {("deps", "id", "instruction", "status", "type")}

    done = [d for d in of(events, "task") if d["status"] == "done"]
    assert [d["id"] for d in done] == ["1", "2", "3"]
    assert done[0]["result"].strip() == f"{len(IDEA)} characters"

    codes = of(events, "code")
    assert [(d["lang"], d["task"]) for d in codes] == [("python", "1"), ("python", "2"), ("python", "3")]
    outputs = of(events, "output")
    assert {d["id"] for d in outputs} <= {d["id"] for d in codes}
    assert {d["stream"] for d in outputs} == {"stdout", "stderr", "result"}
    assert any("7 words" in d["text"] for d in outputs if d["stream"] == "stdout")

    streams = texts(events)  # also: every stream ended
    assert len(streams) == 4  # WritePlan + one WriteAnalysisCode per task
    assert any('"task_id": "1"' in t for t in streams.values())

    asks = of(events, "ask")
    assert len(asks) == 4  # the plan, then each task
    assert asks[0]["kind"] == "review" and "confirm" in asks[0]["choices"]
    assert asks[0]["other"] is True  # `change ...` is free text
    answers = of(events, "answer")
    assert [(a["value"], a["by"]) for a in answers] == [("confirm", "client")] * 4
    assert {d["level"] for d in of(events, "log")} <= {"INFO", "SUCCESS", "WARNING", "ERROR"}
    assert of(events, "message")[0] == {"role": "user", "content": IDEA, "cause": "UserRequirement"}
    states = [d["state"] for d in of(events, "status")]
    assert states[0] == "running" and "waiting" in states


async def test_a_change_answer_reaches_the_planner(gw: Any) -> None:
    from metagpt.roles.di.data_interpreter import DataInterpreter

    from gateway.integrations.metagpt import attach, new_executor
    from gateway.integrations.metagpt.offline_llm import DemoScript, use

    pipe = gw.pipe("di-change")
    script = DemoScript()

    async def agent() -> None:
        async with pipe, attach(pipe):
            with use(script):
                di = DataInterpreter(auto_run=False, execute_code=new_executor())
                await di.run(IDEA)

    answers = iter([CHANGE])
    run = asyncio.create_task(agent())
    async with Client(gw.url, "di-change") as c:
        events = await drive(c, answer=lambda ev: next(answers, "confirm"))
    await run

    assert final_status(events)["state"] == "done"
    # MetaGPT's planner put the reviewer's words in the next WritePlan prompt ...
    plan_prompts = [p for p in script.prompts if "# Available Task Types:" in p]
    assert len(plan_prompts) == 2
    assert CHANGE not in plan_prompts[0] and f"user: {CHANGE}" in plan_prompts[1]
    # ... the remade plan carries them, and so does the code of the changed task.
    first_answer = next(i for i, ev in enumerate(events) if ev.k == "answer")
    later_plans = [ev.d for ev in events[first_answer:] if ev.k == "plan"]
    assert CHANGE in later_plans[0]["tasks"][1]["instruction"]
    assert CHANGE not in later_plans[0]["tasks"][0]["instruction"]
    code2 = [d for d in of(events, "code") if d["task"] == "2"]
    assert CHANGE in code2[0]["source"]
    assert of(events, "ask")[1]["prompt"].startswith("This is a <task> review")


async def test_two_runs_at_once_do_not_mix(gw: Any) -> None:
    from metagpt.roles.di.data_interpreter import DataInterpreter

    from gateway.integrations.metagpt import attach, new_executor
    from gateway.integrations.metagpt.offline_llm import use

    ideas = {"mix-a": "alpha alpha beta", "mix-b": "gamma delta delta delta epsilon"}

    async def agent(sid: str, level: str) -> None:
        pipe = gw.pipe(sid)
        async with pipe, attach(pipe, log_level=level):  # both on this one loop
            with use():
                di = DataInterpreter(auto_run=True, execute_code=new_executor())
                await di.run(ideas[sid])

    async def watch(sid: str) -> list[Any]:
        async with Client(gw.url, sid) as c:
            return await drive(c)

    results = await asyncio.gather(watch("mix-a"), watch("mix-b"), agent("mix-a", "INFO"), agent("mix-b", "WARNING"))
    by_sid = dict(zip(ideas, results[:2], strict=True))
    for sid, events in by_sid.items():
        other = next(s for s in ideas if s != sid)
        assert final_status(events)["state"] == "done"
        assert {d["goal"] for d in of(events, "plan")} == {ideas[sid]}
        sources = "\n".join(d["source"] for d in of(events, "code"))
        assert repr(ideas[sid]) in sources and ideas[other] not in sources
        streamed = "".join(texts(events).values())
        assert ideas[other] not in streamed
        words = len(ideas[sid].split())
        assert any(f"{words} words" in d["text"] for d in of(events, "output"))
    assert not set(texts(by_sid["mix-a"])) & set(texts(by_sid["mix-b"]))
    # each run has its own log level
    assert "INFO" in {d["level"] for d in of(by_sid["mix-a"], "log")}
    assert "INFO" not in {d["level"] for d in of(by_sid["mix-b"], "log")}


async def test_a_run_in_a_thread_streams_gap_free(gw: Any) -> None:
    # The data_interpreter app runs MetaGPT in its own thread and event loop.
    async with Client(gw.url, "thread-1", start=start("data_interpreter", review=False)) as c:
        events = []
        async for ev in c:
            events.append(ev)
            if ev.k == "code" and len(of(events, "code")) == 1:
                await c.ping()  # the gateway's loop answers while the agent works
            if final(ev):
                break
    assert final_status(events)["state"] == "done"
    assert [ev.seq for ev in events] == list(range(1, len(events) + 1))
    assert len(texts(events)) == 4
    assert [d["id"] for d in of(events, "task") if d["status"] == "done"] == ["1", "2", "3"]


@pytest.mark.parametrize("when", ["ask", "code"])
async def test_cancel_ends_the_run_cancelled(gw: Any, when: str) -> None:
    review = when == "ask"
    sid = f"cancel-{when}"
    async with Client(gw.url, sid, start=start("data_interpreter", review=review)) as c:
        events = []
        async for ev in c:
            events.append(ev)
            if ev.k == when and len(of(events, when)) == 1:
                assert (await c.cancel("enough")).ok
            if final(ev):
                break
    assert final_status(events) == {"state": "cancelled", "detail": "enough"}
    assert "done" not in {d["status"] for d in of(events, "task")}
    if review:
        assert of(events, "answer")[-1]["by"] == "closed"  # the open ask was withdrawn
    # (the autouse fixture checks that the run's kernel is gone)


async def test_cancel_reaches_a_run_attached_by_hand(gw: Any) -> None:
    from metagpt.roles.di.data_interpreter import DataInterpreter

    from gateway.integrations.metagpt import attach, new_executor
    from gateway.integrations.metagpt.offline_llm import use

    pipe = gw.pipe("cancel-attach")

    async def agent() -> None:
        async with pipe, attach(pipe):
            with use():
                di = DataInterpreter(auto_run=True, execute_code=new_executor())
                await di.run(IDEA)

    run = asyncio.create_task(agent())
    async with Client(gw.url, "cancel-attach") as c:
        events = []
        async for ev in c:
            events.append(ev)
            if ev.k == "output" and len(of(events, "output")) == 1:
                await c.cancel("stop")
            if final(ev):
                break
    with pytest.raises(asyncio.CancelledError):
        await run
    assert final_status(events)["state"] == "cancelled"


async def test_an_unanswered_review_settles_to_its_default(gw: Any) -> None:
    input = {"review_timeout": 0.05, "review_default": "confirm"}
    async with Client(gw.url, "timeout-1", start=start("data_interpreter", **input)) as c:
        events = await drive(c, answer=lambda ev: None)  # nobody answers
    assert final_status(events)["state"] == "done"
    asks = of(events, "ask")
    assert len(asks) == 4 and all(a["timeout"] == 0.05 and a["default"] == "confirm" for a in asks)
    assert [(a["value"], a["by"]) for a in of(events, "answer")] == [("confirm", "timeout")] * 4


async def test_exit_answer_ends_the_run_not_the_gateway(gw: Any) -> None:
    async with Client(gw.url, "exit-1", start=start("data_interpreter")) as c:
        events = await drive(c, answer=lambda ev: "exit")
    assert final_status(events) == {"state": "cancelled", "detail": "exit"}
    async with Client(gw.url, "exit-2", start=start("data_interpreter", review=False)) as c:
        assert final_status(await drive(c))["state"] == "done"  # the gateway still runs MetaGPT


async def test_team_app_with_a_human_critic(gw: Any) -> None:
    critique = "Critique: make it shorter"
    run = start("team", idea="a launch plan for a tiny library", review=True)
    async with Client(gw.url, "team-1", start=run) as c:
        events = await drive(c, answer=lambda ev: critique)
    assert final_status(events)["state"] == "done"
    said = [(d.get("name"), d["content"]) for d in of(events, "message")]
    assert said[0] == (None, "a launch plan for a tiny library")
    assert [name for name, _ in said[1:]] == ["Ada", "Cy", "Ada"]
    assert said[2][1] == critique and said[3][1].startswith("Revised draft")
    ask = of(events, "ask")[0]
    assert ask["kind"] == "input" and "## Critique request" in ask["prompt"]
    assert len(texts(events)) == 2  # the Writer's two LLM calls; the human streams nothing


async def test_bad_input_fails_the_run(gw: Any) -> None:
    async with Client(gw.url, "bad-1", start={"app": "team", "input": {"nope": 1}}) as c:
        events = await drive(c)
    assert final_status(events)["state"] == "failed"
    assert "nope" in final_status(events)["detail"]
