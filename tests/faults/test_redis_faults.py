"""Faults between the gateway and Redis, made for real: a proxy that cuts,
black-holes and drops a reply after Redis applied the command; a private
Redis killed and restarted with and without persistence, or not running at
all when the run starts.  In each, every client sees every stored event
exactly once, in order, and the run's end.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from faultproxy import FaultProxy
from servers import PrivateRedis
from support import TIMEOUT, final

from gateway import Gateway, RedisStore
from gateway.client import Client
from protocol import BacklogFull, Event, Welcome, decode_event

pytestmark = pytest.mark.redis


def log_event(i: int) -> dict[str, Any]:
    return {"k": "log", "d": {"level": "INFO", "msg": f"line {i}"}}


def check_once_in_order(evs: list[Event], first: int = 1) -> None:
    got = [e.seq for e in evs]
    assert got == list(range(first, first + len(got))), f"gap or duplicate: {got[:5]}...{got[-5:]}"


def seq_reached(n: int) -> Callable[[Event], bool]:
    return lambda e: e.seq >= n


async def stored_seqs(url: str, sid: str) -> list[int]:
    r = aioredis.Redis.from_url(url)
    try:
        entries = await r.xrange(f"wirepipe:{{{sid}}}:log")
        assert entries is not None
        seqs: list[int] = []
        for eid, _ in entries:
            assert isinstance(eid, bytes), eid
            seqs.append(int(eid.split(b"-")[0]))
        return seqs
    finally:
        await r.aclose()


# --- a lost reply ------------------------------------------------------------------------


async def test_a_lost_reply_after_redis_applied_the_append(
    proxied_redis: tuple[PrivateRedis, FaultProxy],
) -> None:
    """The link dies right after Redis applied an append: the retry stores nothing twice.

    Before: the retry got "does not follow", the flush task died, and the log
    stopped where the fault hit (the final status never stored).
    """
    redis_server, proxy = proxied_redis
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0")
    async with Gateway(port=0, store=store) as gw:
        pipe = gw.pipe("lost-reply")
        async with Client(gw.url, "lost-reply") as c:
            for i in range(1, 301):
                pipe.set_message(log_event(i))
            await pipe.drained()
            proxy.drop_reply_after(store._append.sha.encode())  # the next append's reply is lost
            for i in range(301, 601):
                pipe.set_message(log_event(i))
            await asyncio.wait_for(proxy.dropped.wait(), TIMEOUT)
            pipe.close()
            evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    check_once_in_order(evs)
    assert len(evs) == 601 and evs[-1].d["state"] == "done"
    assert c.resets == [] and c.duplicates == c.gaps == 0  # on the wire too, not only after dedup
    assert await stored_seqs(redis_server.url, "lost-reply") == list(range(1, 602))


async def test_connections_cut_again_and_again(proxied_redis: tuple[PrivateRedis, FaultProxy]) -> None:
    """Every Redis connection (commands and pub/sub) is reset five times during a run."""
    redis_server, proxy = proxied_redis
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0")
    async with Gateway(port=0, store=store) as gw:
        pipe = gw.pipe("cuts")
        async with Client(gw.url, "cuts") as c:
            n = 0
            for _ in range(5):
                for _ in range(200):
                    n += 1
                    pipe.set_message(log_event(n))
                await asyncio.wait_for(c.until(seq_reached(n)), TIMEOUT)
                assert proxy.cut() > 0
            pipe.close()
            rest = await asyncio.wait_for(c.until(final), TIMEOUT)
    assert rest[-1].seq == 1001 and c.duplicates == c.gaps == 0
    assert await stored_seqs(redis_server.url, "cuts") == list(range(1, 1002))


async def test_close_ends_within_its_timeout_while_redis_hangs(
    proxied_redis: tuple[PrivateRedis, FaultProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A black-holed Redis (packets vanish, nothing is reset): close() still returns."""
    _, proxy = proxied_redis
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", command_timeout=1.0)
    gw = Gateway(port=0, store=store, drain_timeout=0.5)
    await gw.start()
    pipe = gw.pipe("black-hole")
    pipe.set_message(log_event(1))
    await pipe.drained()
    proxy.flowing.clear()  # from now on, Redis never answers
    for i in range(2, 50):
        pipe.set_message(log_event(i))
    with caplog.at_level(logging.ERROR, logger="wirepipe"):
        await asyncio.wait_for(gw.close(), TIMEOUT)
    assert any("events not stored" in r.getMessage() for r in caplog.records)


