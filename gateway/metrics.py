"""Counters and gauges, exported in the Prometheus text format at ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Metrics:
    connections_total: int = 0
    connections_open: int = 0
    frames_in: int = 0
    events_out: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    runs_started: int = 0
    stalled: int = 0  # clients dropped for taking no byte for stall_timeout
    heartbeat_timeouts: int = 0  # clients dropped for not answering a ping (gateway/heartbeat.py)

    def sent(self, n: int) -> None:
        self.events_out += n

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def render(self, extra: dict[str, Any] | None = None) -> str:
        lines = [
            "# TYPE wirepipe_connections_total counter",
            f"wirepipe_connections_total {self.connections_total}",
            "# TYPE wirepipe_connections_open gauge",
            f"wirepipe_connections_open {self.connections_open}",
            "# TYPE wirepipe_events_sent_total counter",
            f"wirepipe_events_sent_total {self.events_out}",
            "# TYPE wirepipe_runs_started_total counter",
            f"wirepipe_runs_started_total {self.runs_started}",
            "# TYPE wirepipe_stalled_clients_total counter",
            f"wirepipe_stalled_clients_total {self.stalled}",
            "# TYPE wirepipe_heartbeat_timeouts_total counter",
            f"wirepipe_heartbeat_timeouts_total {self.heartbeat_timeouts}",
            "# TYPE wirepipe_errors_total counter",
        ]
        for code, n in sorted(self.errors.items()):
            lines.append(f'wirepipe_errors_total{{code="{code}"}} {n}')
        for name, value in (extra or {}).items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
