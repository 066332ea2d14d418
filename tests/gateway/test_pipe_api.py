"""The Pipe, the agent's side (docs/protocol.md section 9), against a real gateway.

Events are checked where clients see them: in the store the gateway serves
from, or through a real client over a loopback socket.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from support import MS, TIMEOUT, MakeGateway, final

from gateway import Gateway, MemoryStore, WebPipe
from gateway.client import Client
from gateway.sessions import GATHER_EVENTS
from gateway.stores import Appended
from protocol import Error, Event, RemoteError, Welcome, decode_event, decode_server


async def logged(gw: Gateway, pipe: WebPipe, after: int = 0) -> list[Event]:
    """Every event of ``pipe``'s run after ``after``, as clients will get them."""
    await asyncio.wait_for(pipe.drained(), TIMEOUT)
    out: list[Event] = []
    while True:
        raws = await gw.store.read(pipe.sid, after)
        if not raws:
            return out
        out += [decode_event(r) for r in raws]
        after = out[-1].seq


async def next_ask(c: Client) -> Event:
    evs = await asyncio.wait_for(c.until(lambda e: e.k == "ask"), TIMEOUT)
    return evs[-1]


async def in_thread(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kw), TIMEOUT)


# --- set_message ------------------------------------------------------------------


async def test_set_message_text_deltas_share_a_stream_until_end_text(gw: Gateway) -> None:
    pipe = gw.pipe("text")
    assert pipe.end_text() == 0  # nothing open: nothing appended
    assert pipe.set_message("Hel") == 1
    assert pipe.set_message("lo") == 2
    assert pipe.end_text() == 3
    assert pipe.set_message("again") == 4
    evs = await logged(gw, pipe)
    assert [e.k for e in evs] == ["text"] * 4
    first = evs[0].d["id"]
    assert [e.d for e in evs[:3]] == [
        {"id": first, "delta": "Hel"},
        {"id": first, "delta": "lo"},
        {"id": first, "delta": "", "end": True},
    ]
    assert evs[3].d["id"] != first and evs[3].d["delta"] == "again"
    snap, _ = await gw.store.snapshot("text")
    assert snap["texts"] == [{"id": evs[3].d["id"], "text": "again"}]


async def test_set_message_text_streams_of_two_pipes_differ(gw: Gateway) -> None:
    a, b = gw.pipe("ta"), gw.pipe("tb")
    a.set_message("x")
    b.set_message("y")
    (ea,), (eb,) = await logged(gw, a), await logged(gw, b)
    assert ea.d["id"] != eb.d["id"]


async def test_set_message_dict_and_object_with_k_d(gw: Gateway) -> None:
    pipe = gw.pipe("kd")
    pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "hi"}})
    pipe.set_message(SimpleNamespace(k="tool", d={"name": "n", "type": "t", "value": 1}))
    pipe.set_message({"k": "custom.kind", "d": [1, 2]})  # unknown kinds pass through
    evs = await logged(gw, pipe)
    assert [(e.seq, e.k, e.d) for e in evs] == [
        (1, "log", {"level": "INFO", "msg": "hi"}),
        (2, "tool", {"name": "n", "type": "t", "value": 1}),
        (3, "custom.kind", [1, 2]),
    ]


class _Message:
    """Shaped like MetaGPT's ``Message``."""

    def __init__(self, role: str, content: str, **kw: Any) -> None:
        self.role, self.content = role, content
        self.name = kw.get("name", "")
        self.cause_by = kw.get("cause_by", "")
        self.sent_from = kw.get("sent_from", "")


async def test_set_message_role_content_object_becomes_message(gw: Gateway) -> None:
    pipe = gw.pipe("msg")
    pipe.set_message(_Message("user", "hi"))
    pipe.set_message(_Message("assistant", "done", name="Bob", cause_by="WriteCode"))
    evs = await logged(gw, pipe)
    assert [(e.k, e.d) for e in evs] == [
        ("message", {"role": "user", "content": "hi"}),
        ("message", {"role": "assistant", "content": "done", "name": "Bob", "cause": "WriteCode"}),
    ]