# --- Redis restarted -------------------------------------------------------------------------


async def test_redis_restarted_without_persistence(private_redis: PrivateRedis) -> None:
    """The log vanishes with Redis: the run goes on under a new epoch that keeps its state.

    Before: the append failed with KeyError, the flush task died, clients got
    no_session/4404 (stop retrying), and close() hung.
    """
    store = RedisStore(private_redis.url)
    async with Gateway(port=0, store=store) as gw:
        pipe = gw.pipe("amnesia")
        plan = {"goal": "g", "tasks": [{"id": "1", "instruction": "x", "status": "running"}], "current": "1"}
        async with Client(gw.url, "amnesia", backoff=(0.01, 0.2)) as c:
            pipe.set_message({"k": "plan", "d": plan})
            for i in range(2, 101):
                pipe.set_message(log_event(i))
            before = await asyncio.wait_for(c.until(lambda e: e.seq == 100), TIMEOUT)
            first_epoch = c.epoch
            private_redis.restart()  # SIGKILL, then a fresh, empty server on the same port
            for i in range(101, 201):
                pipe.set_message(log_event(i))  # the agent never notices
            pipe.close()
            after = await asyncio.wait_for(c.until(final), TIMEOUT)
    check_once_in_order(before)
    check_once_in_order(after, first=101)
    assert after[-1].seq == 201 and after[-1].d["state"] == "done"
    assert c.duplicates == c.gaps == 0
    assert len(c.resets) == 1 and c.epoch != first_epoch
    reset: Welcome = c.resets[0]
    assert reset.recovered is False and reset.first == 101
    assert reset.snapshot is not None and reset.snapshot["plan"]["goal"] == "g"  # the state survived


async def test_a_quiet_run_gets_its_lost_log_back(private_redis: PrivateRedis) -> None:
    """Redis restarts while the agent waits on an ask: a client's hello brings the log back."""
    store = RedisStore(private_redis.url)
    async with Gateway(port=0, store=store) as gw:
        pipe = gw.pipe("quiet")
        asked = asyncio.ensure_future(pipe.ask("ship?", ["yes", "no"]))
        await pipe.drained()
        private_redis.restart()
        async with Client(gw.url, "quiet", backoff=(0.01, 0.2)) as c:
            assert c.welcome is not None and c.welcome.snapshot is not None
            assert [a["id"] for a in c.welcome.snapshot["asks"]] == ["a1"]  # the open ask survived
            r = await c.reply("a1", "yes")
            assert r.ok
            assert await asyncio.wait_for(asked, TIMEOUT) == "yes"
            pipe.close()
            evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    assert [e.k for e in evs][-2:] == ["answer", "status"]


async def test_redis_restarted_with_persistence(persistent_redis: PrivateRedis) -> None:
    """With an append-only file, nothing is lost: clients resume in the same epoch."""
    store = RedisStore(persistent_redis.url)
    async with Gateway(port=0, store=store) as gw:
        pipe = gw.pipe("durable")
        async with Client(gw.url, "durable", backoff=(0.01, 0.2)) as c:
            for i in range(1, 101):
                pipe.set_message(log_event(i))
            await asyncio.wait_for(c.until(lambda e: e.seq == 100), TIMEOUT)
            persistent_redis.restart()
            for i in range(101, 201):
                pipe.set_message(log_event(i))
            pipe.close()
            evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    check_once_in_order(evs, first=101)
    assert evs[-1].seq == 201 and c.resets == [] and c.duplicates == c.gaps == 0
    assert await stored_seqs(persistent_redis.url, "durable") == list(range(1, 202))


# --- Redis down when the run starts -------------------------------------------------------------


