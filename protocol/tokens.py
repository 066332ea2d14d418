"""Resume tokens: HMAC-SHA256 over (sid, epoch, grant, expiry), stdlib only.

A token is ``v1.<payload>.<mac>``, both parts unpadded base64url; the payload
is compact JSON.  Any gateway node holding the same secret verifies a token
without a lookup.  Tokens are credentials: never log them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from .errors import ErrorCode, ProtocolError
from .frames import Grant

_PREFIX = "v1."


@dataclass(frozen=True, slots=True)
class ResumeToken:
    sid: str
    epoch: str
    grant: Grant
    exp: float  # seconds since the epoch


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest())


def sign(secret: bytes, token: ResumeToken) -> str:
    """The signed, opaque form of ``token``."""
    body = json.dumps(
        {"s": token.sid, "e": token.epoch, "g": token.grant.value, "x": round(token.exp, 3)},
        separators=(",", ":"),
    )
    payload = _b64(body.encode("utf-8"))
    return f"{_PREFIX}{payload}.{_mac(secret, payload)}"


def verify(secret: bytes, text: str, *, sid: str, now: float) -> ResumeToken:
    """Check a token's signature, expiry and sid.

    Raises:
        ProtocolError: ``bad_token`` if it is malformed, forged, expired, or
            for another sid.
    """
    bad = ProtocolError(ErrorCode.BAD_TOKEN, "resume token invalid, expired, or for another sid")
    if not text.startswith(_PREFIX) or text.count(".") != 2:
        raise bad
    payload, mac = text[len(_PREFIX) :].split(".")
    try:
        expected = _mac(secret, payload)
    except UnicodeEncodeError:
        raise bad from None
    if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
        raise bad
    try:
        body = json.loads(_unb64(payload))
        token = ResumeToken(str(body["s"]), str(body["e"]), Grant(body["g"]), float(body["x"]))
    except (ValueError, KeyError, TypeError, binascii.Error):  # a well-signed but bad payload
        raise bad from None
    # `not >=` so that a NaN expiry counts as expired rather than as never expiring.
    if token.sid != sid or not token.exp >= now:
        raise bad
    return token