@pytest.mark.parametrize(
    ("msg", "exc"),
    [
        (42, TypeError),
        (None, TypeError),
        (b"bytes", TypeError),
        ({"d": {"level": "INFO", "msg": "no kind"}}, TypeError),
        (SimpleNamespace(k=5, d={}), TypeError),
        ({"k": "", "d": {}}, ValueError),
        ({"k": 7, "d": {}}, ValueError),
        ({"k": "status", "d": {}}, ValueError),
        ({"k": "status", "d": {"state": "bogus"}}, ValueError),
        ({"k": "ask", "d": {"prompt": "no id"}}, ValueError),
        ({"k": "plan", "d": "not a map"}, ValueError),
        (SimpleNamespace(k="task", d={"id": "1"}), ValueError),
    ],
)
async def test_set_message_rejects_bad_input_and_appends_nothing(gw: Gateway, msg: Any, exc: type[Exception]) -> None:
    pipe = gw.pipe("bad")
    pipe.set_message("before")
    head = pipe.head
    with pytest.raises(exc):
        pipe.set_message(msg)
    assert pipe.head == head
    pipe.set_message("after")
    evs = await logged(gw, pipe)
    assert [e.d["delta"] for e in evs] == ["before", "after"]


async def test_a_value_that_fails_to_encode_under_the_lock_burns_no_seq(gw: Gateway) -> None:
    """Plain payloads are encoded under the session lock: a failure there releases it and takes no seq."""
    pipe = gw.pipe("surrogate")
    assert pipe.set_message("before") == 1
    with pytest.raises(ValueError):
        pipe.set_message("\ud800")  # a lone surrogate: not UTF-8
    with pytest.raises(ValueError):
        pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "\ud800"}})
    assert await in_thread(pipe.set_message, "after") == 2  # the lock was released
    evs = await logged(gw, pipe)
    assert [e.d["delta"] for e in evs] == ["before", "after"]
    pipe.close()


async def test_an_event_written_on_the_loop_as_its_log_is_lost_waits_for_the_writer(make_gw: MakeGateway) -> None:
    """On the loop a MemoryStore stores an event inside set_message; an append that fails there loses nothing.

    The event goes back to the writer, which re-creates the lost log under a
    new epoch (continuing the seqs) and stores it with its retries.
    """
    gw = await make_gw(store=MemoryStore())
    pipe = gw.pipe("lost")
    assert pipe.set_message("one") == 1
    await asyncio.wait_for(pipe.drained(), TIMEOUT)
    assert pipe._s.backlog == 0  # stored inside set_message
    old = pipe.epoch
    await gw.store.close()  # every log gone, as after a restart
    assert pipe.set_message("two") == 2  # its append finds no log
    assert pipe.set_message("three") == 3
    evs = await logged(gw, pipe, after=1)
    assert [(e.seq, e.d["delta"]) for e in evs] == [(2, "two"), (3, "three")]
    info = await gw.store.info("lost")
    assert info is not None and info.epoch == pipe.epoch != old and (info.first, info.head) == (2, 3)
    assert pipe._s.backlog == 0 and pipe.set_message("four") == 4
    assert [e.seq for e in await logged(gw, pipe, after=3)] == [4]
    pipe.close()


class _Deferred(MemoryStore):
    """Not ``Direct`` (it overrides ``append``): the writer task stores events after ``set_message`` returns."""

    async def append(self, sid: str, events: Sequence[Appended], *, epoch: str | None = None) -> None:
        await super().append(sid, events, epoch=epoch)


