"""errors.py (codes, close codes, retry policy) and events.py (kinds, payload checks)."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import (
    FINAL_STATES,
    CloseCode,
    ErrorCode,
    Kind,
    ProtocolError,
    RemoteError,
    RunState,
    TaskStatus,
    WirepipeError,
    check_event,
    close_action,
    is_final,
)
from protocol.errors import CLOSE_FOR
from protocol.events import REQUIRED

# docs/protocol.md section 7, written out independently of errors.py.
SPEC_CLOSE = {
    "bad_frame": 4400,
    "too_big": 1009,
    "no_hello": 4408,
    "unauthorized": 4401,
    "bad_token": 4401,
    "no_session": 4404,
    "rate_limited": 4429,
    "forbidden": None,
    "no_app": 4404,
    "sid_taken": 4409,
    "unknown_ask": None,
    "ask_closed": None,
    "bad_value": None,
    "lagged": None,
    "shutdown": 1001,
    "internal": 1011,
    "ended": None,  # additive (docs/protocol.md): never fatal
    "not_here": None,  # additive (docs/protocol.md): never fatal
    "unavailable": 1013,  # additive: the store is down; reconnect with backoff
    "inbox_full": None,  # additive: a send refused; re-send later
    "refused": None,  # additive: a middleware refused the request
}
RETRY = {1001, 1006, 1011, 1012, 1013, 4408, 4429}
STOP = {1000, 1009, 4400, 4404, 4409}


def test_close_for_covers_every_error_code() -> None:
    assert set(CLOSE_FOR) == set(ErrorCode)
    assert {c.value: CLOSE_FOR[c] for c in ErrorCode} == SPEC_CLOSE


@pytest.mark.parametrize("code", list(CloseCode))
def test_close_action_for_every_close_code(code: CloseCode) -> None:
    want = "retry" if code in RETRY else "reauth" if code == 4401 else "stop"
    assert close_action(code) == want
    assert close_action(int(code)) == want


@pytest.mark.parametrize("code", sorted(RETRY))
def test_retry_codes(code: int) -> None:
    assert close_action(code) == "retry"


@pytest.mark.parametrize("code", sorted(STOP) + [1002, 3000, 4000, 4999, 0])
def test_stop_codes(code: int) -> None:
    assert close_action(code) == "stop"


def test_reauth_code() -> None:
    assert close_action(4401) == "reauth"


@pytest.mark.parametrize("code", list(ErrorCode))
def test_close_action_of_each_error_code(code: ErrorCode) -> None:
    close = CLOSE_FOR[code]
    if close is None:
        return
    action = close_action(close)
    if code in (ErrorCode.UNAUTHORIZED, ErrorCode.BAD_TOKEN):
        assert action == "reauth"
    elif code in (
        ErrorCode.NO_HELLO,
        ErrorCode.RATE_LIMITED,
        ErrorCode.SHUTDOWN,
        ErrorCode.INTERNAL,
        ErrorCode.UNAVAILABLE,
    ):
        assert action == "retry"
    else:
        assert action == "stop"


@pytest.mark.parametrize("code", list(ErrorCode))
def test_protocol_error_defaults(code: ErrorCode) -> None:
    err = ProtocolError(code, "details")
    assert isinstance(err, WirepipeError)
    assert err.code is code and err.msg == "details"
    assert str(err) == f"{code.value}: details"
    assert err.fatal is (SPEC_CLOSE[code.value] is not None)
    assert err.close_code == SPEC_CLOSE[code.value]


def test_protocol_error_explicit_fatal() -> None:
    first = ProtocolError(ErrorCode.RATE_LIMITED, "slow down", fatal=False)
    assert not first.fatal and first.close_code is None
    again = ProtocolError(ErrorCode.RATE_LIMITED, "abuse", fatal=True)
    assert again.fatal and again.close_code is CloseCode.RATE_LIMITED
    odd = ProtocolError(ErrorCode.FORBIDDEN, "x", fatal=True)
    assert odd.fatal and odd.close_code is None  # no close code for a never-fatal code


def test_remote_error() -> None:
    err = RemoteError("ask_closed", "too late", fatal=True)
    assert isinstance(err, WirepipeError) and not isinstance(err, ProtocolError)
    assert str(err) == "ask_closed: too late"
    assert (err.code, err.msg, err.fatal) == ("ask_closed", "too late", True)
    bare = RemoteError("forbidden")
    assert str(bare) == "forbidden" and bare.msg == "" and bare.fatal is False


# --- events -----------------------------------------------------------------------

VALID: dict[str, dict[str, Any]] = {
    "text": {"id": "t", "delta": "hi", "end": False},
    "message": {"role": "Engineer", "content": "done", "name": "alex", "cause": None},
    "plan": {"goal": "g", "tasks": [], "current": None},
    "task": {"id": "1", "status": "running"},
    "code": {"id": "c", "lang": "python", "source": "print(1)"},
    "output": {"id": "c", "stream": "stdout", "text": "1\n"},
    "tool": {"name": "browser", "type": "str", "value": "x"},
    "log": {"level": "INFO", "msg": "m", "logger": "metagpt"},
    "ask": {"id": "a", "prompt": "?", "choices": ["y"], "default": "y", "timeout": 5},
    "answer": {"id": "a", "value": "y", "by": "client"},
    "status": {"state": "running", "detail": "x"},
}


def test_every_kind_has_a_shape() -> None:
    assert set(REQUIRED) == set(Kind) == set(VALID)


@pytest.mark.parametrize("k", list(Kind))
def test_check_event_accepts_each_kind(k: Kind) -> None:
    assert check_event(k, VALID[k]) is None
    assert check_event(k.value, {key: VALID[k][key] for key in REQUIRED[k]}) is None


@pytest.mark.parametrize("k", list(Kind))
def test_check_event_wants_every_required_key(k: Kind) -> None:
    for key in REQUIRED[k]:
        d = {kk: v for kk, v in VALID[k].items() if kk != key}
        reason = check_event(k, d)
        assert reason is not None and key in reason


@pytest.mark.parametrize("k", list(Kind))
@pytest.mark.parametrize("d", [None, "text", [1], 3])
def test_check_event_wants_a_map_for_known_kinds(k: Kind, d: Any) -> None:
    reason = check_event(k, d)
    assert reason is not None and "map" in reason


@pytest.mark.parametrize("k", ["", None, 1, b"text", ["text"]])
def test_check_event_wants_a_kind(k: Any) -> None:
    assert check_event(k, {}) is not None


@pytest.mark.parametrize("d", [None, "anything", [1, 2], {"x": 1}, {}])
def test_unknown_kinds_pass_through(d: Any) -> None:
    assert check_event("vendor.custom", d) is None


@pytest.mark.parametrize("state", list(RunState))
def test_status_states(state: RunState) -> None:
    assert check_event("status", {"state": state.value}) is None
    assert is_final("status", {"state": state.value}) is (state in FINAL_STATES)


@pytest.mark.parametrize("state", ["exploded", "", None, 1, ["done"], {"done": 1}])
def test_unknown_run_states(state: Any) -> None:
    assert check_event("status", {"state": state}) is not None
    assert is_final("status", {"state": state}) is False


def test_final_states() -> None:
    assert FINAL_STATES == {"done", "failed", "cancelled"}
    assert {s.value for s in TaskStatus} == {"pending", "running", "done", "failed", "skipped"}


@pytest.mark.parametrize("k", [k for k in Kind if k != Kind.STATUS] + ["custom"])
def test_only_status_is_final(k: str) -> None:
    assert is_final(k, {"state": "done", "status": "done"}) is False


@pytest.mark.parametrize("d", [None, "done", ["done"], {}, {"detail": "done"}])
def test_is_final_ignores_malformed_payloads(d: Any) -> None:
    assert is_final("status", d) is False


def test_store_errors_are_both_wirepipe_errors_and_builtin_ones() -> None:
    from protocol import LogMissing, LogReplaced, SeqGap, StoreError, WirepipeError

    missing = LogMissing("no log for 's'")
    assert isinstance(missing, KeyError) and isinstance(missing, StoreError)
    assert str(missing) == "no log for 's'" and str(LogMissing()) == "no log"  # not KeyError's quotes
    assert isinstance(LogReplaced("x"), ValueError) and isinstance(LogReplaced("x"), WirepipeError)
    gap = SeqGap("behind", 7)
    assert isinstance(gap, ValueError) and gap.head == 7
