"""The web UI in a real browser (Debian's chromium), against an in-process gateway.

What a person would check: a run started from the URL shows its plan, its
streamed text and its code; an ask is answered with a click and disappears
on every page; a socket cut by the server mid-run heals with every event on
the page exactly once; a reload resumes; odd and hostile payloads render as
text; the page reads well on a desktop and on a phone (screenshots land in
tests/e2e/artifacts/).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from playwright.async_api import expect
from support import native

from gateway import Gateway, MemoryStore, WebPipe
from gateway.compression import COMPRESS_MIN_BYTES, LeanDeflate
from gateway.config import App

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


# ---- apps the tests run -------------------------------------------------------


async def zoo_app(pipe: WebPipe, value: Any) -> None:
    """Every event kind once, hostile strings included, and a text stream left
    open across a free-text ask (so a reload must rebuild it from a snapshot)."""
    pipe.emit(
        "plan",
        {
            "goal": "<img src=x onerror=\"window.__xss='plan'\">",
            "tasks": [{"id": "1", "instruction": "<b>not bold</b>", "deps": [], "type": "other", "status": "pending"}],
            "current": None,
        },
    )
    pipe.emit("task", {"id": "1", "status": "running"})
    pipe.text("<script>window.__xss='text'</script> ", id="s1")
    pipe.text("done.", id="s1", end=True)
    pipe.emit(
        "message",
        {
            "role": "assistant",
            "content": "<img src=x onerror=\"window.__xss='msg'\">",
            "name": "Zoo",
            "cause": "UserRequirement",
        },
    )
    pipe.emit("code", {"id": "c1", "lang": "python", "source": "print('<i>hi</i>')"})
    pipe.emit("output", {"id": "c1", "stream": "stdout", "text": "<i>hi</i>\n"})
    pipe.emit("output", {"id": "c1", "stream": "stderr", "text": "Traceback: oops\n"})
    pipe.emit("output", {"id": "ghost", "stream": "result", "text": "42"})  # code never shown
    pipe.emit("tool", {"name": "Terminal", "type": "json", "value": {"rc": 0, "raw": b"\x00\x01"}})
    for level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        pipe.emit("log", {"level": level, "msg": f"{level.lower()} line <u>x</u>", "logger": "zoo"})
    pipe.emit("sparkle", {"x": "<svg onload=\"window.__xss='unknown'\">"})
    pipe.emit("sparkle", ["not", "a", "map"])
    pipe.emit("task", {"id": "1", "status": "done", "result": "<b>ok</b>"})
    pipe.text("half a thought <", id="open-stream")  # left open on purpose
    answer = await pipe.ask("Your name? <b>", default="Ada <Lovelace>")
    pipe.text(f" {answer}", id="open-stream", end=True)
    pipe.emit("message", {"role": "user", "content": f"name={answer}"})


async def odd_app(pipe: WebPipe, value: Any) -> None:
    """Payloads of the wrong shape under known kinds (the gateway checks only required keys)."""
    pipe.emit("plan", {"goal": None, "tasks": "not a list"})
    pipe.emit("task", {"id": 7, "status": "exploded", "result": {"nested": [1, None]}})
    pipe.emit("text", {"id": 3, "delta": 42})
    pipe.emit("text", {"id": 3, "delta": None, "end": "yes"})
    pipe.emit("code", {"id": "c", "lang": None, "source": None})
    pipe.emit("output", {"id": "c", "stream": '"><b>', "text": ["a", 1]})
    pipe.emit("tool", {"name": None, "type": None, "value": None})
    pipe.emit("log", {"level": 40, "msg": {"not": "a string"}})
    pipe.emit("message", {"role": ["x"], "content": None})
    pipe.emit("answer", {"id": "never-asked", "value": None, "by": None})
    pipe.emit("status", {"state": "waiting", "detail": {"why": "odd"}})
    await pipe.ask("Pick one", choices=[1, {"a": 1}, "three"], default={"a": 1})


# ---- fixtures and helpers --------------------------------------------------------


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def gw(store: MemoryStore) -> AsyncIterator[Gateway]:
    from gateway.integrations.demo import app as demo_app

    apps: dict[str, App] = {"demo": demo_app, "zoo": zoo_app, "odd": odd_app}
    async with Gateway(host="127.0.0.1", port=0, store=store, apps=apps) as gateway:
        yield gateway


def run_url(gw: Gateway, app: str, value: Any) -> str:
    return f"{gw.http_url}?{urlencode({'app': app, 'input': json.dumps(value)})}"


async def sid_of(page: Any) -> str:
    """The sid the page generated and put into its URL (no app/input left there)."""
    await page.wait_for_function("() => new URLSearchParams(location.search).has('sid')")
    url: str = page.url
    query = parse_qs(urlparse(url).query)
    assert set(query) == {"sid"}, page.url
    return query["sid"][0]


async def shown_seqs(page: Any) -> list[int]:
    seqs: list[int] = await page.evaluate(
        "() => [...document.querySelectorAll('[data-seq]')].map(e => Number(e.dataset.seq))"
    )
    return seqs


async def conn_states(page: Any) -> list[str]:
    """Every connection state the page went through (#conn's data-history)."""
    history = await page.locator("#conn").get_attribute("data-history")
    return history.split() if history else []


async def head_of(store: MemoryStore, sid: str) -> int:
    info = await store.info(sid)
    assert info is not None
    return info.head


async def assert_each_event_once(page: Any, store: MemoryStore, sid: str) -> list[int]:
    """Every event 1..head is on the page exactly once, and the page saw no slip."""
    head = await head_of(store, sid)
    seqs = await shown_seqs(page)
    dupes = sorted(s for s, n in Counter(seqs).items() if n > 1)
    assert not dupes, f"shown more than once: {dupes}"
    assert sorted(seqs) == list(range(1, head + 1)), f"missing: {set(range(1, head + 1)) - set(seqs)}"
    stats = await page.evaluate("() => ({...document.getElementById('feed').dataset})")
    assert stats["duplicates"] == "0" and stats["gaps"] == "0" and stats["errors"] == "0", stats
    return seqs


async def full_screenshot(page: Any, path: Any) -> None:
    """The whole page as one tall viewport, so sticky parts sit where they belong."""
    size = page.viewport_size
    height = await page.evaluate("() => document.documentElement.scrollHeight")
    await page.set_viewport_size({"width": size["width"], "height": height})
    await page.screenshot(path=path)
    await page.set_viewport_size(size)


async def wait_done(page: Any, state: str = "done") -> None:
    await expect(page.locator("#run-status")).to_have_attribute("data-state", state)


# ---- tests ---------------------------------------------------------------------


async def test_run_from_url_answer_ask_by_click(gw: Gateway, store: MemoryStore, open_page: Any) -> None:
    page = await open_page(run_url(gw, "demo", {"steps": 2, "ask": True, "delay": 0}))
    sid = await sid_of(page)
    await expect(page.locator("#sid")).to_have_text(sid)

    await expect(page.locator("#plan-tasks > li")).to_have_count(2)
    await expect(page.locator("#plan-goal")).not_to_be_empty()
    first_text = page.locator(".ev-text .text-body").first
    await expect(first_text).not_to_be_empty()
    await expect(page.locator(".ev-code pre.source").first).not_to_be_empty()

    card = page.locator(".ask-card")
    await expect(card).to_have_count(1)
    # The default choice says so to assistive tech as well as by its look.
    await expect(card.get_by_role("button", name="no (default)", exact=True)).to_be_visible()
    await expect(card.locator(".ask-hint")).to_have_text("Default: no")
    await card.get_by_role("button", name="yes", exact=True).click()

    await expect(card).to_have_count(0)
    await expect(page.locator('[data-k="answer"]')).to_contain_text("yes")
    await wait_done(page)
    await expect(page.locator('#plan-tasks > li[data-status="done"]')).to_have_count(2)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(page.locator("#cancel")).to_be_disabled()  # the run is over
    await assert_each_event_once(page, store, sid)


async def test_server_side_drop_mid_run_shows_each_event_once(gw: Gateway, store: MemoryStore, open_page: Any) -> None:
    page = await open_page(run_url(gw, "demo", {"steps": 6, "ask": True, "delay": 0.05}))
    sid = await sid_of(page)

    for round_ in (1, 2):
        # Cut while the agent streams text: task 2 (then 3) has just started.
        await page.wait_for_selector(f'[data-k="task"] >> nth={round_ * 2}', state="attached")
        seen = len(await conn_states(page))
        assert gw.drop_connections(sid) == 1
        await page.wait_for_function(
            "n => { const s = document.getElementById('conn').dataset.history.split(' ').slice(n);"
            " return s.includes('recovering') && s.at(-1) === 'open'; }",
            arg=seen,
        )

    await page.get_by_role("button", name="yes", exact=True).click()
    await wait_done(page)
    await assert_each_event_once(page, store, sid)
    states = await conn_states(page)
    assert states.count("recovering") == 2 and states[-1] == "open", states
    # Both reconnects resumed (recovered: true): the view was never rebuilt.
    await expect(page.locator("body")).to_have_attribute("data-resets", "1")
    history = await page.locator("#conn").get_attribute("data-history")
    assert "open recovering" in history


async def test_second_page_sees_ask_vanish(gw: Gateway, store: MemoryStore, open_page: Any) -> None:
    first = await open_page(run_url(gw, "demo", {"steps": 1, "ask": True, "delay": 0}), name="first")
    sid = await sid_of(first)
    second = await open_page(f"{gw.http_url}?sid={sid}", name="second")

    for page in (first, second):
        await expect(page.locator(".ask-card")).to_have_count(1)
    await first.get_by_role("button", name="yes", exact=True).click()

    await expect(second.locator(".ask-card")).to_have_count(0)
    await expect(second.locator('[data-k="answer"]')).to_contain_text("yes")
    await expect(second.locator('.ev-ask[data-k="ask"]')).to_have_class("ev ev-ask answered")
    for page in (first, second):
        await wait_done(page)
        await assert_each_event_once(page, store, sid)


async def test_reload_resumes_from_snapshot(gw: Gateway, store: MemoryStore, open_page: Any) -> None:
    page = await open_page(run_url(gw, "zoo", None))
    sid = await sid_of(page)
    await expect(page.locator(".ask-card")).to_have_count(1)
    before = await page.locator("#feed").inner_text()
    plan_before = await page.locator("#plan-panel").inner_text()

    # The URL now says ?sid= only: a reload watches, it does not start again.
    await page.reload()
    await expect(page.locator(".ask-card")).to_have_count(1)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(page.locator("#banner")).to_be_hidden()  # no sid_taken
    await assert_each_event_once(page, store, sid)
    # The open text stream came in the snapshot AND as replayed deltas: shown once.
    assert await page.locator("#feed").inner_text() == before
    assert await page.locator("#plan-panel").inner_text() == plan_before
    stream = page.locator('.ev-text[data-stream="open-stream"] .text-body')
    await expect(stream).to_have_text("half a thought <")

    # Empty answer: the ask's default is sent.
    await page.locator(".ask-card").get_by_role("button", name="Send").click()
    await expect(stream).to_have_text("half a thought < Ada <Lovelace>")
    await expect(page.locator('[data-k="message"]').last).to_contain_text("name=Ada <Lovelace>")
    await wait_done(page)
    await assert_each_event_once(page, store, sid)


async def test_every_kind_renders_as_text(gw: Gateway, store: MemoryStore, open_page: Any) -> None:
    page = await open_page(run_url(gw, "zoo", None))
    sid = await sid_of(page)
    await expect(page.locator(".ask-card")).to_have_count(1)
    await assert_each_event_once(page, store, sid)

    # Hostile strings are text: nothing ran, no element was made from them.
    assert await page.evaluate("() => window.__xss") is None
    assert await page.locator("main img, main svg, main script, main u, main i").count() == 0
    await expect(page.locator("#plan-goal")).to_have_text("<img src=x onerror=\"window.__xss='plan'\">")
    await expect(page.locator('.ev-text[data-stream="s1"] .text-body')).to_have_text(
        "<script>window.__xss='text'</script> done."
    )
    await expect(page.locator('.ev-text[data-stream="s1"]')).to_have_class("ev ev-text stream card-ev ended")
    await expect(page.locator('[data-k="message"]').first).to_contain_text('onerror="window.__xss')

    # Output grouped under its code cell, by stream; output of unknown code gets its own cell.
    cell = page.locator('.ev-code[data-code-id="c1"]')
    await expect(cell.locator(".out-stdout")).to_have_text("<i>hi</i>\n")
    await expect(cell.locator(".out-stderr")).to_have_text("Traceback: oops\n")
    await expect(page.locator('.ev-code.orphan[data-code-id="ghost"] .out-result')).to_have_text("42")
    await expect(page.locator('[data-k="tool"]')).to_contain_text('"rc": 0')
    await expect(page.locator('[data-k="tool"]')).to_contain_text("<2 bytes>")
    unknown = page.locator('[data-k="sparkle"]')
    await expect(unknown).to_have_count(2)
    await expect(unknown.nth(1)).to_contain_text('"not"')
    await expect(page.locator('#plan-tasks > li[data-status="done"]')).to_have_count(1)

    # The log level filter hides what is below the chosen level.
    logs = page.locator('#logs [data-k="log"]')
    await expect(logs).to_have_count(4)
    await page.get_by_label("Level").select_option(label="WARNING")
    await expect(logs.filter(visible=True)).to_have_count(2)
    await expect(page.locator('#logs [data-level="debug"]')).to_be_hidden()
    await expect(page.locator('#logs [data-level="error"]')).to_be_visible()
    await page.get_by_label("Level").select_option(label="DEBUG")
    await expect(logs.filter(visible=True)).to_have_count(4)

    await page.get_by_label("Your answer").fill("Grace")
    await page.get_by_label("Your answer").press("Enter")
    await expect(page.locator(".ask-card")).to_have_count(0)
    await wait_done(page)
    await assert_each_event_once(page, store, sid)


async def test_odd_payloads_never_break_the_page(gw: Gateway, store: MemoryStore, open_page: Any) -> None:
    page = await open_page(run_url(gw, "odd", None))
    sid = await sid_of(page)
    card = page.locator(".ask-card")
    await expect(card.get_by_role("button")).to_have_count(3)
    await assert_each_event_once(page, store, sid)  # also: no render errors
    # The plan panel shows the reducer's state (protocol/state.py): tasks that are
    # not a list are none, and an update for a task the plan lacks is not added.
    await expect(page.locator("#plan-tasks > li")).to_have_count(0)
    await expect(page.locator('[data-k="task"]')).to_contain_text("exploded")
    await expect(page.locator('#logs [data-k="log"]')).to_have_class("log lvl-3")
    await expect(page.locator('.ev-text[data-stream="3"] .text-body')).to_have_text("42")
    await expect(page.locator("#run-status")).to_have_attribute("data-state", "waiting")

    # A non-string choice goes back as the value it was, not as its label.
    await card.get_by_role("button", name='{"a":1} (default)').click()
    await expect(card).to_have_count(0)
    await expect(page.locator('[data-k="answer"]').last).to_contain_text('{"a":1}')
    await wait_done(page)
    await assert_each_event_once(page, store, sid)


async def test_forms_start_watch_and_cancel(gw: Gateway, store: MemoryStore, open_page: Any) -> None:
    page = await open_page(gw.http_url)
    await expect(page.locator("#controls")).to_have_attribute("open", "")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "idle")
    await page.get_by_label("App name").fill("demo")
    await page.get_by_label("Input").fill('{"steps": 1, "ask": true, "delay": 0}')
    await page.get_by_role("button", name="Start run").click()
    sid = await sid_of(page)
    await expect(page.locator(".ask-card")).to_have_count(1)

    watcher = await open_page(gw.http_url, name="watcher")
    await watcher.get_by_label("Session id").fill(sid)
    await watcher.get_by_role("button", name="Watch").click()
    await expect(watcher.locator(".ask-card")).to_have_count(1)

    cancel = page.get_by_role("button", name="Cancel run")
    await cancel.click()  # arms
    await page.get_by_role("button", name="Really cancel?").click()
    for p in (page, watcher):
        await wait_done(p, "cancelled")
        await expect(p.locator(".ask-card")).to_have_count(0)
        await assert_each_event_once(p, store, sid)


