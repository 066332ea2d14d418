"""The client side, sans I/O: what the shared cases (tests/cases) do not reach."""

from __future__ import annotations

import pytest

from protocol import Pong, ProtocolError, packb
from protocol.client import ClientProtocol


def test_bytes_in_frames_out() -> None:
    proto = ClientProtocol("s")
    with pytest.raises(RuntimeError):
        proto.ping(1)  # no socket
    proto.opened()
    assert [f["t"] for f in map(_unpack, proto.data_to_send())] == ["hello"]
    proto.ping(7)
    assert proto.frames_to_send()[0].t.value == "ping"
    assert proto.receive_data(packb({"t": "pong", "n": 7})) == [Pong(7)]
    with pytest.raises(ProtocolError):
        proto.receive_data(b"\xc1")
    proto.closed(1006)
    proto.ping  # noqa: B018 - the method stays; a closed client queues nothing
    with pytest.raises(RuntimeError):
        proto.ping(8)


def _unpack(data: bytes) -> dict[str, object]:
    import msgpack

    out = msgpack.unpackb(data, raw=False)
    assert isinstance(out, dict)
    return out
