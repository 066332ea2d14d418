"""``RunWidget``'s kernel side against a real gateway, without a kernel (ipywidgets' comm is then a no-op).

What the traits say, a new run under the sid, a refusal, ``close()``, and
what the Python side makes of a gateway URL.  The widget in a real kernel
is tests/gateway/test_notebook_kernel.py; in a real browser,
tests/e2e/test_notebook.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from support import TIMEOUT

from gateway import Gateway
from gateway.client import Client
from gateway.integrations.demo import app as demo_app
from gateway.notebook import RunWidget, http_base, watch
from protocol import RemoteError


async def changed(w: RunWidget, pred: Callable[[], bool], *names: str) -> None:
    """Until ``pred()`` holds, checked whenever one of the traits ``names`` changes."""
    hit = asyncio.Event()

    def check(_change: Any) -> None:
        if pred():
            hit.set()

    w.observe(check, names=list(names))
    try:
        if not pred():
            await asyncio.wait_for(hit.wait(), TIMEOUT)
    finally:
        w.unobserve(check, names=list(names))


async def test_the_traits_follow_the_run_and_code_answers_it(make_gw: Any) -> None:
    gw: Gateway = await make_gw(apps={"demo": demo_app})
    w = watch(gw.url, "w1", start={"app": "demo", "input": {"steps": 2, "delay": 0}})
    try:
        assert (w.url, w.sid, w.base, w.needs_auth) == (gw.url, "w1", http_base(gw.url), False)
        ask = await w.next_ask()
        assert ask["prompt"] == "Ship the result?" and w.status == "waiting"
        assert [t["status"] for t in w.plan["tasks"]] == ["done", "done"]
        assert await w.reply(ask["id"], "no") is True
        assert await w.wait() == "done"
        assert w.asks == [] and w.error == "" and w.finished and w.conn == "open"
        assert w.snapshot.status == {"state": "done"}
        with pytest.raises(RemoteError, match="no ask is open"):
            await w.next_ask()
    finally:
        w.close()


async def test_a_new_run_under_the_sid_resets_the_traits(make_gw: Any) -> None:
    gw: Gateway = await make_gw()
    p1 = gw.pipe("again")
    p1.emit("plan", {"goal": "first", "tasks": []})
    p1.close()
    w = Client(gw.url, "again").widget()
    try:
        assert await w.wait() == "done" and w.plan["goal"] == "first"
        p2 = gw.pipe("again")
        p2.set_message("a text event: no state kind")
        await changed(w, lambda: w.status == "" and w.plan == {}, "status", "plan")
    finally:
        w.close()


async def test_a_refused_start_is_the_error_and_wait_raises_it(make_gw: Any) -> None:
    gw: Gateway = await make_gw()
    w = watch(gw.url, "w2", start={"app": "nope"})
    try:
        with pytest.raises(RemoteError) as raised:
            await w.wait()
        assert raised.value.code == "no_app"
        assert w.error.startswith("no_app: ")
        with pytest.raises(RemoteError):
            await w.next_ask()
    finally:
        w.close()


async def test_close_stops_the_kernels_follow(make_gw: Any) -> None:
    gw: Gateway = await make_gw()
    gw.pipe("open").set_message("still running")
    w = watch(gw.url, "open", auth="t0ken")
    assert w.needs_auth is True and "t0ken" not in repr(w.get_state())
    waiting = asyncio.ensure_future(w.wait())
    w.close()
    with pytest.raises(RemoteError, match="the widget was closed"):
        await asyncio.wait_for(waiting, TIMEOUT)
    await asyncio.gather(w._task, w._closing, return_exceptions=True)
    assert w._task.cancelled() and w.client.ws is None and w.conn == "closed"


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("ws://127.0.0.1:8765/", "http://127.0.0.1:8765/"),
        ("ws://127.0.0.1:8765", "http://127.0.0.1:8765/"),
        ("wss://example.com/agents/", "https://example.com/agents/"),
        ("ws://h:1/agents/ws", "http://h:1/agents/"),
        ("http://h:1/x/", "http://h:1/x/"),
    ],
)
def test_http_base(url: str, base: str) -> None:
    assert http_base(url) == base


@pytest.mark.parametrize("url", ["redis://h:1/", "ws:///nohost", "127.0.0.1:8765"])
def test_http_base_refuses_what_is_not_a_gateway_url(url: str) -> None:
    with pytest.raises(ValueError, match="not a gateway URL"):
        http_base(url)


def test_watch_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        watch("ws://127.0.0.1:1/", "s")