async def test_a_run_started_while_redis_is_down(stopped_redis: PrivateRedis, raw: Any) -> None:
    """The log cannot be created yet: clients get a retryable code, then the whole run.

    Without leases the app runs at once and its events wait in the backlog;
    with leases (the default) it starts once Redis answers and the sid is its.
    """
    store = RedisStore(stopped_redis.url, command_timeout=2.0, lease_ttl=None)
    started = threading.Event()

    async def app(pipe: Any, value: Any) -> None:
        for i in range(1, 51):
            pipe.set_message(log_event(i))
        started.set()
        await pipe.ask("done?", ["yes"])

    async with Gateway(port=0, store=store, apps={"app": app}) as gw:
        async with raw(gw.url) as r:
            await r.send({"t": "hello", "sid": "late", "start": {"app": "app"}})
            code, frames = await r.closed()
        assert code == 1013, frames  # retry later: not 1011 internal, not 4404 stop
        assert [f.code for f in frames if f.t == "error"] == ["unavailable"]
        await asyncio.to_thread(started.wait)
        stopped_redis.start()
        async with Client(gw.url, "late", backoff=(0.01, 0.2)) as c:
            evs = await asyncio.wait_for(c.until(lambda e: e.k == "ask"), TIMEOUT)
            assert (await c.reply("a1", "yes")).ok
            evs += await asyncio.wait_for(c.until(final), TIMEOUT)
    check_once_in_order(evs)
    assert [e.d.get("msg") for e in evs if e.k == "log"] == [f"line {i}" for i in range(1, 51)]
    assert evs[-1].d["state"] == "done" and c.duplicates == c.gaps == 0


async def test_a_run_started_while_redis_is_down_with_leases(stopped_redis: PrivateRedis, raw: Any) -> None:
    """With leases (the default) the app starts once Redis answers and the sid is claimed."""
    store = RedisStore(stopped_redis.url, command_timeout=2.0)
    calls: list[str] = []

    async def app(pipe: Any, value: Any) -> None:
        calls.append("started")
        for i in range(1, 51):
            pipe.set_message(log_event(i))
        await pipe.ask("done?", ["yes"])

    async with Gateway(port=0, store=store, apps={"app": app}) as gw:
        async with raw(gw.url) as r:
            await r.send({"t": "hello", "sid": "late-leased", "start": {"app": "app"}})
            code, frames = await r.closed()
        assert code == 1013, frames
        assert [f.code for f in frames if f.t == "error"] == ["unavailable"]
        assert calls == []  # nothing ran on a sid that may be another node's
        stopped_redis.start()
        async with Client(gw.url, "late-leased", backoff=(0.01, 0.2)) as c:
            evs = await asyncio.wait_for(c.until(lambda e: e.k == "ask"), TIMEOUT)
            assert (await c.reply("a1", "yes")).ok
            evs += await asyncio.wait_for(c.until(final), TIMEOUT)
    check_once_in_order(evs)
    assert calls == ["started"]
    assert [e.d.get("msg") for e in evs if e.k == "log"] == [f"line {i}" for i in range(1, 51)]
    assert evs[-1].d["state"] == "done" and c.duplicates == c.gaps == 0


async def test_a_full_backlog_refuses_writes_but_always_takes_the_end(stopped_redis: PrivateRedis) -> None:
    """Redis is down, so the writer holds everything: the backlog fills, then refuses."""
    store = RedisStore(stopped_redis.url, command_timeout=2.0)
    async with Gateway(port=0, store=store, backlog_events=50, backlog_bytes=1 << 30) as gw:
        pipe = gw.pipe("full-backlog")
        for i in range(50):
            pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": str(i)}})
        with pytest.raises(BacklogFull):
            pipe.set_message("one too many")
        assert pipe.head == 50
        pipe.close("failed", detail="gave up")  # the end always fits
        stopped_redis.start()
        await asyncio.wait_for(pipe.drained(), TIMEOUT)
        raws = await store.read("full-backlog", 0, limit=100)
        # the refused delta is not there; its stream's end and the status are
        assert [decode_event(r).k for r in raws] == ["log"] * 50 + ["text", "status"]
        info = await store.info("full-backlog")
        assert info is not None and info.ended


async def test_a_full_redis_holds_the_run_until_it_has_room(small_redis: PrivateRedis) -> None:
    """OOM is an operator's problem to fix, not a bug: the writer waits, then stores it all."""
    store = RedisStore(small_redis.url)
    async with Gateway(port=0, store=store) as gw:
        pipe = gw.pipe("full")
        async with Client(gw.url, "full") as c:
            for i in range(1, 4001):
                pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": f"{i:06d}" + "x" * 1000}})
            await asyncio.wait_for(pipe._s.troubled.wait(), TIMEOUT)  # Redis said OOM
            assert "OutOfMemoryError" in (pipe._s.trouble or "")
            r = aioredis.Redis.from_url(small_redis.url)
            try:
                await r.config_set("maxmemory", 0)  # the operator gives it room
            finally:
                await r.aclose()
            pipe.close()
            evs = await asyncio.wait_for(c.until(final), TIMEOUT)
    check_once_in_order(evs)
    assert evs[-1].seq == 4001 and evs[-1].d["state"] == "done"
    assert c.duplicates == 0 and c.resets == []
