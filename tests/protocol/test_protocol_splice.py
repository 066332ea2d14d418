"""ev_frame / batch_frame splice stored events into frames exactly as encode() would."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from proto_strategies import SETTINGS, events

from protocol import (
    Batch,
    Event,
    batch_frame,
    decode_event,
    decode_server,
    encode,
    encode_event,
    ev_frame,
    frame_for,
)

BIG = 65536


@pytest.fixture(scope="module")
def stored() -> tuple[list[Event], list[bytes]]:
    """65536 small events and their stored encodings, built once for every size."""
    evs = [Event(i + 1, "text", 1000.0 + i, {"id": "t", "delta": str(i)}) for i in range(BIG)]
    return evs, [encode_event(e.seq, e.k, e.ts, e.d) for e in evs]


def raw_of(ev: Event) -> bytes:
    return encode_event(ev.seq, ev.k, ev.ts, ev.d)


@SETTINGS
@given(events)
def test_ev_frame_equals_encode(ev: Event) -> None:
    raw = raw_of(ev)
    assert raw[0] == 0x84
    assert decode_event(raw) == ev
    assert decode_server(ev_frame(raw)) == decode_server(encode(ev)) == ev
    assert ev_frame(raw) == encode(ev)  # even byte for byte


@SETTINGS
@given(st.lists(events, max_size=20))
def test_batch_frame_equals_encode(evs: list[Event]) -> None:
    raws = [raw_of(e) for e in evs]
    want = Batch(tuple(evs))
    assert decode_server(batch_frame(raws)) == decode_server(encode(want)) == want
    assert batch_frame(raws) == encode(want)


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, b"\x90"),
        (1, b"\x91"),
        (15, b"\x9f"),
        (16, b"\xdc\x00\x10"),
        (65535, b"\xdc\xff\xff"),
        (65536, b"\xdd\x00\x01\x00\x00"),
    ],
)
def test_batch_array_header_sizes(n: int, header: bytes, stored: tuple[list[Event], list[bytes]]) -> None:
    evs, raws = stored[0][:n], stored[1][:n]
    frame = batch_frame(raws)
    prefix = msgpack.packb({"t": "batch", "evs": []})[:-1]
    assert frame.startswith(prefix + header)
    want = Batch(tuple(evs))
    # Byte equality with encode() makes decoding encode()'s output too redundant (and slow).
    assert frame == encode(want)
    assert decode_server(frame) == want


def test_frame_for_picks_ev_or_batch() -> None:
    a, b = Event(1, "k", 1.0, None), Event(2, "k", 2.0, [1])
    assert decode_server(frame_for([raw_of(a)])) == a
    assert decode_server(frame_for([raw_of(a), raw_of(b)])) == Batch((a, b))
    assert decode_server(frame_for([])) == Batch(())


def test_spliced_frames_keep_unknown_payloads_opaque() -> None:
    d: dict[str, Any] = {"bin": b"\x00\xff", "nested": [{"deep": [None, True, -1]}], "f": 1e300}
    raw = encode_event(7, "vendor.kind", 1.5, d)
    ev = decode_server(ev_frame(raw))
    assert isinstance(ev, Event) and ev.d == d and ev.k == "vendor.kind"
