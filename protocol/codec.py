"""MessagePack <-> frames, with strict validation and size limits.

``decode_client`` and ``decode_server`` turn one WebSocket message into one
frame, or raise :class:`~protocol.errors.ProtocolError`; nothing else ever
escapes them, whatever the bytes.  ``encode`` turns a frame into bytes.

Events are stored encoded (one MessagePack map ``{seq, k, ts, d}`` each) so
that the hot path never encodes an event twice: :func:`ev_frame` and
:func:`batch_frame` splice stored events into ``ev`` and ``batch`` frames
without decoding them.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import msgpack  # ships no stubs or py.typed

from .errors import ErrorCode, ProtocolError
from .frames import (
    Ack,
    Batch,
    Cancel,
    ClientFrame,
    Error,
    Event,
    Frame,
    FrameType,
    Grant,
    Hello,
    Ping,
    Pong,
    Replied,
    Reply,
    Send,
    ServerFrame,
    Welcome,
)

DEFAULT_MAX_FRAME: Final = 1024 * 1024
#: How deep a value may nest maps and arrays, counted from the value itself
#: (an event's ``d``, a reply's ``value``, a send's ``data``, a start's
#: ``input``).  One limit both ways: the Pipe refuses to write a deeper ``d``,
#: and the decoder refuses a deeper value from a client, so that whatever it
#: accepts can be written back (an ``answer`` event wraps a reply's value in
#: one more map, which the gateway allows itself).
MAX_DEPTH: Final = 100
SID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Longest id (rid, ask id, epoch) a peer may send; longer is a bad frame.
MAX_ID: Final = 256

_ANY: Final = object()


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_id(v: object) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_ID


def _is_sid(v: object) -> bool:
    return isinstance(v, str) and SID_RE.fullmatch(v) is not None


def _is_count(v: object) -> bool:
    return _is_int(v) and v >= 0  # type: ignore[operator]


def _is_window(v: object) -> bool:
    return _is_int(v) and 0 < v <= 1_000_000  # type: ignore[operator]


def _is_start(v: object) -> bool:
    return isinstance(v, dict) and isinstance(v.get("app"), str) and bool(v["app"])


#: Map keys a value may use: what every decoder (Python with
#: ``strict_map_key=False``, JavaScript) turns back into a key.
_KEY_TYPES: Final = (str, int, float, bool, bytes, type(None))
_NESTED: Final = (dict, list, tuple)
_SCALARS: Final = frozenset(_KEY_TYPES)


def check_value(v: object, limit: int = MAX_DEPTH) -> str | None:
    """Why ``v`` cannot travel as a value, or None if it can.

    A value nests maps and arrays (dicts, lists, tuples) at most ``limit``
    deep, and its map keys are strings, numbers, booleans, bytes or nil.
    Other objects are leaves here (the encoder turns them into plain values).
    """
    return walk_value(v, limit)[0]


#: Containers longer than this are first checked for scalars in C (one
#: call); shorter ones are cheaper to walk item by item.
_SHORT: Final = 8


def is_flat_map(v: object) -> bool:
    """True for the common payload: a dict whose keys and values are all
    scalars.  Such a value can travel, and is plain."""
    if type(v) is not dict:
        return False
    if len(v) > _SHORT:  # decided in C
        return _SCALARS.issuperset(map(type, v.values())) and _SCALARS.issuperset(map(type, v))
    for key, item in v.items():  # cheaper for a few keys
        if type(key) not in _SCALARS or type(item) not in _SCALARS:
            return False
    return True


def walk_value(v: object, limit: int = MAX_DEPTH) -> tuple[str | None, bool]:
    """``check_value``'s verdict, and whether ``v`` holds other objects than
    plain maps, arrays and scalars (the encoder will turn them into values
    whose shape only the encoded bytes show)."""
    if is_flat_map(v):
        return None, False
    if type(v) in _SCALARS:
        return None, False
    if not isinstance(v, _NESTED):
        return None, True
    opaque = False
    stack: list[tuple[object, int]] = [(v, 1)]
    pop, push = stack.pop, stack.append
    scalars = _SCALARS.issuperset
    while stack:
        obj, depth = pop()
        if depth > limit:
            return f"nests deeper than {limit} maps/arrays", opaque
        if isinstance(obj, dict):
            if not scalars(map(type, obj)):
                for key in obj:
                    if type(key) not in _SCALARS and not isinstance(key, _KEY_TYPES):
                        return f"a map key must be a string or a number, not {type(key).__name__}", opaque
            items = obj.values()
        else:
            items = obj  # type: ignore[assignment]
        if scalars(map(type, items)):  # the common case, decided in C
            continue
        for item in items:
            if type(item) in _SCALARS:
                continue
            if isinstance(item, _NESTED):
                push((item, depth + 1))
            else:
                opaque = True
    return None, opaque


class NotPlain(Exception):
    """``copy_value`` met an object that only its encoding gives a shape to."""


def copy_value(v: object, limit: int = MAX_DEPTH) -> Any:
    """A copy of ``v`` as decoding its encoding would give it back, checked on the way.

    For a value of plain dicts, lists, tuples and scalars (str, int, float,
    bool, bytes, None; exactly these types): the copy shares no dict or
    list with ``v``, so changing ``v`` afterwards leaves it alone; tuples
    become lists and scalars are shared (they are immutable).  One pass does
    what ``check_value`` and a decode of the encoded bytes would do, several
    times faster.

    Raises:
        ValueError: ``v`` cannot travel; the message is ``check_value``'s reason.
        NotPlain: ``v`` holds another object (a model, a dataclass, a set, a
            subclass of a plain type): only its encoding tells its shape.
    """
    t = type(v)
    if t in _SCALARS:
        return v
    if t is dict or t is list or t is tuple:
        return _copy(v, 1, limit)
    raise NotPlain(t.__name__)


def _copy(v: Any, depth: int, limit: int) -> Any:
    if depth > limit:
        raise ValueError(f"nests deeper than {limit} maps/arrays")
    scalars = _SCALARS
    if type(v) is dict:
        if len(v) > _SHORT and scalars.issuperset(map(type, v)) and scalars.issuperset(map(type, v.values())):
            return v.copy()
        out = {}
        for key, item in v.items():
            if type(key) not in scalars:
                if isinstance(key, _KEY_TYPES):
                    raise NotPlain(type(key).__name__)  # it would come back as its base type
                raise ValueError(f"a map key must be a string or a number, not {type(key).__name__}")
            t = type(item)
            if t in scalars:
                out[key] = item
            elif t is dict or t is list or t is tuple:
                out[key] = _copy(item, depth + 1, limit)
            else:
                raise NotPlain(t.__name__)
        return out
    if len(v) > _SHORT and scalars.issuperset(map(type, v)):
        return list(v)
    items = []
    for item in v:
        t = type(item)
        if t in scalars:
            items.append(item)
        elif t is dict and depth < limit and len(item) <= _SHORT:
            # An array of records (a plan's tasks): a flat map is checked
            # here and copied in C, without a call per map.
            for key, x in item.items():
                if type(key) not in scalars or type(x) not in scalars:
                    items.append(_copy(item, depth + 1, limit))
                    break
            else:
                items.append(item.copy())
        elif t is dict or t is list or t is tuple:
            items.append(_copy(item, depth + 1, limit))
        else:
            raise NotPlain(t.__name__)
    return items


def _is(t: type | tuple[type, ...]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, t)


_is_str = _is(str)
_is_bool = _is(bool)
_is_map = _is(dict)

# key -> (check, required).  A required key must be present; an optional key
# may be absent or nil (JavaScript's undefined encodes as nil).  Unknown keys
# are ignored: that is how the protocol grows additively.
Schema = dict[str, tuple[Callable[[object], bool] | object, bool]]

_CLIENT: Final[dict[str, tuple[Callable[..., ClientFrame], Schema]]] = {
    "hello": (
        Hello,
        {
            "sid": (_is_sid, True),
            "auth": (_is_str, False),
            "resume": (_is_str, False),
            "epoch": (_is_str, False),
            "after": (_is_count, False),
            "live": (_is_bool, False),
            "window": (_is_window, False),
            "client": (_is_str, False),
            "start": (_is_start, False),
        },
    ),
    "ack": (Ack, {"seq": (_is_count, True)}),
    "reply": (Reply, {"ask": (_is_id, True), "rid": (_is_id, True), "value": (_ANY, True)}),
    "send": (Send, {"data": (_ANY, True), "rid": (_is_id, True)}),
    "cancel": (Cancel, {"rid": (_is_id, True), "reason": (_is_str, False)}),
    "ping": (Ping, {"n": (_ANY, False)}),
}

_EVENT: Final[Schema] = {
    "seq": (_is_count, True),
    "k": (_is_str, True),
    "ts": (_is_num, True),
    "d": (_ANY, True),
}


def _event(**kw: Any) -> Event:
    return Event(seq=kw["seq"], k=kw["k"], ts=float(kw["ts"]), d=kw["d"])


def _batch(evs: list[Any]) -> Batch:
    return Batch(tuple(_event(**_check("event", e, _EVENT)) for e in evs))


def _welcome(**kw: Any) -> Welcome:
    kw["grant"] = Grant(kw["grant"])
    return Welcome(**kw)


_SERVER: Final[dict[str, tuple[Callable[..., ServerFrame], Schema]]] = {
    "welcome": (
        _welcome,
        {
            "sid": (_is_sid, True),
            "epoch": (_is_str, True),
            "resume": (_is_str, True),
            "head": (_is_count, True),
            "first": (_is_count, True),
            "recovered": (_is_bool, True),
            "grant": (lambda v: v in ("viewer", "operator"), True),
            "snapshot": (_is_map, False),
            "window": (_is_window, False),
            "heartbeat": (_is_count, False),
        },
    ),
    "ev": (_event, _EVENT),
    "batch": (
        _batch,
        {"evs": (lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v), True)},
    ),
    "replied": (Replied, {"rid": (_is_id, True), "ok": (_is_bool, True), "err": (_is_str, False)}),
    "pong": (Pong, {"n": (_ANY, False)}),
    "error": (Error, {"code": (_is_str, True), "msg": (_is_str, True), "fatal": (_is_bool, True)}),
}


def _bad(msg: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FRAME, msg)


def _check(t: str, m: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for key, (check, required) in schema.items():
        if key not in m or (m[key] is None and check is not _ANY):
            if required:
                raise _bad(f"{t}: missing key {key!r}")
            continue
        v = m[key]
        if check is not _ANY and not check(v):  # type: ignore[operator]
            raise _bad(f"{t}: bad value for {key!r}")
        kw[key] = v
    return kw


def _unpack(data: bytes | str, max_size: int) -> tuple[str, dict[str, Any]]:
    if isinstance(data, str):
        raise _bad("text messages are not allowed; send binary MessagePack")
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_BIG, f"frame of {len(data)} bytes over the {max_size} limit")
    try:
        m = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises a zoo of types; all mean the same here
        raise _bad(f"undecodable MessagePack ({type(exc).__name__})") from None
    if not isinstance(m, dict):
        raise _bad("a frame must be a MessagePack map")
    t = m.get("t")
    if not isinstance(t, str):
        raise _bad("a frame needs a string 't'")
    return t, m


def decode_client(data: bytes | str, max_size: int = DEFAULT_MAX_FRAME) -> ClientFrame:
    """Decode one client -> server message.

    Raises:
        ProtocolError: ``too_big`` over ``max_size``; ``bad_frame`` for
            anything else that is not a valid client frame.
    """
    t, m = _unpack(data, max_size)
    try:
        cls, schema = _CLIENT[t]
    except KeyError:
        raise _bad(f"unknown frame type {t[:32]!r}") from None
    kw = _check(t, m, schema)
    carried = _CARRIED.get(t)
    if carried is not None:
        why = check_value(kw.get(carried))
        if why is not None:
            # Not a broken frame: a request whose value cannot be written
            # back.  The connection answers it (replied ok:false) and goes on.
            raise ProtocolError(ErrorCode.BAD_VALUE, f"{t}.{carried} {why}", fatal=False, rid=kw["rid"])
    elif t == "hello" and "start" in kw:
        why = check_value(kw["start"].get("input"))
        if why is not None:
            raise _bad(f"hello.start.input {why}")
    return cls(**kw)


#: The key of each request frame that carries an application value.
_CARRIED: Final = {"reply": "value", "send": "data"}


def decode_server(data: bytes | str, max_size: int = 64 * DEFAULT_MAX_FRAME) -> ServerFrame:
    """Decode one server -> client message (for Python clients).

    Raises:
        ProtocolError: ``too_big`` or ``bad_frame``.
    """
    t, m = _unpack(data, max_size)
    try:
        cls, schema = _SERVER[t]
    except KeyError:
        raise _bad(f"unknown frame type {t[:32]!r}") from None
    return cls(**_check(t, m, schema))


def _fallback(obj: object) -> object:
    """Make agent objects packable instead of failing the agent's write."""
    # What follows may run agent code (model_dump, a dataclass's fields, a
    # __repr__), which may write an event itself: this thread's packer is
    # mid-pack, so the nested write gets a packer of its own (see packb).
    _local.__dict__.pop("pack", None)
    dump = getattr(obj, "model_dump", None)  # pydantic models (MetaGPT's Message, Plan, ...)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    return repr(obj)


