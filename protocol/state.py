"""State that lives in one place: the session snapshot and a connection's state machine.

``Snapshot`` is the reducer of docs/protocol.md section 4: fold every event of a
log into it, in order, and ``as_map()`` is what a ``welcome`` carries when it
cannot recover a client.  ``ConnState`` and ``TRANSITIONS`` are the whole
life of one client connection on the server; ``FlowWindow`` is the
section-6 window arithmetic.  Nothing here does I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from enum import Enum
from typing import Any, Final

from .codec import NotPlain, copy_value
from .display import snapshot_html, snapshot_markdown
from .events import Kind, check_event


def _copied(v: Any) -> Any:
    """A copy of ``v`` the snapshot may own: ``copy_value`` for a plain value
    (what travels is; tuples become lists, as a client decodes them), several
    times faster than ``copy.deepcopy``, which copies anything else."""
    try:
        return copy_value(v)
    except (ValueError, NotPlain):
        return copy.deepcopy(v)


#: The kinds the reducer folds in besides ``text``.
_FOLDED: Final = frozenset(k.value for k in (Kind.STATUS, Kind.PLAN, Kind.TASK, Kind.ASK, Kind.ANSWER))


class Snapshot:
    """The compacted state of a session: status, plan, open asks, open texts."""

    __slots__ = ("status", "plan", "asks", "texts")

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None
        self.plan: dict[str, Any] | None = None
        self.asks: dict[str, dict[str, Any]] = {}
        self.texts: dict[str, list[str]] = {}

    def apply(self, k: str, d: Any, *, owned: bool = False) -> None:
        """Fold one event in.  Malformed payloads are ignored, never raised.

        ``owned``: the caller hands ``d`` over (nobody else holds or changes
        it), so what the snapshot keeps of it need not be copied.
        """
        if not isinstance(d, dict):
            return
        # Kinds by their wire names: an enum class attribute (Kind.PLAN) is a
        # slow lookup in Python 3.11, and this runs once per event.
        if k == "text":  # most events: one delta of a text stream
            tid = d.get("id")
            if not isinstance(tid, str):
                return
            if d.get("end"):
                self.texts.pop(tid, None)
                return
            delta = d.get("delta")
            if isinstance(delta, str):
                parts = self.texts.get(tid)
                if parts is None:
                    self.texts[tid] = [delta]
                else:
                    parts.append(delta)
            return
        try:
            if k not in _FOLDED:  # most other events (logs, messages, code) leave the snapshot alone
                return
        except TypeError:  # an unhashable kind
            return
        if k == "status":
            if check_event("status", d) is None:
                self.status = d if owned else _copied(d)
        elif k == "plan":
            plan = d if owned else _copied(d)
            if not isinstance(plan.get("tasks"), list):
                plan["tasks"] = []
            self.plan = plan
        elif k == "task":
            self._apply_task(d)
        elif k == "ask":
            if isinstance(d.get("id"), str):
                self.asks[d["id"]] = d if owned else _copied(d)
        elif k == "answer":
            ask_id = d.get("id")
            if isinstance(ask_id, str):  # an unhashable id must not raise from dict.pop
                self.asks.pop(ask_id, None)

    def fold(self, events: Iterable[tuple[str, Any]], *, owned: bool = False) -> None:
        """``apply`` each ``(k, d)`` in turn.

        A delta of a text stream that is open already, the most common event
        by far, is folded here without a call of ``apply`` each (the same
        step as ``apply``'s: appended to the stream's parts).
        """
        texts = self.texts
        apply = self.apply
        for k, d in events:
            if k == "text" and type(d) is dict and len(d) == 2:  # two keys, both below: no "end"
                tid, delta = d.get("id"), d.get("delta")
                if type(tid) is str and type(delta) is str:
                    parts = texts.get(tid)
                    if parts is not None:
                        parts.append(delta)
                        continue
            apply(k, d, owned=owned)

    def _apply_task(self, d: dict[str, Any]) -> None:
        task_id, status = d.get("id"), d.get("status")
        # Without a string id, an update would match a plan task that has no id.
        if self.plan is None or not isinstance(task_id, str) or not isinstance(status, str):
            return
        for task in self.plan["tasks"]:
            if isinstance(task, dict) and task.get("id") == task_id:
                task["status"] = status
                if "result" in d:
                    task["result"] = _copied(d["result"])
                if status == "running":
                    self.plan["current"] = task["id"]
                return

    @classmethod
    def from_map(cls, m: dict[str, Any] | None) -> Snapshot:
        """The reducer whose ``as_map()`` is ``m`` (a stored or received snapshot)."""
        s = cls()
        if not m:
            return s
        s.status = _copied(m.get("status"))
        s.plan = _copied(m.get("plan"))
        s.asks = {a["id"]: _copied(a) for a in m.get("asks") or () if isinstance(a, dict) and "id" in a}
        s.texts = {t["id"]: [t.get("text", "")] for t in m.get("texts") or () if isinstance(t, dict) and "id" in t}
        return s

    def as_map(self) -> dict[str, Any]:
        """The ``snapshot`` map of a ``welcome``."""
        return {
            "status": self.status,
            "plan": self.plan,
            "asks": list(self.asks.values()),
            "texts": [{"id": i, "text": "".join(parts)} for i, parts in self.texts.items()],
        }

    # In a notebook, a snapshot shows as its status, plan, open asks and open texts.
    def _repr_html_(self) -> str:
        return snapshot_html(self)

    def _repr_markdown_(self) -> str:
        return snapshot_markdown(self)


class ConnState(Enum):
    """The life of one client connection, on the server."""

    AWAIT_HELLO = "await_hello"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


#: Every allowed transition; anything else is a bug.
TRANSITIONS: Final[dict[ConnState, frozenset[ConnState]]] = {
    ConnState.AWAIT_HELLO: frozenset({ConnState.OPEN, ConnState.CLOSING, ConnState.CLOSED}),
    ConnState.OPEN: frozenset({ConnState.CLOSING, ConnState.CLOSED}),
    ConnState.CLOSING: frozenset({ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}


def transition(src: ConnState, dst: ConnState) -> ConnState:
    """Return ``dst`` if ``src -> dst`` is allowed.

    Raises:
        RuntimeError: the transition is not in ``TRANSITIONS`` (a bug).
    """
    if dst not in TRANSITIONS[src]:
        raise RuntimeError(f"connection cannot go from {src.value} to {dst.value}")
    return dst


class FlowWindow:
    """Section 6: never more than ``size`` events sent and not acked.

    ``size`` None means no window (the socket's own backpressure rules).
    """

    __slots__ = ("size", "sent", "acked")

    def __init__(self, size: int | None, start: int) -> None:
        self.size = size
        self.sent = start
        self.acked = start

    def room(self) -> int | None:
        """How many more events may be sent now (None: unbounded)."""
        if self.size is None:
            return None
        return max(0, self.size - (self.sent - self.acked))

    def on_sent(self, seq: int) -> None:
        self.sent = max(self.sent, seq)

    def advances(self, seq: int) -> bool:
        """True if an ack of ``seq`` moves the acked position (section 6).

        Such an ack is flow control and is never charged to the rate limit:
        a client cannot send more of them than events it was sent.
        """
        return self.acked < seq <= self.sent

    def on_ack(self, seq: int) -> bool:
        """Record a cumulative ack; False if it acks what was never sent."""
        if seq > self.sent:
            return False
        self.acked = max(self.acked, seq)
        return True

    def restart(self, start: int) -> None:
        self.sent = self.acked = start
