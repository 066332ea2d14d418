"""The snapshot reducer, the connection state machine and the flow-control window."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proto_strategies import SETTINGS, any_values

from protocol import ConnState, FlowWindow, Kind, Snapshot
from protocol.state import TRANSITIONS, transition


def fold(*events: tuple[str, Any]) -> Snapshot:
    snap = Snapshot()
    for k, d in events:
        snap.apply(k, d)
    return snap


def plan(*task_ids: str, current: str | None = None) -> dict[str, Any]:
    return {
        "goal": "g",
        "tasks": [{"id": t, "instruction": f"do {t}", "deps": [], "type": "x", "status": "pending"} for t in task_ids],
        "current": current,
    }


def test_empty_snapshot() -> None:
    assert Snapshot().as_map() == {"status": None, "plan": None, "asks": [], "texts": []}


# --- status --------------------------------------------------------------------


def test_latest_status_wins() -> None:
    snap = fold(
        ("status", {"state": "running"}),
        ("status", {"state": "waiting", "detail": "asking"}),
    )
    assert snap.as_map()["status"] == {"state": "waiting", "detail": "asking"}
    snap.apply("status", {"state": "done"})
    assert snap.status == {"state": "done"}


@pytest.mark.parametrize("d", [{}, {"detail": "x"}, {"state": "exploded"}, {"state": ["done"]}, "running", None])
def test_malformed_status_is_ignored(d: Any) -> None:
    snap = fold(("status", {"state": "running"}), ("status", d))
    assert snap.status == {"state": "running"}


# --- plan and tasks -------------------------------------------------------------


def test_plan_with_task_updates() -> None:
    snap = fold(
        ("plan", plan("1", "2", "3")),
        ("task", {"id": "1", "status": "running"}),
        ("task", {"id": "1", "status": "done", "result": "ok"}),
        ("task", {"id": "2", "status": "running"}),
        ("task", {"id": "3", "status": "skipped"}),
    )
    p = snap.as_map()["plan"]
    assert [(t["id"], t["status"]) for t in p["tasks"]] == [("1", "done"), ("2", "running"), ("3", "skipped")]
    assert p["tasks"][0]["result"] == "ok"
    assert "result" not in p["tasks"][1]
    assert p["current"] == "2"  # follows the running task
    assert p["goal"] == "g"


def test_current_follows_the_running_task() -> None:
    snap = fold(("plan", plan("a", "b", current="a")))
    assert snap.plan is not None and snap.plan["current"] == "a"
    snap.apply("task", {"id": "b", "status": "running"})
    assert snap.plan["current"] == "b"
    snap.apply("task", {"id": "a", "status": "failed"})  # not running: current stays
    assert snap.plan["current"] == "b"


def test_task_updates_before_any_plan_are_dropped() -> None:
    snap = fold(("task", {"id": "1", "status": "done"}), ("plan", plan("1")))
    assert snap.plan is not None and snap.plan["tasks"][0]["status"] == "pending"


@pytest.mark.parametrize(
    "d",
    [
        {"id": "zzz", "status": "done"},  # unknown task
        {"status": "done"},  # no id: must not match a task without one
        {"id": 1, "status": "done"},
        {"id": "1"},
        {"id": "1", "status": None},
        {"id": ["1"], "status": "done"},
        "done",
        None,
    ],
)
def test_malformed_or_unknown_task_updates_are_ignored(d: Any) -> None:
    p = plan("1")
    p["tasks"].append({"instruction": "a task with no id", "status": "pending"})
    p["tasks"].append("not a task")
    snap = fold(("plan", p), ("task", d))
    assert snap.plan == p


def test_a_fresh_plan_replaces_the_old_one() -> None:
    snap = fold(
        ("plan", plan("1", "2")),
        ("task", {"id": "1", "status": "done"}),
        ("plan", plan("x", current="x")),
    )
    assert snap.plan == plan("x", current="x")
    snap.apply("task", {"id": "1", "status": "failed"})  # a task of the old plan
    assert snap.plan == plan("x", current="x")


@pytest.mark.parametrize("tasks", [None, "nope", {"1": {}}])
def test_plan_without_a_task_list_gets_an_empty_one(tasks: Any) -> None:
    snap = fold(("plan", {"goal": "g", "tasks": tasks}))
    assert snap.plan == {"goal": "g", "tasks": []}
    snap.apply("task", {"id": "1", "status": "done"})
    assert snap.plan == {"goal": "g", "tasks": []}
    assert fold(("plan", {"goal": "g"})).plan == {"goal": "g", "tasks": []}


def test_snapshot_deep_copies_what_it_keeps() -> None:
    p = plan("1")
    result = {"rows": [1]}
    status: dict[str, Any] = {"state": "running", "detail": {"step": 1}}
    ask: dict[str, Any] = {"id": "a", "prompt": "ok?", "choices": ["y", "n"]}
    snap = fold(
        ("plan", p),
        ("task", {"id": "1", "status": "done", "result": result}),
        ("status", status),
        ("ask", ask),
    )
    before = snap.as_map()
    p["tasks"][0]["instruction"] = "changed"
    p["tasks"].append({"id": "2"})
    p["goal"] = "changed"
    result["rows"].append(2)
    status["detail"]["step"] = 2
    ask["choices"].append("maybe")
    assert snap.plan == plan("1") | {"tasks": [plan("1")["tasks"][0] | {"status": "done", "result": {"rows": [1]}}]}
    assert snap.status == {"state": "running", "detail": {"step": 1}}
    assert snap.asks == {"a": {"id": "a", "prompt": "ok?", "choices": ["y", "n"]}}
    assert snap.as_map() == before


# --- asks -------------------------------------------------------------------------


def test_asks_stay_open_until_answered() -> None:
    a = {"id": "a", "prompt": "name?"}
    b = {"id": "b", "prompt": "age?", "choices": ["1", "2"], "default": "1", "timeout": 30}
    snap = fold(("ask", a), ("ask", b))
    assert snap.as_map()["asks"] == [a, b]
    snap.apply("answer", {"id": "a", "value": "x", "by": "client"})
    assert snap.as_map()["asks"] == [b]
    snap.apply("answer", {"id": "a", "value": "again", "by": "http"})  # already closed
    snap.apply("answer", {"id": "nope", "value": 1, "by": "timeout"})
    assert snap.as_map()["asks"] == [b]
    snap.apply("answer", {"id": "b", "value": "1", "by": "timeout"})
    assert snap.as_map()["asks"] == []


@pytest.mark.parametrize("d", [{"prompt": "no id"}, {"id": 3, "prompt": "x"}, ["id"], None])
def test_malformed_asks_are_ignored(d: Any) -> None:
    assert fold(("ask", d)).asks == {}


@pytest.mark.parametrize("d", [{}, {"id": ["a"]}, {"id": {"a": 1}}, {"id": 1}, "a", None])
def test_malformed_answers_are_ignored(d: Any) -> None:
    snap = fold(("ask", {"id": "a", "prompt": "?"}), ("answer", d))
    assert list(snap.asks) == ["a"]


# --- text streams -------------------------------------------------------------------


def test_text_streams_accumulate_until_end() -> None:
    snap = fold(
        ("text", {"id": "t1", "delta": "Hel"}),
        ("text", {"id": "t2", "delta": "other"}),
        ("text", {"id": "t1", "delta": "lo"}),
        ("text", {"id": "t1", "delta": "", "end": False}),
    )
    assert snap.as_map()["texts"] == [{"id": "t1", "text": "Hello"}, {"id": "t2", "text": "other"}]
    snap.apply("text", {"id": "t1", "delta": "!", "end": True})
    assert snap.as_map()["texts"] == [{"id": "t2", "text": "other"}]
    snap.apply("text", {"id": "t2", "end": True})
    snap.apply("text", {"id": "never-opened", "end": True})
    assert snap.as_map()["texts"] == []
    snap.apply("text", {"id": "t1", "delta": "again"})  # a reused id starts afresh
    assert snap.as_map()["texts"] == [{"id": "t1", "text": "again"}]


@pytest.mark.parametrize(
    "d", [{"delta": "x"}, {"id": 1, "delta": "x"}, {"id": "t", "delta": 5}, {"id": "t"}, "x", None]
)
def test_malformed_text_is_ignored(d: Any) -> None:
    snap = fold(("text", {"id": "t", "delta": "a"}), ("text", d))
    assert snap.as_map()["texts"] == [{"id": "t", "text": "a"}]


def test_other_kinds_leave_the_snapshot_alone() -> None:
    snap = fold(("status", {"state": "running"}), ("plan", plan("1")))
    before = snap.as_map()
    for k in ("message", "code", "output", "tool", "log", "vendor.thing"):
        snap.apply(k, {"id": "1", "state": "done", "status": "done", "tasks": []})
    assert snap.as_map() == before


_TEXTS = st.fixed_dictionaries(
    {"id": st.sampled_from(["t1", "t2", 3])},
    optional={"delta": st.sampled_from(["a", "", 5, None]), "end": st.sampled_from([True, False, 0, "y"])},
)


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("text"), _TEXTS),
            st.tuples(st.sampled_from(list(Kind) + ["other"]), any_values),
        ),
        max_size=20,
    )
)
def test_folding_a_batch_is_applying_each_event(events: list[tuple[str, Any]]) -> None:
    """``Snapshot.fold`` (a store's batch, its text deltas without a call each) is ``apply`` in turn."""
    start = (("plan", plan("1", "2")), ("text", {"id": "t1", "delta": "x"}))
    batch = Snapshot()
    batch.fold([*start, *events])
    assert batch.as_map() == fold(*start, *events).as_map()


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(list(Kind) + ["other"]), any_values), max_size=12))
def test_reducer_never_raises(events: list[tuple[str, Any]]) -> None:
    snap = fold(("plan", plan("1", "2")), ("ask", {"id": "a", "prompt": "?"}), *events)
    m = snap.as_map()
    assert set(m) == {"status", "plan", "asks", "texts"}


