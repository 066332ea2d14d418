"""A gateway process killed and restarted, and one told to stop while Redis hangs.

The gateways are real ``wirepipe serve`` processes on loopback, sharing a
private Redis (through the fault proxy for the hang).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from faultproxy import FaultProxy
from servers import PrivateRedis, free_port
from support import TIMEOUT

pytestmark = pytest.mark.redis

SECRET = "fault-suite-secret"


async def test_a_killed_gateway_restarted_resumes_every_client(
    private_redis: PrivateRedis, gateway_process: Any, raw: Any
) -> None:
    """SIGKILL mid-run: a client comes back to the restarted gateway with its token
    and gets exactly what it had not seen of what was stored, in the same epoch."""
    port = free_port()
    gw = gateway_process(port, private_redis.url, SECRET)
    async with raw(gw.url) as r:
        welcome = await r.hello("killed", start={"app": "slow", "input": {"n": 200}})
        seen = await r.events(lambda e: e.seq >= 120)
    gw.kill()  # no shutdown frame, no final flush
    gw2 = gateway_process(port, private_redis.url, SECRET)
    async with raw(gw2.url) as r:
        back = await r.hello("killed", resume=welcome.resume, epoch=welcome.epoch, after=seen[-1].seq)
        assert back.t == "welcome" and back.recovered is True and back.epoch == welcome.epoch
        rest = await r.events(lambda e: e.seq >= back.head) if back.head > seen[-1].seq else []
    got = [e.seq for e in seen + rest]
    assert got == list(range(1, back.head + 1)), "a gap or a duplicate across the restart"
    assert back.head >= 201  # running + 200 lines were drained before the ask
    assert rest[-1].k == "ask"


async def test_sigterm_exits_while_redis_never_answers(
    private_redis: PrivateRedis, gateway_process: Any, raw: Any
) -> None:
    """Before: a session that could not drain made close() wait forever, so SIGTERM did nothing."""
    async with FaultProxy(private_redis.port) as proxy:
        gw = gateway_process(free_port(), f"redis://127.0.0.1:{proxy.port}/0", SECRET, "--drain-timeout", "1")
        async with raw(gw.url) as r:
            await r.hello("hang", start={"app": "slow", "input": {"n": 5}})
            await r.events(lambda e: e.k == "ask")
            proxy.flowing.clear()  # Redis is still there, but nothing comes back any more
            await r.send({"t": "reply", "ask": "a1", "rid": "x", "value": "yes"})  # more to store
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(asyncio.to_thread(gw.proc.wait), TIMEOUT)
        assert code == 0
        out = gw.rest_of_output()
        assert "shutting down" in out
        proxy.flowing.set()
