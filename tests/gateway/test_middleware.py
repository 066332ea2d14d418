"""Middleware: events pass it before they are stored, requests before the agent sees them.

Over a real gateway and real clients: it redacts, drops, enriches and
refuses in order, and a middleware that fails or misbehaves loses nothing
and wedges nothing (docs/middleware.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from support import TIMEOUT, final, replied

from gateway import Gateway, Middleware
from gateway.client import Client
from protocol import Grant, Send


class Redact(Middleware):
    def on_event(self, sid: str, k: str, d: Any) -> tuple[str, Any] | None:
        if k == "log":
            return k, {**d, "msg": d["msg"].replace("hunter2", "***")}
        return k, d


class DropDebug(Middleware):
    def on_event(self, sid: str, k: str, d: Any) -> tuple[str, Any] | None:
        return None if k == "log" and d["level"] == "DEBUG" else (k, d)


class Stamp(Middleware):
    """Enriches what the agent writes and what clients send."""

    def on_event(self, sid: str, k: str, d: Any) -> tuple[str, Any] | None:
        return (k, {**d, "sid": sid}) if k == "log" else (k, d)

    def on_request(self, sid: str, request: Any, grant: Grant) -> Any:
        if isinstance(request, Send):
            return Send({"from": "ui", "body": request.data}, request.rid)
        return request


class NoCancel(Middleware):
    def on_request(self, sid: str, request: Any, grant: Grant) -> Any:
        return None if request.t == "cancel" else request


class Broken(Middleware):
    def on_event(self, sid: str, k: str, d: Any) -> tuple[str, Any] | None:
        raise RuntimeError("bug in on_event")

    def on_request(self, sid: str, request: Any, grant: Grant) -> Any:
        raise RuntimeError("bug in on_request")


class Greedy(Middleware):
    """Tries what it may not: drop the events that steer a run, change their kind, return junk."""

    def on_event(self, sid: str, k: str, d: Any) -> Any:
        if k == "status":
            return None
        if k == "ask":
            return "log", {"level": "INFO", "msg": "no ask for you"}
        if k == "answer":
            return "not a pair"
        if k == "tool":
            return k, {"too": "little"}  # a tool event lacks its keys now
        return k, d


def log_ev(level: str, msg: str) -> dict[str, Any]:
    return {"k": "log", "d": {"level": level, "msg": msg}}


async def test_events_pass_every_middleware_in_order() -> None:
    async with Gateway(port=0, middleware=[DropDebug(), Redact(), Stamp()]) as gw:
        pipe = gw.pipe("mw")
        assert pipe.set_message(log_ev("DEBUG", "noise")) == 0  # dropped: no seq
        assert pipe.set_message(log_ev("INFO", "password hunter2")) == 1
        pipe.set_message("text is left alone")
        pipe.close()
        async with Client(gw.url, "mw") as c:
            evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    assert [e.seq for e in evs] == [1, 2, 3, 4]
    assert [e.k for e in evs] == ["log", "text", "text", "status"]  # the stream's end, then the end
    assert evs[0].d == {"level": "INFO", "msg": "password ***", "sid": "mw"}
    assert evs[1].d["delta"] == "text is left alone"


async def test_requests_pass_every_middleware_and_may_be_refused(raw: Any) -> None:
    async with Gateway(port=0, middleware=[Stamp(), NoCancel()]) as gw:
        pipe = gw.pipe("mw-req")
        async with raw(gw.url) as r:
            await r.hello("mw-req")
            await r.send({"t": "send", "rid": "s1", "data": "hi"})
            assert replied(await r.collect(lambda fs: bool(replied(fs))))[0].ok
            await r.send({"t": "cancel", "rid": "c1"})
            out = replied(await r.collect(lambda fs: bool(replied(fs))))[0]
            assert (out.ok, out.err) == (False, "refused")
        assert await pipe.aget_message(TIMEOUT) == {"from": "ui", "body": "hi"}
        assert not pipe.cancelled
        pipe.close()


async def test_a_failing_middleware_keeps_events_and_refuses_requests(
    raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with Gateway(port=0, middleware=[Broken(), Redact()]) as gw:
        pipe = gw.pipe("mw-broken")
        with caplog.at_level(logging.ERROR, logger="wirepipe.middleware"):
            assert pipe.set_message(log_ev("INFO", "hunter2 kept, still redacted by the next")) == 1
        assert any("bug in on_event" in r.getMessage() or r.exc_info for r in caplog.records)
        async with raw(gw.url) as r:
            await r.hello("mw-broken")
            evs = await r.events(lambda e: e.seq == 1)
            assert evs[0].d["msg"] == "*** kept, still redacted by the next"
            await r.send({"t": "send", "rid": "s1", "data": 1})
            out = replied(await r.collect(lambda fs: bool(replied(fs))))[0]
            assert (out.ok, out.err) == (False, "refused")
            # refused outcomes are not remembered: the same rid may be tried again
            await r.send({"t": "send", "rid": "s1", "data": 1})
            assert replied(await r.collect(lambda fs: bool(replied(fs))))[0].err == "refused"
        pipe.close()


async def test_a_middleware_cannot_wedge_a_run(caplog: pytest.LogCaptureFixture) -> None:
    """Dropping the final status or an ask, changing their kind, or returning junk keeps the event."""
    async with Gateway(port=0, middleware=[Greedy()]) as gw:
        pipe = gw.pipe("mw-greedy")
        async with Client(gw.url, "mw-greedy") as c:
            asked = asyncio.ensure_future(pipe.ask("ship?", ["yes", "no"]))
            evs = await asyncio.wait_for(c.until(lambda e: e.k == "ask"), TIMEOUT)
            assert evs[-1].d["prompt"] == "ship?"
            assert (await c.reply("a1", "yes")).ok
            assert await asyncio.wait_for(asked, TIMEOUT) == "yes"
            with caplog.at_level(logging.ERROR, logger="wirepipe.middleware"):
                pipe.set_message({"k": "tool", "d": {"name": "t", "type": "x", "value": 1}})
            pipe.close()
            evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    assert [e.k for e in evs] == ["answer", "tool", "status"]
    assert evs[0].d["value"] == "yes" and evs[1].d["value"] == 1
    assert evs[-1].d["state"] == "done"
    assert len([r for r in caplog.records if r.name == "wirepipe.middleware"]) >= 1


async def test_serve_takes_middleware_by_name(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from gateway.cli import _add_server_args, _gateway

    (tmp_path / "my_mw.py").write_text(
        "from gateway import Middleware\n"
        "class Quiet(Middleware):\n"
        "    def on_event(self, sid, k, d):\n"
        "        return None if k == 'log' else (k, d)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    parser = argparse.ArgumentParser()
    _add_server_args(parser, 0)
    gw = _gateway(parser.parse_args(["--middleware", "my_mw:Quiet"]))
    assert [type(m).__name__ for m in gw.middleware] == ["Quiet"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--middleware", "my_mw:Missing"])


async def test_the_example_in_docs_middleware_md_works_as_printed(capsys: pytest.CaptureFixture[str]) -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "middleware.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S)
    assert code is not None
    ns: dict[str, Any] = {}
    exec(compile(code.group(1), "docs/middleware.md", "exec"), ns)  # builds `gw`, unstarted
    gw: Gateway = ns["gw"]
    gw.port = 0
    async with gw:
        pipe = gw.pipe("doc")
        pipe.set_message(log_ev("DEBUG", "dropped"))
        pipe.set_message("my key is sk-" + "A" * 24)
        async with Client(gw.url, "doc") as c:
            cancel = await c.cancel()  # Audit refuses every cancel
            pipe.close()
            evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    assert evs[0].k == "text" and evs[0].d["delta"] == "my key is sk-***"
    assert (cancel.ok, cancel.err) == (False, "refused") and not pipe.cancelled
    assert "doc: cancel by operator" in capsys.readouterr().out
