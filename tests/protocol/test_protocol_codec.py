"""The codec: round trips, every bad_frame case of docs/protocol.md section 7, size limits."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from proto_strategies import (
    SETTINGS,
    any_values,
    client_frames,
    frame_like_maps,
    packed_anything,
    server_frames,
)

from protocol import (
    DEFAULT_MAX_FRAME,
    Ack,
    Batch,
    Cancel,
    CloseCode,
    Error,
    ErrorCode,
    Event,
    Grant,
    Hello,
    Kind,
    Ping,
    Pong,
    ProtocolError,
    Replied,
    Reply,
    Send,
    Welcome,
    decode_client,
    decode_event,
    decode_server,
    encode,
    encode_event,
    events_of,
    packb,
)
from protocol.codec import MAX_ID

OK_CODES = {ErrorCode.BAD_FRAME, ErrorCode.TOO_BIG}


def pk(m: Any) -> bytes:
    return msgpack.packb(m, use_bin_type=True)  # type: ignore[no-any-return]


def bad(decode: Any, data: bytes | str, **kw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data, **kw)
    assert info.value.code is ErrorCode.BAD_FRAME
    assert info.value.fatal and info.value.close_code is CloseCode.BAD_FRAME
    return info.value


# --- round trips ------------------------------------------------------------


@SETTINGS
@given(client_frames)
def test_client_frames_round_trip(frame: Any) -> None:
    assert decode_client(encode(frame), max_size=2**30) == frame


@SETTINGS
@given(server_frames)
def test_server_frames_round_trip(frame: Any) -> None:
    assert decode_server(encode(frame)) == frame


@pytest.mark.parametrize(
    "frame",
    [
        Hello("s"),
        Hello(
            "a.b:c_d-1",
            auth="x",
            resume="r",
            epoch="e",
            after=0,
            live=True,
            window=1,
            client="cli/1",
            start={"app": "demo", "input": [1, {"x": None}]},
        ),
        Ack(0),
        Reply("a", "r", None),
        Send(None, "r"),
        Send(b"\x00bin", "r"),
        Cancel("r"),
        Cancel("r", "enough"),
        Ping(),
        Ping({"any": [1, 2.5]}),
    ],
)
def test_client_examples_round_trip(frame: Any) -> None:
    assert decode_client(encode(frame)) == frame


@pytest.mark.parametrize(
    "frame",
    [
        Welcome("s", "e1", "tok", 0, 0, False, Grant.VIEWER),
        Welcome("s", "e1", "tok", 9, 3, True, Grant.OPERATOR, {"status": None}, 64, 15000),
        Event(1, "text", 1.5, {"id": "t", "delta": "hi"}),
        Event(2, "custom", 0.0, None),
        Batch(()),
        Batch((Event(1, "log", 1.0, {}), Event(2, "log", 2.0, [1]))),
        Replied("r", True),
        Replied("r", False, "ask_closed"),
        Pong(),
        Pong(7),
        Error("internal", "boom", True),
    ],
)
def test_server_examples_round_trip(frame: Any) -> None:
    assert decode_server(encode(frame)) == frame


def test_encode_leaves_out_none_optionals_but_keeps_nullable_keys() -> None:
    hello = msgpack.unpackb(encode(Hello("s")))
    assert {k: v for k, v in hello.items() if v is not None} == {"t": "hello", "sid": "s", "live": False}
    assert "auth" not in hello and "start" not in hello
    assert msgpack.unpackb(encode(Ping())) == {"t": "ping"}
    assert msgpack.unpackb(encode(Reply("a", "r", None)))["value"] is None
    assert msgpack.unpackb(encode(Send(None, "r")))["data"] is None
    assert msgpack.unpackb(encode(Event(1, "k", 1.0, None)))["d"] is None
    w = msgpack.unpackb(encode(Welcome("s", "e", "r", 0, 0, False, Grant.VIEWER)))
    assert w["snapshot"] is None and w["window"] is None and w["grant"] == "viewer"


def test_timestamps_decode_as_float() -> None:
    ev = decode_server(pk({"t": "ev", "seq": 1, "k": "log", "ts": 3, "d": {}}))
    assert isinstance(ev, Event) and ev.ts == 3.0 and isinstance(ev.ts, float)


def test_unknown_keys_are_ignored() -> None:
    assert decode_client(pk({"t": "ack", "seq": 3, "future": [1]})) == Ack(3)
    assert decode_server(pk({"t": "pong", "n": 1, "x": 2})) == Pong(1)


# --- nothing but ProtocolError escapes ----------------------------------------


def _only_protocol_errors(data: bytes) -> None:
    for decode in (decode_client, decode_server, decode_event):
        try:
            decode(data)
        except ProtocolError as exc:
            assert exc.code in OK_CODES


@SETTINGS
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    _only_protocol_errors(data)


@SETTINGS
@given(packed_anything)
def test_arbitrary_msgpack_raises_only_protocol_errors(data: bytes) -> None:
    _only_protocol_errors(data)
    # Truncations and a wrong first byte are garbage of a likely shape.
    _only_protocol_errors(data[: len(data) // 2])
    _only_protocol_errors(b"\x84" + data[1:])


@SETTINGS
@given(frame_like_maps, st.integers(min_value=0, max_value=64))
def test_frame_like_maps_raise_only_protocol_errors(m: dict[Any, Any], limit: int) -> None:
    data = pk(m)
    _only_protocol_errors(data)
    for decode in (decode_client, decode_server):
        try:
            decode(data, max_size=limit)
        except ProtocolError as exc:
            assert exc.code in OK_CODES
            if len(data) > limit:
                assert exc.code is ErrorCode.TOO_BIG


# --- section 7: bad_frame -----------------------------------------------------


def test_text_message_is_a_bad_frame() -> None:
    bad(decode_client, '{"t": "hello", "sid": "s"}')
    bad(decode_server, "anything")


@pytest.mark.parametrize("obj", [[1, 2], 1, "hello", None, True, 1.5, b"\x81", []])
def test_non_map_is_a_bad_frame(obj: Any) -> None:
    bad(decode_client, pk(obj))
    bad(decode_server, pk(obj))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x81",  # truncated map
        b"\x81\xa1t",  # truncated value
        pk({"t": "ping"}) + b"\x00",  # extra data
        b"\x81\xa1t\xa2\xff\xfe",  # invalid UTF-8 str
        b"\x81\x01\xa4ping",  # int key: not allowed in a map
        b"\xd6\xff\x00",  # truncated timestamp ext
        b"\x91" * 5000 + b"\xc0",  # nested deeper than the unpacker allows
    ],
)
def test_garbage_bytes_are_a_bad_frame(data: bytes) -> None:
    bad(decode_client, data)
    bad(decode_server, data)
    with pytest.raises(ProtocolError) as info:
        decode_event(data)
    assert info.value.code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize("m", [{}, {"t": "nope"}, {"t": 1}, {"t": None}, {"t": b"hello"}, {"t": "HELLO", "sid": "s"}])
def test_missing_or_unknown_t_is_a_bad_frame(m: dict[str, Any]) -> None:
    bad(decode_client, pk(m))
    bad(decode_server, pk(m))


def test_client_and_server_types_are_not_interchangeable() -> None:
    bad(decode_client, encode(Pong(1)))
    bad(decode_server, encode(Ping(1)))


def test_unknown_type_message_is_truncated() -> None:
    err = bad(decode_client, pk({"t": "x" * 1000}))
    assert len(err.msg) < 100


LONG = "x" * (MAX_ID + 1)


@pytest.mark.parametrize(
    "m",
    [
        # hello.sid
        {"t": "hello", "sid": 1},
        {"t": "hello", "sid": ""},
        {"t": "hello", "sid": "a b"},
        {"t": "hello", "sid": "a/b"},
        {"t": "hello", "sid": "é"},
        {"t": "hello", "sid": "ok\n"},
        {"t": "hello", "sid": "a" * 129},
        {"t": "hello", "sid": b"bytes"},
        # hello's optional keys
        {"t": "hello", "sid": "s", "auth": 1},
        {"t": "hello", "sid": "s", "resume": b"tok"},
        {"t": "hello", "sid": "s", "epoch": 3},
        {"t": "hello", "sid": "s", "after": -1},
        {"t": "hello", "sid": "s", "after": True},
        {"t": "hello", "sid": "s", "after": 1.0},
        {"t": "hello", "sid": "s", "live": 1},
        {"t": "hello", "sid": "s", "live": "yes"},
        {"t": "hello", "sid": "s", "window": 0},
        {"t": "hello", "sid": "s", "window": -5},
        {"t": "hello", "sid": "s", "window": 1_000_001},
        {"t": "hello", "sid": "s", "window": True},
        {"t": "hello", "sid": "s", "window": 8.0},
        {"t": "hello", "sid": "s", "client": ["x"]},
        {"t": "hello", "sid": "s", "start": "demo"},
        {"t": "hello", "sid": "s", "start": {"input": 1}},
        {"t": "hello", "sid": "s", "start": {"app": ""}},
        {"t": "hello", "sid": "s", "start": {"app": 1}},
        # ack
        {"t": "ack", "seq": -1},
        {"t": "ack", "seq": True},
        {"t": "ack", "seq": False},
        {"t": "ack", "seq": 1.0},
        {"t": "ack", "seq": "1"},
        # reply / send / cancel ids
        {"t": "reply", "ask": 1, "rid": "r", "value": 1},
        {"t": "reply", "ask": "", "rid": "r", "value": 1},
        {"t": "reply", "ask": LONG, "rid": "r", "value": 1},
        {"t": "reply", "ask": "a", "rid": 7, "value": 1},
        {"t": "send", "data": 1, "rid": ""},
        {"t": "send", "data": 1, "rid": LONG},
        {"t": "cancel", "rid": b"r"},
        {"t": "cancel", "rid": "r", "reason": 5},
    ],
)
def test_wrong_key_types_are_a_bad_frame(m: dict[str, Any]) -> None:
    err = bad(decode_client, pk(m))
    assert "bad value" in err.msg


@pytest.mark.parametrize(
    "m",
    [
        {"t": "hello"},
        {"t": "hello", "sid": None},
        {"t": "ack"},
        {"t": "ack", "seq": None},
        {"t": "reply", "rid": "r", "value": 1},
        {"t": "reply", "ask": "a", "value": 1},
        {"t": "reply", "ask": "a", "rid": "r"},
        {"t": "send", "rid": "r"},
        {"t": "send", "data": 1},
        {"t": "cancel"},
        {"t": "cancel", "reason": "x"},
    ],
)
def test_missing_required_keys_are_a_bad_frame(m: dict[str, Any]) -> None:
    err = bad(decode_client, pk(m))
    assert "missing key" in err.msg


@pytest.mark.parametrize(
    "m",
    [
        {"t": "welcome", "epoch": "e", "resume": "r", "head": 0, "first": 0, "recovered": False, "grant": "viewer"},
        {
            "t": "welcome",
            "sid": "s",
            "epoch": "e",
            "resume": "r",
            "head": 0,
            "first": 0,
            "recovered": False,
            "grant": "admin",
        },
        {
            "t": "welcome",
            "sid": "s",
            "epoch": "e",
            "resume": "r",
            "head": -1,
            "first": 0,
            "recovered": False,
            "grant": "viewer",
        },
        {
            "t": "welcome",
            "sid": "s",
            "epoch": "e",
            "resume": "r",
            "head": 0,
            "first": 0,
            "recovered": 0,
            "grant": "viewer",
        },
        {
            "t": "welcome",
            "sid": "s",
            "epoch": "e",
            "resume": "r",
            "head": 0,
            "first": 0,
            "recovered": False,
            "grant": "viewer",
            "snapshot": [],
        },
        {
            "t": "welcome",
            "sid": "s",
            "epoch": "e",
            "resume": "r",
            "head": 0,
            "first": 0,
            "recovered": False,
            "grant": "viewer",
            "window": 0,
        },
        {
            "t": "welcome",
            "sid": "s",
            "epoch": "e",
            "resume": "r",
            "head": 0,
            "first": 0,
            "recovered": False,
            "grant": "viewer",
            "heartbeat": -1,
        },
        {"t": "ev", "seq": 1, "k": "log", "ts": "now", "d": {}},
        {"t": "ev", "seq": True, "k": "log", "ts": 1.0, "d": {}},
        {"t": "ev", "seq": 1, "k": 5, "ts": 1.0, "d": {}},
        {"t": "ev", "seq": 1, "k": "log", "ts": True, "d": {}},
        {"t": "ev", "seq": 1, "k": "log", "ts": 1.0},
        {"t": "batch"},
        {"t": "batch", "evs": {}},
        {"t": "batch", "evs": [1]},
        {"t": "batch", "evs": [{"seq": 1, "k": "log", "ts": 1.0}]},
        {"t": "replied", "rid": "r", "ok": "yes"},
        {"t": "replied", "ok": True},
        {"t": "replied", "rid": "r", "ok": False, "err": 4},
        {"t": "error", "code": "x", "msg": "y"},
        {"t": "error", "code": 1, "msg": "y", "fatal": True},
    ],
)
def test_bad_server_frames(m: dict[str, Any]) -> None:
    bad(decode_server, pk(m))


# --- nil means absent for optional keys -------------------------------------------


def test_nil_optionals_are_absent() -> None:
    nils = dict.fromkeys(["auth", "resume", "epoch", "after", "live", "window", "client", "start"])
    assert decode_client(pk({"t": "hello", "sid": "s", **nils})) == Hello("s")
    assert decode_client(pk({"t": "cancel", "rid": "r", "reason": None})) == Cancel("r")
    assert decode_client(pk({"t": "ping", "n": None})) == Ping()
    assert decode_client(pk({"t": "ping"})) == Ping()
    w = {
        "t": "welcome",
        "sid": "s",
        "epoch": "e",
        "resume": "r",
        "head": 1,
        "first": 1,
        "recovered": True,
        "grant": "operator",
    }
    want = Welcome("s", "e", "r", 1, 1, True, Grant.OPERATOR)
    assert decode_server(pk({**w, "snapshot": None, "window": None, "heartbeat": None})) == want
    assert decode_server(pk({"t": "replied", "rid": "r", "ok": True, "err": None})) == Replied("r", True)


def test_nil_is_a_value_where_any_value_is_allowed() -> None:
    assert decode_client(pk({"t": "reply", "ask": "a", "rid": "r", "value": None})) == Reply("a", "r", None)
    assert decode_client(pk({"t": "send", "rid": "r", "data": None})) == Send(None, "r")
    ev = decode_server(pk({"t": "ev", "seq": 1, "k": "x", "ts": 0.5, "d": None}))
    assert ev == Event(1, "x", 0.5, None)


def test_boundary_values_are_accepted() -> None:
    assert decode_client(pk({"t": "hello", "sid": "a" * 128, "window": 1_000_000})) == Hello(
        "a" * 128, window=1_000_000
    )
    assert decode_client(pk({"t": "hello", "sid": "s", "window": 1})) == Hello("s", window=1)
    assert decode_client(pk({"t": "ack", "seq": 0})) == Ack(0)
    assert decode_client(pk({"t": "ack", "seq": 2**64 - 1})) == Ack(2**64 - 1)
    long_id = "é" * MAX_ID  # the limit counts characters
    assert decode_client(pk({"t": "cancel", "rid": long_id})) == Cancel(long_id)
    assert decode_client(pk({"t": "hello", "sid": "s", "auth": ""})) == Hello("s", auth="")


# --- too_big -----------------------------------------------------------------------


def test_too_big() -> None:
    data = pk({"t": "ping", "n": "x" * 100})
    assert decode_client(data, max_size=len(data)) == Ping("x" * 100)
    assert decode_server(pk({"t": "pong", "n": 1}), max_size=len(pk({"t": "pong", "n": 1})))
    for decode in (decode_client, decode_server):
        with pytest.raises(ProtocolError) as info:
            decode(data, max_size=len(data) - 1)
        assert info.value.code is ErrorCode.TOO_BIG
        assert info.value.fatal and info.value.close_code is CloseCode.MESSAGE_TOO_BIG


def test_too_big_is_checked_before_decoding() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client(b"\xc1" * (DEFAULT_MAX_FRAME + 1))
    assert info.value.code is ErrorCode.TOO_BIG
    assert decode_client(pk({"t": "ping", "n": b"x" * (DEFAULT_MAX_FRAME - 20)})).t == "ping"


def test_server_default_limit_is_larger() -> None:
    big = pk({"t": "pong", "n": b"x" * (DEFAULT_MAX_FRAME + 10)})
    assert decode_server(big) == Pong(b"x" * (DEFAULT_MAX_FRAME + 10))
    with pytest.raises(ProtocolError) as info:
        decode_client(big)
    assert info.value.code is ErrorCode.TOO_BIG


# --- stored events --------------------------------------------------------------


def test_decode_event() -> None:
    raw = encode_event(4, "log", 1.25, {"level": "info", "msg": "m"})
    assert decode_event(raw) == Event(4, "log", 1.25, {"level": "info", "msg": "m"})
    assert msgpack.unpackb(raw) == {"seq": 4, "k": "log", "ts": 1.25, "d": {"level": "info", "msg": "m"}}


@pytest.mark.parametrize(
    "raw",
    [b"\xc1", pk([1]), pk({"seq": 1, "k": "x", "ts": 1.0}), pk({"seq": -1, "k": "x", "ts": 1.0, "d": 0}), "text"],
)
def test_decode_event_rejects(raw: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_event(raw)
    assert info.value.code is ErrorCode.BAD_FRAME


# The session encodes an event before it takes its seq (encode_body), and
# splices the seq in under its lock (with_seq): the bytes must be exactly
# encode_event's, at every width msgpack gives an int.
@pytest.mark.parametrize("seq", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
@pytest.mark.parametrize("d", [None, "x" * 40, {"level": "info", "msg": "m"}, {"tasks": [{"id": "1"}] * 20}])
def test_an_event_encoded_in_two_steps_is_the_same_bytes(seq: int, d: Any) -> None:
    from protocol.codec import encode_body, with_seq

    raw = with_seq(seq, encode_body("log", 1.25, d))
    assert raw == encode_event(seq, "log", 1.25, d) == pk({"seq": seq, "k": "log", "ts": 1.25, "d": d})


# The session packs an event in parts (codec.encode_event), and a text delta
# with its stream's id packed once (codec.encode_text): the same bytes as
# packing the map, at every width msgpack gives an int or a string.
@pytest.mark.parametrize("seq", [1, 127, 128, 65536, 2**32, 2**64 - 1])
@pytest.mark.parametrize("delta", ["", "x", "x" * 31, "x" * 32, "é" * 200, "x" * 70_000])
@pytest.mark.parametrize("tid", ["p1t1", "x" * 40])
def test_a_text_delta_packed_in_parts_is_the_same_bytes(seq: int, delta: str, tid: str) -> None:
    from protocol.codec import encode_text, text_head

    ts = 1_700_000_000.123456
    want = pk({"seq": seq, "k": "text", "ts": ts, "d": {"id": tid, "delta": delta}})
    assert encode_text(seq, ts, text_head(tid), delta) == want
    assert encode_event(seq, "text", ts, {"id": tid, "delta": delta}) == want


@pytest.mark.parametrize("k", ["log", Kind.LOG, "vendor." + "x" * 40])
@pytest.mark.parametrize("ts", [1.25, 2, float("inf"), -0.0])  # an int ts packs as an int
@pytest.mark.parametrize("d", [None, "x", 1.5, [1, {"a": b"b"}], {"level": "info", "msg": "m"}])
def test_an_event_packed_in_parts_is_the_map_packed(k: str, ts: float, d: Any) -> None:
    assert encode_event(300, k, ts, d) == pk({"seq": 300, "k": k, "ts": ts, "d": d})


def test_a_text_delta_that_cannot_be_written_raises_as_the_map_would() -> None:
    from protocol.codec import encode_text, text_head

    with pytest.raises(ValueError):
        encode_text(1, 1.0, text_head("t"), "\ud800")  # a lone surrogate is not UTF-8
    with pytest.raises(ValueError):
        encode_event(1, "text", 1.0, {"id": "t", "delta": "\ud800"})


class _Writes:
    """An agent object whose dump packs something itself (an agent writing an event from model_dump)."""

    def __init__(self) -> None:
        self.inner = b""

    def model_dump(self, *, mode: str) -> dict[str, Any]:
        self.inner = packb({"inner": ["x" * 10, 2]})
        return {"dumped": [1, 2, 3]}


def test_packb_may_be_called_from_inside_an_objects_dump() -> None:
    obj = _Writes()
    out = packb({"a": "before", "obj": obj, "z": "after" * 5})
    assert out == pk({"a": "before", "obj": {"dumped": [1, 2, 3]}, "z": "after" * 5})
    assert obj.inner == pk({"inner": ["x" * 10, 2]})
    assert packb({"again": 1}) == pk({"again": 1})  # the thread's packer is sound afterwards


def test_packb_after_a_failed_or_a_big_pack() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        packb({"half": "written", "loop": loop})
    assert packb({"a": 1}) == pk({"a": 1})  # nothing of the failed pack is left in the buffer
    big = {"blob": b"x" * (2 << 20)}
    assert packb(big) == pk(big)
    assert packb({"a": 1}) == pk({"a": 1})


def _containers(v: Any) -> list[Any]:
    """Every dict and list (and tuple) in ``v``."""
    out: list[Any] = []
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            out.append(x)
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            out.append(x)
            stack.extend(x)
    return out


@SETTINGS
@given(any_values)
def test_copy_value_is_the_value_as_it_travels_and_shares_nothing(v: Any) -> None:
    from protocol.codec import NotPlain, copy_value

    try:
        c = copy_value(v)
    except NotPlain:  # an ExtType (a tuple subclass): only its encoding shows its shape
        return
    assert packb(c) == packb(v)
    assert not {id(x) for x in _containers(c)} & {id(x) for x in _containers(v)}
    assert not any(isinstance(x, tuple) for x in _containers(c))


def test_copy_value_is_deep() -> None:
    """The reducers keep what emit copied: the agent changing its value afterwards changes nothing."""
    from protocol.codec import copy_value

    plan: Any = {"goal": "g", "tasks": [{"id": "1", "status": "pending", "deps": ["0"]}], "meta": {"by": {"who": "a"}}}
    c = copy_value(plan)
    plan["tasks"][0]["status"] = "done"  # a shallow copy would see this
    plan["tasks"][0]["deps"].append("x")
    plan["tasks"].append({"id": "2"})
    plan["meta"]["by"]["who"] = "b"
    assert c == {"goal": "g", "tasks": [{"id": "1", "status": "pending", "deps": ["0"]}], "meta": {"by": {"who": "a"}}}
    assert copy_value(({"a": (1, 2)}, [3])) == [{"a": [1, 2]}, [3]]  # tuples come back as lists
    assert copy_value("s") == "s" and copy_value(None) is None


def test_copy_value_checks_as_check_value_does() -> None:
    from protocol import MAX_DEPTH, check_value
    from protocol.codec import NotPlain, copy_value

    bads: list[Any] = [[{"k": [1]}] * 3 + [{(1, 2): "tuple key"}], {"a": {frozenset(): 1}}]
    for bad in bads:
        with pytest.raises(ValueError) as info:
            copy_value(bad)
        assert str(info.value) == check_value(bad)
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH):
        deep = {"k": [deep]} if len(str(deep)) % 2 else [deep]
    assert check_value(deep) is None and copy_value(deep) == deep
    too_deep = [deep]
    with pytest.raises(ValueError, match="deeper"):
        copy_value(too_deep)
    assert check_value(too_deep) is not None
    assert copy_value(too_deep, limit=MAX_DEPTH + 1) == too_deep
    keys: dict[Any, str] = {1: "a", 2.5: "b", None: "c", b"k": "d", False: "e"}
    assert copy_value(keys) == keys

    class Name(str):
        pass

    # Objects the encoder turns into values of another type: the caller encodes and decodes instead.
    for other in (_Point(1, [2]), {"p": [_Model()]}, {1, 2}, {Name("k"): 1}, [Name("v")], {"d": _Sub()}):
        with pytest.raises(NotPlain):
            copy_value(other)


class _Sub(dict[str, Any]):
    pass


def test_events_of() -> None:
    ev = Event(1, "k", 1.0, None)
    ev2 = dataclasses.replace(ev, seq=2)
    assert tuple(events_of(ev)) == (ev,)
    assert tuple(events_of(Batch((ev, ev2)))) == (ev, ev2)
    assert tuple(events_of(Batch(()))) == ()
    assert tuple(events_of(Pong())) == ()


# --- packb's fallback for agent objects ------------------------------------------------


class _Model:
    def model_dump(self, *, mode: str) -> dict[str, str]:
        return {"mode": mode}


class _NotAModel:
    model_dump = "not callable"

    def __repr__(self) -> str:
        return "<not a model>"


@dataclasses.dataclass
class _Point:
    x: int
    y: list[int]


def test_packb_fallbacks() -> None:
    def rt(obj: Any) -> Any:
        return msgpack.unpackb(packb(obj))

    assert rt(_Model()) == {"mode": "json"}
    assert rt(_Point(1, [2])) == {"x": 1, "y": [2]}
    assert rt({1, 2}) in ([1, 2], [2, 1])
    assert rt(frozenset({"a"})) == ["a"]
    assert rt(_NotAModel()) == "<not a model>"
    assert rt(_Point) == repr(_Point)  # a dataclass type is not an instance
    assert rt({"nested": [_Model()]}) == {"nested": [{"mode": "json"}]}
    assert rt(b"b") == b"b"  # bin, not str


def test_values_and_their_limits() -> None:
    from protocol import MAX_DEPTH, check_value
    from protocol.codec import walk_value

    class Thing:
        pass

    assert walk_value({"a": 1}) == (None, False)  # flat: decided at once
    assert walk_value(3) == (None, False)
    assert walk_value(Thing()) == (None, True)  # the encoder will expand it
    assert walk_value({"a": [Thing()]}) == (None, True)
    assert walk_value([1, 2, {"k": None}]) == (None, False)
    assert check_value({1: "a", 2.5: "b", None: "c", b"k": "d"}) is None
    assert check_value({False: "bool keys too"}) is None
    assert "map key" in (check_value({"a": {frozenset(): 1}}) or "")

    class Name(str):
        pass

    assert check_value({Name("k"): [1], "b": 2}) is None  # a str subclass is a str key
    deep: object = "leaf"
    for _ in range(MAX_DEPTH + 1):
        deep = {"k": deep}
    assert "deeper" in (check_value(deep) or "")
    assert check_value(deep, limit=MAX_DEPTH + 1) is None


def test_a_hello_whose_start_input_is_too_deep_is_a_bad_frame() -> None:
    from protocol import MAX_DEPTH

    deep: object = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ProtocolError) as err:
        decode_client(packb({"t": "hello", "sid": "s", "start": {"app": "a", "input": deep}}))
    assert err.value.code is ErrorCode.BAD_FRAME and "input" in err.value.msg
    ok = decode_client(packb({"t": "hello", "sid": "s", "start": {"app": "a", "input": [[1]]}}))
    assert isinstance(ok, Hello), ok
    assert ok.start == {"app": "a", "input": [[1]]}
