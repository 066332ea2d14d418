"""Section 7 over real sockets: each error gets its code and close code, and
nothing else suffers: the server lives on and other clients lose no event."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support import MS, TIMEOUT, MakeGateway, OpenRaw, Raw, final
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from gateway import Gateway
from protocol import Grant, ResumeToken, packb, sign

#: Every test here runs through both fronts (tests/conftest.py), native and ASGI.
pytestmark = pytest.mark.fronts


async def _expect_error(r: Raw, code: str, close: int) -> None:
    got_close, frames = await r.closed()
    errors = [f for f in frames if f.t == "error"]
    assert errors and errors[-1].code == code and errors[-1].fatal is True, frames
    assert got_close == close


BAD_FRAMES = {
    "text message": "hello",
    "non-map": packb([1, 2, 3]),
    "garbage bytes": b"\xc1\xff\x00garbage",
    "truncated map": packb({"t": "hello", "sid": "abc"})[:-2],
    "unknown t": packb({"t": "launch", "sid": "x"}),
    "no t": packb({"sid": "x"}),
    "wrong key type": packb({"t": "hello", "sid": 42}),
    "bad sid chars": packb({"t": "hello", "sid": "a b/c"}),
    "sid too long": packb({"t": "hello", "sid": "a" * 129}),
    "frame before hello": packb({"t": "ack", "seq": 1}),
}


@pytest.mark.parametrize("payload", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
async def test_bad_frame_in_handshake(gw: Gateway, raw: OpenRaw, payload: str | bytes) -> None:
    async with raw(gw.url) as r:
        await r.ws.send(payload)
        await _expect_error(r, "bad_frame", 4400)


@pytest.mark.parametrize(
    "frame",
    [
        "text after hello",
        {"t": "ack", "seq": "ten"},
        {"t": "ack", "seq": -1},
        {"t": "reply", "ask": "a1", "rid": 7, "value": 1},
        {"t": "send", "rid": "r"},  # no data key
        {"t": "hello", "sid": "errs"},  # a second hello
        {"t": "nope"},
    ],
    ids=["text", "ack-str", "ack-neg", "reply-rid-int", "send-no-data", "second-hello", "unknown-t"],
)
async def test_bad_frame_after_welcome_spares_other_clients(
    gw: Gateway, raw: OpenRaw, frame: str | dict[str, Any]
) -> None:
    pipe = gw.pipe("errs")
    async with raw(gw.url) as good, raw(gw.url) as bad:
        await good.hello("errs")
        await bad.hello("errs")
        pipe.set_message("before")
        await bad.ws.send(frame if isinstance(frame, str) else packb(frame))
        await _expect_error(bad, "bad_frame", 4400)
        pipe.set_message("after")
        pipe.close()
        evs = await good.events(final)
    assert [e.seq for e in evs] == [1, 2, 3, 4]  # text, text, end-of-text, status


async def test_too_big(make_gw: MakeGateway, raw: OpenRaw) -> None:
    g = await make_gw(max_frame=1024)
    g.pipe("big")
    async with raw(g.url) as r:
        await r.hello("big")
        await r.send({"t": "send", "rid": "r1", "data": "x" * 2048})
        await _expect_error(r, "too_big", 1009)


async def test_no_hello(make_gw: MakeGateway, raw: OpenRaw) -> None:
    g = await make_gw(handshake_timeout=50 * MS)
    async with raw(g.url) as r:
        await _expect_error(r, "no_hello", 4408)


def _token(secret: bytes, sid: str, epoch: str, exp: float) -> str:
    return sign(secret, ResumeToken(sid, epoch, Grant.OPERATOR, exp))


@pytest.mark.parametrize("kind", ["forged", "expired", "other-sid", "garbage"])
async def test_bad_token(gw: Gateway, raw: OpenRaw, kind: str) -> None:
    pipe = gw.pipe("tok")
    now = time.time()
    token = {
        "forged": _token(b"not the secret", "tok", pipe.epoch, now + 60),
        "expired": _token(gw.secret, "tok", pipe.epoch, now - 1),
        "other-sid": _token(gw.secret, "other", pipe.epoch, now + 60),
        "garbage": "v1.!!!.???",
    }[kind]
    async with raw(gw.url) as r:
        await r.send({"t": "hello", "sid": "tok", "resume": token, "epoch": pipe.epoch, "after": 0})
        await _expect_error(r, "bad_token", 4401)


async def test_a_valid_token_is_accepted(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("tok2")
    async with raw(gw.url) as r:
        token = _token(gw.secret, "tok2", pipe.epoch, time.time() + 60)
        w = await r.hello("tok2", resume=token, epoch=pipe.epoch, after=0)
        assert w.recovered is True


async def test_unauthorized(make_gw: MakeGateway, raw: OpenRaw) -> None:
    g = await make_gw(auth=lambda cred, sid: "operator" if cred == "s3cret" else None)
    g.pipe("au")
    async with raw(g.url) as r:
        await r.send({"t": "hello", "sid": "au", "auth": "wrong"})
        await _expect_error(r, "unauthorized", 4401)
    async with raw(g.url) as r:
        assert (await r.hello("au", auth="s3cret")).grant == "operator"


async def test_start_errors(make_gw: MakeGateway, raw: OpenRaw) -> None:
    from gateway.integrations.demo import app

    g = await make_gw(apps={"demo": app})
    async with raw(g.url) as r:
        await r.send({"t": "hello", "sid": "st", "start": {"app": "nope"}})
        await _expect_error(r, "no_app", 4404)
    g.pipe("st")  # a run that has not ended
    async with raw(g.url) as r:
        await r.send({"t": "hello", "sid": "st", "start": {"app": "demo"}})
        await _expect_error(r, "sid_taken", 4409)


async def test_no_session_when_the_gateway_does_not_wait(make_gw: MakeGateway, raw: OpenRaw) -> None:
    g = await make_gw(wait_for_run=False)
    async with raw(g.url) as r:
        await r.send({"t": "hello", "sid": "ghost"})
        await _expect_error(r, "no_session", 4404)


async def test_rate_limited_first_warns_then_closes(make_gw: MakeGateway, raw: OpenRaw) -> None:
    g = await make_gw(rate=0.001, burst=2, rate_strikes=3)
    g.pipe("rl")
    async with raw(g.url) as r:
        await r.hello("rl")
        for i in range(10):
            await r.send({"t": "ping", "n": i})
        code, frames = await r.closed()
    errors = [f for f in frames if f.t == "error"]
    assert [e.fatal for e in errors][:3] == [False, False, False]
    assert errors[-1].fatal is True and errors[-1].code == "rate_limited"
    assert code == 4429
    assert [f.n for f in frames if f.t == "pong"] == [0, 1]


async def test_subprotocol_negotiation(gw: Gateway) -> None:
    gw.pipe("sp")
    async with connect(gw.url) as ws:  # none offered: accepted as v1
        assert ws.subprotocol is None
    async with connect(gw.url, subprotocols=[Subprotocol("other"), Subprotocol("wirepipe.v1")]) as ws:
        assert ws.subprotocol == "wirepipe.v1"
    with pytest.raises(InvalidStatus) as info:
        async with connect(gw.url, subprotocols=[Subprotocol("wirepipe.v9")]):
            pass
    assert info.value.response.status_code == 400


async def test_shutdown_sends_1001_to_every_client(make_gw: MakeGateway, raw: OpenRaw) -> None:
    g = await make_gw()
    g.pipe("sd")
    async with raw(g.url) as a, raw(g.url) as b:
        await a.hello("sd")
        await b.hello("sd")
        closing = asyncio.ensure_future(g.close())
        for r in (a, b):
            code, frames = await r.closed()
            assert code == 1001
            assert frames[-1].t == "error" and frames[-1].code == "shutdown"
        await closing
    await g.close()  # idempotent


async def test_internal_errors_never_show_a_traceback(make_gw: MakeGateway, raw: OpenRaw) -> None:
    def broken_auth(cred: Any, sid: str) -> str | None:
        raise RuntimeError("secret internals")

    g = await make_gw(auth=broken_auth)
    async with raw(g.url) as r:
        await r.send({"t": "hello", "sid": "ie", "auth": "x"})
        code, frames = await r.closed()
    assert code == 1011
    assert frames[-1].code == "internal" and "secret" not in frames[-1].msg


async def test_the_python_client_survives_a_bad_frame_from_the_server() -> None:
    """A server that sends garbage once: the client reports it and goes on (it used to hang)."""
    from websockets.asyncio.server import serve

    from gateway.client import Client

    async def server(ws: Any) -> None:
        await ws.recv()  # hello
        await ws.send(
            packb(
                {
                    "t": "welcome",
                    "sid": "s",
                    "epoch": "e",
                    "resume": "r",
                    "head": 0,
                    "first": 1,
                    "recovered": False,
                    "grant": "operator",
                    "snapshot": None,
                }
            )
        )
        await ws.send(packb({"t": "ev", "seq": 1, "k": "log", "ts": 1.0, "d": {"level": "INFO", "msg": "a"}}))
        await ws.send(packb({"t": "ev", "seq": "oops", "k": "log", "ts": 1.0, "d": {}}))
        await ws.send(packb({"t": "ev", "seq": 2, "k": "status", "ts": 1.0, "d": {"state": "done"}}))
        await ws.wait_closed()

    async with serve(server, "127.0.0.1", 0) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}/", "s") as c:
            evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    assert [e.seq for e in evs] == [1, 2]
    assert [e.code for e in c.errors] == ["bad_frame"]


async def test_a_viewer_that_asks_to_start_a_run_is_told_not_left_waiting(make_gw: Any) -> None:
    from gateway.client import Client
    from protocol import RemoteError

    gw = await make_gw(auth=lambda cred, sid: "viewer", apps={"app": lambda pipe, value: None})
    with pytest.raises(RemoteError) as err:
        await asyncio.wait_for(Client(gw.url, "v-1", start={"app": "app"}).connect(), TIMEOUT)
    assert err.value.code == "forbidden"


@pytest.mark.parametrize(("sid", "window"), [("a b", None), ("", None), ("x" * 129, None), ("ok", 0), ("ok", True)])
def test_the_python_client_refuses_a_bad_sid_or_window_before_any_socket(sid: str, window: object) -> None:
    from gateway.client import Client

    with pytest.raises(ValueError):
        Client("ws://127.0.0.1:1/", sid, window=window)  # type: ignore[arg-type]
