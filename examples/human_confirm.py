"""Human confirmation: a DataInterpreter asks a person to review its plan and each task.

    ./run python examples/human_confirm.py                          # answer at the terminal
    ./run python examples/human_confirm.py --answer "change task 2: also count the letters"
    ./run python examples/human_confirm.py --ui                     # answer in the web UI
    ./run python examples/human_confirm.py --llm config             # the LLM of your config2.yaml

MetaGPT 0.8.2 asks for reviews with the blocking ``input()``.  In a wirepipe
run each review is an ``ask`` event instead, answered by whichever client
replies first (this script, the web UI, ``wirepipe watch``), while the
gateway keeps serving.  The answers mean what they mean to MetaGPT's
planner: ``confirm`` goes on; ``change ...`` sends your words back to the
planner, which rewrites the plan; ``exit`` ends the run (cancelled).

Answers come from ``--answer`` (repeatable, used in order), then from the
terminal if it is one, else ``confirm``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway import Gateway
from gateway.client import Client
from gateway.integrations.metagpt import prepare
from gateway.integrations.metagpt.apps import data_interpreter
from protocol import is_final


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idea", default="Count the words of this sentence and report the top one")
    ap.add_argument("--answer", action="append", default=[], help="a review answer, in order")
    ap.add_argument(
        "--timeout", type=float, default=None, help="seconds after which an unanswered review settles to 'confirm'"
    )
    ap.add_argument("--ui", action="store_true", help="answer in the web UI, not here")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--llm", choices=("offline", "config"), default="offline")
    ap.add_argument("--delay", type=float, default=0.01, help="offline LLM: seconds per token")
    args = ap.parse_args()
    await asyncio.to_thread(prepare)  # MetaGPT's first import takes seconds

    answers = list(args.answer)
    asked, state = 0, "?"
    start = {
        "app": "data_interpreter",
        "input": {
            "idea": args.idea,
            "review": True,
            "review_timeout": args.timeout,
            "llm": args.llm,
            "delay": args.delay,
        },
    }
    async with Gateway(host="127.0.0.1", port=args.port, apps={"data_interpreter": data_interpreter}) as gw:
        if args.ui:
            print(f"open {gw.http_url} and join session 'confirm-1' to answer")
        async with Client(gw.url, "confirm-1", start=start) as client:
            async for ev in client:
                if ev.k == "plan":
                    label = "proposed plan" if ev.d.get("proposed") else "plan"
                    print(f"\n{label}: {ev.d['goal']}")
                    for t in ev.d["tasks"]:
                        print(f"  {t['id']}. {t['instruction']} [{t['status']}]")
                elif ev.k == "output":
                    print(f"[{ev.d['stream']}] {ev.d['text'].rstrip()}")
                elif ev.k == "answer":
                    print(f"answered by {ev.d['by']}: {ev.d['value']!r}")
                elif ev.k == "ask" and not args.ui:
                    asked += 1
                    print(f"\n{ev.d['prompt']}")
                    if answers:
                        value = answers.pop(0)
                        print(f"> {value}")
                    elif sys.stdin.isatty():
                        value = await asyncio.to_thread(input, "> ")
                    else:
                        value = "confirm"
                        print(f"> {value}")
                    replied = await client.reply(ev.d["id"], value)
                    if not replied.ok:  # another client answered first
                        print(f"(not taken: {replied.err})")
                elif is_final(ev.k, ev.d):
                    state = ev.d["state"]
                    break
    print(f"human_confirm: {asked} reviews, status {state}")
    return 0 if state in ("done", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