# --- ConnState -----------------------------------------------------------------------

S = ConnState
ALLOWED = {
    (S.AWAIT_HELLO, S.OPEN),
    (S.AWAIT_HELLO, S.CLOSING),
    (S.AWAIT_HELLO, S.CLOSED),
    (S.OPEN, S.CLOSING),
    (S.OPEN, S.CLOSED),
    (S.CLOSING, S.CLOSED),
}


@pytest.mark.parametrize(("src", "dst"), sorted(ALLOWED, key=str))
def test_allowed_transitions(src: ConnState, dst: ConnState) -> None:
    assert transition(src, dst) is dst


@pytest.mark.parametrize(
    ("src", "dst"),
    [pair for pair in itertools.product(ConnState, repeat=2) if pair not in ALLOWED],
)
def test_forbidden_transitions(src: ConnState, dst: ConnState) -> None:
    with pytest.raises(RuntimeError, match=f"from {src.value} to {dst.value}"):
        transition(src, dst)


def test_transition_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(ConnState)
    assert {(s, d) for s, ds in TRANSITIONS.items() for d in ds} == ALLOWED


# --- FlowWindow ------------------------------------------------------------------------


def test_no_window_is_unbounded() -> None:
    w = FlowWindow(None, 0)
    w.on_sent(1_000_000)
    assert w.room() is None
    assert w.on_ack(10) and w.acked == 10


