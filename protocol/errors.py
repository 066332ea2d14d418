"""Every error wirepipe can name, and what each one means on the wire.

The exception tree::

    WirepipeError                 base of everything raised by wirepipe
    ├── ProtocolError             a local verdict on bytes or frames from the peer;
    │                             carries a section-7 ``ErrorCode`` (and so a close code)
    ├── RemoteError               the peer told us about a problem (an ``error`` frame,
    │                             or a ``replied`` with ``ok: false``)
    ├── StoreError                a store could not do what the writer asked
    │   ├── StoreUnavailable      it could not be reached (transient: retried with backoff)
    │   ├── LogMissing            the log does not exist (never made, expired, lost with
    │   │                         a restarted server); also a ``KeyError``
    │   ├── LogReplaced           the log now belongs to another epoch; also a ``ValueError``
    │   │   └── LeaseLost         another writer holds the session's lease
    │   └── SeqGap                the log is behind the writer (it lost events); also a
    │                             ``ValueError``
    └── BacklogFull               a Pipe's buffer of events not yet stored is full (the store
                                  has been unreachable that long): the write is refused

Local and remote errors are kept apart: a ``ProtocolError`` is something *we*
decided, a ``RemoteError`` is something we were *told*.  Close codes and what
they mean for a retry are written here once and mirrored in
``clients/js/src/codes.js``; keep both in step.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """The error codes of docs/protocol.md section 7 (the additive ones are marked there)."""

    BAD_FRAME = "bad_frame"
    TOO_BIG = "too_big"
    NO_HELLO = "no_hello"
    UNAUTHORIZED = "unauthorized"
    BAD_TOKEN = "bad_token"
    NO_SESSION = "no_session"
    RATE_LIMITED = "rate_limited"
    FORBIDDEN = "forbidden"
    NO_APP = "no_app"
    SID_TAKEN = "sid_taken"
    UNKNOWN_ASK = "unknown_ask"
    ASK_CLOSED = "ask_closed"
    BAD_VALUE = "bad_value"
    LAGGED = "lagged"
    SHUTDOWN = "shutdown"
    INTERNAL = "internal"
    # Additive: a `send` or `cancel` for a session whose run has already ended.
    ENDED = "ended"
    # Additive: a reply, send or cancel reached a gateway node that does not
    # run the session's agent (several nodes sharing a store).
    NOT_HERE = "not_here"
    # Additive: the session store cannot be reached right now; reconnect with backoff.
    UNAVAILABLE = "unavailable"
    # Additive: the agent's inbox is full (a `send` refused; re-send later).
    INBOX_FULL = "inbox_full"
    # Additive: a middleware of the gateway refused the request (or failed on it).
    REFUSED = "refused"


class CloseCode(IntEnum):
    """WebSocket close codes used by wirepipe."""

    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_FRAME = 4400
    UNAUTHORIZED = 4401
    NOT_FOUND = 4404
    HANDSHAKE_TIMEOUT = 4408
    CONFLICT = 4409
    RATE_LIMITED = 4429


#: The close code that follows a fatal error of each code (None: never fatal).
CLOSE_FOR: dict[ErrorCode, CloseCode | None] = {
    ErrorCode.BAD_FRAME: CloseCode.BAD_FRAME,
    ErrorCode.TOO_BIG: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.NO_HELLO: CloseCode.HANDSHAKE_TIMEOUT,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.BAD_TOKEN: CloseCode.UNAUTHORIZED,
    ErrorCode.NO_SESSION: CloseCode.NOT_FOUND,
    ErrorCode.RATE_LIMITED: CloseCode.RATE_LIMITED,
    ErrorCode.FORBIDDEN: None,
    ErrorCode.NO_APP: CloseCode.NOT_FOUND,
    ErrorCode.SID_TAKEN: CloseCode.CONFLICT,
    ErrorCode.UNKNOWN_ASK: None,
    ErrorCode.ASK_CLOSED: None,
    ErrorCode.BAD_VALUE: None,
    ErrorCode.LAGGED: None,
    ErrorCode.SHUTDOWN: CloseCode.GOING_AWAY,
    ErrorCode.INTERNAL: CloseCode.INTERNAL_ERROR,
    ErrorCode.ENDED: None,
    ErrorCode.NOT_HERE: None,
    ErrorCode.UNAVAILABLE: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.INBOX_FULL: None,
    ErrorCode.REFUSED: None,
}

#: Close codes after which a client reconnects (exponential backoff, full jitter).
RETRY_CLOSE_CODES: frozenset[int] = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.ABNORMAL,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.HANDSHAKE_TIMEOUT,
        CloseCode.RATE_LIMITED,
    }
)

#: Close codes after which a client reconnects only once given new credentials.
REAUTH_CLOSE_CODES: frozenset[int] = frozenset({CloseCode.UNAUTHORIZED})


#: Why a request was refused, when the gateway gives only a code (``replied.err``):
#: the clients and the HTTP API say the same thing.
REFUSALS: dict[str, str] = {
    ErrorCode.FORBIDDEN: "a viewer cannot do that",
    ErrorCode.UNKNOWN_ASK: "no such ask in this run",
    ErrorCode.ASK_CLOSED: "the ask was already answered or closed",
    ErrorCode.BAD_VALUE: "the value is not one of the ask's choices, or cannot be written",
    ErrorCode.ENDED: "the run has ended",
    ErrorCode.INBOX_FULL: "the agent has not taken its earlier messages yet; re-send later with the same key",
    ErrorCode.REFUSED: "a middleware of the gateway refused the request",
    ErrorCode.NOT_HERE: "the run's agent is not reachable from this node",
    ErrorCode.UNAVAILABLE: "the node that runs the agent did not answer; re-send later with the same key",
}


def close_action(code: int) -> str:
    """What a client does after the connection closed with ``code``.

    Returns ``"retry"``, ``"reauth"`` or ``"stop"``.
    """
    if code in RETRY_CLOSE_CODES:
        return "retry"
    if code in REAUTH_CLOSE_CODES:
        return "reauth"
    return "stop"


class WirepipeError(Exception):
    """Base class of every exception wirepipe raises."""


class ProtocolError(WirepipeError):
    """The peer broke the protocol, or a request cannot be honoured.

    ``code`` is the section-7 error code; ``fatal`` says whether the
    connection must then be closed, with ``close_code``.
    """

    def __init__(self, code: ErrorCode, msg: str, *, fatal: bool | None = None, rid: str | None = None) -> None:
        super().__init__(f"{code.value}: {msg}")
        self.code = code
        self.msg = msg
        self.fatal = CLOSE_FOR[code] is not None if fatal is None else fatal
        #: The request a non-fatal error answers (``replied ok: false``), if any.
        self.rid = rid

    @property
    def close_code(self) -> CloseCode | None:
        """The close code that follows this error when it is fatal."""
        return CLOSE_FOR[self.code] if self.fatal else None


class RemoteError(WirepipeError):
    """The peer reported an error (an ``error`` frame or a failed ``replied``)."""

    def __init__(self, code: str, msg: str = "", *, fatal: bool = False) -> None:
        super().__init__(f"{code}: {msg}" if msg else code)
        self.code = code
        self.msg = msg
        self.fatal = fatal


class StoreError(WirepipeError):
    """A store could not do what was asked (see the subclasses)."""


class StoreUnavailable(StoreError):
    """The store could not be reached or did not answer in time; retrying may succeed."""


class LogMissing(StoreError, KeyError):
    """No log for the session: never created, expired, or lost with a restarted store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "no log"


class LogReplaced(StoreError, ValueError):
    """The session's log now has another epoch: a newer run replaced it."""


class LeaseLost(LogReplaced):
    """Another writer holds the session's lease: this one may not write its log any more.

    A ``LogReplaced``: the writer stops without touching the log.
    """


class SeqGap(StoreError, ValueError):
    """The log's head is behind the first event handed to it: the log lost events.

    ``head`` is where the stored log stands.
    """

    def __init__(self, msg: str, head: int) -> None:
        super().__init__(msg)
        self.head = head


class BacklogFull(WirepipeError):
    """A Pipe write was refused: too many events wait for a store that cannot be reached.

    Nothing was appended.  The limits are ``Config.backlog_events`` and
    ``Config.backlog_bytes`` (``wirepipe serve --backlog-events/--backlog-bytes``).
    """
