"""Scheme 1 of docs/metagpt.md, the queue relay: the agent in a thread, a client consuming.

    ./run python examples/queue_relay.py                    # offline: the scripted LLM
    ./run python examples/queue_relay.py --llm config       # the LLM of your config2.yaml

The pattern: the agent runs in a thread (``asyncio.run`` there,
as MetaGPT's examples/stream_output_via_api.py does), producing into a
thread-safe queue; a consumer yields from it.  Here the queue is the pipe
(``set_message`` is thread-safe and gives every event one gap-free seq) and
the consumer is a WebSocket client; the gateway's loop never waits for the
agent.  ``gateway.integrations.metagpt.run_in_thread`` packages the same thing, with
cancellation carried into the thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading

from gateway import Gateway
from gateway.client import Client
from gateway.integrations.metagpt import attach, new_executor, prepare
from gateway.integrations.metagpt.offline_llm import use
from protocol import is_final


def agent_thread(pipe, loop: asyncio.AbstractEventLoop, idea: str, offline: bool, delay: float) -> None:
    """The producer: a DataInterpreter run on this thread's own event loop."""

    async def agent() -> None:
        from metagpt.roles.di.data_interpreter import DataInterpreter

        # loop=: the pipe's loop, where asks would be answered (none here: auto_run).
        async with attach(pipe, loop=loop):
            with use(delay=delay) if offline else contextlib.nullcontext():
                di = DataInterpreter(auto_run=True, execute_code=new_executor())
                await di.run(idea)

    try:
        asyncio.run(agent())
    except Exception as exc:
        pipe.close("failed", f"{type(exc).__name__}: {exc}")
    else:
        pipe.close("done")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idea", default="Count the words of this sentence and report the top one")
    ap.add_argument("--llm", choices=("offline", "config"), default="offline")
    ap.add_argument("--delay", type=float, default=0.005, help="offline LLM: seconds per token")
    args = ap.parse_args()
    await asyncio.to_thread(prepare)  # MetaGPT's first import takes seconds

    seqs: list[int] = []
    kinds: dict[str, int] = {}
    state = "?"
    async with Gateway(host="127.0.0.1", port=0) as gw:
        pipe = gw.pipe("queue-relay")
        producer = threading.Thread(
            target=agent_thread,
            args=(pipe, asyncio.get_running_loop(), args.idea, args.llm == "offline", args.delay),
            name="metagpt-agent",
        )
        producer.start()
        async with Client(gw.url, "queue-relay") as client:
            async for ev in client:  # the consumer: `yield queue.get()` of the pattern
                seqs.append(ev.seq)
                kinds[ev.k] = kinds.get(ev.k, 0) + 1
                if ev.k == "code":
                    print(f"--- code {ev.d['id']} (task {ev.d.get('task')})\n{ev.d['source']}")
                elif ev.k == "output":
                    print(f"[{ev.d['stream']}] {ev.d['text'].rstrip()}")
                elif ev.k == "task":
                    print(f"task {ev.d['id']}: {ev.d['status']}")
                elif is_final(ev.k, ev.d):
                    state = ev.d["state"]
                    break
        await asyncio.to_thread(producer.join)
    gap_free = seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False
    print(f"queue_relay: {len(seqs)} events, gap-free {gap_free}, kinds {sorted(kinds)}, status {state}")
    return 0 if state == "done" and gap_free else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