# One reusable Packer per thread: creating one per call (``msgpack.packb``)
# costs as much as packing a small event.  A Packer is not thread-safe, and
# it is not re-entrant either: ``_fallback`` drops the thread's packer
# before it runs agent code, so a write from inside that code packs with a
# new one while the outer pack finishes with its own.  A Packer keeps the
# largest buffer it ever needed, so after a big value the thread's packer
# is dropped too (the next call makes a small one).
_local = threading.local()
#: Output size above which the thread's packer is not kept (its buffer is freed).
_KEEP_PACKER_BYTES: Final = 1 << 20


def _new_pack() -> Callable[[object], bytes]:
    pack: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True, default=_fallback).pack
    _local.pack = pack
    return pack


def packb(obj: object) -> bytes:
    """MessagePack-encode ``obj`` the way wirepipe does everywhere."""
    pack: Callable[[object], bytes]
    try:
        pack = _local.pack
    except AttributeError:
        pack = _new_pack()
    out = pack(obj)
    if len(out) > _KEEP_PACKER_BYTES:
        _local.__dict__.pop("pack", None)
    return out


def encode(frame: Frame) -> bytes:
    """Encode a frame; optional fields that are None are left out."""
    m: dict[str, Any] = {"t": frame.t.value}
    for f in dataclasses.fields(frame):
        if f.name == "t":
            continue
        v = getattr(frame, f.name)
        if f.name == "evs":
            v = [{"seq": e.seq, "k": e.k, "ts": e.ts, "d": e.d} for e in v]
        elif v is None and f.name not in ("snapshot", "window", "value", "data", "d"):
            continue
        m[f.name] = v
    return packb(m)


