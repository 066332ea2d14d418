"""A fuzz target for the decoders, run by hypothesis here and by atheris when installed.

``fuzz_one`` states the decoder's contract: whatever the bytes, ``decode_client``,
``decode_server`` and ``decode_event`` either return a frame or raise
``ProtocolError`` with code ``bad_frame`` or ``too_big``; and what they return
encodes to bytes that decode to the same frame again.

Run it for longer with atheris (not a dependency), from the repository root
with the project installed (``pip install -e .``)::

    pip install atheris
    python tests/protocol/test_fuzz_decoder.py -max_total_time=60
"""

from __future__ import annotations

import sys

import msgpack
from hypothesis import example, given
from hypothesis import strategies as st
from proto_strategies import SETTINGS, client_frames, packed_anything, server_frames

from protocol import ErrorCode, ProtocolError, decode_client, decode_event, decode_server, encode

_ALLOWED = (ErrorCode.BAD_FRAME, ErrorCode.TOO_BIG)


def fuzz_one(data: bytes) -> None:
    """One fuzz input: any exception other than a well-coded ProtocolError is a finding."""
    small = len(data) // 2
    for decode, kw in (
        (decode_client, {}),
        (decode_server, {}),
        (decode_client, {"max_size": small}),
        (decode_server, {"max_size": small}),
    ):
        try:
            frame = decode(data, **kw)
        except ProtocolError as exc:
            assert exc.code in _ALLOWED, exc
            if len(data) > kw.get("max_size", len(data)):
                assert exc.code is ErrorCode.TOO_BIG, exc
            continue
        # Whatever decodes re-encodes to a stable form (bytes, not ==: NaN != NaN).
        again = encode(frame)
        assert encode(decode(again, max_size=2**31)) == again
    try:
        ev = decode_event(data)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_FRAME, exc
    else:
        assert encode(decode_server(encode(ev))) == encode(ev)


def _pk(m: object) -> bytes:
    return msgpack.packb(m, use_bin_type=True)  # type: ignore[no-any-return]


@SETTINGS
@given(st.binary(max_size=128) | packed_anything)
@example(b"")
@example(b"\xc1")
@example(_pk({"t": "hello", "sid": "s", "after": 1, "window": 8}))
@example(_pk({"t": "ev", "seq": 1, "k": "x", "ts": float("nan"), "d": {b"bin-key": 1}}))
@example(_pk({"t": "batch", "evs": [{"seq": 1, "k": "x", "ts": 1, "d": None}]}))
@example(_pk({"seq": 1, "k": "x", "ts": 1.0, "d": msgpack.ExtType(5, b"x")}))
@example(b"\x85\xa1t\xa2ev\xa3seq\x01\xa1k\xa1x\xa2ts\xd6\xff\x00\x00\x00\x01\xa1d\xc0")
def test_fuzz_one(data: bytes) -> None:
    fuzz_one(data)


@SETTINGS
@given(client_frames | server_frames, st.data())
def test_fuzz_one_on_mutated_valid_frames(frame: object, data: st.DataObject) -> None:
    raw = bytearray(encode(frame))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    fuzz_one(bytes(raw))


if __name__ == "__main__":
    try:
        import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris")
    atheris.instrument_all()
    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()
