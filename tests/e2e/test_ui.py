"""What the web UI makes of a run, in Debian's chromium, against a real gateway.

Markdown rendered and sanitized, the result and failure cards, each message
once, an ask docked after what it asks about and answerable on a phone, the
sessions list (through ``gw.asgi()``, which serves ``GET api/v1/sessions``;
the native front has no REST API and the list says so), and a page opened
on a sid with no run yet that waits for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.async_api import expect

from gateway import Gateway, MemoryStore, WebPipe
from gateway.config import App

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}

MARKDOWN = """Here is **the plan**:

```python
print("<b>hi</b>")
```

A [bad link](javascript:window.__xss='link') and <img src=x onerror="window.__xss='md'"> inline.
<script>window.__xss='script'</script>
"""

TRACEBACK = """Traceback (most recent call last):
  File "agent.py", line 12, in run
    frame = load(path)
ValueError: no column 'price' in sales.csv"""


async def markdown_app(pipe: WebPipe, value: Any) -> None:
    """An LLM stream in markdown that becomes code, hostile HTML in markdown, and a message sent twice."""
    for part in MARKDOWN.split(" "):
        pipe.text(part + " ", id="llm")
    pipe.text("", id="llm", end=True)
    pipe.emit("code", {"id": "c1", "lang": "python", "source": 'print("<b>hi</b>")'})
    pipe.emit("output", {"id": "c1", "stream": "stdout", "text": "<b>hi</b>\n"})
    said = "**Done**: `42` rows <img src=x onerror=\"window.__xss='msg'\">"
    pipe.text(said, id="answer", end=True)
    for _ in range(2):  # an agent that sends its message twice
        pipe.emit("message", {"role": "assistant", "name": "Ada", "content": said})


async def traceback_app(pipe: WebPipe, value: Any) -> None:
    """Fails as MetaGPT does: the traceback logged, then ``Exception(<traceback text>)``."""
    pipe.emit("log", {"level": "ERROR", "msg": TRACEBACK, "logger": "agent"})
    raise Exception(TRACEBACK)


async def asking_app(pipe: WebPipe, value: Any) -> None:
    """What it is doing, code, then an ask about it; the answer is the result."""
    pipe.emit("status", {"state": "running", "detail": "loading the model"})
    pipe.emit("status", {"state": "running", "detail": "model loaded in 0.1 s"})
    pipe.emit("log", {"level": "INFO", "msg": "first line of a long log\nsecond line", "logger": "agent"})
    pipe.emit("code", {"id": "c1", "lang": "python", "source": "\n".join(f"x{i} = {i}" for i in range(12))})
    pipe.emit("output", {"id": "c1", "stream": "stdout", "text": "ok\n"})
    prompt = "Keep this code?\n" + "Boilerplate the agent always adds. " * 20
    answer = await pipe.ask(prompt, choices=["keep", "drop"], default="keep", other=True)
    pipe.emit("message", {"role": "assistant", "name": "coder", "content": f"You chose **{answer}**."})


PLAN = {"goal": "Count words", "tasks": [{"id": "1", "instruction": "Load the text"}]}
REPORT = """## User Requirement
Count words
## Current Plan
[
    {
        "task_id": "1",
        "instruction": "Load the text",
        "result": "63 characters"
    },
    {
        "task_id": "2",
        "instruction": "Count the words",
        "result": "12 words"
    }
]
"""


async def planning_app(pipe: WebPipe, value: Any) -> None:
    """A proposed plan replaced by another, then (as DataInterpreter ends) a user message with the plan as JSON."""
    pipe.emit("plan", {**PLAN, "proposed": True})
    pipe.emit("plan", {**PLAN, "tasks": [*PLAN["tasks"], {"id": "2", "instruction": "Count the words"}]})
    pipe.emit("message", {"role": "user", "name": "David", "content": REPORT})


APPS: dict[str, App] = {"md": markdown_app, "tb": traceback_app, "ask": asking_app, "plans": planning_app}


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore(), apps=APPS) as gateway:
        yield gateway


def run_url(gw: Gateway, app: str, value: Any = None, **extra: str) -> str:
    return f"{gw.http_url}?{urlencode({'app': app, 'input': json.dumps(value), **extra})}"


async def test_markdown_renders_and_is_sanitized(gw: Gateway, open_page: Any) -> None:
    page = await open_page(run_url(gw, "md"))
    await expect(page.locator("#run-status")).to_have_attribute("data-state", "done")
    feed = await page.locator("#feed").inner_text()
    assert "```" not in feed and "**" not in feed, feed
    # The stream became the code cell: its prose is the caption, rendered.
    cell = page.locator('.ev-code[data-code-id="c1"]')
    await expect(cell.locator(".code-caption strong")).to_have_text("the plan")
    await expect(cell.locator(".llm-fold .text-md pre code")).to_have_text('print("<b>hi</b>")')
    # Hostile HTML inside markdown is text; the javascript: link lost its href; nothing ran.
    await expect(cell.locator(".code-caption")).to_contain_text("<img src=x onerror=")
    await expect(cell.locator(".code-caption")).to_contain_text("<script>")
    link = cell.locator(".code-caption a")
    await expect(link).to_have_text("bad link")
    assert (await link.get_attribute("href") or "").startswith("javascript") is False
    assert await page.evaluate("() => window.__xss") is None
    assert await page.locator("main img, main script, main [onerror]").count() == 0


async def test_each_message_once_and_the_result_card(gw: Gateway, open_page: Any) -> None:
    page = await open_page(run_url(gw, "md"))
    card = page.locator(".result-card")
    await expect(card).to_be_visible()
    await expect(card.locator(".result-body strong")).to_have_text("Done")
    await expect(card.locator(".outcome-from")).to_contain_text("Ada")
    # The stream, the message and its repeat, and the result say it once between them.
    assert (await page.locator("#feed").inner_text()).count("42 rows") == 1
    assert await page.locator('[data-k="message"]').count() == 2  # each event once (one hidden)


async def test_failure_card_shows_the_exceptions_last_line(gw: Gateway, open_page: Any) -> None:
    page = await open_page(run_url(gw, "tb"))
    card = page.locator(".failure-card")
    await expect(card.locator(".failure-cause")).to_have_text("ValueError: no column 'price' in sales.csv")
    await expect(page.locator("#run-status")).to_have_attribute("data-state", "failed")
    await card.locator("summary").click()
    await expect(card.locator(".failure-more")).to_contain_text("Traceback (most recent call last):")


async def test_a_replaced_plan_and_the_agents_final_report(gw: Gateway, open_page: Any) -> None:
    page = await open_page(run_url(gw, "plans"))
    await expect(page.locator("#run-status")).to_have_attribute("data-state", "done")
    first, second = page.locator(".ev-plan").nth(0), page.locator(".ev-plan").nth(1)
    await expect(first).to_have_class(re.compile(r"\breplaced\b"))
    await expect(first.locator(".replaced-pill")).to_be_visible()
    await expect(first.locator(".proposed-pill")).to_be_hidden()
    await expect(second.locator(".ev-kind")).to_have_text("Plan updated")
    # The user message after the plan: the agent's report, its JSON as a code block, folded.
    report = page.locator(".ev-message.report")
    await expect(report.locator(".who")).to_have_text("David")
    await expect(report.locator(".role")).to_have_text("final report")
    await expect(report.locator("summary")).to_contain_text("Agent’s final report")
    await report.locator("summary").click()
    code = report.locator("pre code.language-json")
    await expect(code).to_contain_text('"task_id": "1"')
    assert json.loads(await code.inner_text())[0]["result"] == "63 characters"


async def test_ask_is_docked_and_answerable_on_a_phone(gw: Gateway, open_page: Any, artifacts: Any) -> None:
    page = await open_page(run_url(gw, "ask"), viewport=PHONE)
    card = page.locator(".ask-card")
    await expect(card).to_be_visible()
    # What the run said it is doing: the latest detail, one line above the feed, no card.
    await expect(page.locator("#activity")).to_have_text("model loaded in 0.1 s")
    assert "loading the model" not in await page.locator("main").inner_text()
    # A log row cut to one line opens on Enter (and closes on a click).
    row = page.locator(".log", has_text="first line of a long log")
    await row.focus()
    await row.press("Enter")
    await expect(row).to_have_attribute("aria-expanded", "true")
    await expect(row.locator(".log-msg")).to_have_text("agent: first line of a long log\nsecond line")
    await row.click()
    await expect(row).to_have_attribute("aria-expanded", "false")
    # Choices first, the agent's long prompt folded, the card after (not over) the code.
    await expect(card.locator(".ask-title")).to_have_text("?Keep this code?")
    await expect(card.locator(".ask-prompt pre")).to_be_hidden()
    code = await page.locator(".ev-code").bounding_box()
    box = await card.bounding_box()
    assert code and box and box["y"] >= code["y"] + code["height"], (code, box)
    assert box["height"] < PHONE["height"] * 0.4, box
    assert await card.evaluate("e => getComputedStyle(e.closest('.ev-ask')).position") == "static"
    # The note box is not offered beside the ask's own Send.
    await expect(page.locator("#send-box")).to_be_hidden()
    await card.scroll_into_view_if_needed()
    await page.screenshot(path=artifacts / "ui-phone-ask-docked.png")

    await card.get_by_role("button", name="drop", exact=True).click()
    await expect(card).to_have_count(0)
    await expect(page.locator(".ev-ask.answered")).to_contain_text("drop")
    await expect(page.locator(".result-card")).to_contain_text("You chose drop.")
    await expect(page.locator("#activity")).to_be_hidden()


async def test_sessions_list_rejoins_a_run(open_page: Any) -> None:
    from http_support import AsgiGateway, serve

    gw = AsgiGateway(host="127.0.0.1", port=0, store=MemoryStore(), apps=APPS)
    async with serve(gw) as served:
        gw.served = served
        first = await open_page(run_url(gw, "ask", sid="rejoin-me"), name="first")
        await expect(first.locator(".ask-card")).to_be_visible()
        await first.goto("about:blank")  # gone: the run waits on its ask

        home = await open_page(gw.http_url, name="home")
        row = home.locator(".session-row", has_text="rejoin-me")
        await expect(row).to_contain_text("1 question")
        await expect(row.locator(".pill")).to_have_text("running")  # a plain ask sets no status
        await expect(row.locator(".session-app")).to_have_text("ask")
        await row.click()
        await expect(home).to_have_url(f"{gw.http_url}?sid=rejoin-me")
        await expect(home.locator(".session-row[aria-current=page]")).to_contain_text("rejoin-me")
        await home.locator(".ask-card").get_by_role("button", name="keep (default)").click()
        await expect(home.locator(".result-card")).to_contain_text("You chose keep.")
        await expect(home.locator(".session-row[aria-current=page] .pill")).to_have_text("done")
        await home.goto("about:blank")  # leave before uvicorn stops


async def test_sessions_list_without_the_rest_api(open_page: Any) -> None:
    """``--front websockets``: websockets' server alone serves the page and no REST API (docs/http.md)."""
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore(), apps=APPS, front="websockets") as gw:
        page = await open_page(gw.http_url)
        await expect(page.locator("#sessions-note")).to_contain_text("not available on this server")
        await expect(page.locator("#controls")).to_have_attribute("open", "")
        await page.goto("about:blank")


async def test_sessions_list_on_the_gateways_own_port(gw: Gateway, open_page: Any) -> None:
    """The default front serves ``api/v1/sessions`` beside the page: the list shows a run, and rejoins it."""
    gw.start_run("own-port", "ask", None)
    page = await open_page(gw.http_url)
    row = page.locator(".session-row", has_text="own-port")
    await expect(row).to_contain_text("1 question")
    await row.click()
    await expect(page).to_have_url(f"{gw.http_url}?sid=own-port")
    await page.locator(".ask-card").get_by_role("button", name="keep (default)").click()
    await expect(page.locator(".result-card")).to_contain_text("You chose keep.")


async def test_unknown_sid_waits_then_starts(gw: Gateway, open_page: Any, artifacts: Any) -> None:
    page = await open_page(f"{gw.http_url}?sid=later-1")
    waiting = page.locator("#waiting")
    await expect(waiting).to_be_visible()
    await expect(waiting).to_contain_text("later-1")
    await gw.runs.start("later-1", "ask", None)
    await expect(page.locator(".ask-card")).to_be_visible()
    await expect(waiting).to_be_hidden()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    await page.locator(".ask-card").get_by_role("button", name="keep (default)").click()
    await expect(page.locator(".result-card")).to_be_visible()