# --- stored events ----------------------------------------------------------

_EV_HEAD: Final = b"\x85" + packb("t") + packb("ev")
_BATCH_HEAD: Final = b"\x82" + packb("t") + packb("batch") + packb("evs")


# An event is packed in parts, not as the map ``{seq, k, ts, d}``: the seq,
# the ts and the payload each on their own, the keys and the kind as bytes
# packed once, and the parts joined.  That is about half of what packing the
# map costs (msgpack's packer walks a map entry by entry, with a type check
# chain for each), and the same bytes: msgpack writes a map's entries in
# order, and a Python float as a float 64.  A ts of any other type (an int)
# takes the map.
_SEQ_HEAD: Final = b"\x84" + packb("seq")
_D_KEY: Final = packb("d")
_double: Final = struct.Struct(">d").pack
#: ``k``'s entry and the ``ts`` key with its float 64 marker, by kind (the
#: kinds an agent writes are few; a bound keeps odd ones from growing it).
_KIND_TS: dict[str, bytes] = {}
_KIND_TS_MAX: Final = 256


def _kind_ts(k: str) -> bytes:
    kt = packb("k") + packb(k) + packb("ts") + b"\xcb"
    if type(k) is str and len(_KIND_TS) < _KIND_TS_MAX:
        _KIND_TS[k] = kt
    return kt


