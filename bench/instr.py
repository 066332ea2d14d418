"""Instructions per event under callgrind: the hot path counted, not timed.

CPU timings on a loaded or shared machine move by tens of percent; the
number of instructions a process runs does not.  This runs a fixed workload
twice under ``valgrind --tool=callgrind`` (the process alone, not its
children), with ``n`` events and with none, and prints the difference per
event: what one event costs in user space (the kernel's share, the
``send`` system calls, is not counted: it is the same for every server
that writes one frame per watcher).

Workloads (each also runs on its own, without valgrind, as ``run ...``):

pipe     ``set_message`` from a thread, ``--n`` events of ``--kind`` (text,
         log, plan: the events of ``bench.pipe_cost``), no client: what
         ``pipe_cost`` times, until the events are stored.  With ``--loop``
         the agent writes on the event loop instead (an async agent): each
         event is stored inside its ``set_message``.
many     ``--sessions`` sessions x ``--watchers`` clients (Node,
         ``bench/watchers.mjs --fast``, in processes of their own), ``--n``
         events written round robin on the event loop, ``--tick`` of them
         per turn of the loop (the many-sessions workload of ``python -m
         bench`` writes about 10 per turn), until every client has them all.
         ``--server gateway`` (a MemoryStore; no heartbeat, whose pings
         would come with the wall time of the run, not the events) or
         ``--server bare`` (``bench/bare_proc.py``'s ``await ws.send`` to
         each client in turn).

Usage:
    python -m bench.instr pipe --kind text --n 20000          # Ir per set_message
    python -m bench.instr pipe --kind text --n 20000 --loop   # the same, on the event loop
    python -m bench.instr many --server gateway --n 5000      # Ir per delivery
    python -m bench.instr many --server bare --n 5000
    python -m bench.instr run many --server gateway --n 5000  # the workload once, no valgrind
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = "x" * 54  # with a 10-char counter: 64-byte strings, as in ``python -m bench``
KINDS: dict[str, Any] = {
    "log": {"level": "INFO", "msg": "x" * 40},
    "plan": {"goal": "g", "tasks": [{"id": str(i), "instruction": "do", "status": "pending"} for i in range(5)]},
}


async def run_pipe(kind: str, n: int, on_loop: bool = False) -> None:
    from gateway import Gateway, MemoryStore

    async with Gateway(port=0, store=MemoryStore(), heartbeat=0, stall_timeout=3600.0) as gw:
        pipe = gw.pipe("cost")
        msg = {"k": kind, "d": KINDS.get(kind)}

        def agent() -> None:
            if kind == "text":
                for _ in range(n):
                    pipe.set_message(PAYLOAD)
            else:
                for _ in range(n):
                    pipe.set_message(msg)

        await pipe.drained()
        if on_loop:  # an agent on the gateway's loop: each event is stored (and pushed) inside its call
            agent()
        else:
            th = threading.Thread(target=agent)
            th.start()
            await asyncio.to_thread(th.join)
        await pipe.drained()
        assert pipe.head == n, (pipe.head, n)
        pipe.close()


async def read_line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    text = await proc.stdout.readline()
    if not text:
        raise RuntimeError(f"the clients exited with {await proc.wait()}")
    return json.loads(text)  # type: ignore[no-any-return]


async def run_many(server: str, sessions: int, watchers: int, n: int, tick: int) -> None:
    sids = [f"s{i}" for i in range(sessions)]
    async with _server(server, sids) as (url, write):
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(ROOT / "bench" / "watchers.mjs"),
            url,
            f"s:{sessions}",
            str(watchers),
            "--fast",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None
        try:
            ready = await read_line(proc)
            assert ready.get("ready") == sessions * watchers, ready
            t0 = os.times()
            for g in range(n):
                await write(sids[g % sessions], f"{g:010d}{PAYLOAD}")
                if g % tick == tick - 1:
                    await asyncio.sleep(0)
            proc.stdin.write(f"expect {n * watchers}\n".encode())
            await proc.stdin.drain()
            report = (await read_line(proc))["report"]
            if report["events"] != n * watchers or report["gaps"]:
                raise RuntimeError(f"{report['events']} of {n * watchers} events arrived: {report}")
            t1 = os.times()
            if n and os.environ.get("WIREPIPE_INSTR_CPU"):  # CPU of the events, user and system, µs per delivery
                us = {k: round((getattr(t1, k) - getattr(t0, k)) / (n * watchers) * 1e6, 2) for k in ("user", "system")}
                print(json.dumps({"server": server, **us}), file=sys.stderr)
        finally:
            proc.stdin.close()
            await proc.wait()


class _server:
    """The gateway (MemoryStore, no heartbeat) or the bare baseline, in this process: (url, write)."""

    def __init__(self, kind: str, sids: list[str]) -> None:
        self.kind, self.sids = kind, sids
        self._exit: Any = None

    async def __aenter__(self) -> tuple[str, Any]:
        if self.kind == "gateway":
            from gateway import Gateway, MemoryStore
            from gateway.server import tune_gc

            gw = Gateway(port=0, store=MemoryStore(), heartbeat=0, stall_timeout=3600.0)
            await gw.__aenter__()
            self._exit = gw.__aexit__
            pipes = {sid: gw.pipe(sid) for sid in self.sids}
            for p in pipes.values():
                await p.drained()
            tune_gc()

            async def write(sid: str, text: str) -> None:
                pipes[sid].set_message(text)

            return gw.url, write
        sys.path.insert(0, str(ROOT / "bench"))
        import bare_proc
        from websockets.asyncio.server import serve

        srv = serve(bare_proc.handler, "127.0.0.1", 0, subprotocols=["wirepipe.v1"])  # type: ignore[list-item]
        s = await srv.__aenter__()
        self._exit = srv.__aexit__
        port = next(iter(s.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/", bare_proc.send

    async def __aexit__(self, *exc: object) -> None:
        await self._exit(*exc)


COLLECTED = re.compile(r"Collected : (\d+)")


def count(args: list[str]) -> int:
    """Instructions the workload ``args`` runs, under callgrind (this process only)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    # Byte code cached out of the tree, and cached before counting: compiling
    # every module at each start would be most of a short run's count.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "wirepipe-instr-pycache"))
    warm = [sys.executable, "-m", "bench.instr", "run", *args, "--n", "0"]
    subprocess.run(warm, check=True, capture_output=True, env=env, cwd=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={tmp}/out",
            sys.executable,
            "-m",
            "bench.instr",
            "run",
            *args,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        m = COLLECTED.search(done.stderr)
        if m is None:
            raise RuntimeError(f"no count from callgrind:\n{done.stderr[-3000:]}")
        return int(m.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=["pipe", "many", "run"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    top = p.parse_args()
    if top.workload == "run":
        a = _args(top.rest)
        if a.workload == "pipe":
            asyncio.run(run_pipe(a.kind, a.n, a.loop))
        else:
            asyncio.run(run_many(a.server, a.sessions, a.watchers, a.n, a.tick))
        return
    a = _args([top.workload, *top.rest])
    base_args = [top.workload, *top.rest, "--n", "0"]
    full = count([top.workload, *top.rest])
    base = count(base_args)
    per = "set_message" if a.workload == "pipe" else "delivery"
    units = a.n if a.workload == "pipe" else a.n * a.watchers
    print(
        json.dumps(
            {
                "workload": a.workload,
                "args": top.rest,
                "ir_total": full,
                "ir_baseline": base,
                f"ir_per_{per}": round((full - base) / units),
            }
        )
    )


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["pipe", "many"])
    p.add_argument("--kind", default="text", choices=["text", "log", "plan"])
    p.add_argument("--loop", action="store_true", help="pipe: the agent writes on the event loop, not from a thread")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--server", default="gateway", choices=["gateway", "bare"])
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--watchers", type=int, default=2)
    p.add_argument("--tick", type=int, default=10)
    # the last --n wins: the baseline run appends --n 0
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
