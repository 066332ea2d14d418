"""MetaGPT through the OpenAI-compatible endpoint (docs/openai.md), and MetaGPT's own ``msg2stream`` pattern.

The official ``openai`` SDK follows a DataInterpreter run on the offline
scripted LLM, confirming each review in the same conversation, while a
WebSocket client watches the same session.  Then MetaGPT's
``examples/stream_output_via_api.py`` serving loop (``yield
stream_pipe.msg2stream(msg)`` into a streaming response) runs with a
``WebPipe`` in place of MetaGPT's ``StreamPipe``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import pytest
from http_support import serve
from mg_helpers import drive, final_status, of, texts
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from support import TIMEOUT

from gateway import Gateway, MemoryStore
from gateway.client import Client

pytestmark = [
    pytest.mark.metagpt,
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

IDEA = "Count the words in this short idea"
#: A DataInterpreter step (a kernel starting, MetaGPT importing) takes seconds on a loaded machine.
SLOW = 12 * TIMEOUT


async def test_the_sdk_follows_a_data_interpreter_run_and_confirms_each_review(gw: Any) -> None:
    oa = AsyncOpenAI(base_url=f"{gw.http_url}v1", api_key="none", timeout=SLOW, max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": IDEA}]
    body: dict[str, Any] = {"wirepipe": {"input": {"idea": IDEA, "delay": 0}}}
    replies: list[str] = []
    asks: list[dict[str, Any]] = []
    watcher: asyncio.Task[list[Any]] | None = None
    try:
        while True:
            stream = await oa.chat.completions.create(
                model="data_interpreter", messages=messages, stream=True, extra_body=body
            )
            chunks = [c async for c in stream]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            replies.append(text)
            extra = wp(chunks[-1])
            if watcher is None:  # the session is known from the first reply on: watch it over a WebSocket
                watcher = asyncio.create_task(watch(gw.url, extra["session"]))
            if extra["state"] != "waiting":
                break
            asks.append(extra["ask"])
            assert len(asks) <= 4, "more reviews than the plan's and its three tasks'"
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "confirm"}]
            body = {}
        events = await asyncio.wait_for(watcher, SLOW)
    finally:
        if watcher is not None:
            watcher.cancel()
    assert extra["state"] == "done" and len(replies) == 5  # the plan's review, three tasks', the end
    whole = "".join(replies)
    assert f"📋 **Proposed plan**: {IDEA}" in whole and "✅ 3. Report the findings in one sentence" in whole
    assert "```python\nidea = " in whole  # code
    assert "7 words, 7 distinct" in whole  # its output
    assert "the most common word is 'count' (1x)." in whole  # the final answer
    assert "`INFO` ready to WriteAnalysisCode" in whole  # logs at INFO
    assert replies[-1].rstrip().endswith("✅ **Run done.**")
    assert all(r.startswith(f"*wirepipe session `{extra['session']}`*") for r in replies)
    # The WebSocket client saw the same run: the same asks, each closed by the chat's answer.
    assert final_status(events)["state"] == "done"
    assert [a["id"] for a in of(events, "ask")] == [a["id"] for a in asks]
    assert [(a["value"], a["by"]) for a in of(events, "answer")] == [("confirm", "client")] * 4
    streamed = "".join(texts(events).values())
    assert streamed and all(part in whole for part in streamed.split("\n") if part.strip())


def wp(obj: Any) -> dict[str, Any]:
    """The ``wirepipe`` extension of a chunk or a completion (docs/openai.md)."""
    extra = obj.model_extra
    assert extra is not None
    out: dict[str, Any] = extra["wirepipe"]
    return out


async def watch(url: str, sid: str) -> list[Any]:
    async with Client(url, sid) as c:
        return await drive(c)  # no answers: the chat gives them


async def test_metagpts_stream_output_example_runs_with_a_web_pipe(metagpt_root: Any) -> None:
    """MetaGPT's ``examples/stream_output_via_api.py``, its ``StreamPipe`` swapped for a ``WebPipe``.

    The example's ``stream_pipe_log`` (MetaGPT's LLM-stream function) calls
    ``stream_pipe.set_message(content)`` in the agent's thread, and its
    route yields ``stream_pipe.msg2stream(msg)`` for each piece of output
    into a streaming response.  MetaGPT's ``StreamPipe`` is its own queue
    (``get_message`` reads back ``set_message``); a ``WebPipe``'s
    ``get_message`` is the human's channel, so here the pieces travel by a
    queue of the test's.  The official SDK and MetaGPT's line reader read
    the response; a WebSocket client of the session sees the same text.
    """
    import metagpt.logs as mlogs
    from metagpt.llm import LLM
    from metagpt.utils.stream_pipe import StreamPipe

    from gateway.integrations.metagpt.offline_llm import use

    stream_pipe_var: ContextVar[Any] = ContextVar("stream_pipe")
    pieces: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def stream_pipe_log(content: str) -> None:  # the example's, and a copy for the serving loop
        stream_pipe = stream_pipe_var.get(None)
        if stream_pipe:
            stream_pipe.set_message(content)
            pieces.put(content)

    def write_tutorial(message: dict[str, Any], stream_pipe: Any) -> Iterator[bytes]:
        async def main(idea: str, stream_pipe: Any) -> None:
            stream_pipe_var.set(stream_pipe)
            with use():
                await LLM().aask(f"## Draft request\nIdea: {idea}\n")

        def thread_run(idea: str, stream_pipe: Any) -> None:
            try:
                asyncio.run(main(idea, stream_pipe))
            finally:
                pieces.put(None)

        thread = threading.Thread(target=thread_run, args=(message["content"], stream_pipe))
        thread.start()
        while (msg := pieces.get(timeout=TIMEOUT)) is not None:
            yield stream_pipe.msg2stream(msg)
        thread.join()

    pipes: dict[str, Any] = {}

    async def completions(request: Request) -> Response:
        data = json.loads(await request.body())
        last_message = data["messages"][-1]
        pipe = pipes[data["model"]]
        return StreamingResponse(write_tutorial(last_message, pipe), media_type="text/plain")

    previous = getattr(mlogs, "_llm_stream_log", None)
    mlogs.set_llm_stream_logfunc(stream_pipe_log)  # what the example's __main__ does (process-wide)
    try:
        gw = Gateway(host="127.0.0.1", port=None, store=MemoryStore())
        route = Route("/v1/chat/completions", completions, methods=["POST"])
        async with serve(gw, routes=[route]) as srv:
            pipes["web"] = gw.pipe("mg-example")
            pipes["metagpt"] = StreamPipe()
            oa = AsyncOpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key="none", max_retries=0)
            request: ChatCompletionMessageParam = {"role": "user", "content": "pipes"}
            async with Client(f"ws://127.0.0.1:{srv.port}/agents/", "mg-example") as ws:
                stream = await oa.chat.completions.create(model="web", messages=[request], stream=True)
                sdk_text = "".join([c.choices[0].delta.content or "" async for c in stream])
                pipes["web"].close()
                seen = await ws.until(lambda e: e.k == "status" and e.d["state"] == "done")
            # MetaGPT's own pipe, read line by line as MetaGPT users read it (its single
            # newline makes every chunk one event for an SSE parser such as the SDK's).
            lines: dict[str, list[str]] = {}
            async with srv_client(srv.port) as http:
                for model in ("web", "metagpt"):
                    r = await http.post("/v1/chat/completions", json={"model": model, "messages": [request]})
                    lines[model] = [
                        json.loads(line[6:])["choices"][0]["delta"]["content"]
                        for line in r.text.splitlines()
                        if line.startswith("data: ")
                    ]
    finally:
        mlogs.set_llm_stream_logfunc(previous)
    assert sdk_text.startswith("Draft on pipes: state the goal, list the steps, and ask for feedback early.")
    assert lines["web"] == lines["metagpt"] and "".join(lines["web"]) == sdk_text
    assert "".join(e.d["delta"] for e in seen if e.k == "text") == sdk_text  # set_message reached the gateway


def srv_client(port: int) -> Any:
    import httpx

    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT)
