"""The front door: Origin and Host checks, grants by bind, the connection cap,
and what reaches the log (docs/security.md).

Requests go over real loopback sockets.  Hand-written requests (raw asyncio
streams) are used where a header must be exactly what a browser or an
attacker would send, ``Host`` included, which client libraries set themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from support import TIMEOUT
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame
from websockets.typing import Origin, Subprotocol

from gateway import Config, Gateway
from gateway.cli import _add_server_args, _gateway
from gateway.front import FrontDoor, normalize_origin
from protocol import SUBPROTOCOL, Grant

#: Both fronts on the gateway's own port: the WebSocket handshake is websockets' in both,
#: plain HTTP is uvicorn's in one.
pytestmark = pytest.mark.fronts("uvicorn", "websockets")

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


async def request(
    gw: Gateway, path: str = "/", *, host: str | None = "", websocket: bool = False, **headers: str
) -> tuple[int, bytes]:
    """A hand-written request; returns (status, body).  ``host=""``: the gateway's own
    ``127.0.0.1:port``; ``None``: no Host header.  Header names take ``_`` for ``-``."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            lines = [f"GET {path} HTTP/1.1"]
            if host is not None:
                lines.append(f"Host: {host or f'127.0.0.1:{gw.port}'}")
            fields = dict(UPGRADE) if websocket else {"Connection": "close"}
            fields.update({k.replace("_", "-"): v for k, v in headers.items()})
            lines += [f"{k}: {v}" for k, v in fields.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status = int(head.split()[1])
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            return status, await reader.readexactly(length)
        finally:
            writer.close()

    return await asyncio.wait_for(go(), TIMEOUT)


class Records:
    """Every record logged while the test runs (caplog's list is renewed per phase)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def __iter__(self) -> Iterator[logging.LogRecord]:
        return iter(list(self.caplog.records))


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Records:
    """Records at every level, DEBUG included."""
    caplog.set_level(logging.DEBUG)
    return Records(caplog)


# --- Origin ----------------------------------------------------------------------------------


async def test_a_foreign_origin_is_refused_before_the_upgrade(make_gw: Any, records: Records) -> None:
    gw = await make_gw()
    gw.pipe("s1").set_message("x")
    with pytest.raises(InvalidStatus) as info:
        async with connect(gw.url, subprotocols=[Subprotocol(SUBPROTOCOL)], origin=Origin("https://evil.example")):
            pass
    assert info.value.response.status_code == 403
    assert info.value.response.body == b"origin not allowed\n"
    assert gw.metrics.ws.connections_total == 0  # the handler never ran: no hello was read
    assert gw.metrics.ws.refused == {"forbidden": 1}
    refusals = [r for r in records if r.name == "wirepipe" and "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.INFO
    assert "https://evil.example" in refusals[0].getMessage()
    assert "pass --allow-origin ORIGIN" in refusals[0].getMessage()  # the fix, for the operator
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR]


async def test_only_the_gateways_own_origin_gets_in(make_gw: Any, raw: Any) -> None:
    gw = await make_gw()
    gw.pipe("s1").set_message("x")
    for origin in (f"http://127.0.0.1:{gw.port}", f"HTTP://127.0.0.1:{gw.port}/", None):
        kw = {"origin": Origin(origin)} if origin else {}
        async with raw(gw.url, **kw) as r:
            assert (await r.hello("s1")).t == "welcome"
    # the UI on localhost talks to the same gateway under that name
    async with raw(f"ws://localhost:{gw.port}/", origin=Origin(f"http://localhost:{gw.port}")) as r:
        assert (await r.hello("s1")).t == "welcome"
    own, other = f"http://127.0.0.1:{gw.port}", f"http://127.0.0.1:{gw.port + 1}"
    assert await request(gw, "/apps", Origin=own) == (200, b'{"apps": []}')
    assert await request(gw, "/apps", Origin=other) == (403, b"origin not allowed\n")
    assert (await request(gw, "/", websocket=True, Origin=other))[0] == 403


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://127.0.0.1",  # same host, other port
        "http://127.0.0.1:{other}",
        "http://localhost:{port}",  # another name is another origin
        "null",  # sandboxed iframes, file:// pages
        "chrome-extension://abcdef",
        "not an origin",
    ],
)
async def test_origins_other_than_the_gateways_own_are_refused(make_gw: Any, origin: str) -> None:
    gw = await make_gw()
    value = origin.format(port=gw.port, other=gw.port + 1)
    assert await request(gw, "/", websocket=True, Origin=value) == (403, b"origin not allowed\n")
    assert await request(gw, "/apps", Origin=value) == (403, b"origin not allowed\n")


async def test_allowed_origins(make_gw: Any, raw: Any) -> None:
    gw = await make_gw(allow_origins=["https://App.example:8443/", "null"])
    gw.pipe("s1").set_message("x")
    for origin in ("https://app.example:8443", "null"):
        async with raw(gw.url, origin=Origin(origin)) as r:
            assert (await r.hello("s1")).t == "welcome", origin
    for origin in ("https://app.example", "http://app.example:8443", "https://evil.example"):
        assert (await request(gw, "/", websocket=True, Origin=origin))[0] == 403, origin


async def test_a_star_allows_every_origin(make_gw: Any) -> None:
    gw = await make_gw(config=Config(allow_origins=("*",)))
    for origin in ("https://evil.example", "null"):
        assert (await request(gw, "/", websocket=True, Origin=origin))[0] == 101


@pytest.mark.parametrize("bad", ["example.com", "https://x.example/path", "https://u:p@x.example", "http://x:99999"])
def test_malformed_allowed_origins_are_refused_at_construction(bad: str) -> None:
    with pytest.raises(ValueError):
        Gateway(allow_origins=[bad])


# --- Host (DNS rebinding) ----------------------------------------------------------------------


async def test_a_rebound_name_is_refused_on_a_loopback_bind(make_gw: Any, front: str) -> None:
    # evil.example re-pointed at 127.0.0.1: Origin and Host agree, Host is not loopback
    gw = await make_gw()
    name = f"evil.example:{gw.port}"
    refused = (403, b"host not allowed\n")
    assert await request(gw, "/", host=name, websocket=True, Origin=f"http://{name}") == refused
    assert await request(gw, "/", host=name) == refused
    assert await request(gw, "/healthz", host="evil.example") == refused
    # what gets in: loopback names, with or without a port, and no Host at all
    for host in (
        "127.0.0.1",
        f"127.9.9.9:{gw.port}",
        "localhost",
        f"LOCALHOST:{gw.port}",
        f"[::1]:{gw.port}",
        "[::1]",
    ):
        assert (await request(gw, "/healthz", host=host))[0] == 200, host
        assert (await request(gw, "/", host=host, websocket=True))[0] == 101, host
    # HTTP/1.1 without Host: websockets lets it in, uvicorn (h11) answers 400 as RFC 9112 says
    no_host = 200 if front == "websockets" else 400
    assert (await request(gw, "/healthz", host=None))[0] == no_host
    assert (await request(gw, "/", host=None, websocket=True))[0] == (101 if front == "websockets" else 400)


async def test_allowed_hosts_for_a_reverse_proxy(make_gw: Any) -> None:
    gw = await make_gw(allow_hosts=["wp.example", "other.example:8443"])
    for host in ("wp.example", "wp.example:443", "other.example:8443", f"127.0.0.1:{gw.port}"):
        assert (await request(gw, "/healthz", host=host))[0] == 200, host
    for host in ("other.example", "other.example:443", "evil.example"):
        assert (await request(gw, "/healthz", host=host))[0] == 403, host
    # the proxied page's origin is not the gateway's own unless allowed
    assert (await request(gw, "/", host="wp.example", websocket=True, Origin="https://wp.example"))[0] == 101


def test_host_rules_by_bind() -> None:
    """Sans-I/O: a non-loopback bind checks Host only when hosts are allowed explicitly."""
    evil = Headers({"Host": "evil.example"})
    assert FrontDoor.of("127.0.0.1").refusal(evil) == "host not allowed"
    assert FrontDoor.of("::1").refusal(evil) == "host not allowed"
    assert FrontDoor.of("localhost").refusal(evil) == "host not allowed"
    assert FrontDoor.of("0.0.0.0").refusal(evil) is None
    assert FrontDoor.of("192.0.2.7").refusal(evil) is None
    pinned = FrontDoor.of("0.0.0.0", allow_hosts=["wp.example"])
    assert pinned.refusal(evil) == "host not allowed"
    assert pinned.refusal(Headers({"Host": "wp.example:8765"})) is None
    assert FrontDoor.of("127.0.0.1", allow_hosts=["*"]).refusal(evil) is None


def test_origin_normal_form() -> None:
    assert normalize_origin("HTTPS://App.Example:443/") == "https://app.example"
    assert normalize_origin("http://[::1]:8765") == "http://[::1]:8765"
    assert normalize_origin("null") == "null"


# --- grants by bind ------------------------------------------------------------------------------


async def test_a_non_loopback_bind_without_credentials_makes_viewers(raw: Any, records: Records) -> None:
    async with Gateway(host="0.0.0.0", port=0, apps={"noop": _noop}) as gw:
        warnings = [r for r in records if r.name == "wirepipe" and r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "viewer" in warnings[0].getMessage()
        assert "--operator-token" in warnings[0].getMessage()
        gw.pipe("s1").set_message("x")
        async with raw(f"ws://127.0.0.1:{gw.port}/") as r:
            welcome = await r.hello("s1")
            assert welcome.grant == Grant.VIEWER
            await r.send({"t": "cancel", "rid": "r1"})
            frames = await r.collect(lambda fs: bool(fs) and fs[-1].t == "replied")
            assert (frames[-1].ok, frames[-1].err) == (False, "forbidden")
        async with raw(f"ws://127.0.0.1:{gw.port}/") as r:
            await r.send({"t": "hello", "sid": "s2", "start": {"app": "noop", "input": None}})
            error = await r.recv()
            assert (error.t, error.code) == ("error", "forbidden")
        assert gw.metrics.runs_started == 0
    # asked for explicitly (what --insecure does): operators, and no warning
    async with Gateway(host="0.0.0.0", port=0, default_grant=Grant.OPERATOR) as gw:
        gw.pipe("s1").set_message("x")
        async with raw(f"ws://127.0.0.1:{gw.port}/") as r:
            assert (await r.hello("s1")).grant == Grant.OPERATOR
    assert len([r for r in records if r.levelno >= logging.WARNING]) == 1


def test_default_grant_by_bind() -> None:
    assert Gateway("127.0.0.1").default_grant is Grant.OPERATOR
    assert Gateway("::1").default_grant is Grant.OPERATOR
    assert Gateway("localhost").default_grant is Grant.OPERATOR
    assert Gateway("0.0.0.0").default_grant is Grant.VIEWER
    assert Gateway("192.0.2.7").default_grant is Grant.VIEWER
    assert Gateway("0.0.0.0", default_grant=Grant.OPERATOR).default_grant is Grant.OPERATOR


@pytest.mark.parametrize(
    ("argv", "grant"),
    [
        (["--host", "0.0.0.0", "--secret", "S"], Grant.VIEWER),
        (["--host", "0.0.0.0", "--secret", "S", "--insecure"], Grant.OPERATOR),
        (["--host", "0.0.0.0", "--insecure"], Grant.OPERATOR),
        ([], Grant.OPERATOR),
    ],
)
def test_cli_grants(argv: list[str], grant: Grant) -> None:
    parser = argparse.ArgumentParser()
    _add_server_args(parser, 0)
    assert _gateway(parser.parse_args(argv)).default_grant is grant


def test_cli_front_door_flags() -> None:
    parser = argparse.ArgumentParser()
    _add_server_args(parser, 0)
    args = parser.parse_args(
        [
            "--allow-origin",
            "https://A.example/",
            "--allow-origin",
            "null",
            "--allow-host",
            "wp.example",
            "--max-connections",
            "7",
        ]
    )
    cfg = _gateway(args).config
    assert cfg.allow_origins == ("https://a.example", "null")
    assert cfg.allow_hosts == ("wp.example",)
    assert cfg.max_connections == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["--allow-origin", "a.example"])


async def _noop(pipe: Any, value: Any) -> None:
    return None


# --- connection cap ------------------------------------------------------------------------------


async def test_over_max_connections_a_handshake_gets_503_until_one_closes(make_gw: Any, raw: Any) -> None:
    gw = await make_gw(max_connections=2)
    gw.pipe("s1").set_message("x")
    async with raw(gw.url) as a, raw(gw.url) as b:
        assert (await a.hello("s1")).t == "welcome"
        assert (await b.hello("s1")).t == "welcome"
        with pytest.raises(InvalidStatus) as info:
            async with raw(gw.url):
                pass
        assert info.value.response.status_code == 503
        assert info.value.response.headers["Retry-After"] == "1"
        # plain HTTP is not capped
        assert (await request(gw, "/healthz"))[0] == 200
        # a's close handshake is done once close() returns: its slot is free
        await a.ws.close()
        async with raw(gw.url) as c:
            assert (await c.hello("s1")).t == "welcome"
        await b.ws.close()


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Config(max_connections=0)


# --- the log ---------------------------------------------------------------------------------


SECRETS = ("SEKRIT1", "SEKRIT2", "SEKRIT3", "SEKRIT4")


async def test_no_credential_reaches_the_log_at_debug(
    make_gw: Any, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Frame, "MAX_LOG_SIZE", 10_000)  # as WEBSOCKETS_MAX_LOG_SIZE=10000 would
    gw = await make_gw(auth=lambda cred, sid: "operator" if cred == "SEKRIT3" else None)
    gw.pipe("s1").set_message("x")
    # the web UI's credential in the URL, and in the Referer of what the page loads next
    assert (await request(gw, "/?auth=SEKRIT1&sid=s1"))[0] == 200
    referer = f"http://127.0.0.1:{gw.port}/?sid=s1&auth=SEKRIT1"
    assert (await request(gw, "/app.js", Referer=referer, Cookie="session=SEKRIT4"))[0] == 200
    # the test's own client logs elsewhere, quietly: only the gateway's records are judged
    quiet = logging.getLogger("tests.quiet-client")
    quiet.setLevel(logging.WARNING)
    async with connect(
        gw.url + "?token=SEKRIT1",
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        additional_headers={"Authorization": "Bearer SEKRIT2", "Cookie": "wp=SEKRIT4"},
        logger=quiet,
    ) as ws:
        from support import Raw

        r = Raw(ws)
        assert (await r.hello("s1", auth="SEKRIT3")).grant == Grant.OPERATOR
    # the gateway did log the request lines, headers and frames, just not their secrets
    messages = [r.getMessage() for r in records]
    assert any(m.startswith("< GET /?") for m in messages)  # the upgrade's (and the page's, on websockets)
    assert any(m.lower().startswith("< authorization: ") for m in messages)  # uvicorn hands names in lower case
    assert any(m.startswith("< BINARY") for m in messages)  # the hello
    for rec in records:
        text = rec.getMessage() + (rec.exc_text or "")
        for secret in SECRETS:
            assert secret not in text, (rec.name, text)
            assert secret.encode().hex() not in text.replace(" ", ""), (rec.name, text)


async def test_the_python_client_logs_no_credential_either(
    make_gw: Any, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.client import Client

    # what WEBSOCKETS_MAX_LOG_SIZE=10000 does: whole frames in the DEBUG log, not 24 bytes
    monkeypatch.setattr(Frame, "MAX_LOG_SIZE", 10_000)
    secret = "SEKRIT5"
    gw = await make_gw(auth=lambda cred, sid: "operator" if cred == secret else None)
    gw.pipe("s1").set_message("x")
    async with Client(gw.url, "s1", auth=secret) as c:
        assert c.welcome is not None and c.welcome.grant == Grant.OPERATOR
    # the client's socket did log its frames (the hello among them), not their payloads
    client_loggers = ("websockets.client", "wirepipe.client.ws")  # websockets' default, ours
    assert any(r.name in client_loggers and r.getMessage().startswith("> BINARY") for r in records)
    for rec in records:
        text = rec.getMessage() + (rec.exc_text or "")
        assert "SEKRIT5" not in text and b"SEKRIT5".hex() not in text.replace(" ", ""), (rec.name, text)