class _Counting(_Deferred):
    """Notes the size of every append (the writer's batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    async def append(self, sid: str, events: Sequence[Appended], *, epoch: str | None = None) -> None:
        self.sizes.append(len(events))
        await super().append(sid, events, epoch=epoch)


async def test_a_thread_that_writes_fast_is_stored_in_large_batches(make_gw: MakeGateway) -> None:
    """The writer lets a fast agent thread's events gather (``GATHER_EVENTS``), all in order.

    Without that it woke for every few events, each wake a hand-over of the
    GIL between the two threads: 91 to 2,000 batches of fewer than 16
    events, by the machine.  With it a batch holds what the thread wrote in
    a millisecond or more (most of them 1,000, ``MAX_FLUSH_BATCH``); a small
    one comes only before the first large one.
    """
    store = _Counting()
    gw = await make_gw(store=store)
    pipe = gw.pipe("fast")
    await asyncio.wait_for(pipe.drained(), TIMEOUT)
    n = 20_000

    def agent() -> None:
        for i in range(n):
            pipe.set_message(f"{i} ")

    await asyncio.to_thread(agent)
    evs = await logged(gw, pipe)
    assert [e.d["delta"] for e in evs] == [f"{i} " for i in range(n)]
    small = sum(size < GATHER_EVENTS for size in store.sizes)
    assert small <= 20, store.sizes
    pipe.close()


async def test_the_snapshot_keeps_a_plan_as_written_not_as_the_agent_changes_it_later(make_gw: MakeGateway) -> None:
    gw = await make_gw(store=_Deferred())
    pipe = gw.pipe("mutated")
    plan: Any = {"goal": "g", "tasks": [{"id": "1", "status": "pending", "deps": ["0"]}]}
    assert pipe.set_message({"k": "plan", "d": plan}) == 1
    # Nothing awaited since: the event waits for the writer, which stores it
    # after these changes.  A shallow copy at set_message would let them in.
    plan["tasks"][0]["status"] = "done"
    plan["tasks"][0]["deps"].append("x")
    plan["tasks"].append({"id": "2", "status": "pending"})
    written = {"goal": "g", "tasks": [{"id": "1", "status": "pending", "deps": ["0"]}]}
    evs = await logged(gw, pipe)
    assert evs[0].d == written
    snap, head = await gw.store.snapshot("mutated")
    assert head == 1 and snap["plan"] == written
    pipe.close()


async def test_an_object_may_write_an_event_while_it_is_encoded(gw: Gateway) -> None:
    """An agent object's model_dump runs before the session lock is taken: it may write itself."""
    pipe = gw.pipe("reentrant")

    class Dumps:
        def model_dump(self, *, mode: str) -> dict[str, Any]:
            pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "from model_dump"}})
            return {"x": [1, 2]}

    assert pipe.set_message({"k": "tool", "d": {"name": "t", "type": "x", "value": Dumps()}}) == 2
    assert pipe.set_message({"k": "plan", "d": {"goal": "g", "tasks": [Dumps()]}}) == 4  # a kept kind too
    evs = await logged(gw, pipe)
    assert [(e.seq, e.k) for e in evs] == [(1, "log"), (2, "tool"), (3, "log"), (4, "plan")]
    assert evs[1].d["value"] == {"x": [1, 2]}
    snap, _ = await gw.store.snapshot("reentrant")
    assert snap["plan"]["tasks"] == [{"x": [1, 2]}]
    pipe.close()


# --- msg2stream ---------------------------------------------------------------------


async def test_msg2stream_is_the_ev_frame_without_appending(gw: Gateway) -> None:
    pipe = gw.pipe("m2s")
    pipe.set_message("open")
    head = pipe.head
    cases: list[tuple[Any, str, dict[str, Any]]] = [
        ("tok", "text", {"delta": "tok"}),
        ({"k": "log", "d": {"level": "WARN", "msg": "m"}}, "log", {"level": "WARN", "msg": "m"}),
        (SimpleNamespace(k="tool", d={"name": "x"}), "tool", {"name": "x"}),
        (_Message("user", "hi"), "message", {"role": "user", "content": "hi"}),
    ]
    for msg, k, d in cases:
        frame = decode_server(pipe.msg2stream(msg, format="frame"))
        assert isinstance(frame, Event), msg
        assert frame.seq == head + 1 and frame.k == k, msg
        assert {key: frame.d[key] for key in d} == d, msg
    # a str goes to the open text stream
    (opened,) = await logged(gw, pipe)
    tok = decode_server(pipe.msg2stream("tok", format="frame"))
    assert isinstance(tok, Event), tok
    assert tok.d["id"] == opened.d["id"]
    assert pipe.head == head
    assert len(await logged(gw, pipe)) == 1


