"""wirepipe's wire protocol, sans I/O: frames, codec, event kinds, state, tokens.

Nothing in this package does I/O or imports asyncio: bytes go in, frames and
bytes come out.  ``gateway`` builds on it; it never imports ``gateway``.
"""

from .client import ClientEvent, ClientProtocol, Welcomed
from .codec import (
    DEFAULT_MAX_FRAME,
    MAX_DEPTH,
    batch_frame,
    check_value,
    decode_client,
    decode_event,
    decode_server,
    encode,
    encode_event,
    ev_frame,
    events_of,
    frame_for,
    packb,
)
from .errors import (
    BacklogFull,
    CloseCode,
    ErrorCode,
    LogMissing,
    LogReplaced,
    ProtocolError,
    RemoteError,
    SeqGap,
    StoreError,
    StoreUnavailable,
    WirepipeError,
    close_action,
)
from .events import FINAL_STATES, Kind, RunState, TaskStatus, check_event, is_final
from .frames import (
    SUBPROTOCOL,
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
from .state import ConnState, FlowWindow, Snapshot
from .tokens import ResumeToken, sign, verify

__all__ = [
    "MAX_DEPTH", "BacklogFull", "LogMissing", "LogReplaced", "SeqGap", "StoreError", "StoreUnavailable",
    "check_value", "ClientEvent", "ClientProtocol", "Welcomed",
    "DEFAULT_MAX_FRAME", "FINAL_STATES", "SUBPROTOCOL", "Ack", "Batch", "Cancel", "ClientFrame",
    "CloseCode", "ConnState", "Error", "ErrorCode", "Event", "FlowWindow", "Frame", "FrameType",
    "Grant", "Hello", "Kind", "Ping", "Pong", "ProtocolError", "RemoteError", "Replied", "Reply",
    "ResumeToken", "RunState", "Send", "ServerFrame", "Snapshot", "TaskStatus", "Welcome",
    "WirepipeError", "batch_frame", "check_event", "close_action", "decode_client",
    "decode_event", "decode_server", "encode", "encode_event", "ev_frame", "events_of",
    "frame_for", "is_final", "packb", "sign", "verify",
]
