"""The heartbeat: one task pings every client of a gateway, instead of a task per client.

Theory of operation
-------------------
websockets' own keepalive runs a task per connection (sleep, ping, wait for
the pong): a task, its coroutine and a timer handle for every client, all
the time, a tenth of what an idle client costs.  The gateway turns it off
(``ping_interval=None``) and runs this one task instead, which keeps the
same promise (docs/protocol.md section 6): a ping every ``Config.heartbeat``
seconds, and a client that has not answered within that time is dropped.

The interval is cut into ``slices`` ticks of about ``TICK`` seconds (at
least ``MIN_SLICES``, at most ``MAX_SLICES``: 200 ticks of 0.1 s for the
default 20 s).  Each client belongs to one slice (``Connection.beat``, given
in turn as clients arrive: ``slot``; the heartbeat keeps each slice's
clients, ``add`` and ``discard``), so a tick visits only its own and each
client is visited once an interval.  Small slices keep every tick short: a
thousand clients cost five pings a tick, not a burst of 250 pings every
5 s that held every event sent meanwhile (the latency tail of ``python -m
bench``'s many-sessions workload).  A visit

- drops the client if the ping of its previous visit, a heartbeat ago, is
  still unanswered: close 1011 "keepalive ping timeout" (websockets' own
  code for it), and the TCP connection aborted at once, since a peer that
  does not answer would not finish a closing handshake either
  (``wirepipe_heartbeat_timeouts_total`` counts them);
- else sends a ping: the frame is written at once, without an await (a
  visit never waits on a socket), and entered in websockets'
  ``pending_pings``, so that websockets matches the pong as for its own
  ``ping()`` and cancels the entry if the connection is lost.

A client with bytes waiting in its socket is *behind*: its pong may be stuck
behind data it has not read yet, so it is not judged, and its ping is
forgotten (a late pong is one websockets ignores); whether it reads at all
is the stall watchdog's question (``Config.stall_timeout``,
``Gateway._watch_stalls``).  The next visit that finds it caught up pings it
afresh, so a pong still on its way never counts against it.

The heartbeat pings the native front's clients only (websockets'
connections).  A client of the ASGI front (``gateway/asgi_ws.py``) is
pinged by the ASGI server itself (uvicorn's ``--ws-ping-interval`` and
``--ws-ping-timeout``): ASGI has no message for a ping (docs/http.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

from websockets.asyncio.server import ServerConnection as WebSocket
from websockets.frames import CloseCode
from websockets.protocol import State

from .metrics import FrontMetrics

log = logging.getLogger("wirepipe.heartbeat")

__all__ = ["MAX_SLICES", "MIN_SLICES", "PING", "TICK", "Beating", "Heartbeat"]

#: The length of a tick the heartbeat aims at (seconds); each visits the clients of one slice.
TICK: Final = 0.1
#: Ticks per heartbeat interval: ``interval / TICK``, within these bounds.
MIN_SLICES: Final = 4
MAX_SLICES: Final = 200
#: The payload of every heartbeat ping (one ping per client is ever unanswered).
PING: Final = b"wirepipe"


class Beating(Protocol):
    """A client as the heartbeat sees it (``gateway.connection.Connection``)."""

    @property
    def ws(self) -> object: ...

    @property
    def beat(self) -> int: ...


class Heartbeat:
    """Pings the clients added to it every ``interval`` seconds, and drops those that do not answer."""

    def __init__(self, interval: float, metrics: FrontMetrics) -> None:
        self.interval = interval
        self.metrics = metrics
        #: Ticks per interval (see the module docstring).
        self.slices = max(MIN_SLICES, min(MAX_SLICES, int(interval / TICK)))
        #: The clients of each slice (dicts as ordered sets).
        self._slots: list[dict[Beating, None]] = [{} for _ in range(self.slices)]
        #: Ticks done (``wait_ticks``).
        self.ticks = 0
        self._next_slot = 0
        self._ticked = asyncio.Condition()

    def slot(self) -> int:
        """The slice of the next client: each in turn, so that the slices stay even."""
        slot, self._next_slot = self._next_slot, (self._next_slot + 1) % self.slices
        return slot

    def add(self, conn: Beating) -> None:
        """Ping ``conn`` from now on, in its slice (``conn.beat``, from ``slot``)."""
        self._slots[conn.beat][conn] = None

    def discard(self, conn: Beating) -> None:
        """``conn`` is gone; nothing if it was not added."""
        self._slots[conn.beat].pop(conn, None)

    async def run(self) -> None:
        """Tick every ``interval / slices`` seconds, for ever (an interval of 0 or less: no heartbeat)."""
        if self.interval <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval / self.slices)
            self.tick(self.ticks % self.slices, loop.time())
            self.ticks += 1
            async with self._ticked:
                self._ticked.notify_all()

    def tick(self, slot: int, now: float) -> None:
        """Visit every client of ``slot``."""
        for conn in list(self._slots[slot]):
            ws = conn.ws
            if not isinstance(ws, WebSocket):  # the ASGI server pings its own
                continue
            try:
                self.visit(ws, now)
            except Exception:  # a bug: that client is dropped, the heartbeat goes on
                log.exception("heartbeat: a ping failed; dropping the client")
                ws.transport.abort()

    def visit(self, ws: WebSocket, now: float) -> None:
        """Ping ``ws``, or drop it if the previous ping is still unanswered (see the module docstring)."""
        if ws.protocol.state is not State.OPEN:
            return
        pending = ws.pending_pings
        if ws.transport.get_write_buffer_size():  # behind: the stall watchdog's
            waiter = pending.pop(PING, None)
            if waiter is not None:
                waiter[0].cancel()
            return
        if PING in pending:
            self.metrics.heartbeat_timeouts += 1
            log.info("dropping a client that did not answer a ping within %.1fs", self.interval)
            ws.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            ws.send_data()
            ws.transport.abort()
            return
        pending[PING] = (ws.loop.create_future(), now)
        ws.protocol.send_ping(PING)
        ws.send_data()

    async def wait_ticks(self, n: int) -> None:
        """Return once ``n`` more ticks are done (for tests)."""
        target = self.ticks + n
        async with self._ticked:
            await self._ticked.wait_for(lambda: self.ticks >= target)