async def test_msg2stream_is_an_sse_chunk_by_default_as_metagpts(gw: Gateway) -> None:
    pipe = gw.pipe("m2s-sse")
    for msg, content in [
        ("tok", "tok"),
        (None, None),
        ({"k": "code", "d": {"id": "c", "lang": "python", "source": "print(1)"}}, "```python\nprint(1)\n```\n\n"),
        (_Message("assistant", "done", name="Bob"), "**Bob**: done\n\n"),
        ({"k": "log", "d": {"level": "DEBUG", "msg": "m"}}, "`DEBUG` m\n\n"),
    ]:
        line = pipe.msg2stream(msg)
        assert line.startswith(b"data: ") and line.endswith(b"\n\n") and line.count(b"\n") == 2, line
        body = json.loads(line[6:])
        assert body["object"] == "chat.completion.chunk"
        assert body["choices"][0]["delta"] == {"content": content}
    assert pipe.head == 0
    with pytest.raises(ValueError, match="format"):
        pipe.msg2stream("x", format="json")


async def test_msg2stream_matches_set_message(gw: Gateway) -> None:
    pipe = gw.pipe("m2s-same")
    msg = _Message("assistant", "done", name="Bob")
    frame = decode_server(pipe.msg2stream(msg, format="frame"))
    pipe.set_message(msg)
    (ev,) = await logged(gw, pipe)
    assert isinstance(frame, Event)
    assert (frame.seq, frame.k, frame.d) == (ev.seq, ev.k, ev.d)


# --- get_message ----------------------------------------------------------------------


async def test_get_message_from_a_thread_gets_a_clients_send(gw: Gateway) -> None:
    pipe = gw.pipe("gm")
    async with Client(gw.url, "gm") as c:
        got = asyncio.create_task(in_thread(pipe.get_message, timeout=TIMEOUT))
        r = await asyncio.wait_for(c.send({"text": "hello", "n": [1, 2]}), TIMEOUT)
        assert r.ok and r.err is None
        assert await got == {"text": "hello", "n": [1, 2]}


async def test_get_message_times_out_with_none(gw: Gateway) -> None:
    pipe = gw.pipe("gm-none")
    assert await in_thread(pipe.get_message, timeout=20 * MS) is None


async def test_get_message_on_the_loop_never_blocks(gw: Gateway) -> None:
    pipe = gw.pipe("gm-loop")
    assert pipe.get_message(timeout=TIMEOUT) is None
    async with Client(gw.url, "gm-loop") as c:
        for data in ("one", "two"):
            assert (await asyncio.wait_for(c.send(data), TIMEOUT)).ok
    assert pipe.get_message(timeout=TIMEOUT) == "one"
    assert pipe.get_message(timeout=None) == "two"
    assert pipe.get_message() is None


async def test_aget_message(gw: Gateway) -> None:
    pipe = gw.pipe("agm")
    assert await pipe.aget_message(timeout=20 * MS) is None
    async with Client(gw.url, "agm") as c:
        got = asyncio.create_task(pipe.aget_message(timeout=TIMEOUT))
        assert (await asyncio.wait_for(c.send(["x", 1]), TIMEOUT)).ok
        assert await asyncio.wait_for(got, TIMEOUT) == ["x", 1]


async def test_send_is_idempotent_by_rid(gw: Gateway) -> None:
    pipe = gw.pipe("send-rid")
    async with Client(gw.url, "send-rid") as c:
        r1 = await asyncio.wait_for(c.send("once", rid="r1"), TIMEOUT)
        r2 = await asyncio.wait_for(c.send("once", rid="r1"), TIMEOUT)
        assert r1 == r2 and r1.ok
    assert pipe.get_message() == "once"
    assert pipe.get_message() is None


