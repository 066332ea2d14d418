"""One frozen dataclass per frame type of docs/protocol.md sections 3 and 4.

Frames are plain values: building one never validates against the wire
rules (the codec does that when decoding), so servers and tests can make any
frame they need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SUBPROTOCOL = "wirepipe.v1"


class FrameType(StrEnum):
    """The ``t`` of every frame."""

    HELLO = "hello"
    ACK = "ack"
    REPLY = "reply"
    SEND = "send"
    CANCEL = "cancel"
    PING = "ping"
    WELCOME = "welcome"
    EV = "ev"
    BATCH = "batch"
    REPLIED = "replied"
    PONG = "pong"
    ERROR = "error"


class Grant(StrEnum):
    """What a connection may do."""

    VIEWER = "viewer"
    OPERATOR = "operator"


# --- client -> server -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    sid: str
    auth: str | None = None
    resume: str | None = None
    epoch: str | None = None
    after: int | None = None
    live: bool = False
    window: int | None = None
    client: str | None = None
    start: dict[str, Any] | None = None
    t: FrameType = field(default=FrameType.HELLO, init=False)


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    t: FrameType = field(default=FrameType.ACK, init=False)


@dataclass(frozen=True, slots=True)
class Reply:
    ask: str
    rid: str
    value: Any
    t: FrameType = field(default=FrameType.REPLY, init=False)


@dataclass(frozen=True, slots=True)
class Send:
    data: Any
    rid: str
    t: FrameType = field(default=FrameType.SEND, init=False)


@dataclass(frozen=True, slots=True)
class Cancel:
    rid: str
    reason: str | None = None
    t: FrameType = field(default=FrameType.CANCEL, init=False)


@dataclass(frozen=True, slots=True)
class Ping:
    n: Any = None
    t: FrameType = field(default=FrameType.PING, init=False)


# --- server -> client -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    sid: str
    epoch: str
    resume: str
    head: int
    first: int
    recovered: bool
    grant: Grant
    snapshot: dict[str, Any] | None = None
    window: int | None = None
    heartbeat: int = 0
    t: FrameType = field(default=FrameType.WELCOME, init=False)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a session log; on the wire, the ``ev`` frame."""

    seq: int
    k: str
    ts: float
    d: Any
    t: FrameType = field(default=FrameType.EV, init=False)


@dataclass(frozen=True, slots=True)
class Batch:
    evs: tuple[Event, ...]
    t: FrameType = field(default=FrameType.BATCH, init=False)


@dataclass(frozen=True, slots=True)
class Replied:
    rid: str
    ok: bool
    err: str | None = None
    t: FrameType = field(default=FrameType.REPLIED, init=False)


@dataclass(frozen=True, slots=True)
class Pong:
    n: Any = None
    t: FrameType = field(default=FrameType.PONG, init=False)


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    msg: str
    fatal: bool
    t: FrameType = field(default=FrameType.ERROR, init=False)


ClientFrame = Hello | Ack | Reply | Send | Cancel | Ping
ServerFrame = Welcome | Event | Batch | Replied | Pong | Error
Frame = ClientFrame | ServerFrame