def encode_event(seq: int, k: str, ts: float, d: object) -> bytes:
    """Encode one event as stored: a four-key map ``{seq, k, ts, d}``.

    Raises:
        ValueError, TypeError, OverflowError: what msgpack raises for a value it cannot write.
    """
    if type(ts) is not float:
        return packb({"seq": seq, "k": k, "ts": ts, "d": d})
    pack: Callable[[object], bytes]
    try:
        pack = _local.pack
    except AttributeError:
        pack = _new_pack()
    body = pack(d)  # may run agent code (``_fallback``), which may write events: before the rest
    if len(body) > _KEEP_PACKER_BYTES:
        _local.__dict__.pop("pack", None)
    return b"".join((_SEQ_HEAD, pack(seq), _KIND_TS.get(k) or _kind_ts(k), _double(ts), _D_KEY, body))


# An event is encoded in two steps when its seq is not known yet (the
# session hands out seqs under a lock, and encodes before taking it):
# ``encode_body`` packs ``{k, ts, d}``, and ``with_seq`` puts the map header
# and the seq in front.  The bytes are exactly ``encode_event``'s.


def encode_body(k: str, ts: float, d: object) -> bytes:
    """An event without its seq, for ``with_seq``.

    Raises:
        ValueError, TypeError, OverflowError: what msgpack raises for a value it cannot write.
    """
    # packb, inlined: this runs once per event.
    pack: Callable[[object], bytes]
    try:
        pack = _local.pack
    except AttributeError:
        pack = _new_pack()
    out: bytes = pack({"k": k, "ts": ts, "d": d})
    if len(out) > _KEEP_PACKER_BYTES:
        _local.__dict__.pop("pack", None)
    return out