async def test_viewer_is_read_only(store: MemoryStore, open_page: Any) -> None:
    from gateway.integrations.demo import app as demo_app

    def auth(credential: str | None, sid: str) -> str:
        return "operator" if credential == "op-secret" else "viewer"

    async with Gateway(host="127.0.0.1", port=0, store=store, apps={"demo": demo_app}, auth=auth) as gw:
        query = urlencode({"app": "demo", "input": '{"steps": 1, "delay": 0}', "auth": "op-secret"})
        operator = await open_page(f"{gw.http_url}?{query}", name="operator")
        sid = await sid_of(operator)  # the credential left the address bar too
        viewer = await open_page(f"{gw.http_url}?sid={sid}", name="viewer")

        await expect(viewer.locator("#grant")).to_have_text("viewer · read-only")
        await expect(viewer.get_by_role("button", name="yes", exact=True)).to_be_disabled()
        await expect(viewer.get_by_role("button", name="Cancel run")).to_be_disabled()
        await expect(viewer.locator("#send-box")).to_be_hidden()
        await expect(operator.locator("#grant")).to_be_hidden()
        await expect(operator.get_by_role("button", name="Cancel run")).to_be_enabled()

        await operator.get_by_role("button", name="yes", exact=True).click()
        await expect(viewer.locator(".ask-card")).to_have_count(0)
        await wait_done(viewer)
        await assert_each_event_once(viewer, store, sid)


