"""Resume tokens: HMAC-signed, bound to sid, epoch, grant and expiry."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proto_strategies import SETTINGS, sids

from protocol import ErrorCode, Grant, ProtocolError, ResumeToken, sign, verify
from protocol.errors import CloseCode
from protocol.tokens import _mac

SECRET = b"s3cret"
NOW = 1_700_000_000.0
TOKEN = ResumeToken("sess-1", "ep.1", Grant.OPERATOR, NOW + 60)


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def signed_payload(payload: str, secret: bytes = SECRET) -> str:
    """A correctly signed token around any payload (only the secret's holder can make one)."""
    return f"v1.{payload}.{_mac(secret, payload)}"


def rejected(text: str, *, sid: str = "sess-1", now: float = NOW, secret: bytes = SECRET) -> None:
    with pytest.raises(ProtocolError) as info:
        verify(secret, text, sid=sid, now=now)
    assert info.value.code is ErrorCode.BAD_TOKEN
    assert info.value.fatal and info.value.close_code is CloseCode.UNAUTHORIZED
    assert info.value.msg == "resume token invalid, expired, or for another sid"  # no echo


def test_round_trip() -> None:
    text = sign(SECRET, TOKEN)
    assert text.startswith("v1.") and text.count(".") == 2
    assert verify(SECRET, text, sid="sess-1", now=NOW) == TOKEN
    assert verify(SECRET, text, sid="sess-1", now=NOW + 60) == TOKEN  # expiry is inclusive


@SETTINGS
@given(
    sids,
    st.text(max_size=40),
    st.sampled_from(Grant),
    st.integers(0, 2**40).map(lambda ms: ms / 1000),
    st.binary(min_size=1, max_size=64),
)
def test_round_trip_property(sid: str, epoch: str, grant: Grant, exp: float, secret: bytes) -> None:
    tok = ResumeToken(sid, epoch, grant, exp)
    text = sign(secret, tok)
    assert text.isascii()
    assert verify(secret, text, sid=sid, now=exp) == tok
    with pytest.raises(ProtocolError):
        verify(secret + b"x", text, sid=sid, now=exp)
    with pytest.raises(ProtocolError):
        verify(secret, text, sid=sid, now=exp + 0.01)


def test_expiry_is_rounded_to_milliseconds() -> None:
    tok = verify(SECRET, sign(SECRET, ResumeToken("s", "e", Grant.VIEWER, 10.123456)), sid="s", now=0)
    assert tok.exp == 10.123 and tok.grant is Grant.VIEWER


def test_forged_mac() -> None:
    text = sign(SECRET, TOKEN)
    head, mac = text.rsplit(".", 1)
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    rejected(f"{head}.{flipped}")
    rejected(f"{head}.")
    rejected(f"{head}.{mac[:-1]}")
    rejected(f"{head}.{mac}A")


def test_tampered_payload() -> None:
    text = sign(SECRET, TOKEN)
    _, payload, mac = text.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    changes: list[dict[str, object]] = [{"g": "operator", "s": "other"}, {"x": NOW + 10**6}, {"e": "ep.2"}]
    for change in changes:
        forged = b64(json.dumps({**body, **change}, separators=(",", ":")).encode())
        rejected(f"v1.{forged}.{mac}", sid=str(change.get("s", "sess-1")))


def test_viewer_cannot_become_operator() -> None:
    text = sign(SECRET, ResumeToken("sess-1", "e", Grant.VIEWER, NOW + 60))
    _, payload, mac = text.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    forged = b64(raw.replace(b"viewer", b"operator"))
    rejected(f"v1.{forged}.{mac}")


def test_wrong_secret() -> None:
    rejected(sign(SECRET, TOKEN), secret=b"other")
    rejected(sign(b"other", TOKEN))


def test_expired() -> None:
    rejected(sign(SECRET, TOKEN), now=NOW + 60.001)


def test_nan_expiry_counts_as_expired() -> None:
    rejected(sign(SECRET, ResumeToken("sess-1", "e", Grant.VIEWER, float("nan"))))


def test_other_sid() -> None:
    text = sign(SECRET, TOKEN)
    rejected(text, sid="sess-2")
    rejected(text, sid="sess-1 ")
    rejected(text, sid="")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v1",
        "v1.",
        "v1..",
        "v2.abc.def",
        "V1.abc.def",
        "v1.a.b.c",
        "abc.def",
        "v1.€.abc",
        "v1.abc.€",
        "v1.é.ü",
        "v1.abc.\udcff",
        "v1.\x00.\x00",
        "\u202ev1.a.b",
        " v1.a.b",
    ],
)
def test_garbage_strings(text: str) -> None:
    rejected(text)


def test_non_ascii_around_a_real_token() -> None:
    text = sign(SECRET, TOKEN)
    _, payload, mac = text.split(".")
    rejected(f"v1.{payload}é.{mac}")
    rejected(f"v1.{payload}.{mac}é")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",  # not UTF-8
        b"[1, 2]",
        b'"str"',
        b"7",
        b"{}",
        b'{"s": "sess-1", "e": "e", "g": "admin", "x": 1e12}',
        b'{"s": "sess-1", "e": "e", "g": "viewer", "x": "soon"}',
        b'{"s": "sess-1", "e": "e", "g": "viewer", "x": [1]}',
        b'{"s": "sess-1", "e": "e", "g": "viewer"}',
    ],
)
def test_well_signed_garbage_payload(body: bytes) -> None:
    rejected(signed_payload(b64(body)))


def test_well_signed_undecodable_base64() -> None:
    rejected(signed_payload("A"))  # one char past a multiple of 4
    rejected(signed_payload("AAAAA"))


@SETTINGS
@given(st.text(max_size=80))
def test_arbitrary_strings_are_bad_tokens(text: str) -> None:
    rejected(text)


@SETTINGS
@given(st.text(alphabet="v1.AZaz09-_=+/é", max_size=60))
def test_token_shaped_strings_are_bad_tokens(text: str) -> None:
    rejected(text)
