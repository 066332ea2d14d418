"""The server side of one client connection, sans I/O: every rule, no socket.

Theory of operation
-------------------
A driver (``gateway/connection.py`` over websockets; an ASGI front later)
owns the socket, the store and the clock.  It feeds this object what the
client sent and what the log says, and carries out what comes back; every
decision of docs/protocol.md about one connection is taken here:

- **the handshake** (section 3): the first frame must be ``hello``, and only
  the first; ``receive_hello`` decodes it or raises the error to send;
- **recovery** (section 4): ``recovers`` says whether a hello resumes the
  log exactly (``recovered: true``) or gets a snapshot;
- **the welcome** and the cursor it starts: ``welcome`` builds the frame,
  moves the state to ``OPEN`` and restarts the window;
- **the pump's next step** (sections 4 and 6): ``next_step`` compares the
  cursor with the log (a new epoch, events trimmed away, the window full)
  and says restart, lagged, wait for an ack, or read ``n`` events;
- **what a client frame means** (sections 3, 6, 7): ``receive`` decodes it,
  charges the rate limit (an ack that moves the window is free), and returns
  a frame to send (``pong``, a refused ``replied``, a non-fatal error), a
  ``Request`` for the session (reply, send, cancel), or nothing (an ack);
  fatal errors are raised;
- **the end**: ``fail`` turns an error into the frame to send and the close
  code, and moves the state; ``closed`` ends it.

Every state change goes through ``protocol.state.transition``, so
``TRANSITIONS`` is the whole life of a connection.  Time comes in as an
argument (``now``), so the rate limit is tested without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from .codec import DEFAULT_MAX_FRAME, decode_client
from .errors import CloseCode, ErrorCode, ProtocolError
from .frames import Ack, Cancel, Error, Grant, Hello, Ping, Pong, Replied, Reply, Send, Welcome
from .state import ConnState, FlowWindow, transition

#: A batch frame stays under this many bytes (Python's websockets client
#: refuses messages over 1 MiB by default).
BATCH_BYTES: Final = 512 * 1024


class RateLimiter:
    """A token bucket: ``rate`` frames a second, bursts of ``burst``.

    ``strikes`` counts refusals since the bucket was last full (a client
    quiet long enough to refill its whole burst starts afresh).
    """

    __slots__ = ("rate", "burst", "tokens", "stamp", "strikes")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now
        self.strikes = 0

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= self.burst:
            self.strikes = 0
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.strikes += 1
        return False


@dataclass(frozen=True, slots=True)
class Request:
    """A client request for the session: the driver runs it and sends the ``replied``."""

    frame: Reply | Send | Cancel
    #: Bytes of the frame on the wire (an inbox counts them).
    size: int


class Step(Enum):
    """What the pump does next (``ServerConnection.next_step``)."""

    EXPIRED = "expired"  # no log: wait for a run of the sid, then restart
    RESTART = "restart"  # another epoch: a fresh welcome with the snapshot
    LAGGED = "lagged"  # the cursor fell out of retention: error lagged, then restart
    WAIT_ACK = "wait_ack"  # the window is full: wait for an ack
    READ = "read"  # read up to ``room`` events after the cursor


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection may do: frame size and rate (``Config`` sets them)."""

    max_frame: int = DEFAULT_MAX_FRAME
    rate: float = 200.0
    burst: float = 400.0
    rate_strikes: int = 20
    batch_max: int = 1000


