"""The web UI on real MetaGPT runs (offline scripted LLM, real Jupyter kernels), in Debian's chromium.

What a new user sees of a DataInterpreter run and of a Team run, served
through ``gw.asgi()`` (so the sessions list has its REST API): the LLM's
output folded into the plan and the code cells it became, each message once,
the review asks docked after what they ask about, the result and the failure
as cards.  Screenshots (desktop 1366x900, phone 390x844) land in
``tests/e2e/artifacts/mg-*.png`` for people to look at.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.async_api import expect
from support import missing

from gateway.config import App
from gateway.stores import MemoryStore

pytestmark = [
    pytest.mark.browser,
    pytest.mark.metagpt,
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def metagpt_ready(tmp_path_factory: pytest.TempPathFactory) -> None:
    from gateway.integrations.metagpt import available, prepare

    if not available():  # pragma: no cover - without MetaGPT
        missing("MetaGPT is not installed", "scripts/bootstrap.sh --metagpt")
    prepare(tmp_path_factory.mktemp("metagpt-root"))


async def broken_di(pipe: Any, input: Any = None) -> None:
    """A DataInterpreter whose model fails on task 2: MetaGPT's own failure path
    (its role raises ``Exception(<traceback text>)``, the cause is on the last line)."""
    from gateway.integrations.metagpt.apps import Options, _data_interpreter
    from gateway.integrations.metagpt.offline_llm import DemoScript, use
    from gateway.integrations.metagpt.run import run_in_thread

    class Broken(DemoScript):
        def answer(self, messages: list[dict[str, Any]]) -> str:
            prompt = "\n".join(str(m.get("content", "")) for m in messages)
            if "## Current Task" in prompt and "Count the words of the idea" in prompt.split("## Current Task")[1]:
                raise ConnectionError("the model endpoint answered 503 Service Unavailable")
            return super().answer(messages)

    class BrokenOptions(Options):
        @contextmanager
        def llm_context(self) -> Iterator[Any]:
            with use(Broken(), delay=self.delay) as script:
                yield script

    opts = BrokenOptions.parse(input, review=False)
    await run_in_thread(pipe, _data_interpreter, opts, **opts.attach_options())


@pytest.fixture
async def served(metagpt_ready: None) -> AsyncIterator[Any]:
    from http_support import AsgiGateway, serve

    from gateway.integrations.demo import app as demo
    from gateway.integrations.metagpt.apps import data_interpreter, team

    apps: dict[str, App] = {"data_interpreter": data_interpreter, "team": team, "demo": demo, "broken": broken_di}
    gw = AsgiGateway(host="127.0.0.1", port=0, store=MemoryStore(), apps=apps)
    async with serve(gw) as s:
        gw.served = s
        yield gw


def start_url(gw: Any, app: str, value: Any, sid: str) -> str:
    return f"{gw.http_url}?{urlencode({'app': app, 'input': json.dumps(value), 'sid': sid})}"


async def shoot(page: Any, path: Path) -> None:
    await page.screenshot(path=path)


async def test_data_interpreter_run_reads_as_a_product(served: Any, open_page: Any, artifacts: Path) -> None:
    gw = served
    idea = {"delay": 0.02}
    desk = await open_page(start_url(gw, "data_interpreter", idea, "di-shots"), viewport=DESKTOP, name="desktop")
    phone = await open_page(f"{gw.http_url}?sid=di-shots", viewport=PHONE, name="phone")

    # The plan review: the LLM's plan output is folded into the plan card (no raw fences shown).
    for page in (desk, phone):
        await expect(page.locator(".ask-card")).to_have_count(1)
        await expect(page.locator(".ask-card .ask-title")).to_contain_text("Review the plan")
        await expect(page.locator(".ev-plan .llm-fold")).to_have_count(1)
        assert "```" not in await page.locator("#feed").inner_text()
    await shoot(desk, artifacts / "mg-desktop-ask-plan.png")
    await shoot(phone, artifacts / "mg-phone-ask-plan.png")
    await desk.get_by_role("button", name="confirm (default)").click()

    # Step 1's review: its code cell (with the LLM's prose as the caption) and the ask after it.
    step = desk.locator('details.step[data-task-id="1"]')
    await expect(step.locator(".ask-card")).to_have_count(1)
    await expect(step.locator(".ev-code .code-caption")).to_contain_text("Here is the code for this step.")
    await expect(step.locator(".ev-code .out-stdout")).to_contain_text("63 characters")
    await phone.locator(".ask-card").scroll_into_view_if_needed()
    for page, name in ((desk, "desktop"), (phone, "phone")):
        assert "```" not in await page.locator("#feed").inner_text()
        await page.locator(".ask-card").scroll_into_view_if_needed()
        await shoot(page, artifacts / f"mg-{name}-running.png")
    # On the phone the card is beside (below) the code it asks about, never over it.
    code_box = await phone.locator('details.step[data-task-id="1"] .ev-code').bounding_box()
    card_box = await phone.locator(".ask-card").bounding_box()
    assert code_box and card_box and card_box["y"] >= code_box["y"] + code_box["height"]
    assert card_box["height"] < PHONE["height"] * 0.4, card_box

    for n in range(3):
        await desk.get_by_role("button", name="confirm (default)").click()
        if n < 2:
            await expect(desk.locator(f'details.step[data-task-id="{n + 2}"] .ask-card')).to_have_count(1)
    for page, name in ((desk, "desktop"), (phone, "phone")):
        card = page.locator(".result-card")
        await expect(card).to_contain_text("the most common word is 'the'")
        await expect(card.locator(".outcome-from")).to_contain_text("step 3")
        await card.scroll_into_view_if_needed()
        await shoot(page, artifacts / f"mg-{name}-result.png")
    # The working context DataInterpreter hands back last is folded, not shown as a result:
    # labelled as the agent's report (not as the user), its plan JSON a code block.
    await expect(desk.locator(".ev-message.long details")).to_have_count(1)
    report = desk.locator(".ev-message.report")
    await expect(report.locator(".role")).to_have_text("final report")
    await report.locator("summary").click()
    await expect(report.locator("pre code.language-json").first).to_contain_text('"task_id": "2"')
    # A step's one line is what it printed: stdout, not the stderr MetaGPT joins into its result.
    await expect(desk.locator('details.step[data-task-id="2"] .step-sum')).to_have_text("12 words, 11 distinct")


async def test_a_failed_data_interpreter_run_says_why(served: Any, open_page: Any, artifacts: Path) -> None:
    gw = served
    desk = await open_page(start_url(gw, "broken", {"delay": 0}, "di-broken"), viewport=DESKTOP, name="desktop")
    card = desk.locator(".failure-card")
    await expect(card).to_be_visible()
    await expect(card.locator(".failure-cause")).to_contain_text("503 Service Unavailable")
    await card.scroll_into_view_if_needed()
    await shoot(desk, artifacts / "mg-desktop-failed.png")
    phone = await open_page(f"{gw.http_url}?sid=di-broken", viewport=PHONE, name="phone")
    await phone.locator(".failure-card").scroll_into_view_if_needed()
    await expect(phone.locator(".failure-cause")).to_contain_text("503 Service Unavailable")
    await shoot(phone, artifacts / "mg-phone-failed.png")


async def test_team_shows_each_message_once(served: Any, open_page: Any, artifacts: Path) -> None:
    gw = served
    page = await open_page(start_url(gw, "team", {"delay": 0}, "team-shots"), viewport=DESKTOP)
    await expect(page.locator(".result-card")).to_contain_text("Revised draft")
    feed = await page.locator("#feed").inner_text()
    for said in ("Draft on", "Critique: the draft is clear", "Revised draft on"):
        assert feed.count(said) == 1, (said, feed)
    await shoot(page, artifacts / "mg-desktop-team.png")


async def test_sessions_list_and_unknown_sid(served: Any, open_page: Any, artifacts: Path) -> None:
    gw = served
    # Some runs to list: one waiting on a person, one done.
    waiting = await open_page(start_url(gw, "demo", {"steps": 2, "delay": 0}, "demo-waiting"), name="waiting")
    await expect(waiting.locator(".ask-card")).to_have_count(1)
    done = await open_page(start_url(gw, "team", {"delay": 0}, "team-done"), name="done")
    await expect(done.locator(".result-card")).to_be_visible()

    for viewport, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
        home = await open_page(gw.http_url, viewport=viewport, name=f"home-{name}")
        rows = home.locator(".session-row")
        await expect(rows.filter(has_text="demo-waiting")).to_contain_text("1 question")
        await expect(rows.filter(has_text="team-done")).to_contain_text("done")
        await shoot(home, artifacts / f"mg-{name}-sessions.png")

        unknown = await open_page(f"{gw.http_url}?sid=nobody-yet-{name}", viewport=viewport, name=f"unknown-{name}")
        await expect(unknown.locator("#waiting")).to_be_visible()
        await shoot(unknown, artifacts / f"mg-{name}-unknown-sid.png")