async def test_unknown_app_is_reported(gw: Gateway, open_page: Any) -> None:
    page = await open_page(run_url(gw, "no-such-app", None))
    await expect(page.locator("#banner")).to_contain_text("no_app")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "closed")
    await expect(page.locator("#banner").get_by_role("button", name="Reconnect")).to_be_visible()


async def test_screenshots_desktop_and_phone(gw: Gateway, store: MemoryStore, open_page: Any, artifacts: Any) -> None:
    """Saves artifacts/ui-*.png for a person to look at; checks the phone layout fits."""
    desktop = await open_page(run_url(gw, "demo", {"steps": 3, "ask": True, "delay": 0}), name="desktop")
    sid = await sid_of(desktop)
    await expect(desktop.locator(".ask-card")).to_have_count(1)
    phone = await open_page(f"{gw.http_url}?sid={sid}", viewport=PHONE, name="phone")
    await expect(phone.locator(".ask-card")).to_have_count(1)

    # One column on the phone, nothing wider than the screen.
    assert await phone.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    plan_box = await phone.locator("#plan-panel").bounding_box()
    feed_box = await phone.locator("#feed-panel").bounding_box()
    assert plan_box and feed_box and feed_box["y"] >= plan_box["y"] + plan_box["height"]
    # Columns on the desktop: the plan beside the feed (on its right).
    plan_box = await desktop.locator("#plan-panel").bounding_box()
    feed_box = await desktop.locator("#feed-panel").bounding_box()
    assert plan_box and feed_box and plan_box["x"] >= feed_box["x"] + feed_box["width"]
    assert await desktop.evaluate("() => document.documentElement.scrollWidth") <= DESKTOP["width"]

    for page, name in ((desktop, "desktop"), (phone, "phone")):
        await full_screenshot(page, artifacts / f"ui-{name}-full.png")
        await page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
        await page.screenshot(path=artifacts / f"ui-{name}.png")
    await desktop.get_by_role("button", name="yes", exact=True).click()
    await wait_done(phone)
    await phone.evaluate("() => window.scrollTo(0, 0)")
    await phone.screenshot(path=artifacts / "ui-phone-done.png")

    kinds = await open_page(run_url(gw, "zoo", None), name="kinds")
    await expect(kinds.locator(".ask-card")).to_have_count(1)
    await full_screenshot(kinds, artifacts / "ui-kinds-full.png")


