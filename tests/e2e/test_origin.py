"""Cross-site WebSocket hijacking, in a real browser.

A page on another origin (a tiny HTTP server on another loopback port,
started and stopped by the test in its own event loop) loads the real JS
client and points it at a loopback gateway.  The browser sends that page's
``Origin`` with the handshake: the gateway refuses it with HTTP 403 before
the upgrade (the page sees a failed socket, the gateway never reads a
hello), unless the gateway was started with that origin allowed.  The
gateway's own UI keeps working: test_browser.py runs it with the same checks.

(The other site is a real server, not playwright's router: chromium's local
network access checks block a routed page's socket to loopback.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from support import TIMEOUT

from gateway import Gateway, MemoryStore
from gateway.http_front import STATIC, client_dir
from gateway.integrations.demo import app as demo

pytestmark = pytest.mark.browser

PAGE = """<!doctype html>
<meta charset="utf-8"><title>elsewhere</title>
<script type="importmap">{"imports": {"@msgpack/msgpack": "/vendor/msgpack/index.mjs"}}</script>
<script type="module">
import { connect } from '/client/wirepipe.js';
const gw = new URLSearchParams(location.search).get('gw');
const client = connect(gw, { sid: 'x-1', maxRetries: 0 });
window.outcome = new Promise((resolve) => {
  client.on('welcome', (w) => resolve({ welcome: w.grant }));
  client.on('close', (info) => resolve({ close: info.code }));
});
</script>
"""


#: A page of the other site that imports the JS client from the gateway itself (CORS):
#: the gateway's http:// and ws:// base URLs are filled in.
REMOTE_PAGE = """<!doctype html>
<meta charset="utf-8"><title>elsewhere, importing</title>
<script type="importmap">{"imports": {"@msgpack/msgpack": "%(http)svendor/msgpack/index.mjs"}}</script>
<script type="module">
window.outcome = import('%(http)sclient/wirepipe.js').then(({ connect }) => new Promise((resolve) => {
  const c = connect('%(ws)s', { sid: 'r-1', start: { app: 'demo', input: { steps: 1, delay: 0 } }, maxRetries: 0 });
  c.on('event', (ev) => {
    if (ev.k === 'ask') c.reply(ev.d.id, 'yes');
    if (ev.k === 'status' && ['done', 'failed', 'cancelled'].includes(ev.d.state)) resolve({ final: ev.d.state });
  });
  c.on('close', (info) => { if (!info.willRetry) resolve({ close: info.code }); });
}), (e) => ({ importError: e.name }));
</script>
"""


def _file(path: str) -> Path | None:
    """What the other site serves besides its page: the JS client and its MessagePack dependency."""
    if path.startswith("/client/"):
        return client_dir() / path[len("/client/") :]
    if path.startswith("/vendor/"):
        return STATIC / path.lstrip("/")
    return None


async def _respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        path, _, query = head.split(b" ", 2)[1].decode("latin-1").partition("?")
        file = _file(path)
        if path == "/":
            status, ctype, body = "200 OK", "text/html; charset=utf-8", PAGE.encode()
        elif path == "/remote":
            port = int(parse_qs(query)["port"][0])
            page = REMOTE_PAGE % {"http": f"http://127.0.0.1:{port}/", "ws": f"ws://127.0.0.1:{port}/"}
            status, ctype, body = "200 OK", "text/html; charset=utf-8", page.encode()
        elif file is not None and ".." not in path and file.is_file():
            status, ctype, body = "200 OK", "text/javascript; charset=utf-8", file.read_bytes()
        else:
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the browser gave up on a connection it opened speculatively
    finally:
        writer.close()


@pytest.fixture
async def elsewhere() -> AsyncIterator[str]:
    """Another site on loopback: its origin, ``http://127.0.0.1:<other port>``."""
    server = await asyncio.start_server(_respond, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def visit(browser: Any, elsewhere: str) -> AsyncIterator[Any]:
    """``await visit(gw[, page_path])`` -> what the other site's page saw (its ``window.outcome``).

    The default page loads the client from its own site: ``{welcome: grant}``
    or ``{close: code}``.  ``/remote?port={port}`` imports it from the gateway.
    """
    contexts: list[Any] = []

    async def go(gw: Gateway, page_path: str = "/?gw={url}") -> Any:
        context = await browser.new_context()
        contexts.append(context)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(elsewhere + page_path.format(url=gw.url, port=gw.port))
        outcome = await asyncio.wait_for(page.evaluate("window.outcome"), TIMEOUT)
        assert not errors, errors
        return outcome

    yield go
    for context in contexts:
        await context.close()


async def test_a_page_on_another_origin_cannot_connect(
    visit: Any, elsewhere: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore()) as gw:
        gw.pipe("x-1").set_message("secret plan")
        outcome = await visit(gw)
        assert outcome == {"close": 1006}  # the handshake failed: no socket was ever open
        assert gw.metrics.ws.connections_total == 0  # so no hello was read
        refusals = [r.getMessage() for r in caplog.records if r.name == "wirepipe" and "refused" in r.getMessage()]
        assert len(refusals) == 1 and f"'{elsewhere}'" in refusals[0], refusals


async def test_the_same_page_connects_once_its_origin_is_allowed(visit: Any, elsewhere: str) -> None:
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore(), allow_origins=[elsewhere]) as gw:
        gw.pipe("x-1").set_message("secret plan")
        assert await visit(gw) == {"welcome": "operator"}
        assert gw.metrics.ws.connections_total == 1


async def test_a_page_on_an_allowed_origin_imports_the_client_from_the_gateway(visit: Any, elsewhere: str) -> None:
    """``/client/`` and ``/vendor/`` answer with CORS headers: another site's module imports them and runs a run."""
    async with Gateway(
        host="127.0.0.1", port=0, store=MemoryStore(), allow_origins=[elsewhere], apps={"demo": demo}
    ) as gw:
        assert await visit(gw, "/remote?port={port}") == {"final": "done"}
        assert gw.metrics.ws.connections_total == 1


async def test_a_page_on_another_origin_cannot_import_the_client(visit: Any) -> None:
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore(), apps={"demo": demo}) as gw:
        assert await visit(gw, "/remote?port={port}") == {"importError": "TypeError"}  # refused: 403
        assert gw.metrics.ws.connections_total == 0
