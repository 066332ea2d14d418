"""``wirepipe watch`` against a real gateway on loopback running the demo agent (which asks).

In a real terminal: ``tmux`` runs the watcher, ``send-keys`` answers its ask
and ``capture-pane`` reads the screen (the plan table, the numbered choices,
a refusal, the result).  Without one: plain subprocesses for ``--json``, an
unreachable gateway, a wrong scheme, a closed stdin and a sid with no run.
Every wait is on text appearing (bounded by ``TIMEOUT``); every process and
tmux server is killed in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from asyncio.subprocess import DEVNULL, PIPE, Process
from collections.abc import Callable
from typing import Any

import pytest
from rich.console import Console
from servers import free_port
from support import TIMEOUT, missing
from test_cli import ROOT, WIREPIPE, _env, reap, start_server, stop_server

from gateway.client import Client, CloseInfo
from gateway.watch import WordWrap, gateway_url, render_value, resolve_answer

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DEMO_INPUT = json.dumps({"steps": 2, "delay": 0})


# --- the pure parts ---------------------------------------------------------------------------


def test_llm_text_wraps_on_words_across_deltas() -> None:
    w = WordWrap(20)
    lines: list[str] = []
    for delta in ["Reading the da", "ta set, then comp", "uting the summary ", "statistics\nnext"]:
        lines += w.feed(delta)
    assert lines == ["Reading the data", "set, then computing", "the summary", "statistics"]
    assert w.partial == "next"
    assert w.feed("x" * 25) == ["next" + "x" * 16]  # one word wider than the line: cut at the width
    assert w.partial == "x" * 9
    assert w.flush() == ["x" * 9] and w.partial == ""


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("ws://127.0.0.1:8765/", "ws://127.0.0.1:8765/"),
        ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765/"),
        ("http://127.0.0.1:8765/", "ws://127.0.0.1:8765/"),
        ("https://example.com/agents/", "wss://example.com/agents/"),
        ("WSS://example.com", "wss://example.com/"),
    ],
)
def test_gateway_urls(typed: str, url: str) -> None:
    assert gateway_url(typed) == url


@pytest.mark.parametrize("typed", ["ftp://127.0.0.1/", "127.0.0.1:8765", "ws://", "http:///x", "ws://h:99999/"])
def test_not_a_gateway_url(typed: str) -> None:
    with pytest.raises(ValueError, match="ws://|port"):
        gateway_url(typed)


def test_an_answer_by_number_text_or_default() -> None:
    ask = {"id": "a1", "prompt": "Ship?", "choices": ["yes", "no"], "default": "no"}
    assert resolve_answer(ask, "1") == (True, "yes")
    assert resolve_answer(ask, " 2 ") == (True, "no")
    assert resolve_answer(ask, "YES") == (True, "yes")
    assert resolve_answer(ask, "") == (True, "no")
    assert resolve_answer(ask, "3") == (True, "3")  # not a choice's number: the gateway judges it
    assert resolve_answer(ask, "maybe") == (True, "maybe")
    assert resolve_answer({"id": "a2", "prompt": "Name?"}, "") == (False, None)


def test_metagpts_final_message_renders_as_sections_and_fields_not_json() -> None:
    plan = [{"task_id": "1", "instruction": "Count", "code": "print(1)\nprint(2)", "result": "1\n2\n"}]
    content = (
        f"\n## User Requirement\nCount words\n## Current Plan\n{json.dumps(plan, indent=4)}\n## Current Task\n{{}}\n"
    )
    console = Console(width=80, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    console.print(render_value(content))
    text = console.export_text()
    assert "User Requirement" in text and "Current Plan" in text
    assert "instruction" in text and "Count" in text and "print(2)" in text
    assert '"task_id"' not in text and "\\n" not in text and "{" not in text


# --- what the watcher hears from the shared client --------------------------------------------


async def test_the_client_announces_each_failed_attempt_and_its_delay() -> None:
    """``on_close`` and ``on_state`` (the JS client's ``close`` and ``state``), against a dead port."""
    from protocol import RemoteError

    port = free_port()
    closes: list[CloseInfo] = []
    states: list[str] = []
    c = Client(
        f"ws://127.0.0.1:{port}/",
        "x",
        backoff=(0.001, 0.002),
        max_retries=2,
        on_close=closes.append,
        on_state=states.append,
    )
    with pytest.raises(RemoteError):
        await asyncio.wait_for(c.connect(), TIMEOUT)
    await c.close()
    assert [(i.code, i.will_retry, i.attempt) for i in closes] == [(1006, True, 1), (1006, True, 2), (1006, False, 3)]
    assert all("Connect call failed" in i.reason or "refused" in i.reason.lower() for i in closes)
    assert all(i.delay is not None and 0 <= i.delay <= 0.002 for i in closes[:2]) and closes[2].delay is None
    assert states == ["recovering", "connecting", "recovering", "connecting", "closed"]
    assert c.state == "closed"


async def test_the_client_says_open_once_welcomed() -> None:
    server = None
    try:
        server, url = await start_server()
        states: list[str] = []
        start = {"app": "demo", "input": {"steps": 1, "delay": 0, "ask": False}}
        async with Client(url, "o1", start=start, on_state=states.append) as c:
            assert c.state == "open" and states == ["open"]
        assert states == ["open", "closed"]
    finally:
        await reap(server)


# --- subprocesses -----------------------------------------------------------------------------


class Proc:
    """A ``wirepipe`` subprocess whose stdout and stderr are read as they come."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.out = ""
        self.err = ""
        self._news = asyncio.Condition()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._read(proc.stdout, "out")),
            asyncio.ensure_future(self._read(proc.stderr, "err")),
        ]

    @classmethod
    async def spawn(cls, *args: str, stdin: int | None = None) -> Proc:
        p = await asyncio.create_subprocess_exec(
            *WIREPIPE, *args, stdin=stdin, stdout=PIPE, stderr=PIPE, cwd=ROOT, env=_env()
        )
        return cls(p)

    async def _read(self, stream: asyncio.StreamReader, name: str) -> None:
        while chunk := await stream.read(4096):
            async with self._news:
                setattr(self, name, getattr(self, name) + chunk.decode())
                self._news.notify_all()
        async with self._news:
            self._news.notify_all()

    async def until(self, pred: Callable[[Proc], bool]) -> None:
        """Wait until ``pred(self)`` holds (re-checked at every chunk of output)."""

        async def wait() -> None:
            async with self._news:
                await self._news.wait_for(lambda: pred(self) or all(r.done() for r in self._readers))
            assert pred(self), f"the output ended without it:\nstdout:\n{self.out}\nstderr:\n{self.err}"

        await asyncio.wait_for(wait(), TIMEOUT)

    async def exit(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        await asyncio.gather(*self._readers)
        return code

    async def kill(self) -> None:
        await reap(self.proc)
        for r in self._readers:
            r.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def answer(url: str, sid: str, value: Any) -> None:
    """Answer the first ask of ``sid``'s run from another client."""
    async with Client(url, sid) as c:
        async for ev in c:
            if ev.k == "ask":
                r = await c.reply(ev.d["id"], value)
                assert r.ok, r.err
                return


async def test_json_prints_one_event_per_line_and_never_prompts() -> None:
    server = watch = None
    try:
        server, url = await start_server()
        watch = await Proc.spawn("watch", url, "--sid", "j1", "--start", "demo", "--input", DEMO_INPUT, "--json")
        await watch.until(lambda p: '"k": "ask"' in p.out)
        assert "Ship the result" not in watch.err and "answer with" not in watch.err  # no prompt at all
        # ...but one line on stderr says why the output stops there
        await watch.until(lambda p: "ask a1 is open: answer it elsewhere, or pass --prompt" in p.err)
        await answer(url, "j1", "yes")
        assert await watch.exit() == 0, watch.err
        lines = watch.out.splitlines()
        events = [json.loads(line) for line in lines]  # every line is one JSON event
        assert not ANSI.search(watch.out)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert {tuple(sorted(e)) for e in events} == {("d", "epoch", "k", "seq", "ts")}
        kinds = [e["k"] for e in events]
        assert kinds[0] == "status" and kinds[-1] == "status" and events[-1]["d"] == {"state": "done"}
        assert {"plan", "task", "text", "code", "output", "log", "ask", "answer", "message"} <= set(kinds)
        assert any(e["k"] == "log" and e["d"]["level"] == "DEBUG" for e in events)  # --json shows every level
        (ans,) = [e["d"] for e in events if e["k"] == "answer"]
        assert ans == {"id": "a1", "value": "yes", "by": "client"}
        code, _, server_err = await stop_server(server)
        assert code == 0, server_err
    finally:
        await reap(server)
        if watch is not None:
            await watch.kill()


async def test_json_with_prompt_reads_the_answer_from_stdin() -> None:
    server = watch = None
    try:
        server, url = await start_server()
        watch = await Proc.spawn(
            "watch", url, "--sid", "j2", "--start", "demo", "--input", DEMO_INPUT, "--json", "--prompt", stdin=PIPE
        )
        await watch.until(lambda p: "answer with" in p.err)
        assert "[1] yes   [2] no (default)" in watch.err
        assert watch.proc.stdin is not None
        watch.proc.stdin.write(b"1\n")
        await watch.proc.stdin.drain()
        assert await watch.exit() == 0, watch.err
        events = [json.loads(line) for line in watch.out.splitlines()]
        assert [e["d"]["value"] for e in events if e["k"] == "answer"] == ["yes"]
    finally:
        await reap(server)
        if watch is not None:
            await watch.kill()


async def test_a_refused_answer_is_asked_again_with_the_reason() -> None:
    server = watch = None
    try:
        server, url = await start_server()
        watch = await Proc.spawn("watch", url, "--sid", "r1", "--start", "demo", "--input", DEMO_INPUT, stdin=PIPE)
        assert watch.proc.stdin is not None
        watch.proc.stdin.write(b"maybe\n")
        await watch.until(lambda p: "'maybe' was refused (bad_value)" in p.out)
        assert "the value is not one of the ask's" in watch.out  # the refusal's reason
        watch.proc.stdin.write(b"1\n")
        await watch.proc.stdin.drain()
        assert await watch.exit() == 0, watch.err
        out = watch.out
        assert "Traceback" not in watch.err and not ANSI.search(out)
        assert "session r1 at " in out and "grant operator" in out
        assert "Plan: Summarise a small data set" in out and "Step 1: load the data" in out
        assert "[1] yes   [2] no (default)" in out
        assert "✓ answer: yes (by client)" in out
        assert "The human said 'yes'." in out
        assert "INFO    demo: task 1 started" in out and "task 1 checked" not in out  # DEBUG hidden by default
        assert "Run done" in out and "step 2 ok" in out.split("Result")[-1]  # the result, with each task's
        assert out.index("? Ship the result?") < out.index("refused") < out.index("✓ answer") < out.index("Result")
        assert '{"' not in out  # no JSON blobs
    finally:
        await reap(server)
        if watch is not None:
            await watch.kill()


async def test_an_unreachable_gateway_is_retried_with_a_countdown_then_exit_3() -> None:
    port = free_port()  # nothing listens there
    watch = await Proc.spawn("watch", f"ws://127.0.0.1:{port}/", "--sid", "u1", "--retries", "1", stdin=DEVNULL)
    try:
        assert await watch.exit() == 3
        err = watch.err
        assert f"cannot reach ws://127.0.0.1:{port}/" in err
        assert "attempt 1 of 2 failed: retrying in" in err and "(Ctrl-C to stop)" in err
        assert f"cannot reach the gateway at ws://127.0.0.1:{port}/" in err and "gave up after 2 attempts" in err
        assert "Traceback" not in err and watch.out == ""
    finally:
        await watch.kill()


async def test_a_handshake_refused_with_http_404_is_not_retried() -> None:
    """A plain HTTP server on loopback that answers every request 404: exit 3 at once, with the status."""

    async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_found, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    watch = await Proc.spawn("watch", f"ws://127.0.0.1:{port}/", "--sid", "h1", "--retries", "forever", stdin=DEVNULL)
    try:
        assert await watch.exit() == 3
        assert f"ws://127.0.0.1:{port}/ refused the WebSocket handshake: HTTP 404" in watch.err
        assert "retrying" not in watch.err and "Traceback" not in watch.err
    finally:
        await watch.kill()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8765/", "127.0.0.1:8765"])
async def test_a_wrong_scheme_is_a_usage_error(url: str) -> None:
    watch = await Proc.spawn("watch", url, "--sid", "w1", stdin=DEVNULL)
    try:
        assert await watch.exit() == 2
        assert "is not a gateway URL: give one like ws://127.0.0.1:8765/" in watch.err
        assert "Traceback" not in watch.err
    finally:
        await watch.kill()


async def test_an_http_url_with_stdin_closed_watches_and_says_where_to_answer() -> None:
    server = watch = None
    try:
        server, url = await start_server()
        http = url.replace("ws://", "http://")
        watch = await Proc.spawn(
            "watch",
            http,
            "--sid",
            "c1",
            "--start",
            "demo",
            "--input",
            DEMO_INPUT,
            "--log-level",
            "debug",
            stdin=DEVNULL,
        )
        await watch.until(lambda p: "stdin is closed" in p.err)
        assert "the asks must be answered elsewhere" in watch.err and "still watching" in watch.err
        assert watch.proc.returncode is None  # still watching
        await answer(url, "c1", "no")
        assert await watch.exit() == 0, watch.err
        assert f"at {url}" in watch.out  # http:// was taken as ws://
        assert "DEBUG   demo: task 1 checked" in watch.out
        assert "✓ answer: no (by client)" in watch.out and "Run done" in watch.out
        assert "Traceback" not in watch.err
    finally:
        await reap(server)
        if watch is not None:
            await watch.kill()


async def test_a_sid_with_no_run_is_waited_for() -> None:
    server = watch = None
    try:
        server, url = await start_server()
        watch = await Proc.spawn("watch", url, "--sid", "later", stdin=DEVNULL)
        await watch.until(lambda p: "has no run yet: waiting for one to start" in p.err)
        assert watch.proc.returncode is None
        async with Client(url, "later", start={"app": "demo", "input": {"steps": 1, "delay": 0, "ask": False}}):
            assert await watch.exit() == 0, watch.err
        assert "Run done" in watch.out and "Step 1: load the data" in watch.out
    finally:
        await reap(server)
        if watch is not None:
            await watch.kill()


async def test_a_refused_session_exits_4() -> None:
    server = None
    try:
        server, url = await start_server()
        watch = await Proc.spawn("watch", url, "--sid", "s2", "--start", "no-such-app", stdin=DEVNULL)
        assert await watch.exit() == 4
        assert "the gateway refused session 's2': no_app" in watch.err and "Traceback" not in watch.err
    finally:
        await reap(server)


# --- a real terminal --------------------------------------------------------------------------


class Tmux:
    """A private tmux server (its own socket) with one pane running a command."""

    def __init__(self) -> None:
        tmux = shutil.which("tmux")
        if tmux is None:
            missing("tmux is not installed", "scripts/bootstrap.sh --terminal")
        self.base = [tmux, "-u", "-L", f"wirepipe-test-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]

    def start(self, argv: list[str], width: int = 110, height: int = 45) -> None:
        env: dict[str, str] = {k: v for k, v in _env().items() if k in ("PATH", "PYTHONPATH", "HOME")}
        env |= {"LANG": "C.UTF-8", "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}
        prefix = ["env", *(f"{k}={v}" for k, v in env.items())]
        # After the watcher: its exit code, and the tty's line mode (cbreak must be undone).
        tty = "stty -a | tr ' ;' '\\n\\n' | grep -x -e '-*icanon' -e '-*echo'"
        # the terminal's line mode is printed before EXIT=: a test that waits for EXIT sees both
        shell = f"cd {shlex.quote(str(ROOT))} && {shlex.join(prefix + argv)}; st=$?; {tty}; echo EXIT=$st; exec cat"
        subprocess.run(
            [*self.base, "new-session", "-d", "-s", "w", "-x", str(width), "-y", str(height), shell],
            check=True,
            timeout=TIMEOUT,
        )

    def screen(self) -> str:
        return subprocess.run(
            [*self.base, "capture-pane", "-p", "-t", "w"], capture_output=True, text=True, check=True, timeout=TIMEOUT
        ).stdout

    async def until(self, *texts: str) -> str:
        """Read the screen until every one of ``texts`` is on it (bounded by TIMEOUT); returns it."""

        async def poll() -> str:
            while True:
                screen = self.screen()
                if all(t in screen for t in texts):
                    return screen
                await asyncio.sleep(0.05)  # the pane has no change notification to wait on

        try:
            return await asyncio.wait_for(poll(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"never on screen: {texts}\n--- screen:\n{self.screen()}") from None

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "w", *keys], check=True, timeout=TIMEOUT)

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=TIMEOUT)


async def test_in_a_terminal_plan_table_numbered_choices_refusal_and_result() -> None:
    tmux = Tmux()
    server = None
    try:
        server, url = await start_server()
        tmux.start([*WIREPIPE, "watch", url, "--sid", "t1", "--start", "demo", "--input", DEMO_INPUT])
        screen = await tmux.until("Ship the result?", "[1] yes", "[2] no (default)", "> ")
        # the live plan table, every task done, above the ask's box
        assert re.search(r"Plan: Summarise a small data set", screen)
        assert re.search(r"1\s+✓ done\s+Step 1: load the data", screen)
        assert re.search(r"2\s+✓ done\s+Step 2: analyse part 2", screen)
        assert "2/2 done" in screen and "waiting for a human" in screen
        # syntax-highlighted code and its output went by in the timeline
        assert "code · python · c2" in screen and "190" in screen
        tmux.keys("maybe", "Enter")
        screen = await tmux.until("'maybe' was refused (bad_value)")
        assert "[1] yes" in screen  # asked again
        tmux.keys("1", "Enter")
        screen = await tmux.until("EXIT=0")
        assert "✓ answer: yes (by client)" in screen
        assert "Result" in screen and "Run done" in screen and "step 2 ok" in screen
        assert "> " not in screen.split("Result")[-1]  # the live region is gone
        assert re.search(r"^icanon$", screen, re.M) and re.search(r"^echo$", screen, re.M), screen
    finally:
        tmux.kill()
        await reap(server)


async def test_in_a_terminal_a_sid_with_no_run_waits_and_ctrl_c_exits_130() -> None:
    tmux = Tmux()
    server = None
    try:
        server, url = await start_server()
        tmux.start([*WIREPIPE, "watch", url, "--sid", "nobody-yet"])
        await tmux.until("session nobody-yet has no run yet: waiting for one to start")
        tmux.keys("C-c")
        screen = await tmux.until("EXIT=130")
        assert "wirepipe watch: stopped" in screen and "Traceback" not in screen
        code, _, server_err = await stop_server(server)
        assert code == 0, server_err
    finally:
        tmux.kill()
        await reap(server)
