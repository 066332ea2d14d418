"""What the gateway counts: plain ints where the work happens, read by ``/metrics`` when scraped.

Theory of operation
-------------------
Counting must cost nothing on the hot path: a delivery to a watcher at the
head of its log is a few hundred nanoseconds of work, and a
``prometheus_client`` counter takes a lock per increment.  So the code that
does the work bumps plain attributes of the objects here (``m.events_out
+= n``), and nothing else: no lock (everything that counts runs on the
gateway's event loop, but for the lag marks, see below), no label lookup,
no call into ``prometheus_client``.  The exporter (``gateway/exporter.py``),
a ``prometheus_client`` collector registered in a registry of the gateway's
own, reads them when ``/metrics`` is scraped and builds the families then.
Several gateways in one process (tests) never share a series.

- ``FrontMetrics``: what one front counts about its clients (connections,
  events sent, errors by code, replays, the delivery lag).  The WebSocket
  front is ``Metrics.ws``, exported with the label ``front="ws"``; an SSE
  or REST front gets its own from ``Metrics.front(name)``.
- ``Metrics``: what the gateway's runs count, whichever front their
  clients use: events appended, asks, store retries.
- ``Buckets``: a histogram as plain ints (one ``bisect`` and two adds per
  observation); exported as a Prometheus histogram.

Delivery lag, sampled.  The lag is the time from an event's append (the
agent's ``emit``) to the frame that carries it being written to a client's
socket.  Timing every event would cost a clock read on both sides of every
delivery, so one event in ``LAG_EVERY`` is timed: the session notes the
monotonic time of each event whose seq is 1 modulo ``LAG_EVERY`` (seq 1,
17, 33, ...: the first event of every run is among them) in
``Session.lag_marks``, keeping the last ``LAG_MARKS``.  A connection that
writes a frame checks, with integer arithmetic only, whether the frame
holds such a seq: the first seq after its cursor ``before`` that is 1
modulo ``LAG_EVERY`` is ``before + ((-before) & LAG_MASK) + 1``, so a frame
of ``n`` events holds one exactly when ``(-before) & LAG_MASK < n``.  If it
does, it looks that mark up and observes ``now - mark``
(``FrontMetrics.delivered``; a WebSocket's and an SSE stream's writes):
the lag of the oldest marked event in the frame, the one that waited
longest.  At most one observation per frame, so a batch costs no more than
one event: about 40 ns per frame for the test, and a few hundred more for
a frame that holds a mark.  A client at the head, which gets events one
frame each, observes every marked event.  Marks are
written on the agent's thread and read on the loop: a dict's ``get`` and
item assignment are atomic in CPython.  Not seen: runs written by another
process (a node or worker sharing a Redis store: the lag is measured where
the run is written), and events older than the marks kept (a client
replaying old history: that is a replay, not lag).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Final

#: One event in ``LAG_EVERY`` is timed for the delivery lag (a power of two).
LAG_EVERY: Final = 16
LAG_MASK: Final = LAG_EVERY - 1
#: Lag marks a session keeps (the newest ``LAG_EVERY * LAG_MARKS`` events are covered).
LAG_MARKS: Final = 64

#: Histogram bounds (Prometheus ``le``, inclusive).
LAG_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REPLAY_BUCKETS: Final = (0.0, 1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0)
ANSWER_BUCKETS: Final = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)

#: Why a front refused a connection before serving it: the front door refused
#: its Origin or Host (docs/security.md), ``max_connections`` were open, the
#: gateway was shutting down.
REFUSALS: Final = ("forbidden", "capacity", "closing")
#: How an ask ended (its ``answer`` event's ``by``) -> the outcome counted.
ASK_OUTCOMES: Final = {"client": "answered", "timeout": "expired", "closed": "closed"}


class Buckets:
    """A histogram in plain ints: ``counts[i]`` observations in ``(bounds[i-1], bounds[i]]``, the last past all."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, observations <= le)`` for each bound and ``+Inf``, as Prometheus wants them."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(total)))
        return out