def test_window_arithmetic() -> None:
    w = FlowWindow(4, 10)
    assert (w.sent, w.acked, w.room()) == (10, 10, 4)
    w.on_sent(12)
    assert w.room() == 2
    w.on_sent(14)
    assert w.room() == 0
    w.on_sent(11)  # never moves back
    assert w.sent == 14 and w.room() == 0
    assert w.on_ack(12) and w.room() == 2
    assert w.on_ack(11) and w.acked == 12 and w.room() == 2  # a stale ack changes nothing
    assert not w.on_ack(15)  # acks what was never sent
    assert w.acked == 12
    assert w.on_ack(14) and w.room() == 4


def test_window_room_never_negative() -> None:
    w = FlowWindow(2, 0)
    w.on_sent(5)  # the window shrank, or the caller overshot
    assert w.room() == 0


def test_window_restart() -> None:
    w = FlowWindow(3, 0)
    w.on_sent(3)
    w.restart(100)
    assert (w.sent, w.acked, w.room()) == (100, 100, 3)
    assert not w.on_ack(101)


@SETTINGS
@given(
    st.integers(1, 50),
    st.lists(st.tuples(st.booleans(), st.integers(0, 200)), max_size=40),
)
def test_window_invariants(size: int, ops: list[tuple[bool, int]]) -> None:
    w = FlowWindow(size, 0)
    for is_send, n in ops:
        room = w.room()
        assert room is not None and 0 <= room <= size
        if is_send:
            w.on_sent(w.sent + min(n, room))
        else:
            assert w.on_ack(n) is (n <= w.sent)
        assert 0 <= w.sent - w.acked <= size


