"""The server side of a connection, sans I/O: every rule with bytes in, no socket, no clock."""

from __future__ import annotations

import pytest

from protocol import ConnState, ErrorCode, Grant, Hello, Pong, ProtocolError, Replied, Welcome, packb
from protocol.codec import MAX_DEPTH
from protocol.frames import Error
from protocol.server import ConnectionLimits, RateLimiter, Request, ServerConnection, Step


def opened(window: int | None = None, **limits: object) -> ServerConnection:
    conn = ServerConnection(ConnectionLimits(**limits))  # type: ignore[arg-type]
    hello = {"t": "hello", "sid": "s"} | ({"window": window} if window else {})
    conn.receive_hello(packb(hello))
    conn.welcome(epoch="e1", cursor=0, first=1, head=0, snapshot=None, resume="tok", heartbeat_ms=20000)
    return conn


# --- the handshake --------------------------------------------------------------------


def test_the_first_frame_must_be_hello() -> None:
    conn = ServerConnection()
    with pytest.raises(ProtocolError) as err:
        conn.receive_hello(packb({"t": "ack", "seq": 1}))
    assert err.value.code is ErrorCode.BAD_FRAME
    assert conn.state is ConnState.AWAIT_HELLO


def test_hello_opens_and_a_second_hello_is_a_bad_frame() -> None:
    conn = ServerConnection()
    hello = conn.receive_hello(packb({"t": "hello", "sid": "s", "window": 4}))
    assert isinstance(hello, Hello) and conn.sid == "s" and conn.flow.size == 4
    w = conn.welcome(epoch="e1", cursor=3, first=1, head=3, snapshot={"status": None}, resume="t", heartbeat_ms=1000)
    assert isinstance(w, Welcome) and w.recovered is False and w.window == 4 and w.grant is Grant.VIEWER
    assert conn.state is ConnState.OPEN and conn.cursor == 3 and conn.epoch == "e1"
    with pytest.raises(ProtocolError) as err:
        conn.receive(packb({"t": "hello", "sid": "s"}), now=0.0)
    assert err.value.code is ErrorCode.BAD_FRAME
    with pytest.raises(ProtocolError):
        conn.receive_hello(packb({"t": "hello", "sid": "s"}))


def test_a_restart_keeps_the_connection_open() -> None:
    conn = opened()
    conn.welcome(epoch="e2", cursor=0, first=1, head=5, snapshot={}, resume="t", heartbeat_ms=1)
    assert conn.state is ConnState.OPEN and conn.epoch == "e2"


def test_a_bad_frame_after_hello_is_fatal() -> None:
    conn = opened()
    with pytest.raises(ProtocolError) as err:
        conn.receive(b"\xc1", now=0.0)
    assert err.value.code is ErrorCode.BAD_FRAME and err.value.fatal


def test_no_hello_is_its_own_error() -> None:
    err = ServerConnection.no_hello()
    assert err.code is ErrorCode.NO_HELLO and err.fatal


@pytest.mark.parametrize(
    ("token", "epoch", "after", "first", "head", "want"),
    [
        ("e1", "e1", 5, 1, 9, True),
        ("e1", "e1", 9, 1, 9, True),  # at the head: recovered, nothing to replay
        ("e1", "e1", 0, 1, 9, True),  # from the start
        (None, "e1", 5, 1, 9, False),  # no token
        ("e1", "e0", 5, 1, 9, False),  # another epoch
        ("e1", "e1", None, 1, 9, False),  # no position
        ("e1", "e1", 2, 5, 9, False),  # trimmed away
        ("e1", "e1", 10, 1, 9, False),  # beyond the head
        ("e0", "e1", 5, 1, 9, False),  # a token of another epoch
    ],
)
def test_the_recovery_decision(
    token: str | None, epoch: str, after: int | None, first: int, head: int, want: bool
) -> None:
    hello = Hello(sid="s", epoch=epoch, after=after)
    assert ServerConnection.recovers(hello, token, "e1", first, head) is want


# --- the pump -------------------------------------------------------------------------


def test_next_step_follows_the_log_and_the_window() -> None:
    conn = opened(window=4, batch_max=3)
    assert conn.next_step(None, 1) == (Step.EXPIRED, 0)
    assert conn.next_step("e2", 1) == (Step.RESTART, 0)
    assert conn.next_step("e1", 1) == (Step.READ, 3)  # the batch limit
    conn.sent(3)
    assert conn.next_step("e1", 1) == (Step.READ, 1)  # the window's room
    conn.sent(1)
    assert conn.next_step("e1", 1) == (Step.WAIT_ACK, 0)
    assert conn.receive(packb({"t": "ack", "seq": 4}), now=0.0) is None and conn.acked
    assert conn.next_step("e1", 1) == (Step.READ, 3)
    assert conn.next_step("e1", 10) == (Step.LAGGED, 0)  # events 5..9 were trimmed away
    assert conn.lagged().code is ErrorCode.LAGGED and not conn.lagged().fatal