def with_seq(seq: int, body: bytes) -> bytes:
    """The stored event ``encode_event(seq, k, ts, d)``, from ``encode_body(k, ts, d)``."""
    pack: Callable[[object], bytes]
    try:
        pack = _local.pack
    except AttributeError:
        pack = _new_pack()
    return _SEQ_HEAD + pack(seq) + body[1:]  # body[0] is the header of a three-key map


# A text delta, the most common event, also has its payload in parts: what
# stays the same for a whole stream (its id, and the keys) is packed once
# (``text_head``), the delta on its own.
_TEXT_KIND_TS: Final = _kind_ts("text")


def text_head(tid: str) -> bytes:
    """What ``encode_text`` writes between the ts and the delta of the text stream ``tid``."""
    return _D_KEY + b"\x82" + packb("id") + packb(tid) + packb("delta")


def encode_text(seq: int, ts: float, head: bytes, delta: str) -> bytes:
    """``encode_event(seq, "text", ts, {"id": tid, "delta": delta})``, given ``head = text_head(tid)``.

    ``ts`` must be a float (``time.time()``).

    Raises:
        ValueError, TypeError, OverflowError: what msgpack raises for a
            ``delta`` or a ``seq`` it cannot write.
    """
    pack: Callable[[object], bytes]
    try:
        pack = _local.pack
    except AttributeError:
        pack = _new_pack()
    tail = pack(delta)
    if len(tail) > _KEEP_PACKER_BYTES:
        _local.__dict__.pop("pack", None)
    return b"".join((_SEQ_HEAD, pack(seq), _TEXT_KIND_TS, _double(ts), head, tail))


def ev_frame(raw: bytes) -> bytes:
    """The ``ev`` frame for one stored event, without decoding it."""
    # raw starts with 0x84 (fixmap of 4); the frame is the same map plus "t".
    return _EV_HEAD + raw[1:]


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def batch_frame(raws: Sequence[bytes]) -> bytes:
    """The ``batch`` frame for consecutive stored events, without decoding them."""
    return _BATCH_HEAD + _array_header(len(raws)) + b"".join(raws)


def frame_for(raws: Sequence[bytes]) -> bytes:
    """``ev`` for one stored event, ``batch`` for several."""
    return ev_frame(raws[0]) if len(raws) == 1 else batch_frame(raws)


def decode_event(raw: bytes) -> Event:
    """Decode one stored event.

    Raises:
        ProtocolError: ``bad_frame`` if ``raw`` is not a stored event.
    """
    try:
        m = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:
        raise _bad(f"undecodable event ({type(exc).__name__})") from None
    if not isinstance(m, dict):
        raise _bad("an event must be a map")
    return _event(**_check("event", m, _EVENT))


def events_of(frame: ServerFrame) -> Iterable[Event]:
    """The events an ``ev`` or ``batch`` frame carries (none for other frames)."""
    if isinstance(frame, Event):
        return (frame,)
    if isinstance(frame, Batch):
        return frame.evs
    return ()


__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_DEPTH",
    "SID_RE",
    "NotPlain",
    "check_value",
    "copy_value",
    "encode_body",
    "is_flat_map",
    "walk_value",
    "with_seq",
    "FrameType",
    "batch_frame",
    "decode_client",
    "decode_event",
    "decode_server",
    "encode",
    "encode_event",
    "ev_frame",
    "events_of",
    "frame_for",
    "packb",
]
