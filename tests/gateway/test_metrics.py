"""``/metrics`` scraped over HTTP from a real gateway and parsed by ``prometheus_client``'s parser.

Each test runs real clients against a gateway on loopback, then checks
what the scrape says against what the clients saw: every count here can
be wrong.  The metrics, their types and labels: docs/metrics.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import REDIS_SERVER, PrivateRedis
from support import TIMEOUT, MakeGateway, OpenRaw, final, missing, scrape
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from gateway import Gateway, RedisStore
from gateway.client import Client
from gateway.metrics import LAG_EVERY
from protocol import SUBPROTOCOL, Event


def log_event(i: int) -> dict[str, Any]:
    return {"k": "log", "d": {"level": "INFO", "msg": f"line {i}"}}


def seq_reached(n: int) -> Callable[[Event], bool]:
    return lambda e: e.seq >= n


async def test_a_run_as_scraped(gw: Gateway) -> None:
    """Events appended and delivered, an ask answered, the lag sampled, connections back to 0."""
    m = await scrape(gw)
    assert m.value("wirepipe_connections_open", front="ws") == 0
    assert m.value("wirepipe_events_sent_total", front="ws") == 0
    pipe = gw.pipe("m1")
    evs: list[Event] = []
    async with Client(gw.url, "m1") as c:
        for i in range(1, 41):
            pipe.set_message(log_event(i))
            if i % LAG_EVERY == 0:  # caught up: no frame holds two sampled events (seq 1, 17, 33)
                evs += await asyncio.wait_for(c.until(seq_reached(i)), TIMEOUT)
        asker = asyncio.ensure_future(pipe.ask("go on?", ["yes", "no"]))
        evs += await asyncio.wait_for(c.until(lambda e: e.k == "ask"), TIMEOUT)
        assert (await c.reply(evs[-1].d["id"], "yes")).ok
        assert await asyncio.wait_for(asker, TIMEOUT) == "yes"
        pipe.close()
        evs += await asyncio.wait_for(c.until(final), TIMEOUT)
        await asyncio.wait_for(pipe.drained(), TIMEOUT)
        m = await scrape(gw)
        assert m.value("wirepipe_connections_open", front="ws") == 1
    await asyncio.wait_for(gw.wait_connections(lambda n: n == 0), TIMEOUT)

    m = await scrape(gw)
    head = evs[-1].seq
    assert [e.seq for e in evs] == list(range(1, head + 1)) and head == 43  # 40 logs, ask, answer, status
    assert m.value("wirepipe_connections_open", front="ws") == 0
    assert m.value("wirepipe_connections_total", front="ws") == 1
    assert m.value("wirepipe_events_sent_total", front="ws") == len(evs)  # what the client received
    assert m.value("wirepipe_events_appended_total") == head
    # one in LAG_EVERY events is timed (seqs 1, 17, 33), here each in a frame of its own
    marked = len(range(1, head + 1, LAG_EVERY))
    assert m.value("wirepipe_delivery_lag_seconds_count", front="ws") == marked == 3
    assert m.value("wirepipe_delivery_lag_seconds_bucket", front="ws", le="+Inf") == marked
    assert m.value("wirepipe_delivery_lag_seconds_sum", front="ws") >= 0
    assert m.value("wirepipe_asks_opened_total") == 1
    assert m.value("wirepipe_asks_settled_total", outcome="answered") == 1
    assert m.value("wirepipe_asks_settled_total", outcome="expired") == 0
    assert m.value("wirepipe_asks_settled_total", outcome="closed") == 0
    assert m.value("wirepipe_asks_open") == 0
    assert m.value("wirepipe_ask_answer_seconds_count") == 1
    assert m.value("wirepipe_sessions", state="ended") == 1
    assert m.value("wirepipe_sessions", state="running") == 0
    assert m.value("wirepipe_replays_total", front="ws", recovered="true") == 0
    assert m.value("wirepipe_store_errors_total") == 0

    # A page that opens the run now reads its history: sent, but not lag.
    async with Client(gw.url, "m1") as page:
        assert [e.seq for e in await asyncio.wait_for(page.until(final), TIMEOUT)] == list(range(1, head + 1))
    m = await scrape(gw)
    assert m.value("wirepipe_events_sent_total", front="ws") == 2 * head
    assert m.value("wirepipe_delivery_lag_seconds_count", front="ws") == marked
    assert m.value("wirepipe_store_retries_total", kind="transient") == 0
    assert not [s for s in m.samples if s.name == "wirepipe_errors_total"]  # no error frame was sent


async def test_replays_recovered_and_not(gw: Gateway, raw: OpenRaw) -> None:
    pipe = gw.pipe("rp")
    for i in range(10):
        pipe.set_message(log_event(i))
    await asyncio.wait_for(pipe.drained(), TIMEOUT)
    async with raw(gw.url) as r:
        w = await r.hello("rp")
        await r.events(lambda e: e.seq == 10)
    for i in range(10, 15):
        pipe.set_message(log_event(i))
    await asyncio.wait_for(pipe.drained(), TIMEOUT)
    async with raw(gw.url) as r:  # resumes after 10: five events to replay
        assert (await r.hello("rp", resume=w.resume, epoch=w.epoch, after=10)).recovered is True
        assert [e.seq for e in await r.events(lambda e: e.seq == 15)] == [11, 12, 13, 14, 15]
    async with raw(gw.url) as r:  # another epoch: a snapshot instead, then every event from first
        assert (await r.hello("rp", resume=w.resume, epoch="another-epoch", after=3)).recovered is False
        assert len(await r.events(lambda e: e.seq == 15)) == 15
    m = await scrape(gw)
    assert m.value("wirepipe_replays_total", front="ws", recovered="true") == 1
    assert m.value("wirepipe_replays_total", front="ws", recovered="false") == 1
    assert m.value("wirepipe_replay_events_count", front="ws") == 1  # the recovered one's size
    assert m.value("wirepipe_replay_events_sum", front="ws") == 5
    assert m.value("wirepipe_replay_events_bucket", front="ws", le="1.0") == 0
    assert m.value("wirepipe_replay_events_bucket", front="ws", le="10.0") == 1
    assert m.value("wirepipe_events_sent_total", front="ws") == 10 + 5 + 15  # what the three clients read


async def test_asks_that_expire_and_that_close(make_gw: MakeGateway, raw: OpenRaw) -> None:
    gw = await make_gw()
    pipe = gw.pipe("asks")
    assert await asyncio.wait_for(pipe.ask("quick?", default="no", timeout=0.01), TIMEOUT) == "no"
    never = asyncio.ensure_future(pipe.ask("never answered"))
    async with raw(gw.url) as r:
        await r.hello("asks")
        await r.events(lambda e: e.k == "ask" and e.d["prompt"] == "never answered")
        m = await scrape(gw)
        assert m.value("wirepipe_asks_open") == 1
        pipe.close()  # closes the open ask
        await r.events(final)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(never, TIMEOUT)
    m = await scrape(gw)
    assert m.value("wirepipe_asks_opened_total") == 2
    assert m.value("wirepipe_asks_settled_total", outcome="expired") == 1
    assert m.value("wirepipe_asks_settled_total", outcome="closed") == 1
    assert m.value("wirepipe_asks_settled_total", outcome="answered") == 0
    assert m.value("wirepipe_ask_answer_seconds_count") == 0  # only answers by a client are timed
    assert m.value("wirepipe_asks_open") == 0


async def test_rate_limit_and_capacity_refusals(make_gw: MakeGateway, raw: OpenRaw) -> None:
    # two frames, then one token per 1000 s: the third frame is refused (not fatal)
    gw = await make_gw(rate=0.001, burst=2.0, max_connections=1)
    gw.pipe("rl").set_message("x")
    async with raw(gw.url) as r:
        await r.hello("rl")
        for n in range(3):
            await r.send({"t": "ping", "n": n})
        frames = await r.collect(lambda fs: any(f.t == "error" for f in fs))
        assert [f.code for f in frames if f.t == "error"] == ["rate_limited"]
        with pytest.raises(InvalidStatus) as refused:  # the one connection allowed is taken
            async with connect(gw.url, subprotocols=[Subprotocol(SUBPROTOCOL)]):
                pass
        assert refused.value.response.status_code == 503
    await asyncio.wait_for(gw.wait_connections(lambda n: n == 0), TIMEOUT)
    m = await scrape(gw)
    assert m.value("wirepipe_rate_limited_total", front="ws") == 1
    assert m.value("wirepipe_errors_total", front="ws", code="rate_limited") == 1
    assert m.value("wirepipe_connections_refused_total", front="ws", reason="capacity") == 1
    assert m.value("wirepipe_connections_refused_total", front="ws", reason="forbidden") == 0
    assert m.value("wirepipe_connections_total", front="ws") == 1  # the refused one was never served
    assert m.value("wirepipe_connections_open", front="ws") == 0


async def test_gateways_in_one_process_do_not_share_metrics(make_gw: MakeGateway, raw: OpenRaw) -> None:
    a, b = await make_gw(), await make_gw()
    a.pipe("one").set_message("x")
    async with raw(a.url) as r:
        await r.hello("one")
        await r.events(lambda e: e.seq == 1)
    assert (await scrape(a)).value("wirepipe_events_sent_total", front="ws") == 1
    assert (await scrape(b)).value("wirepipe_events_sent_total", front="ws") == 0
    assert (await scrape(b)).value("wirepipe_sessions", state="running") == 0


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis that is not running yet: the test starts it."""
    if REDIS_SERVER is None:
        missing("redis-server is not installed", "apt-get install redis-server, or scripts/bootstrap.sh --redis")
    r = PrivateRedis(tmp_path)
    yield r
    r.kill()