# --- ask ----------------------------------------------------------------------------------


async def test_ask_sync_from_a_thread_gets_a_clients_reply(gw: Gateway) -> None:
    pipe = gw.pipe("ask-sync")
    async with Client(gw.url, "ask-sync") as c:
        answer = asyncio.create_task(in_thread(pipe.ask_sync, "Ship it?", ["yes", "no"], default="no"))
        ask = await next_ask(c)
        assert ask.d["prompt"] == "Ship it?" and ask.d["choices"] == ["yes", "no"]
        assert ask.d["default"] == "no"
        r = await asyncio.wait_for(c.reply(ask.d["id"], "yes"), TIMEOUT)
        assert r.ok
        assert await answer == "yes"
        (ans,) = await asyncio.wait_for(c.until(lambda e: e.k == "answer"), TIMEOUT)
        assert ans.d == {"id": ask.d["id"], "value": "yes", "by": "client"}
        # a later reply to the same ask is refused; the same rid gets its first outcome
        late = await asyncio.wait_for(c.reply(ask.d["id"], "no"), TIMEOUT)
        assert (late.ok, late.err) == (False, "ask_closed")
        unknown = await asyncio.wait_for(c.reply("nope", "yes"), TIMEOUT)
        assert (unknown.ok, unknown.err) == (False, "unknown_ask")


async def test_ask_sync_on_the_loop_raises(gw: Gateway) -> None:
    pipe = gw.pipe("ask-loop")
    with pytest.raises(RuntimeError):
        pipe.ask_sync("would block")
    assert pipe.head == 0
    assert await logged(gw, pipe) == []


async def test_ask_timeout_settles_to_default(gw: Gateway) -> None:
    pipe = gw.pipe("ask-to")
    async with Client(gw.url, "ask-to") as c:
        value = await asyncio.wait_for(pipe.ask("Late?", default="fallback", timeout=20 * MS), TIMEOUT)
        assert value == "fallback"
        evs = await asyncio.wait_for(c.until(lambda e: e.k == "answer"), TIMEOUT)
        ask, ans = evs[0], evs[-1]
        assert ask.k == "ask" and ask.d["timeout"] == 20 * MS and ask.d["default"] == "fallback"
        assert ans.d == {"id": ask.d["id"], "value": "fallback", "by": "timeout"}
        late = await asyncio.wait_for(c.reply(ask.d["id"], "x"), TIMEOUT)
        assert (late.ok, late.err) == (False, "ask_closed")
    snap, _ = await gw.store.snapshot("ask-to")
    assert snap["asks"] == []


async def test_ask_choices_are_enforced(gw: Gateway) -> None:
    pipe = gw.pipe("ask-choice")
    async with Client(gw.url, "ask-choice") as c:
        answer = asyncio.create_task(pipe.ask("Pick", choices=["a", "b"]))
        ask = await next_ask(c)
        bad = await asyncio.wait_for(c.reply(ask.d["id"], "c", rid="bad"), TIMEOUT)
        assert (bad.ok, bad.err) == (False, "bad_value")
        assert not answer.done()
        snap, _ = await gw.store.snapshot("ask-choice")
        assert [a["id"] for a in snap["asks"]] == [ask.d["id"]]  # still open
        ok = await asyncio.wait_for(c.reply(ask.d["id"], "b"), TIMEOUT)
        assert ok.ok
        assert await asyncio.wait_for(answer, TIMEOUT) == "b"
        again = await asyncio.wait_for(c.reply(ask.d["id"], "c", rid="bad"), TIMEOUT)
        assert again == bad  # same rid, same outcome


