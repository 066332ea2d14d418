"""Hypothesis strategies and settings shared by the tests of ``protocol/``.

Every property test uses ``SETTINGS`` (or ``settings(SETTINGS, ...)``): examples
are derived from the test itself (``derandomize``) and nothing is read from or
written to an example database, so a run is the same on every machine.
"""

from __future__ import annotations

import string
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from protocol import (
    Ack,
    Batch,
    Cancel,
    Error,
    Event,
    Grant,
    Hello,
    Ping,
    Pong,
    Replied,
    Reply,
    Send,
    Welcome,
)

SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)

SID_ALPHABET = string.ascii_letters + string.digits + "._:-"

# --- values MessagePack round-trips exactly --------------------------------

u64 = st.integers(min_value=0, max_value=2**64 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
finite = st.floats(allow_nan=False)  # NaN != NaN would break frame equality
scalars = st.none() | st.booleans() | i64 | finite | st.text(max_size=12) | st.binary(max_size=12)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def opt(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


sids = st.text(alphabet=SID_ALPHABET, min_size=1, max_size=128)
ids = st.text(min_size=1, max_size=256)
texts = st.text(max_size=20)
windows = st.integers(min_value=1, max_value=1_000_000)
starts = st.fixed_dictionaries({"app": st.text(min_size=1, max_size=10)}, optional={"input": values})

# --- frames ------------------------------------------------------------------

hellos = st.builds(
    Hello,
    sid=sids,
    auth=opt(texts),
    resume=opt(texts),
    epoch=opt(texts),
    after=opt(u64),
    live=st.booleans(),
    window=opt(windows),
    client=opt(texts),
    start=opt(starts),
)
client_frames = st.one_of(
    hellos,
    st.builds(Ack, seq=u64),
    st.builds(Reply, ask=ids, rid=ids, value=values),
    st.builds(Send, data=values, rid=ids),
    st.builds(Cancel, rid=ids, reason=opt(texts)),
    st.builds(Ping, n=values),
)

events = st.builds(Event, seq=u64, k=texts, ts=finite, d=values)
batches = st.builds(Batch, evs=st.lists(events, max_size=5).map(tuple))
welcomes = st.builds(
    Welcome,
    sid=sids,
    epoch=texts,
    resume=texts,
    head=u64,
    first=u64,
    recovered=st.booleans(),
    grant=st.sampled_from(Grant),
    snapshot=opt(st.dictionaries(st.text(max_size=6), values, max_size=4)),
    window=opt(windows),
    heartbeat=u64,
)
server_frames = st.one_of(
    welcomes,
    events,
    batches,
    st.builds(Replied, rid=ids, ok=st.booleans(), err=opt(texts)),
    st.builds(Pong, n=values),
    st.builds(Error, code=texts, msg=texts, fatal=st.booleans()),
)

# --- anything a peer might send ---------------------------------------------

FRAME_TYPES = ["hello", "ack", "reply", "send", "cancel", "ping", "welcome", "ev", "batch", "replied", "pong", "error"]
FRAME_KEYS = [
    "sid",
    "auth",
    "resume",
    "epoch",
    "after",
    "live",
    "window",
    "client",
    "start",
    "seq",
    "ask",
    "rid",
    "value",
    "data",
    "reason",
    "n",
    "head",
    "first",
    "recovered",
    "grant",
    "snapshot",
    "heartbeat",
    "k",
    "ts",
    "d",
    "evs",
    "ok",
    "err",
    "code",
    "msg",
    "fatal",
    "app",
    "input",
]

any_scalars = (
    st.none()
    | st.booleans()
    | i64
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.sampled_from(FRAME_TYPES + FRAME_KEYS + ["viewer", "operator"])
)
any_keys = st.sampled_from(FRAME_KEYS) | st.text(max_size=4) | st.binary(max_size=4) | i64
any_values: st.SearchStrategy[Any] = st.recursive(
    any_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(any_keys, inner, max_size=4)
        | st.dictionaries(st.sampled_from(FRAME_KEYS), inner, max_size=6)
    ),
    max_leaves=12,
)
# Maps shaped like frames: a random (mostly known) `t`, known and random keys.
frame_like_maps = st.builds(
    lambda t, m: {**m, "t": t} if t is not None else m,
    st.none() | st.sampled_from(FRAME_TYPES) | any_scalars,
    st.dictionaries(st.sampled_from(FRAME_KEYS) | any_keys, any_values, max_size=8),
)
packed_anything = st.builds(
    lambda obj, bin_type: msgpack.packb(obj, use_bin_type=bin_type),
    any_values | frame_like_maps,
    st.booleans(),
)