class ServerConnection:
    """The rules of one client connection on the server (see the module docstring)."""

    # A gateway holds one per client, thousands of them idle: no ``__dict__``.
    __slots__ = ("limits", "state", "sid", "epoch", "grant", "cursor", "flow", "acked", "_limiter")

    def __init__(self, limits: ConnectionLimits | None = None, *, now: float = 0.0) -> None:
        self.limits = limits or ConnectionLimits()
        self.state = ConnState.AWAIT_HELLO
        self.sid = ""
        self.epoch = ""
        self.grant = Grant.VIEWER
        #: The seq of the last event sent to the client.
        self.cursor = 0
        self.flow = FlowWindow(None, 0)
        #: Set by ``receive`` when it recorded an ack: True if the ack was valid.
        self.acked = False
        self._limiter = RateLimiter(self.limits.rate, self.limits.burst, now)

    # --- the handshake ----------------------------------------------------------------

    def receive_hello(self, data: bytes | str) -> Hello:
        """The first frame, which must be ``hello``.

        Raises:
            ProtocolError: ``too_big`` or ``bad_frame``.
        """
        if self.state is not ConnState.AWAIT_HELLO:
            raise ProtocolError(ErrorCode.BAD_FRAME, "hello may be sent only once")
        frame = decode_client(data, self.limits.max_frame)
        if not isinstance(frame, Hello):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"the first frame must be hello, not {frame.t}")
        self.sid = frame.sid
        self.flow = FlowWindow(frame.window, 0)
        return frame

    @staticmethod
    def no_hello() -> ProtocolError:
        """The error for a client that sent no hello within the handshake timeout."""
        return ProtocolError(ErrorCode.NO_HELLO, "no hello within the handshake timeout")

    @staticmethod
    def recovers(hello: Hello, token_epoch: str | None, epoch: str, first: int, head: int) -> bool:
        """Whether ``hello`` resumes the log exactly (section 4).

        ``token_epoch`` is the epoch of the hello's verified resume token
        (None without one): a token resumes only the epoch it was issued
        for.  ``epoch``, ``first``, ``head`` describe the log.
        """
        return (
            token_epoch is not None
            and token_epoch == hello.epoch == epoch
            and hello.after is not None
            and first <= hello.after + 1
            and hello.after <= head
        )

    def refuse_start(self) -> ProtocolError | None:
        """Why this client may not start a run (a viewer), or None (section 7, ``forbidden``)."""
        if self.grant is not Grant.OPERATOR:
            return ProtocolError(ErrorCode.FORBIDDEN, "a viewer cannot start a run")
        return None

    @staticmethod
    def restart_cursor(live: bool | None, first: int, head: int) -> int:
        """Where a ``recovered: false`` welcome starts: ``first`` (all history), or after
        ``head`` with ``live`` (section 4)."""
        return head if live else first - 1

    def follows(self, epoch: str) -> bool:
        """True if ``epoch`` is the one this client follows (requests act on that run only)."""
        return epoch == self.epoch

    def not_local(self, request: Reply | Send | Cancel, alive: bool) -> Replied:
        """The answer to a request whose run is not in this process.

        ``alive``: the log of the followed epoch has not ended (its agent runs
        on another node sharing the store).
        """
        rid = request.rid
        if self.grant is not Grant.OPERATOR:
            return Replied(rid, False, ErrorCode.FORBIDDEN)
        if alive:
            return Replied(rid, False, ErrorCode.NOT_HERE)
        return Replied(rid, False, ErrorCode.ASK_CLOSED if isinstance(request, Reply) else ErrorCode.ENDED)

    def welcome(
        self,
        *,
        epoch: str,
        cursor: int,
        first: int,
        head: int,
        snapshot: dict[str, Any] | None,
        resume: str,
        heartbeat_ms: int,
    ) -> Welcome:
        """The ``welcome`` that starts (or restarts) the client at ``cursor``.

        ``snapshot`` None means recovered.  The connection is ``OPEN`` after
        it, and the window counts from ``cursor``.
        """
        if self.state is ConnState.AWAIT_HELLO:
            self.state = transition(self.state, ConnState.OPEN)
        self.epoch = epoch
        self.cursor = cursor
        self.flow.restart(cursor)
        return Welcome(
            sid=self.sid,
            epoch=epoch,
            resume=resume,
            head=head,
            first=first,
            recovered=snapshot is None,
            grant=self.grant,
            snapshot=snapshot,
            window=self.flow.size,
            heartbeat=heartbeat_ms,
        )

    # --- the pump ------------------------------------------------------------------------

    def next_step(self, epoch: str | None, first: int) -> tuple[Step, int]:
        """What the pump does given the log's ``epoch`` (None: no log) and ``first``.

        Returns the step and, for ``READ``, how many events it may send.
        """
        if epoch is None:
            return Step.EXPIRED, 0
        if epoch != self.epoch:
            return Step.RESTART, 0
        if self.cursor + 1 < first:
            return Step.LAGGED, 0
        room = self.flow.room()
        if room == 0:
            return Step.WAIT_ACK, 0
        limit = self.limits.batch_max
        return Step.READ, limit if room is None else min(room, limit)

    def sends(self, epoch: str, after: int, n: int) -> bool:
        """The pump's quick step, for events just appended: ``next_step`` and ``sent`` in one.

        True, with the ``n`` events after seq ``after`` of ``epoch`` counted as
        sent, when they are exactly what ``READ`` would send this client now:
        it follows ``epoch``, its cursor is ``after``, and the window and the
        batch limit take all ``n``.  False changes nothing (take ``next_step``).
        """
        if after != self.cursor or epoch != self.epoch or n > self.limits.batch_max:
            return False
        flow = self.flow
        if flow.size is not None and flow.size - (flow.sent - flow.acked) < n:
            return False
        self.cursor = cursor = after + n
        if cursor > flow.sent:
            flow.sent = cursor
        return True

    @staticmethod
    def lagged() -> ProtocolError:
        return ProtocolError(ErrorCode.LAGGED, "fell out of the retention window", fatal=False)

    def sent(self, n: int) -> None:
        """``n`` events after the cursor went out."""
        self.cursor += n
        self.flow.on_sent(self.cursor)

    # --- what the client sends -------------------------------------------------------------

    def receive(self, data: bytes | str, now: float) -> Pong | Replied | Error | Request | None:
        """One frame from an open client: what to do about it.

        Returns a frame to send, a ``Request`` for the session, or None (an
        ack, recorded; or anything once the connection is closing).  An ack
        that opens the window sets ``acked`` (the pump waits on it).

        Raises:
            ProtocolError: a fatal error (bad frame, too big, a second hello,
                too many frames).
        """
        if self.state is not ConnState.OPEN:
            return None
        lim = self.limits
        try:
            frame: Any = decode_client(data, lim.max_frame)
        except ProtocolError as exc:
            if exc.fatal or exc.rid is None:
                raise
            frame = exc  # a request whose value cannot travel: refused below
        # An ack that moves the window is flow control, not abuse: never
        # charged, so acking every window/2 events cannot trip the limit on a
        # fast backlog (a refused ack would shut the window for good).
        # Redundant acks are charged like any frame.
        free = isinstance(frame, Ack) and self.flow.advances(frame.seq)
        if not free and not self._limiter.allow(now):
            fatal = self._limiter.strikes > lim.rate_strikes
            err = ProtocolError(
                ErrorCode.RATE_LIMITED,
                "too many frames: slow down and re-send (requests are idempotent by rid)",
                fatal=fatal,
            )
            if fatal:
                raise err
            return Error(err.code.value, err.msg, False)
        if isinstance(frame, ProtocolError):
            assert frame.rid is not None
            return Replied(frame.rid, False, frame.code.value)
        if isinstance(frame, Ack):
            self.acked = self.flow.on_ack(frame.seq)
            return None
        if isinstance(frame, Ping):
            return Pong(frame.n)
        if isinstance(frame, Hello):
            raise ProtocolError(ErrorCode.BAD_FRAME, "hello may be sent only once")
        return Request(frame, len(data))

    # --- the end -------------------------------------------------------------------------------

    def fail(self, exc: ProtocolError) -> tuple[Error, CloseCode | None]:
        """The ``error`` frame to send for ``exc`` and the close code to follow (None: stay open).

        A fatal error moves the connection to ``CLOSING``.
        """
        close = exc.close_code if exc.fatal else None
        if close is not None and self.state in (ConnState.AWAIT_HELLO, ConnState.OPEN):
            self.state = transition(self.state, ConnState.CLOSING)
        return Error(exc.code.value, exc.msg, exc.fatal), close

    def closed(self) -> None:
        """The socket is gone."""
        if self.state is not ConnState.CLOSED:
            self.state = transition(self.state, ConnState.CLOSED)