async def test_ask_other_allows_any_value(gw: Gateway) -> None:
    pipe = gw.pipe("ask-other")
    async with Client(gw.url, "ask-other") as c:
        answer = asyncio.create_task(pipe.ask("Pick", choices=["a", "b"], other=True))
        ask = await next_ask(c)
        assert ask.d["other"] is True
        r = await asyncio.wait_for(c.reply(ask.d["id"], "something else"), TIMEOUT)
        assert r.ok
        assert await asyncio.wait_for(answer, TIMEOUT) == "something else"


async def test_ask_after_close_returns_default_at_once(gw: Gateway) -> None:
    pipe = gw.pipe("ask-closed")
    pipe.close()
    head = pipe.head
    assert await asyncio.wait_for(pipe.ask("?", default="d"), TIMEOUT) == "d"
    assert pipe.head == head


async def test_close_settles_open_asks_before_the_final_status(gw: Gateway) -> None:
    pipe = gw.pipe("ask-close")
    asking = asyncio.create_task(pipe.ask("never answered"))
    async with Client(gw.url, "ask-close") as c:
        ask = await next_ask(c)
        pipe.close()
        evs = await asyncio.wait_for(c.until(final), TIMEOUT)
        assert [e.k for e in evs] == ["answer", "status"]
        assert evs[0].d["id"] == ask.d["id"]
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asking, TIMEOUT)


# --- close ----------------------------------------------------------------------------------


async def test_close_is_idempotent_and_drops_later_events(gw: Gateway) -> None:
    pipe = gw.pipe("close")
    pipe.set_message("partial")
    assert not pipe.closed
    pipe.close()
    pipe.close()
    pipe.close("failed")
    assert pipe.closed
    head = pipe.head
    assert pipe.set_message("late") == 0
    assert pipe.emit("log", {"level": "INFO", "msg": "late"}) == 0
    assert pipe.head == head
    evs = await logged(gw, pipe)
    assert [(e.k, e.d.get("end"), e.d.get("state")) for e in evs] == [
        ("text", None, None),
        ("text", True, None),  # the open stream is ended first
        ("status", None, "done"),
    ]
    info = await gw.store.info("close")
    assert info is not None and info.ended


async def test_close_rejects_a_non_final_state(gw: Gateway) -> None:
    pipe = gw.pipe("close-bad")
    pipe.set_message("open stream")
    head = pipe.head
    for state in ("running", "waiting", "bogus"):
        with pytest.raises(ValueError):
            pipe.close(state)
    assert pipe.head == head and not pipe.closed
    pipe.close("cancelled", detail="why")
    evs = await logged(gw, pipe)
    assert evs[-1].d == {"state": "cancelled", "detail": "why"}


async def test_close_from_a_thread(gw: Gateway) -> None:
    pipe = gw.pipe("close-thread")
    await in_thread(pipe.set_message, "x")
    await in_thread(pipe.close, "failed", "boom")
    evs = await logged(gw, pipe)
    assert evs[-1].d == {"state": "failed", "detail": "boom"}


async def test_with_pipe_closes_done(gw: Gateway) -> None:
    pipe = gw.pipe("with-ok")
    with pipe as p:
        p.set_message({"k": "log", "d": {"level": "INFO", "msg": "inside"}})
    assert pipe.closed
    evs = await logged(gw, pipe)
    assert [e.k for e in evs] == ["log", "status"] and evs[-1].d == {"state": "done"}


async def test_with_pipe_closes_failed_on_exception(gw: Gateway) -> None:
    pipe = gw.pipe("with-fail")
    with pytest.raises(ZeroDivisionError), pipe:
        1 / 0  # noqa: B018
    evs = await logged(gw, pipe)
    assert evs[-1].d == {"state": "failed", "detail": "ZeroDivisionError"}


async def test_async_with_pipe_closes(gw: Gateway) -> None:
    async with gw.pipe("awith-ok") as p:
        p.set_message("x")
    with pytest.raises(KeyError):
        async with gw.pipe("awith-fail") as failing:
            raise KeyError("k")
    assert (await logged(gw, p))[-1].d == {"state": "done"}
    assert (await logged(gw, failing))[-1].d == {"state": "failed", "detail": "KeyError"}
    # a new run of the same sid starts a new, empty log: the old run's tail stays in the old one
    again = gw.pipe("awith-ok")
    assert again.epoch != p.epoch
    assert await logged(gw, again) == []