class FrontMetrics:
    """What one front (WebSocket today; SSE, REST later) counts about its clients."""

    __slots__ = (
        "name",
        "connections_total",
        "connections_open",
        "events_out",
        "errors",
        "stalled",
        "heartbeat_timeouts",
        "replays",
        "replay_events",
        "lag",
        "refused",
    )

    def __init__(self, name: str) -> None:
        #: The ``front`` label.
        self.name = name
        self.connections_total = 0
        self.connections_open = 0
        #: Events delivered to clients (each event once per client it reached).
        self.events_out = 0
        #: Error frames sent, by code (``rate_limited`` among them).
        self.errors: dict[str, int] = {}
        #: Clients dropped for taking no byte for ``stall_timeout``.
        self.stalled = 0
        #: Clients dropped for not answering a ping within the heartbeat (``gateway/heartbeat.py``).
        self.heartbeat_timeouts = 0
        #: Replay requests (a hello with ``after``), by outcome: recovered or not.
        self.replays = {True: 0, False: 0}
        #: Events a recovered resume had to replay (``head - after``).
        self.replay_events = Buckets(REPLAY_BUCKETS)
        #: Seconds from append to socket, sampled (see the module docstring).
        self.lag = Buckets(LAG_BUCKETS)
        #: Connections refused before they were served, by reason.
        self.refused: dict[str, int] = {}

    def sent(self, n: int) -> None:
        self.events_out += n

    def delivered(self, marks: Mapping[int, float] | None, before: int, n: int, since: float) -> None:
        """The ``n`` events after seq ``before`` are written: count them, and observe the lag of a marked one.

        ``marks`` is the session's ``lag_marks`` (None: a run written
        elsewhere); ``since`` the client's welcome: an event appended before
        it is history or replay, not lag (see the module docstring).
        """
        self.events_out += n
        if (-before) & LAG_MASK < n:  # the frame holds a marked seq
            self.observe_lag(marks, before, since)

    def observe_lag(self, marks: Mapping[int, float] | None, before: int, since: float) -> None:
        """A frame of the events after ``before`` that holds a marked seq is written: observe its lag."""
        if marks is not None:
            mark = marks.get(before + ((-before) & LAG_MASK) + 1)  # the first marked seq after before
            if mark is not None and mark >= since:
                self.lag.observe(time.monotonic() - mark)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def replay(self, recovered: bool, events: int) -> None:
        """A hello with ``after``: recovered (``events`` to replay) or not."""
        self.replays[recovered] += 1
        if recovered:
            self.replay_events.observe(events)


class Metrics:
    """What one gateway counts: its fronts', and its runs' (events appended, asks, store retries)."""

    __slots__ = (
        "fronts",
        "ws",
        "runs_started",
        "events_appended",
        "asks_opened",
        "asks_settled",
        "answer_seconds",
        "store_retries",
    )

    def __init__(self) -> None:
        self.fronts: dict[str, FrontMetrics] = {}
        #: The WebSocket front's.
        self.ws = self.front("ws")
        self.runs_started = 0
        #: Events the runs written here stored in their logs.
        self.events_appended = 0
        self.asks_opened = 0
        #: Asks no longer open, by outcome (``ASK_OUTCOMES``).
        self.asks_settled = {outcome: 0 for outcome in ASK_OUTCOMES.values()}
        #: Seconds from an ask to a client's answer.
        self.answer_seconds = Buckets(ANSWER_BUCKETS)
        #: Store calls a writer retried, by kind: transient (unreachable, no answer) or other.
        self.store_retries = {"transient": 0, "other": 0}

    def front(self, name: str) -> FrontMetrics:
        """The metrics of the front ``name`` (made on first use)."""
        m = self.fronts.get(name)
        if m is None:
            m = self.fronts[name] = FrontMetrics(name)
        return m

    def ask_settled(self, by: str, seconds: float | None) -> None:
        """An ask ended ``by`` a client, a timeout or closing (``seconds`` after it was asked)."""
        outcome = ASK_OUTCOMES.get(by, by)
        self.asks_settled[outcome] = self.asks_settled.get(outcome, 0) + 1
        if outcome == "answered" and seconds is not None:
            self.answer_seconds.observe(seconds)
