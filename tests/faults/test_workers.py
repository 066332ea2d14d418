"""Agents anywhere: a Pipe straight to Redis from any process, and ``wirepipe worker``.

Gateways here run no app: the agent's process is a plain script or a
``wirepipe worker`` subprocess, and clients reach it only through a gateway
sharing the Redis.  Every wait is on an event or a process's output, with
the suite's TIMEOUT only as a failure guard.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from redis.asyncio import Redis
from servers import HERE, ROOT, PrivateRedis, free_port
from support import TIMEOUT, MakeGateway, OpenRaw, final, request

from gateway.runs import LAPSED_DETAIL
from gateway.stores.redis import RedisStore
from gateway.worker import open_pipe
from protocol import Event, ProtocolError, StoreUnavailable

pytestmark = pytest.mark.redis

SECRET = "workers-suite-secret"

SCRIPT = """
import sys
from gateway.worker import open_pipe_sync

with open_pipe_sync(sys.argv[1], "script-1") as pipe:
    pipe.set_message("hello from a plain script")
    answer = pipe.ask_sync("Go on?", ["yes", "no"])
    pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": f"answer {answer}"}})
print("script done:", answer, flush=True)
"""


async def test_a_plain_script_streams_and_asks_through_redis(
    private_redis: PrivateRedis, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """No WebSocket server in the agent's process: a gateway elsewhere serves its run."""
    gw = await make_gw(store=RedisStore(private_redis.url), secret=SECRET)
    env = {"PYTHONPATH": f"{ROOT}{':'}{HERE}", "PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, private_redis.url, stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        async with raw(gw.url) as r:
            welcome = await r.hello("script-1")  # waits for the run to appear
            assert welcome.t == "welcome"
            seen = await r.events(lambda e: e.k == "ask")
            texts = [e.d["delta"] for e in seen if e.k == "text"]
            if welcome.snapshot:
                texts += [t["text"] for t in welcome.snapshot["texts"]]
            assert "hello from a plain script" in texts
            ask = seen[-1]
            tail: list[Event] = []
            got = await request(r, {"t": "reply", "ask": ask.d["id"], "rid": "r1", "value": "yes"}, tail)
            assert (got.ok, got.err) == (True, None)  # handed to the script's process through Redis
            if not (tail and final(tail[-1])):
                tail += await r.events(final)
        assert tail[-1].d == {"state": "done"}
        assert any(e.k == "log" and e.d["msg"] == "answer yes" for e in tail)
        assert proc.stdout is not None
        out = await asyncio.wait_for(proc.stdout.read(), TIMEOUT)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        assert b"script done: yes" in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_open_pipe_refuses_a_sid_another_process_runs(private_redis: PrivateRedis) -> None:
    async with open_pipe(private_redis.url, "once") as first:
        first.set_message("running")
        with pytest.raises(ProtocolError) as err:
            async with open_pipe(private_redis.url, "once"):
                pass
        assert err.value.code == "sid_taken"
    async with open_pipe(private_redis.url, "once") as again:  # ended: a new run may start
        again.set_message("again")


async def test_open_pipe_ends_the_run_failed_on_an_exception(
    private_redis: PrivateRedis, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    gw = await make_gw(store=RedisStore(private_redis.url), secret=SECRET)
    with pytest.raises(RuntimeError):
        async with open_pipe(private_redis.url, "boom") as pipe:
            pipe.set_message("about to fail")
            raise RuntimeError("the agent broke")
    async with raw(gw.url) as r:
        welcome = await r.hello("boom")
    assert welcome.snapshot["status"] == {"state": "failed", "detail": "RuntimeError: the agent broke"}


async def test_a_worker_runs_a_start_that_a_gateway_without_apps_queued(
    private_redis: PrivateRedis, worker_process: Any, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    worker_process(private_redis.url)
    gw = await make_gw(store=RedisStore(private_redis.url), secret=SECRET)
    assert gw.apps == {}

    def apps() -> Any:
        with urllib.request.urlopen(gw.http_url + "apps", timeout=TIMEOUT) as resp:
            return json.load(resp)

    assert await asyncio.to_thread(apps) == {"apps": ["slow"]}  # what the worker runs
    async with raw(gw.url) as r:
        welcome = await r.hello("queued-1", start={"app": "slow", "input": {"n": 3}})
        assert welcome.t == "welcome"
        seen = await r.events(lambda e: e.k == "ask")
        assert [e.d["msg"] for e in seen if e.k == "log"] == ["line 1", "line 2", "line 3"]
        tail: list[Event] = []
        got = await request(r, {"t": "reply", "ask": "a1", "rid": "r1", "value": "yes"}, tail)
        assert (got.ok, got.err) == (True, None)
        if not (tail and final(tail[-1])):
            tail += await r.events(final)
    assert tail[-1].d == {"state": "done"}
    assert gw.runs.sessions == {}  # the gateway holds no agent state
    # The sid again: a new run (the starter is not handed the ended one's log).
    async with raw(gw.url) as r:
        again = await r.hello("queued-1", start={"app": "slow", "input": {"n": 1}})
        assert again.t == "welcome" and again.epoch != welcome.epoch
        seen = await r.events(lambda e: e.k == "ask")
        assert [e.d["msg"] for e in seen if e.k == "log"] == ["line 1"]
    # an app nobody runs: no_app
    async with raw(gw.url) as r:
        err = await r.hello("queued-2", start={"app": "nobody-runs-this", "input": None})
        assert (err.t, err.code) == ("error", "no_app")


async def test_a_live_sid_is_taken_for_a_queued_start(
    private_redis: PrivateRedis, worker_process: Any, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    worker_process(private_redis.url)
    gw = await make_gw(store=RedisStore(private_redis.url), secret=SECRET)
    async with raw(gw.url) as r:
        await r.hello("dup", start={"app": "slow", "input": {"n": 1}})
        await r.events(lambda e: e.k == "ask")
        async with raw(gw.url) as r2:
            err = await r2.hello("dup", start={"app": "slow", "input": {"n": 1}})
            assert (err.t, err.code) == ("error", "sid_taken")


async def test_a_killed_worker_s_run_ends_failed_for_its_clients(
    private_redis: PrivateRedis, worker_process: Any, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    worker = worker_process(private_redis.url, "--lease-ttl", "1")
    gw = await make_gw(store=RedisStore(private_redis.url, lease_ttl=1.0), secret=SECRET)
    async with raw(gw.url) as r:
        await r.hello("doomed", start={"app": "slow", "input": {"n": 2}})
        await r.events(lambda e: e.k == "ask")
        worker.kill()  # SIGKILL mid-ask: no final status, no lease release
        tail = await r.events(final)  # the gateway's janitor ends it once the lease lapses
    answer, status = tail[-2], tail[-1]
    assert (answer.k, answer.d["id"], answer.d["by"]) == ("answer", "a1", "closed")
    assert status.d == {"state": "failed", "detail": LAPSED_DETAIL}


async def test_a_start_taken_by_a_worker_that_died_is_claimed_by_another(
    private_redis: PrivateRedis, worker_process: Any, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """XAUTOCLAIM: an entry read and never acknowledged goes to another worker."""
    store = RedisStore(private_redis.url)
    gw = await make_gw(store=store, secret=SECRET)
    # What a worker does when it starts, done here by the worker that is about to die.
    await store.start_groups(["slow"])
    await store.advertise(["slow"], 60.0)
    await gw.runs.refresh_apps()
    async with raw(gw.url) as r:
        starting = asyncio.ensure_future(r.hello("orphan", start={"app": "slow", "input": {"n": 1}}))
        # The dying worker reads the start (a real consumer of the group) and never acknowledges it.
        client = Redis.from_url(private_redis.url)
        try:
            taken: Any = await client.xreadgroup(
                "workers", "dead-worker", {"wirepipe:{starts}:q:slow": ">"}, count=1, block=int(TIMEOUT * 1000)
            )
            assert taken and len(taken[0][1]) == 1
            survivor = worker_process(private_redis.url, "--claim-idle", "0.2")
            welcome = await asyncio.wait_for(starting, TIMEOUT)
            assert welcome.t == "welcome"
            await r.events(lambda e: e.k == "ask")  # the survivor runs it
            pending = await client.xpending("wirepipe:{starts}:q:slow", "workers")
            assert pending["pending"] == 0  # acknowledged by the survivor
            assert await client.xlen("wirepipe:{starts}:q:slow") == 0  # and deleted
        finally:
            await client.aclose()
        assert survivor.proc is not None


async def test_two_gateways_two_workers_a_gateway_killed_mid_run(
    private_redis: PrivateRedis, gateway_process: Any, worker_process: Any, raw: OpenRaw
) -> None:
    """The issue's scenario, every process separate: nothing lost, nothing twice, the run ends done."""
    for _ in range(2):
        worker_process(private_redis.url)
    a = gateway_process(free_port(), private_redis.url, SECRET, apps=False)
    b = gateway_process(free_port(), private_redis.url, SECRET, apps=False)
    async with raw(a.url) as ra:
        welcome = await ra.hello("big", start={"app": "slow", "input": {"n": 200}})
        seen = await ra.events(lambda e: e.seq >= 50)
    a.kill()  # SIGKILL the gateway the client was on
    async with raw(b.url) as rb:
        again = await rb.hello("big", resume=welcome.resume, epoch=welcome.epoch, after=seen[-1].seq)
        assert again.t == "welcome" and again.recovered is True and again.epoch == welcome.epoch
        rest = await rb.events(lambda e: e.k == "ask")
        got = await request(rb, {"t": "reply", "ask": "a1", "rid": "r1", "value": "yes"}, rest)
        assert (got.ok, got.err) == (True, None)
        if not final(rest[-1]):
            rest += await rb.events(final)
    seqs = [e.seq for e in seen + rest]
    assert seqs == list(range(1, seqs[-1] + 1))  # every seq exactly once, in order
    assert rest[-1].d == {"state": "done"}
    assert sum(1 for e in seen + rest if e.k == "log" and e.d["msg"].startswith("line ")) == 200


async def test_a_worker_whose_start_group_was_lost_makes_it_again(
    private_redis: PrivateRedis, worker_process: Any, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """Before: the NOGROUP error ended the worker's take loop silently; every start then waited forever."""
    worker_process(private_redis.url)
    gw = await make_gw(store=RedisStore(private_redis.url), secret=SECRET)
    client = Redis.from_url(private_redis.url)
    try:
        assert await client.delete("wirepipe:{starts}:q:slow") == 1  # the stream and its group, gone
    finally:
        await client.aclose()
    async with raw(gw.url) as r:
        welcome = await r.hello("regrouped", start={"app": "slow", "input": {"n": 1}})
        assert welcome.t == "welcome"
        await r.events(lambda e: e.k == "ask")


async def test_a_start_whose_reservation_lapsed_in_the_queue_still_runs(
    private_redis: PrivateRedis, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """Before: a start that waited longer than its reservation was dropped, and its client waited forever."""
    from gateway.worker import Worker

    store = RedisStore(private_redis.url)
    gw = await make_gw(store=store, secret=SECRET)
    await store.start_groups(["slow"])
    await store.advertise(["slow"], 60.0, "about-to-come")
    await gw.runs.start("late", "slow", {"n": 1})  # what a hello.start does: reserve, queue
    client = Redis.from_url(private_redis.url)
    try:
        assert await client.delete("wirepipe:{late}:lease") == 1  # the reservation lapses in the queue
    finally:
        await client.aclose()
    async with raw(gw.url) as r:
        waiting = asyncio.ensure_future(r.hello("late"))  # a client waits for the run
        async with Worker(private_redis.url, {"slow": _slow()}):
            welcome = await asyncio.wait_for(waiting, TIMEOUT)
            assert welcome.t == "welcome"
            await r.events(lambda e: e.k == "ask")


async def test_concurrency_bounds_the_runs_of_all_a_workers_apps_together(
    private_redis: PrivateRedis, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    """Before: one read took up to ``concurrency`` starts from each app's stream (3 apps: 3 at once)."""
    from gateway.worker import Worker

    running, peak, release = 0, 0, asyncio.Event()

    async def app(pipe: Any, value: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
        finally:
            running -= 1

    store = RedisStore(private_redis.url)
    gw = await make_gw(store=store, secret=SECRET)
    names = ["a", "b", "c"]
    await store.start_groups(names)
    await store.advertise(names, 60.0, "soon")
    for n in names:  # all three starts are queued before the worker reads
        await gw.runs.start(f"run-{n}", n, None)
    async with Worker(private_redis.url, {n: app for n in names}, concurrency=1) as worker:
        await asyncio.wait_for(worker.until(taken=1), TIMEOUT)
        release.set()
        await asyncio.wait_for(worker.until(taken=3, finished=3), TIMEOUT)
    assert peak == 1


async def test_a_stopping_worker_withdraws_its_apps(private_redis: PrivateRedis) -> None:
    from gateway.worker import Worker

    store = RedisStore(private_redis.url)
    try:
        async with Worker(private_redis.url, {"slow": _slow()}):
            assert await store.advertised() == ["slow"]
        assert await store.advertised() == []  # gateways say no_app at once, not after a lease TTL
    finally:
        await store.close()


async def test_a_cancel_interrupts_an_open_pipe_block_waiting_on_an_ask(
    private_redis: PrivateRedis, make_gw: MakeGateway, raw: OpenRaw
) -> None:
    gw = await make_gw(store=RedisStore(private_redis.url), secret=SECRET)

    async def agent() -> None:
        async with open_pipe(private_redis.url, "stoppable") as pipe:
            await pipe.ask("Go on?", ["yes", "no"])

    task = asyncio.ensure_future(agent())
    async with raw(gw.url) as r:
        await r.hello("stoppable")
        await r.events(lambda e: e.k == "ask")
        tail: list[Event] = []
        got = await request(r, {"t": "cancel", "rid": "c1", "reason": "enough"}, tail)
        assert (got.ok, got.err) == (True, None)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)
        if not (tail and final(tail[-1])):
            tail += await r.events(final)
    assert tail[-1].d == {"state": "cancelled", "detail": "enough"}


async def test_open_pipe_on_an_unreachable_redis_says_so_at_once() -> None:
    with pytest.raises(StoreUnavailable):
        async with open_pipe(f"redis://127.0.0.1:{free_port()}/0", "nowhere"):
            pass


def _slow() -> Any:
    from faultapps import slow

    return slow