async def test_close_done_after_with_failed_keeps_failed(gw: Gateway) -> None:
    pipe = gw.pipe("with-then-close")
    with pytest.raises(RuntimeError), pipe:
        raise RuntimeError("x")
    pipe.close()  # already closed: nothing
    evs = await logged(gw, pipe)
    assert [e.d["state"] for e in evs if e.k == "status"] == ["failed"]


# --- gw.pipe ------------------------------------------------------------------------------


async def test_gw_pipe_from_another_thread(gw: Gateway) -> None:
    from_thread = await in_thread(gw.pipe, "thr")
    assert isinstance(from_thread, WebPipe)
    assert gw.pipe("thr") is from_thread
    seqs = await in_thread(lambda: [from_thread.set_message(s) for s in ("a", "b")])
    assert seqs == [1, 2]
    assert [e.d["delta"] for e in await logged(gw, from_thread)] == ["a", "b"]


async def test_gw_pipe_from_many_threads_keeps_one_gap_free_order(gw: Gateway) -> None:
    pipe = gw.pipe("many")
    barrier = threading.Barrier(4)

    def writer(n: int) -> None:
        barrier.wait(TIMEOUT)
        for i in range(50):
            pipe.emit("log", {"level": "INFO", "msg": f"{n}:{i}"})

    await asyncio.gather(*(in_thread(writer, n) for n in range(4)))
    evs = await logged(gw, pipe)
    assert [e.seq for e in evs] == list(range(1, 201))
    for n in range(4):
        mine = [e.d["msg"] for e in evs if e.d["msg"].startswith(f"{n}:")]
        assert mine == [f"{n}:{i}" for i in range(50)]


@pytest.mark.parametrize("sid", ["", "a b", "x" * 129, "é", "a/b", "semi;colon"])
async def test_gw_pipe_rejects_an_invalid_sid(gw: Gateway, sid: str) -> None:
    with pytest.raises(ValueError):
        gw.pipe(sid)


async def test_gw_pipe_accepts_the_whole_sid_alphabet(gw: Gateway) -> None:
    assert gw.pipe("Az09._:-").sid == "Az09._:-"
    assert gw.pipe("x" * 128).sid == "x" * 128


async def test_gw_pipe_returns_the_open_run(gw: Gateway) -> None:
    a = gw.pipe("same")
    assert gw.pipe("same") is a


async def test_new_pipe_after_the_run_ended_starts_a_new_epoch(gw: Gateway, raw: Any) -> None:
    old = gw.pipe("epochs")
    old.set_message({"k": "log", "d": {"level": "INFO", "msg": "old run"}})
    async with raw(gw.url) as r:
        w1 = await r.hello("epochs")
        assert isinstance(w1, Welcome) and w1.epoch == old.epoch
        old.close()
        await r.events(final)
        new = gw.pipe("epochs")
        assert new is not old and new.epoch != old.epoch and new.head == 0
        new.set_message({"k": "log", "d": {"level": "INFO", "msg": "new run"}})
        w2 = await r.recv()
        assert isinstance(w2, Welcome)
        assert w2.recovered is False and w2.epoch == new.epoch
        assert w2.snapshot is not None and w2.snapshot["status"] is None
        (ev,) = await r.events(lambda e: True)
        assert (ev.seq, ev.d["msg"]) == (1, "new run")


# --- from clients: cancel, send after the end ------------------------------------------------


