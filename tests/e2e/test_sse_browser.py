"""A real EventSource in Debian's chromium follows a run over SSE while the server ends its stream.

The page is served by the same host app as the API (one origin, so the front
door lets it in); the browser reconnects by itself with ``Last-Event-ID``,
and the page must see every event once, in order (docs/http.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from http_support import serve
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from gateway import Gateway, MemoryStore

pytestmark = pytest.mark.browser

PAGE = """<!doctype html><meta charset="utf-8"><title>sse</title>
<script>
  window.seen = []; window.opens = 0; window.resets = 0;
  const es = new EventSource("/agents/api/v1/sessions/b/events");
  es.onopen = () => { window.opens += 1; };
  es.onmessage = (m) => { window.seen.push(JSON.parse(m.data).seq); };
  es.addEventListener("reset", () => { window.resets += 1; });
</script>"""


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def test_an_event_source_sees_every_event_once_across_server_side_cuts(
    open_page: Callable[..., Awaitable[Any]],
) -> None:
    gw = Gateway(host="127.0.0.1", port=0, store=MemoryStore())
    async with serve(gw, routes=[Route("/", page)]) as srv:
        pipe = srv.gw.pipe("b")
        for i in range(1, 21):
            pipe.emit("log", {"level": "INFO", "msg": f"line {i}"})
        p = await open_page(f"http://127.0.0.1:{srv.port}/", name="sse")
        await p.wait_for_function("window.seen.length >= 20")
        for cut in range(3):  # the server ends the stream; the page reconnects and resumes
            assert srv.api.drop_streams("b") == 1
            for i in range(20):
                pipe.emit("log", {"level": "INFO", "msg": f"after cut {cut}: {i}"})
            await p.wait_for_function(f"window.opens >= {cut + 2}")
        pipe.close()
        head = pipe.head
        await p.wait_for_function(f"window.seen.length >= {head}")
        seen = await p.evaluate("window.seen")
        assert seen == list(range(1, head + 1))
        assert await p.evaluate("window.resets") == 1  # the first connect only: every resume recovered
        await p.close()
        await srv.api.wait_streams(lambda n: n == 0)
