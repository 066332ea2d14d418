import asyncio
import threading

from gateway import Gateway, MemoryStore
from gateway.client import Client


async def main():
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore()) as gw:
        pipe = gw.pipe("run-1")  # hand this to an agent

        def agent():  # any thread, or the event loop
            for word in "thinking about it".split():
                pipe.set_message(word + " ")  # -> a `text` event
            answer = pipe.ask_sync("Ship it?", ["yes", "no"], default="no", timeout=60)
            pipe.set_message({"k": "log", "d": {"level": "INFO", "msg": f"human said {answer}"}})
            pipe.close()  # final `status: done`

        threading.Thread(target=agent).start()
        async with Client(gw.url, "run-1") as c:  # resumes by itself after a drop
            async for ev in c:
                print(ev.seq, ev.k, ev.d)
                if ev.k == "ask":
                    await c.reply(ev.d["id"], "yes")
                if ev.k == "status" and ev.d["state"] == "done":
                    break


asyncio.run(main())