async def test_cancel_sets_the_flag_and_calls_callbacks(gw: Gateway) -> None:
    pipe = gw.pipe("cancel")
    called: list[str | None] = []
    pipe.on_cancel(called.append)
    pipe.on_cancel(lambda reason: 1 / 0)  # a failing callback does not stop the others
    pipe.on_cancel(lambda reason: called.append(f"second:{reason}"))
    assert not pipe.cancelled.is_set()
    async with Client(gw.url, "cancel") as c:
        r = await asyncio.wait_for(c.cancel("enough"), TIMEOUT)
        assert r.ok
        assert pipe.cancelled.is_set() and pipe.cancel_reason == "enough"
        assert called == ["enough", "second:enough"]
        again = await asyncio.wait_for(c.cancel("twice"), TIMEOUT)
        assert again.ok
        assert called == ["enough", "second:enough"] and pipe.cancel_reason == "enough"
        # cancel is a flag: the agent decides how to stop
        assert not pipe.closed
        pipe.close("cancelled", detail=pipe.cancel_reason)
        evs = await asyncio.wait_for(c.until(final), TIMEOUT)
        assert evs[-1].d == {"state": "cancelled", "detail": "enough"}


async def test_send_and_cancel_after_the_run_ended(gw: Gateway) -> None:
    pipe = gw.pipe("ended")
    pipe.close()
    async with Client(gw.url, "ended") as c:
        r = await asyncio.wait_for(c.send("too late"), TIMEOUT)
        assert (r.ok, r.err) == (False, "ended")
        r = await asyncio.wait_for(c.cancel(), TIMEOUT)
        assert (r.ok, r.err) == (False, "ended")
    assert pipe.get_message() is None
    assert not pipe.cancelled.is_set()


# --- grants ----------------------------------------------------------------------------------


def _auth(cred: str | None, sid: str) -> str | None:
    return "viewer" if cred == "v" else ("operator" if cred == "o" else None)


async def test_a_viewer_watches_but_cannot_act(make_gw: Any) -> None:
    g = await make_gw(auth=_auth)
    pipe = g.pipe("view")
    pipe.set_message("visible")
    asking = asyncio.create_task(pipe.ask("Ship?", choices=["yes", "no"]))
    async with Client(g.url, "view", auth="v") as viewer, Client(g.url, "view", auth="o") as op:
        assert viewer.welcome is not None and viewer.welcome.grant.value == "viewer"
        assert op.welcome is not None and op.welcome.grant.value == "operator"
        ask = await next_ask(viewer)
        for r in await asyncio.wait_for(
            asyncio.gather(viewer.reply(ask.d["id"], "yes"), viewer.send("hi"), viewer.cancel()),
            TIMEOUT,
        ):
            assert (r.ok, r.err) == (False, "forbidden")
        assert not asking.done() and not pipe.cancelled.is_set()
        assert pipe.get_message() is None
        # the operator can; the viewer sees the outcome
        assert (await asyncio.wait_for(op.reply(ask.d["id"], "no"), TIMEOUT)).ok
        assert await asyncio.wait_for(asking, TIMEOUT) == "no"
        pipe.close()
        evs = await asyncio.wait_for(viewer.until(final), TIMEOUT)
        assert [e.k for e in evs] == ["answer", "text", "status"]  # the text stream is ended
        assert evs[0].d == {"id": ask.d["id"], "value": "no", "by": "client"}


@pytest.mark.parametrize("cred", [None, "", "wrong"])
async def test_no_or_bad_credential_is_unauthorized(make_gw: Any, raw: Any, cred: Any) -> None:
    g = await make_gw(auth=_auth)
    g.pipe("locked").set_message("secret")
    hello = {} if cred is None else {"auth": cred}
    async with raw(g.url) as r:
        err = await r.hello("locked", **hello)
        assert isinstance(err, Error)
        assert (err.code, err.fatal) == ("unauthorized", True)
        code, frames = await r.closed()
        assert code == 4401 and frames == []


async def test_client_with_bad_credential_stops(make_gw: Any) -> None:
    g = await make_gw(auth=_auth)
    g.pipe("locked2")
    with pytest.raises(RemoteError) as info:
        await asyncio.wait_for(Client(g.url, "locked2", auth="nope").connect(), TIMEOUT)
    assert info.value.code == "unauthorized"
