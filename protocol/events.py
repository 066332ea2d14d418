"""Event kinds (``k``) and the shapes of their payloads (``d``), docs/protocol.md section 5.

Clients pass through kinds they do not know, so the server accepts any kind
an agent writes; the kinds below are the ones wirepipe itself understands
(the snapshot reducer, the UI, the adapters).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final


class Kind(StrEnum):
    TEXT = "text"
    MESSAGE = "message"
    PLAN = "plan"
    TASK = "task"
    CODE = "code"
    OUTPUT = "output"
    TOOL = "tool"
    LOG = "log"
    ASK = "ask"
    ANSWER = "answer"
    STATUS = "status"


class RunState(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


#: Run states after which no event follows.
FINAL_STATES: Final = frozenset({RunState.DONE, RunState.FAILED, RunState.CANCELLED})

#: Keys each known kind's payload must carry.
REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    Kind.TEXT: ("id", "delta"),
    Kind.MESSAGE: ("role", "content"),
    Kind.PLAN: ("goal", "tasks"),
    Kind.TASK: ("id", "status"),
    Kind.CODE: ("id", "lang", "source"),
    Kind.OUTPUT: ("id", "stream", "text"),
    Kind.TOOL: ("name", "type", "value"),
    Kind.LOG: ("level", "msg"),
    Kind.ASK: ("id", "prompt"),
    Kind.ANSWER: ("id", "value", "by"),
    Kind.STATUS: ("state",),
}


#: ``REQUIRED`` keyed by plain strings (an enum member hashes and compares slower).
_NEEDS: Final[dict[str, tuple[str, ...]]] = {str(k): keys for k, keys in REQUIRED.items()}
_RUN_STATES: Final = frozenset(map(str, RunState))


def check_event(k: object, d: object) -> str | None:
    """Why ``(k, d)`` is not a well-formed event, or None if it is.

    Unknown kinds are well-formed as long as ``k`` is a non-empty string.
    """
    if not isinstance(k, str) or not k:
        return "an event kind must be a non-empty string"
    need = _NEEDS.get(k)
    if need is None:
        return None
    if not isinstance(d, dict):
        return f"a {k!r} event needs a map payload"
    # A loop that stops at the first absent key: cheaper than a set
    # comparison for the one to three keys a kind needs.
    for key in need:
        if key not in d:
            missing = [key for key in need if key not in d]
            return f"a {k!r} event needs {', '.join(missing)}"
    if k == "status":
        state = d["state"]
        # An unhashable state (a list, a map) must not raise from a set lookup.
        if not (isinstance(state, str) and state in _RUN_STATES):
            return f"unknown run state {state!r}"
    return None


def is_final(k: str, d: Any) -> bool:
    """True for the ``status`` event that ends a run."""
    if k != Kind.STATUS or not isinstance(d, dict):
        return False
    state = d.get("state")
    # An unhashable state (a list, a map) must not raise from a frozenset lookup.
    return isinstance(state, str) and state in FINAL_STATES


#: Log levels by name and number: loguru's (which MetaGPT logs with), a superset of
#: the ``log`` event's usual DEBUG, INFO, WARNING and ERROR.
LOG_LEVELS: Final[dict[str, int]] = {
    "TRACE": 5,
    "DEBUG": 10,
    "INFO": 20,
    "SUCCESS": 25,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
}
