"""A gateway restarted without its secret (``./run demo``, ``wirepipe serve`` with no ``--secret``).

The new process has a new secret, so every resume token of the old one is
refused (``bad_token``).  A client must not stop for good on that: it drops the
token, says hello again, waits for a run of its sid and follows it from a reset.
Real gateways on one loopback port, one after the other, in this process.
"""

from __future__ import annotations

import asyncio
from typing import Any

from servers import free_port
from support import TIMEOUT

from gateway import Gateway, MemoryStore
from gateway.client import Client, CloseInfo
from protocol import is_final


async def test_a_client_of_a_gateway_restarted_with_another_secret_follows_the_new_run() -> None:
    port = free_port()
    closes: list[CloseInfo] = []
    resets: list[Any] = []
    first = Gateway(port=port, store=MemoryStore(), secret="before")
    await first.start()
    try:
        pipe = first.pipe("again")
        pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": "before the restart"}})
        async with Client(first.url, "again", on_close=closes.append, on_reset=resets.append) as c:
            seen = await asyncio.wait_for(c.until(lambda e: e.seq == 1), TIMEOUT)
            assert seen[-1].d["msg"] == "before the restart"
            await first.close()  # shutdown: the client is told, and retries
            async with Gateway(port=port, store=MemoryStore(), secret="after") as second:
                # its token is the old gateway's: bad_token, then a hello without it, which waits for a run
                await asyncio.wait_for(second.wait_connections(lambda n: n == 1), TIMEOUT)
                pipe2 = second.pipe("again")
                pipe2.set_message({"k": "log", "d": {"level": "INFO", "msg": "after the restart"}})
                pipe2.close()
                rest = await asyncio.wait_for(c.until(lambda e: is_final(e.k, e.d)), TIMEOUT)
        assert [e.d.get("msg") for e in rest if e.k == "log"] == ["after the restart"]
        assert rest[-1].d == {"state": "done"}
        assert resets and resets[-1].epoch == pipe2.epoch  # a reset onto the new run
        assert any(ci.code == 4401 for ci in closes), closes  # the old token was refused, and the client went on
    finally:
        await first.close()
