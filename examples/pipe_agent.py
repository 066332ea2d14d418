"""Scheme 3 of docs/metagpt.md, the event pipe: ``DataInterpreter(stream_pipe=pipe)``.

    ./run python examples/pipe_agent.py                     # offline: the scripted LLM
    ./run python examples/pipe_agent.py --llm config        # the LLM of your config2.yaml

The role is handed the pipe (the third scheme of docs/metagpt.md).  MetaGPT 0.8.2 accepts
``stream_pipe=`` and ignores it; after ``gateway.integrations.metagpt.install()`` a role
given a pipe reports its whole run to it (tokens, logs, plan, tasks, code,
output, messages), routed by a ContextVar so that concurrent runs never mix.
The pipe is two-way: here the client sends the idea (``send``) and the agent
reads it with ``get_message``, MetaGPT's ``StreamPipe`` interface.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from gateway import Gateway
from gateway.client import Client
from gateway.integrations.metagpt import install, new_executor, prepare
from gateway.integrations.metagpt.offline_llm import use
from protocol import is_final


async def agent(pipe, offline: bool, delay: float) -> None:
    from metagpt.roles.di.data_interpreter import DataInterpreter

    data = await pipe.aget_message(timeout=60)  # the client's `send`
    idea = data["idea"] if isinstance(data, dict) else str(data)
    with use(delay=delay) if offline else contextlib.nullcontext():
        di = DataInterpreter(stream_pipe=pipe, auto_run=True, execute_code=new_executor())
        await di.run(idea)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idea", default="Count the words of this sentence and report the top one")
    ap.add_argument("--llm", choices=("offline", "config"), default="offline")
    ap.add_argument("--delay", type=float, default=0.005, help="offline LLM: seconds per token")
    args = ap.parse_args()
    await asyncio.to_thread(prepare)  # MetaGPT's first import takes seconds
    install()  # the hooks that make `stream_pipe=` work

    state, tasks = "?", {}
    async with Gateway(host="127.0.0.1", port=0) as gw:
        pipe = gw.pipe("pipe-agent")
        print(f"a frame on the wire: {pipe.msg2stream('hello', format='frame')!r}")

        async def run_agent() -> None:
            async with pipe:  # ends the run: done, failed or cancelled
                await agent(pipe, args.llm == "offline", args.delay)

        run = asyncio.create_task(run_agent())
        async with Client(gw.url, "pipe-agent") as client:
            await client.send({"idea": args.idea})
            async for ev in client:
                if ev.k == "plan":
                    print(f"plan for {ev.d['goal']!r}:")
                    for t in ev.d["tasks"]:
                        print(f"  {t['id']}. {t['instruction']} [{t['status']}]")
                elif ev.k == "task":
                    tasks[ev.d["id"]] = ev.d["status"]
                    print(f"task {ev.d['id']}: {ev.d['status']}")
                elif ev.k == "output":
                    print(f"[{ev.d['stream']}] {ev.d['text'].rstrip()}")
                elif is_final(ev.k, ev.d):
                    state = ev.d["state"]
                    break
        await asyncio.gather(run, return_exceptions=True)
    print(f"pipe_agent: tasks {tasks}, status {state}")
    return 0 if state == "done" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