def test_the_quick_step_sends_only_what_next_step_would() -> None:
    """``sends``: the pushed events go out only when a READ step would send exactly them."""
    conn = opened(window=4, batch_max=3)
    assert not conn.sends("e2", 0, 1)  # another epoch
    assert not conn.sends("e1", 1, 1)  # not this client's place: its cursor is 0
    assert not conn.sends("e1", 0, 4)  # more than a batch
    assert conn.cursor == 0 and conn.next_step("e1", 1) == (Step.READ, 3)  # nothing counted
    assert conn.sends("e1", 0, 3)
    assert conn.cursor == 3
    assert not conn.sends("e1", 3, 2)  # the window has room for one
    assert conn.sends("e1", 3, 1)
    assert conn.next_step("e1", 1) == (Step.WAIT_ACK, 0)
    assert not conn.sends("e1", 4, 1)  # full
    assert conn.receive(packb({"t": "ack", "seq": 4}), now=0.0) is None
    assert conn.sends("e1", 4, 1) and conn.cursor == 5
    unbounded = opened(batch_max=3)
    assert unbounded.sends("e1", 0, 3) and unbounded.sends("e1", 3, 3) and unbounded.cursor == 6


def test_an_ack_of_what_was_never_sent_is_not_recorded() -> None:
    conn = opened(window=4)
    conn.sent(2)
    assert conn.receive(packb({"t": "ack", "seq": 3}), now=0.0) is None
    assert conn.acked is False and conn.flow.acked == 0


# --- what the client sends -----------------------------------------------------------------


def test_ping_and_requests() -> None:
    conn = opened()
    assert conn.receive(packb({"t": "ping", "n": 7}), now=0.0) == Pong(7)
    data = packb({"t": "send", "rid": "r1", "data": {"x": 1}})
    req = conn.receive(data, now=0.0)
    assert isinstance(req, Request) and req.frame.rid == "r1" and req.size == len(data)


def test_a_value_too_deep_is_refused_in_a_replied() -> None:
    conn = opened()
    deep: object = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    out = conn.receive(packb({"t": "reply", "ask": "a1", "rid": "r", "value": deep}), now=0.0)
    assert out == Replied("r", False, "bad_value")
    assert conn.state is ConnState.OPEN


def test_the_rate_limit_warns_then_closes_and_spares_acks() -> None:
    conn = opened(window=1_000_000, rate=1.0, burst=2.0, rate_strikes=2)
    conn.sent(100)
    ping = packb({"t": "ping"})
    assert isinstance(conn.receive(ping, now=0.0), Pong)
    assert isinstance(conn.receive(ping, now=0.0), Pong)
    # acks that move the window are free, however many
    for seq in range(1, 51):
        assert conn.receive(packb({"t": "ack", "seq": seq}), now=0.0) is None
    first = conn.receive(ping, now=0.0)
    assert isinstance(first, Error) and first.code == "rate_limited" and not first.fatal
    warned = conn.receive(packb({"t": "ack", "seq": 50}), now=0.0)  # redundant: charged
    assert isinstance(warned, Error)
    with pytest.raises(ProtocolError) as err:
        conn.receive(ping, now=0.0)
    assert err.value.code is ErrorCode.RATE_LIMITED and err.value.fatal


def test_strikes_reset_once_the_bucket_refills() -> None:
    limiter = RateLimiter(rate=10.0, burst=1.0, now=0.0)
    assert limiter.allow(0.0) and not limiter.allow(0.0) and limiter.strikes == 1
    assert limiter.allow(1.0) and limiter.strikes == 0  # quiet for a full refill


# --- the end ---------------------------------------------------------------------------------


def state(conn: ServerConnection) -> ConnState:
    """``conn.state`` read afresh: mypy keeps an attribute narrowed by an
    ``assert ... is`` across the method calls that change it."""
    return conn.state


def test_a_fatal_error_closes_and_a_non_fatal_one_does_not() -> None:
    conn = opened()
    frame, close = conn.fail(ProtocolError(ErrorCode.ASK_CLOSED, "x"))
    assert close is None and not frame.fatal and conn.state is ConnState.OPEN
    frame, close = conn.fail(ProtocolError(ErrorCode.SHUTDOWN, "bye"))
    assert close == 1001 and frame.fatal and state(conn) is ConnState.CLOSING
    assert conn.receive(packb({"t": "ping"}), now=0.0) is None  # closing: frames are ignored
    conn.fail(ProtocolError(ErrorCode.INTERNAL, "again"))  # no second transition
    conn.closed()
    conn.closed()
    assert state(conn) is ConnState.CLOSED


def test_every_state_change_is_in_the_table() -> None:
    conn = ServerConnection()
    conn.fail(ProtocolError(ErrorCode.NO_HELLO, "late"))  # AWAIT_HELLO -> CLOSING
    assert state(conn) is ConnState.CLOSING
    conn.closed()
    assert state(conn) is ConnState.CLOSED


def test_who_may_start_and_where_a_restart_begins() -> None:
    conn = opened()
    refused = conn.refuse_start()
    assert refused is not None and refused.code is ErrorCode.FORBIDDEN and not refused.fatal
    conn.grant = Grant.OPERATOR
    assert conn.refuse_start() is None
    assert ServerConnection.restart_cursor(False, first=5, head=9) == 4  # all retained history
    assert ServerConnection.restart_cursor(True, first=5, head=9) == 9  # live: after the head


def test_requests_for_a_run_elsewhere() -> None:
    from protocol import Cancel, Reply, Send

    conn = opened()
    assert conn.follows("e1") and not conn.follows("e2")
    assert conn.not_local(Send(1, "r"), alive=True) == Replied("r", False, "forbidden")  # a viewer
    conn.grant = Grant.OPERATOR
    assert conn.not_local(Send(1, "r"), alive=True) == Replied("r", False, "not_here")
    assert conn.not_local(Reply("a1", "r", 1), alive=False) == Replied("r", False, "ask_closed")
    assert conn.not_local(Cancel("r"), alive=False) == Replied("r", False, "ended")
