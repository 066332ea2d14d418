"""The client side's protocol rules, sans I/O: frames in, events and frames out.

Theory of operation
-------------------

``ClientProtocol`` is one client of one session across any number of
sockets.  A driver (``gateway.client.Client``; ``clients/js/src/core.js`` is
the same object in JavaScript, and ``tests/cases/client_cases.json`` keeps
the two in step) owns the sockets, the timers and the queues, and tells the
protocol what happened:

- ``opened()``: a new socket is up; the hello to send is queued.
- ``receive_data(bytes)`` / ``receive_frame(frame)``: a server frame arrived;
  what it means comes back as a list of ``Welcomed``, ``Event``, ``Replied``,
  ``Pong`` and ``Error`` values (events in seq order, each once).
- ``consumed(seq, generation)``: the application took the event ``seq``
  that was delivered in ``generation``; an ``ack`` may be queued.
- ``request(frame)``: a reply, send or cancel; it stays pending, and is
  re-sent with the same rid after every socket's first welcome, until its
  ``replied`` arrives.
- ``closed(code)``: the socket is gone; the answer is ``retry``, ``stop`` or
  ``reauth`` (``protocol.close_action``).

``data_to_send()`` hands out the frames queued for the current socket, as
bytes; ``frames_to_send()`` the same as frames.  Nothing is queued while no
socket is open: a frame that could not go is re-sent where the rules say so
(pending requests after the next welcome), never blindly.

The rules, once:

Hello.  ``resume``, ``epoch`` and ``after`` (the last seq delivered) once a
welcome gave a position; ``live`` only while the client has no position yet
(a reconnect resumes from the last event seen, it never skips to the head);
``start`` only on the first hello ever sent (a second one would be
``sid_taken``); ``auth``, ``window`` and ``client`` on every hello.

Position.  Events with ``seq <= last_seq`` are duplicates: dropped and
counted.  A seq above ``last_seq + 1`` is a gap: counted, delivered anyway.
A welcome that is not recovered, changes the epoch, or follows a ``lagged``
error resets: ``last_seq`` becomes ``first - 1`` (``head`` when the hello
asked for ``live``), where the events that follow begin.

Acks (docs/protocol.md section 6).  With a window (``welcome.window``) the
client acks, cumulatively, the last consumed event once at least
``max(1, window // 2)`` events were consumed since the last ack.  Every
welcome restarts the window at the client's position, and every socket and
welcome starts a new *generation*: events delivered before it are owed no
ack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .codec import decode_server, encode, events_of
from .errors import ErrorCode, close_action
from .frames import (
    Ack,
    Cancel,
    ClientFrame,
    Error,
    Event,
    Hello,
    Ping,
    Pong,
    Replied,
    Reply,
    Send,
    ServerFrame,
    Welcome,
)


@dataclass(frozen=True, slots=True)
class Welcomed:
    """A welcome arrived.

    ``reset``: drop what was shown and rebuild from ``welcome.snapshot``
    (always true for the first welcome).  ``first``: the first welcome ever.
    """

    welcome: Welcome
    reset: bool
    first: bool


#: What ``receive_frame`` hands back.
ClientEvent = Welcomed | Event | Replied | Pong | Error


class ClientProtocol:
    """One wirepipe client's protocol state, without I/O (see the module docstring)."""

    def __init__(
        self,
        sid: str,
        *,
        auth: str | None = None,
        window: int | None = None,
        start: dict[str, Any] | None = None,
        live: bool = False,
        client: str | None = None,
    ) -> None:
        self.sid = sid
        self.auth = auth
        self.window = window
        self.start = start
        self.live = live
        self.client = client
        self.welcome: Welcome | None = None
        self.resets: list[Welcome] = []
        self.errors: list[Error] = []
        self.epoch: str | None = None
        self.resume: str | None = None
        self.last_seq = 0
        #: Events received twice (dropped) and holes in the seqs: the
        #: protocol promises neither, so these are for diagnostics.
        self.duplicates = 0
        self.gaps = 0
        #: Sockets opened (hellos sent).
        self.connects = 0
        #: A welcome arrived on the current socket.
        self.welcomed = False
        #: Moves at every socket and every welcome: events delivered in an
        #: older generation are owed no ack.
        self.generation = 0
        self.pending: dict[str, Reply | Send | Cancel] = {}
        self._connected = False
        self._live_hello = False
        self._start_sent = False
        self._lagged = False
        #: A ``bad_token`` error came on this socket: its 4401 means "retry without the token".
        self._token_refused = False
        self._ack_every = 0
        self._acked_seq = 0
        self._out: list[ClientFrame] = []

    # --- output ----------------------------------------------------------------

    def frames_to_send(self) -> list[ClientFrame]:
        """The frames queued for the current socket, in order (then forgotten)."""
        out, self._out = self._out, []
        return out

    def data_to_send(self) -> list[bytes]:
        """``frames_to_send()``, encoded."""
        return [encode(f) for f in self.frames_to_send()]

    def _send(self, frame: ClientFrame) -> None:
        if self._connected:
            self._out.append(frame)

    # --- the socket's life -------------------------------------------------------

    def opened(self) -> Hello:
        """A new socket is open: queue (and return) its hello."""
        self._connected = True
        self.welcomed = False
        self._out = []
        self.generation += 1
        self._ack_every = 0  # no acks on this socket before its welcome
        self.connects += 1
        positioned = self.resume is not None and self.epoch is not None
        self._live_hello = self.live and self.welcome is None
        hello = Hello(
            sid=self.sid,
            auth=self.auth,
            resume=self.resume if positioned else None,
            epoch=self.epoch if positioned else None,
            after=self.last_seq if positioned else None,
            live=self._live_hello,
            window=self.window,
            client=self.client,
            start=self.start if not self._start_sent else None,
        )
        if self.start is not None:
            self._start_sent = True
        self._out.append(hello)
        return hello

    def closed(self, code: int) -> str:
        """The socket is gone (``code`` 1006 when no close frame came).

        Returns ``"retry"`` (reconnect with backoff), ``"stop"`` or
        ``"reauth"`` (stop until new credentials; the resume token is
        dropped, so that reconnect starts over with a reset).  A 4401 after a
        ``bad_token`` error is ``"retry"``: the token was refused, not the
        credential, and the next hello goes without it.
        """
        self._connected = False
        self.welcomed = False
        self._out = []
        action = close_action(code)
        if action == "reauth":
            self.resume = None
            if self._token_refused:
                # Only the resume token was refused (``bad_token``: expired, or a
                # gateway restarted with another secret), not the credential:
                # start over without it, a hello that gets a fresh welcome.
                action = "retry"
        self._token_refused = False
        return action

    # --- input -------------------------------------------------------------------

    def receive_data(self, data: bytes | str) -> list[ClientEvent]:
        """Decode one server message and handle it.

        Raises:
            ProtocolError: the bytes are not a valid server frame.
        """
        return self.receive_frame(decode_server(data))

    def receive_frame(self, frame: ServerFrame) -> list[ClientEvent]:
        """Handle one server frame; what it means for the application, in order."""
        if isinstance(frame, Welcome):
            return [self._on_welcome(frame)]
        out: list[ClientEvent] = []
        for ev in events_of(frame):
            if ev.seq <= self.last_seq:
                self.duplicates += 1
                continue
            if ev.seq != self.last_seq + 1:
                self.gaps += 1  # the gateway broke its promise: count it, keep going
            self.last_seq = ev.seq
            out.append(ev)
        if isinstance(frame, Replied):
            if self.pending.pop(frame.rid, None) is not None:
                out.append(frame)
        elif isinstance(frame, Pong):
            out.append(frame)
        elif isinstance(frame, Error):
            if frame.code == ErrorCode.LAGGED:
                self._lagged = True
            elif frame.code == ErrorCode.BAD_TOKEN:
                self._token_refused = True
            self.errors.append(frame)
            out.append(frame)
        return out

    def _on_welcome(self, w: Welcome) -> Welcomed:
        first = self.welcome is None
        reset = first or not w.recovered or w.epoch != self.epoch or self._lagged
        first_on_socket = not self.welcomed
        if reset:
            # Where the events that follow begin: our position, and the next hello's after.
            self.last_seq = max(0, w.head if self._live_hello else w.first - 1)
            if not first:
                self.resets.append(w)
        self._live_hello = False
        self._lagged = False
        self.welcome = w
        self.epoch = w.epoch
        self.resume = w.resume
        self.welcomed = True
        # The gateway's window restarts at our position.
        self.generation += 1
        self._acked_seq = self.last_seq
        self._ack_every = max(1, w.window // 2) if w.window else 0
        if first_on_socket:
            for frame in self.pending.values():  # re-sent, same rid: answered once
                self._send(frame)
        return Welcomed(w, reset, first)

    # --- the application's side ----------------------------------------------------

    def consumed(self, seq: int, generation: int) -> Ack | None:
        """The application took event ``seq``, delivered in ``generation``.

        Queues (and returns) the cumulative ack the rule asks for, if any.
        """
        if generation != self.generation or not self._ack_every or not self.welcomed:
            return None
        if seq - self._acked_seq < self._ack_every:
            return None
        self._acked_seq = seq
        ack = Ack(seq)
        self._send(ack)
        return ack

    def request(self, frame: Reply | Send | Cancel) -> None:
        """Keep ``frame`` pending until its ``replied``; send it now if welcomed."""
        self.pending[frame.rid] = frame
        if self.welcomed:
            self._send(frame)

    def ping(self, n: Any) -> Ping:
        """Queue a ``ping`` frame.

        Raises:
            RuntimeError: no socket is open.
        """
        if not self._connected:
            raise RuntimeError("not connected")
        frame = Ping(n)
        self._send(frame)
        return frame
