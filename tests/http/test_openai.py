"""The OpenAI-compatible endpoint (docs/openai.md) read by the official ``openai`` SDK, on the gateway's own port.

A real gateway on loopback (the default ``uvicorn`` front) runs the demo
agent, which plans, streams text, runs code, logs and asks "Ship the
result?".  The SDK streams the run, answers the ask with a second request
in the same conversation, and a WebSocket client of the same session sees
the same events and the ask closed by that answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, AuthenticationError, BadRequestError, NotFoundError, PermissionDeniedError
from openai.types.chat import ChatCompletionMessageParam
from support import TIMEOUT

from gateway import Gateway, MemoryStore
from gateway.chat import find_session
from gateway.client import Client
from gateway.config import App
from gateway.http_api import snapshot_of
from gateway.integrations.demo import app as demo
from protocol import Grant

#: The demo's input for tests: one task, no delay between tokens.
QUICK = {"steps": 1, "delay": 0}


def gateway(**kw: Any) -> Gateway:
    apps: dict[str, App] = {"demo": demo}
    kw.setdefault("store", MemoryStore())
    return Gateway(host="127.0.0.1", port=0, apps=apps, **kw)


def sdk(gw: Gateway, key: str = "none", **kw: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gw.http_url}v1", api_key=key, timeout=TIMEOUT, max_retries=0, **kw)


def wp(obj: Any) -> dict[str, Any]:
    """The ``wirepipe`` extension of a chunk or a completion (docs/openai.md)."""
    extra = obj.model_extra
    assert extra is not None
    out: dict[str, Any] = extra["wirepipe"]
    return out


async def collect(stream: Any) -> tuple[str, list[Any]]:
    """The content a chat UI would show, and every chunk."""
    chunks = [c async for c in stream]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


async def test_the_sdk_streams_a_demo_run_and_answers_its_ask_in_the_same_conversation() -> None:
    async with gateway() as gw:
        oa = sdk(gw)
        models = await oa.models.list()
        assert [m.id for m in models.data] == ["demo"]

        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Summarise the data"}]
        stream = await oa.chat.completions.create(
            model="demo", messages=messages, stream=True, extra_body={"wirepipe": {"input": QUICK}}
        )
        text, chunks = await collect(stream)
        sid = find_session([{"role": "assistant", "content": text}])
        assert sid is not None and sid.startswith("chat-")
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        last = chunks[-1]
        assert last.choices[0].finish_reason == "stop"
        extra = wp(last)
        assert extra["session"] == sid and extra["state"] == "waiting"
        assert extra["ask"]["prompt"] == "Ship the result?" and extra["ask"]["choices"] == ["yes", "no"]
        # the plan, the streamed text, the code and its output, INFO logs (not DEBUG), the question
        assert "📋 **Plan**: Summarise a small data set" in text
        assert "Reading the data set, then computing the summary statistics" in text
        assert "```python\ntotal = sum(range(10))\nprint(total)\n```" in text
        assert "```text\n45\n```" in text
        assert "`INFO` task 1 started" in text and "task 1 checked" not in text
        assert "✅ **Task 1** done — step 1 ok" in text
        assert text.rstrip().endswith("Unanswered, it takes `no`.") and "❓ **Ship the result?**" in text

        # A WebSocket client of the same session: it sees the open ask, and the chat's answer closes it.
        async with Client(gw.url, sid) as ws:
            seen = await ws.until(lambda e: e.k == "ask")
            ask = seen[-1]
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "Yes"}]
            second = await oa.chat.completions.create(model="demo", messages=messages, stream=True)
            reply, chunks2 = await collect(second)
            after = await ws.until(lambda e: e.k == "status" and e.d["state"] == "done")
            assert (await ws.reply(ask.d["id"], "no")).err == "ask_closed"
        answer = next(e for e in after if e.k == "answer")
        assert answer.d == {"id": ask.d["id"], "value": "yes", "by": "client"}  # "Yes" is the choice "yes"
        assert f"wirepipe session `{sid}`" in reply
        assert "> answered `yes`" in reply and "**demo**: The human said 'yes'." in reply
        assert reply.rstrip().endswith("✅ **Run done.**")
        assert wp(chunks2[-1])["state"] == "done"
        assert wp(chunks2[-1])["ask"] is None
        # The WebSocket saw every event of the run, in order; the chat showed each one once.
        events = seen + after
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert (text + reply).count("Ship the result?") == 1


async def test_an_answer_given_elsewhere_and_a_non_streaming_request() -> None:
    async with gateway() as gw:
        oa = sdk(gw)
        first = await oa.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "go"}],
            extra_body={"wirepipe": {"input": QUICK, "log_level": "DEBUG"}},
        )
        assert first.object == "chat.completion"
        text = first.choices[0].message.content or ""
        assert first.choices[0].finish_reason == "stop" and wp(first)["state"] == "waiting"
        assert "`DEBUG` task 1 checked" in text and "❓ **Ship the result?**" in text
        sid = find_session([{"role": "assistant", "content": text}])
        assert sid is not None
        # A value that is not a choice: 422 bad_value, and the ask stays open.
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=TIMEOUT) as http:
            r = await http.post(
                "v1/chat/completions",
                json={"model": "demo", "messages": [{"role": "user", "content": "maybe"}]},
                headers={"X-Wirepipe-Session": sid},
            )
        assert r.status_code == 422, r.text
        assert r.json()["error"] == {
            "message": "'maybe' is not one of the choices: yes, no",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "bad_value",
        }
        # Number 2 is the second choice; the header names the session this time.
        done = await oa.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "2"}], extra_headers={"X-Wirepipe-Session": sid}
        )
        assert wp(done)["state"] == "done"
        assert "The human said 'no'." in (done.choices[0].message.content or "")
        # The run ended: a late or repeated message in the conversation starts no run of its own
        # (one conversation, one run), with or without the same Idempotency-Key.
        for key in ("k-late", "k-late"):
            r = await http_post(gw, sid, "yes", key)
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "ended" and "start a new conversation" in err["message"], err
        got = await snapshot_of(gw, sid)
        assert got is not None and got[0].epoch == wp(first)["epoch"]  # still the first run


async def http_post(gw: Gateway, sid: str, text: str, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=TIMEOUT) as http:
        return await http.post(
            "v1/chat/completions",
            json={"model": "demo", "messages": [{"role": "user", "content": text}]},
            headers={"X-Wirepipe-Session": sid, "Idempotency-Key": key},
        )


async def test_bad_requests_get_the_openai_error_shape() -> None:
    tokens = {"op": Grant.OPERATOR, "view": Grant.VIEWER}
    async with gateway(auth=lambda cred, sid: tokens.get(cred or "")) as gw:
        oa = sdk(gw, "op")
        with pytest.raises(NotFoundError) as nf:
            await oa.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        assert nf.value.status_code == 404
        assert nf.value.body == {
            "message": "no model 'nope': GET /v1/models lists them",
            "type": "not_found_error",
            "param": "model",
            "code": "no_app",
        }
        with pytest.raises(BadRequestError) as bad:
            await oa.chat.completions.create(model="demo", messages=[])
        assert isinstance(bad.value.body, dict)
        assert (bad.value.body["code"], bad.value.body["param"]) == ("bad_frame", "messages")
        with pytest.raises(PermissionDeniedError) as viewer:
            await sdk(gw, "view").chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        assert isinstance(viewer.value.body, dict)
        assert (viewer.value.body["code"], viewer.value.body["type"]) == ("forbidden", "permission_error")
        with pytest.raises(AuthenticationError) as unauth:
            await sdk(gw, "wrong").models.list()
        assert isinstance(unauth.value.body, dict) and unauth.value.body["code"] == "unauthorized"
        assert (await sdk(gw, "view").models.list()).data[0].id == "demo"  # a viewer may list
        # Another site's page: the front door refuses it before any route, in the same shape.
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=TIMEOUT) as http:
            r = await http.post(
                "v1/chat/completions",
                json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Origin": "https://evil.example", "Authorization": "Bearer op"},
            )
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "forbidden" and r.json()["error"]["type"] == "permission_error"
            r = await http.post("v1/chat/completions", content=b"not json", headers={"Authorization": "Bearer op"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_frame"
            # A message with no text, more than one choice, a stream flag that is not a boolean: 400, no run.
            for body, param in (
                ({"messages": [{"role": "user", "content": None}]}, "messages"),
                ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
                ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
                ({"messages": [{"role": "user", "content": "hi"}], "stream": "true"}, "stream"),
            ):
                r = await http.post(
                    "v1/chat/completions", json={"model": "demo", **body}, headers={"Authorization": "Bearer op"}
                )
                assert r.status_code == 400, (body, r.text)
                assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("bad_frame", param)
        assert not gw.runs.sessions  # no request above started a run


async def test_a_page_of_the_same_origin_reads_the_stream_with_fetch() -> None:
    """What a browser's fetch sends and gets: CORS preflight for the SDK's headers, then the event stream."""
    async with gateway() as gw:
        origin = gw.http_url.rstrip("/")
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=TIMEOUT) as http:
            pre = await http.options(
                "v1/chat/completions",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
                },
            )
            assert pre.status_code == 204
            assert pre.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
            body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            body["wirepipe"] = {"input": {**QUICK, "ask": False}}
            lines = []
            async with http.stream("POST", "v1/chat/completions", json=body, headers={"Origin": origin}) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                assert r.headers["access-control-allow-origin"] == origin
                assert "X-Wirepipe-Session" in r.headers["access-control-expose-headers"]
                async for line in r.aiter_lines():
                    lines.append(line)
        data = [line[6:] for line in lines if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        assert all(line == "" or line.startswith(("data: ", ":")) for line in lines)


async def test_a_cut_stream_leaves_the_run_going() -> None:
    """A chat client that leaves mid-reply detaches: the run goes on, and the next message continues it."""
    async with gateway() as gw:
        oa = sdk(gw)
        stream = await oa.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "go"}],
            stream=True,
            extra_body={"wirepipe": {"input": {**QUICK, "delay": 0.001}}},
        )
        head = await anext(aiter(stream))
        sid = wp(head)["session"]
        await stream.close()
        await gw.asgi().wait_streams(lambda n: n == 0)
        s = gw.runs.sessions[sid]
        async with Client(gw.url, sid) as ws:
            await ws.until(lambda e: e.k == "ask")
        assert not s.ended
        done = await oa.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "yes"}], extra_headers={"X-Wirepipe-Session": sid}
        )
        assert wp(done)["state"] == "done"
        await asyncio.wait_for(s.drained(), TIMEOUT)


async def test_with_usage_the_last_chunk_before_done_still_says_the_state() -> None:
    """``stream_options.include_usage`` adds a usage chunk last: it carries ``wirepipe`` too (docs/openai.md)."""
    async with gateway() as gw:
        oa = sdk(gw)
        chunks = [
            c
            async for c in await oa.chat.completions.create(
                model="demo",
                messages=[{"role": "user", "content": "go"}],
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"wirepipe": {"input": {**QUICK, "ask": False}}},
            )
        ]
        last = chunks[-1]
        assert last.usage is not None and last.choices == []
        assert wp(last)["state"] == "done"