def test_only_an_ack_that_moves_the_window_advances_it() -> None:
    w = FlowWindow(4, 10)
    w.on_sent(14)
    assert not w.advances(10)  # already acked
    assert not w.advances(15)  # never sent
    assert w.advances(11) and w.advances(14)
    w.on_ack(12)
    assert not w.advances(12) and not w.advances(11)  # redundant now
    assert w.advances(13)


def test_a_snapshot_map_folds_back_into_the_same_reducer() -> None:
    m: dict[str, Any] = {
        "status": {"state": "running"},
        "plan": {"goal": "g", "tasks": [{"id": "1", "status": "running"}], "current": "1"},
        "asks": [{"id": "a1", "prompt": "?"}, "junk"],
        "texts": [{"id": "t1", "text": "hel"}, {"no": "id"}],
    }
    s = Snapshot.from_map(m)
    assert s.as_map() == {**m, "asks": [m["asks"][0]], "texts": [m["texts"][0]]}
    s.apply("text", {"id": "t1", "delta": "lo"})
    assert s.as_map()["texts"] == [{"id": "t1", "text": "hello"}]
    assert m["texts"][0]["text"] == "hel"  # the map it came from is untouched
    assert Snapshot.from_map(None).as_map() == Snapshot().as_map()


def test_an_owned_payload_is_kept_without_a_copy() -> None:
    s = Snapshot()
    plan = {"goal": "g", "tasks": []}
    s.apply("plan", plan, owned=True)
    assert s.plan is plan
    s.apply("plan", plan)
    assert s.plan is not plan and s.plan == plan


def test_a_payload_not_owned_is_copied_all_the_way_down() -> None:
    s = Snapshot()
    p: Any = plan("1")
    s.apply("plan", p)
    result = {"rows": [1]}
    s.apply("task", {"id": "1", "status": "done", "result": result})
    ask: dict[str, Any] = {"id": "a", "prompt": "?", "choices": [["x"]]}
    s.apply("ask", ask)
    status: dict[str, Any] = {"state": "running", "why": {"step": [1]}}
    s.apply("status", status)
    # The caller keeps changing what it passed: a shallow copy would show it.
    p["tasks"][0]["deps"].append("x")
    p["tasks"][0]["instruction"] = "changed"
    result["rows"].append(2)
    ask["choices"][0].append("y")
    status["why"]["step"].append(2)
    m = s.as_map()
    task = m["plan"]["tasks"][0]
    assert (task["deps"], task["instruction"], task["result"]) == ([], "do 1", {"rows": [1]})
    assert m["asks"] == [{"id": "a", "prompt": "?", "choices": [["x"]]}]
    assert m["status"] == {"state": "running", "why": {"step": [1]}}


def test_other_objects_in_a_payload_are_copied_too() -> None:
    class Box:
        def __init__(self) -> None:
            self.items = [1]

    box = Box()
    s = Snapshot()
    s.apply("plan", {"goal": "g", "tasks": [], "box": box, "pair": (1, [2])})
    assert s.plan is not None and s.plan["box"] is not box and s.plan["box"].items == [1]
    assert s.plan["pair"] == (1, [2])  # not plain: copied by copy.deepcopy, as it is
