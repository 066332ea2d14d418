"""Scheme 2 of docs/metagpt.md, log redirection: MetaGPT's LLM stream and log, on the web.

    ./run python examples/log_redirect.py                   # offline: the scripted LLM
    ./run python examples/log_redirect.py --level DEBUG     # more log lines
    ./run python examples/log_redirect.py --llm config      # the LLM of your config2.yaml

MetaGPT has ONE process-wide LLM-stream function (``set_llm_stream_logfunc``)
and logs through loguru.  ``attach`` redirects both, for the run inside it
only: every LLM call becomes its own ``text`` stream (ended with ``end``),
every loguru record at or above ``log_level`` a ``log`` event.  Here a
one-action role writes a draft while a client prints what arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from gateway import Gateway
from gateway.client import Client
from gateway.integrations.metagpt import attach, prepare
from gateway.integrations.metagpt.offline_llm import use
from protocol import is_final


async def agent(pipe, idea: str, level: str, offline: bool) -> None:
    from metagpt.actions import Action
    from metagpt.roles import Role

    class WriteDraft(Action):
        name: str = "WriteDraft"

        async def run(self, history) -> str:
            return await self._aask(
                f"## Draft request\nIdea: {idea}\nWrite a short draft (three sentences at most) for the idea."
            )

    class Writer(Role):
        name: str = "Ada"
        profile: str = "Writer"

        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.set_actions([WriteDraft])

    async with attach(pipe, log_level=level):
        with use(delay=0.01) if offline else contextlib.nullcontext():
            await Writer().run(idea)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idea", default="a launch plan for a tiny library")
    ap.add_argument("--level", default="INFO", help="lowest loguru level sent (default INFO)")
    ap.add_argument("--llm", choices=("offline", "config"), default="offline")
    args = ap.parse_args()
    await asyncio.to_thread(prepare)  # MetaGPT's first import takes seconds

    texts: dict[str, str] = {}
    logs, state = 0, "?"
    async with Gateway(host="127.0.0.1", port=0) as gw:
        pipe = gw.pipe("log-redirect")

        async def run_agent() -> None:
            async with pipe:  # ends the run: done, failed or cancelled
                await agent(pipe, args.idea, args.level, args.llm == "offline")

        run = asyncio.create_task(run_agent())
        async with Client(gw.url, "log-redirect") as client:
            async for ev in client:
                if ev.k == "text":
                    texts[ev.d["id"]] = texts.get(ev.d["id"], "") + ev.d["delta"]
                    sys.stdout.write(ev.d["delta"])
                    if ev.d.get("end"):
                        print(f"[text stream {ev.d['id']} ended]")
                elif ev.k == "log":
                    logs += 1
                    print(f"[{ev.d['level']}] {ev.d['msg'][:120]}")
                elif ev.k == "message":
                    print(f"[message from {ev.d.get('name', ev.d['role'])}]")
                elif is_final(ev.k, ev.d):
                    state = ev.d["state"]
                    break
        await asyncio.gather(run, return_exceptions=True)
    print(f"log_redirect: {len(texts)} text streams, {logs} log events, status {state}")
    return 0 if state == "done" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
