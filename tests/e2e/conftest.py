"""Fixtures for the browser end-to-end tests (marker ``browser``).

Debian's chromium (``/usr/bin/chromium``, or ``$WIREPIPE_CHROMIUM``) driven by
playwright's async API, never a browser that playwright downloads. The
gateway runs in the test's own event loop, so a test can cut a page's socket
from the server side while the page keeps running.

Every wait is a playwright wait on a page condition; ``TIMEOUT_MS`` only
bounds how long a broken run takes to fail (raise it on a slow machine with
``WIREPIPE_TEST_MS``, as for the whole suite). On a failure, each page's screenshot and
console go to ``tests/e2e/artifacts/``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import MS, missing

ARTIFACTS = Path(__file__).parent / "artifacts"
#: Playwright takes milliseconds; MS (WIREPIPE_TEST_MS) scales it like every other timeout.
TIMEOUT_MS = 20_000 * MS * 1000
CHROMIUM = os.environ.get("WIREPIPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

DESKTOP = {"width": 1280, "height": 900}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's outcome on the item, so fixtures can tell in their
    # teardown whether the test failed (and save what the pages showed).
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def artifacts() -> Path:
    """``tests/e2e/artifacts/`` (gitignored), created: screenshots for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """One headless Debian chromium per test, closed afterwards."""
    if not os.path.exists(CHROMIUM):
        missing(f"no chromium at {CHROMIUM}", "apt-get install chromium, or scripts/bootstrap.sh --browser")
    from playwright.async_api import async_playwright  # a dev tool (requirements/dev.txt): never skipped

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class PageLog:
    """What a page said while the test ran."""

    name: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page
    #: Uncaught exceptions of code the test does not own (``open_page(..., foreign=...)``), kept but not failed on.
    foreign: list[str] = field(default_factory=list)


@pytest.fixture
async def open_page(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await open_page(url, viewport=DESKTOP, name=..., foreign=None)`` -> a loaded playwright Page.

    Each page gets its own browser context (no shared storage, like two
    people). At teardown: artifacts on failure, then a check that no page
    raised an uncaught exception, then every context is closed.  ``foreign``
    (a regex) matches the top stack frame of exceptions raised by code the
    test does not own (a third-party page such as Notebook 7's own bundle):
    those are kept in the console artifact instead of failing the test.
    """
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    opened: list[tuple[Any, Any, PageLog]] = []

    async def make(
        url: str, *, viewport: dict[str, int] = DESKTOP, name: str = "", foreign: re.Pattern[str] | None = None
    ) -> Any:
        context = await browser.new_context(viewport=viewport, color_scheme="light")
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        log = PageLog(name or f"page{len(opened) + 1}")
        page.on("console", lambda m: log.console.append(f"{m.type}: {m.text}"))

        def on_error(e: Any) -> None:
            frames = [line.strip() for line in (e.stack or "").splitlines() if line.strip().startswith("at ")]
            if foreign is not None and frames and foreign.search(frames[0]):
                log.foreign.append(f"{e}: {frames[0]}")
            else:
                log.errors.append(str(e))

        page.on("pageerror", on_error)

        def on_response(r: Any) -> None:
            if r.status >= 400:
                log.console.append(f"http {r.status}: {r.url}")

        page.on("response", on_response)
        opened.append((context, page, log))
        await page.goto(url)
        return page

    yield make

    failed = any(
        getattr(request.node, f"rep_{when}", None) is not None and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )
    try:
        if failed:
            ARTIFACTS.mkdir(exist_ok=True)
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            for _context, page, log in opened:
                base = ARTIFACTS / f"FAILED-{stem}-{log.name}"
                try:
                    await page.screenshot(path=f"{base}.png", full_page=True)
                except Exception as exc:  # the page may be gone: keep the console anyway
                    log.console.append(f"(no screenshot: {exc})")
                base.with_suffix(".console.txt").write_text(
                    "\n".join(
                        log.console
                        + [f"PAGEERROR {e}" for e in log.errors]
                        + [f"PAGEERROR (foreign) {e}" for e in log.foreign]
                    )
                    + "\n"
                )
        errors = [f"{log.name}: {e}" for _c, _p, log in opened for e in log.errors]
        if errors and not failed:
            pytest.fail("uncaught exceptions in the page:\n" + "\n".join(errors))
    finally:
        for context, _page, _log in opened:
            await context.close()