async def test_compressed_and_plain_frames_reach_the_page(gw: Gateway, store: MemoryStore, open_page: Any) -> None:
    """Chromium offers permessage-deflate: the gateway takes it without context takeover and
    compresses only frames of 1 KiB and more (gateway/compression.py); the page reads both."""
    sid = "deflate-e2e"
    pipe = gw.pipe(sid)
    page = await open_page(f"{gw.http_url}?sid={sid}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    (conn,) = list(gw._conns)
    (ext,) = native(conn).protocol.extensions
    assert isinstance(ext, LeanDeflate)
    source = "\n".join(f"print({i}, 'wirepipe')" for i in range(400))
    assert len(source) > 4 * COMPRESS_MIN_BYTES
    pipe.emit("code", {"id": "big", "lang": "python", "source": source})
    pipe.emit("log", {"level": "INFO", "msg": "a small one", "logger": "e2e"})
    await expect(page.locator('#logs [data-k="log"]')).to_contain_text("a small one")
    shown = await page.locator(".ev-code pre.source").evaluate("e => e.textContent")
    assert shown == source
    assert not hasattr(ext, "encoder") and not hasattr(ext, "decoder")  # no zlib state left
    await assert_each_event_once(page, store, sid)


async def test_the_page_through_a_fastapi_mount(store: MemoryStore, open_page: Any) -> None:
    """``gw.asgi()`` mounted at /agents in FastAPI under uvicorn: the page, its files and its WebSocket all under it."""
    from http_support import AsgiGateway, serve

    from gateway.asgi_ws import AsgiConnection
    from gateway.integrations.demo import app as demo_app

    gw = AsgiGateway(host="127.0.0.1", port=0, store=store, apps={"demo": demo_app})
    async with serve(gw, fastapi=True) as served:
        gw.served = served
        page = await open_page(run_url(gw, "demo", {"steps": 2, "ask": True, "delay": 0}))
        sid = await sid_of(page)
        assert page.url.startswith(gw.http_url)
        card = page.locator(".ask-card")
        await expect(card).to_have_count(1)
        (conn,) = list(gw._conns)
        assert isinstance(conn, AsgiConnection)  # through the mount, not the gateway's own port
        await card.get_by_role("button", name="yes", exact=True).click()
        await wait_done(page)
        await expect(page.locator("#start-apps option")).to_have_count(1)  # GET apps, beside the page
        await assert_each_event_once(page, store, sid)
        await page.goto("about:blank")  # leave before uvicorn stops
