"""``/metrics``: the gateway's counters as Prometheus metric families, built when scraped.

``Exporter`` is a ``prometheus_client`` collector over the plain counters
of ``gateway/metrics.py`` (read, never reset) and a few gauges taken from
the gateway's state at the moment of the scrape (sessions by state, open
asks, feeds).  Each gateway registers one in a ``CollectorRegistry`` of its
own (``Gateway.registry``), never in ``prometheus_client``'s global one, so
gateways in one process do not collide; ``gateway/http_front.py`` serves it
with ``prometheus_client.generate_latest``.  Every metric, its type and
labels: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .metrics import LAG_EVERY, REFUSALS, Buckets, FrontMetrics, Metrics

if TYPE_CHECKING:
    from .sessions import Session

#: The states ``wirepipe_sessions`` counts, always all exported (0 when none).
SESSION_STATES = ("starting", "running", "ending", "ended")


def session_state(s: Session) -> str:
    """``starting``: its log is being created; ``running``; ``ending``: its final
    status is written and not yet stored; ``ended``: kept until its log expires."""
    if s.finished:
        return "ended"
    if s.ended:
        return "ending"
    if not s.ready.done():
        return "starting"
    return "running"


class Exporter:
    """The collector of one gateway (see the module docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        sessions: Callable[[], Iterable[Session]],
        feeds: Callable[[], int],
        store: object,
    ) -> None:
        self.metrics = metrics
        self._sessions = sessions
        self._feeds = feeds
        self._store = store

    def registry(self) -> CollectorRegistry:
        """A registry of its own holding this collector."""
        reg = CollectorRegistry(auto_describe=False)
        reg.register(self)
        return reg

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        fronts = list(m.fronts.values())

        def per_front(name: str, doc: str, value: Callable[[FrontMetrics], float], kind: str = "counter") -> Metric:
            fam: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                fam = CounterMetricFamily(name, doc, labels=["front"])
            else:
                fam = GaugeMetricFamily(name, doc, labels=["front"])
            for f in fronts:
                fam.add_metric([f.name], value(f))
            return fam

        yield per_front("wirepipe_connections_total", "Client connections served.", lambda f: f.connections_total)
        yield per_front(
            "wirepipe_connections_open",
            "Client connections open now.",
            lambda f: f.connections_open,
            kind="gauge",
        )
        refused = CounterMetricFamily(
            "wirepipe_connections_refused_total",
            "Connections refused before they were served, by reason (forbidden, capacity, closing).",
            labels=["front", "reason"],
        )
        for f in fronts:
            for reason in sorted({*REFUSALS, *f.refused}):
                refused.add_metric([f.name, reason], f.refused.get(reason, 0))
        yield refused
        yield per_front(
            "wirepipe_events_sent_total",
            "Events delivered to clients (each event once per client it reached).",
            lambda f: f.events_out,
        )
        errors = CounterMetricFamily(
            "wirepipe_errors_total", "Error frames sent to clients, by code.", labels=["front", "code"]
        )
        for f in fronts:
            for code, n in sorted(f.errors.items()):
                errors.add_metric([f.name, code], n)
        yield errors
        yield per_front(
            "wirepipe_rate_limited_total",
            "Client frames refused by the rate limit (after rate_strikes of them, the connection is closed).",
            lambda f: f.errors.get("rate_limited", 0),
        )
        yield per_front(
            "wirepipe_stalled_clients_total",
            "Clients dropped for taking no byte for stall_timeout.",
            lambda f: f.stalled,
        )
        yield per_front(
            "wirepipe_heartbeat_timeouts_total",
            "Clients dropped for not answering a ping within the heartbeat.",
            lambda f: f.heartbeat_timeouts,
        )
        replays = CounterMetricFamily(
            "wirepipe_replays_total",
            "Replay requests (a hello with after), by outcome: recovered true or false.",
            labels=["front", "recovered"],
        )
        for f in fronts:
            for recovered in (True, False):
                replays.add_metric([f.name, str(recovered).lower()], f.replays[recovered])
        yield replays
        yield _histogram(
            "wirepipe_replay_events",
            "Events a recovered replay request had to replay (head - after).",
            [([f.name], f.replay_events) for f in fronts],
            ["front"],
        )
        yield _histogram(
            "wirepipe_delivery_lag_seconds",
            f"Seconds from an event's append to its frame's write to a client socket (1 event in {LAG_EVERY} timed).",
            [([f.name], f.lag) for f in fronts],
            ["front"],
        )

        # --- the runs --------------------------------------------------------------
        sessions = list(self._sessions())
        states = dict.fromkeys(SESSION_STATES, 0)
        asks_open = 0
        for s in sessions:
            state = session_state(s)
            states[state] = states.get(state, 0) + 1
            asks_open += len(s.asks)
        by_state = GaugeMetricFamily("wirepipe_sessions", "Runs written by this process, by state.", labels=["state"])
        for state, n in states.items():
            by_state.add_metric([state], n)
        yield by_state
        yield GaugeMetricFamily("wirepipe_feeds", "Logs read for local watchers now (one feed per sid).", self._feeds())
        yield CounterMetricFamily("wirepipe_runs_started_total", "Runs of registered apps started.", m.runs_started)
        yield CounterMetricFamily(
            "wirepipe_events_appended_total", "Events the runs written here stored in their logs.", m.events_appended
        )
        yield CounterMetricFamily("wirepipe_asks_opened_total", "Asks opened.", m.asks_opened)
        yield _by_label(
            "wirepipe_asks_settled_total",
            "Asks no longer open, by outcome: answered (by a client), expired (timeout), closed (run ended).",
            "outcome",
            m.asks_settled,
        )
        yield GaugeMetricFamily("wirepipe_asks_open", "Asks waiting for an answer now.", asks_open)
        yield _histogram(
            "wirepipe_ask_answer_seconds", "Seconds from an ask to a client's answer.", [([], m.answer_seconds)]
        )

        # --- the store -------------------------------------------------------------
        yield CounterMetricFamily(
            "wirepipe_store_errors_total",
            "Store calls that failed: unreachable, no answer in time, refusing writes for now.",
            getattr(self._store, "failed_calls", 0),
        )
        yield _by_label(
            "wirepipe_store_retries_total",
            "Store calls a run's writer retried, by kind of error (transient, other).",
            "kind",
            m.store_retries,
        )


def _by_label(name: str, doc: str, label: str, counts: Mapping[str, int]) -> Metric:
    """A counter family with one series per key of ``counts``, labelled ``label``."""
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key, n in counts.items():
        fam.add_metric([key], n)
    return fam


def _histogram(name: str, doc: str, series: Iterable[tuple[list[str], Buckets]], labels: Sequence[str] = ()) -> Metric:
    """A histogram family of ``series``: (label values, buckets) each."""
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, b in series:
        fam.add_metric(values, b.cumulative(), b.sum)
    return fam