@pytest.mark.redis
async def test_store_errors_and_retries(stopped_redis: PrivateRedis) -> None:
    """Redis is down when the run starts: the writer's failed calls and retries are counted."""
    store = RedisStore(stopped_redis.url, command_timeout=2.0, lease_ttl=None)
    async with Gateway(port=0, store=store) as gw:
        pipe = gw.pipe("down")
        await asyncio.wait_for(gw.runs.sessions["down"].troubled.wait(), TIMEOUT)  # a store call failed
        m = await scrape(gw)
        assert m.value("wirepipe_sessions", state="starting") == 1  # its log cannot be created yet
        assert m.value("wirepipe_store_retries_total", kind="transient") >= 1
        assert m.value("wirepipe_store_errors_total") >= 1
        stopped_redis.start()
        pipe.set_message(log_event(1))
        pipe.close()
        await asyncio.wait_for(pipe.drained(), TIMEOUT)
        m = await scrape(gw)
    retries = m.value("wirepipe_store_retries_total", kind="transient")
    assert m.value("wirepipe_store_errors_total") >= retries >= 1  # each retry follows a failed call
    assert m.value("wirepipe_store_retries_total", kind="other") == 0
    assert m.value("wirepipe_events_appended_total") == 2
    assert m.value("wirepipe_sessions", state="ended") == 1


async def test_every_metric_is_documented(make_gw: MakeGateway) -> None:
    gw = await make_gw()
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    m = await scrape(gw)
    for family in m.families.values():
        row = f"| `{family.name}{'_total' if family.type == 'counter' else ''}` | {family.type} |"
        assert row in doc, f"docs/metrics.md has no row for {family.name} ({family.type})"
