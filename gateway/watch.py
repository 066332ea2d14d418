"""``wirepipe watch``: one session in the terminal, and its asks answered there.

Theory of operation
-------------------

A ``Watcher`` drives the shared Python client (``gateway.client.Client``,
whose rules are ``protocol.ClientProtocol``) and folds every event into the
shared reducer (``protocol.Snapshot``), exactly as the web UI folds them into
its twin: the plan table, the run status and the open asks show what the
reducer holds, nothing more; everything else (LLM text, code and its output,
logs, messages, answers) is the timeline, printed in order.  A welcome that
cannot recover the stream (a new run under the sid, a lag) resets the reducer
from the welcome's snapshot, and events up to its head are history: printed,
never folded in twice (docs/protocol.md section 4).

Three faces, one set of events:

- **A terminal** (stdout is a TTY): ``rich`` renders the timeline above a
  live region that holds the plan table with each task's state, a spinner
  line (working, waiting for an answer, reconnecting in N s, waiting for a
  run to start), the LLM line being streamed, and the open ask with its
  choices numbered, its default marked and what is being typed.  Keys are
  read in cbreak mode, so the events keep streaming while a human types.
- **A pipe or a file**: the same timeline, without colours or live region;
  an ask's block is printed and its answer read as one line of stdin.
- **``--json``**: one event per line on stdout, nothing else there; notes
  go to stderr, and asks are not prompted for unless ``--prompt`` is given.

An answer is a choice's number, its text (any case), any other text, or an
empty line for the default.  The gateway judges it: a refused reply is shown
with the refusal's reason and the ask is prompted for again.  When stdin is
closed the watcher says so once and goes on watching: the asks must then be
answered elsewhere (the web UI, another watcher, the HTTP API).

Exit codes (``Exit``): 0 the run ended ``done``; 1 it ended ``failed`` or
``cancelled``; 2 a usage error; 3 the gateway could not be reached (after
``--retries`` reconnects, each announced with its countdown) or refused the
WebSocket handshake; 4 the gateway refused the session (``unauthorized``,
``no_app``, ``sid_taken``, ``no_session``...); 130 Ctrl-C.  No error prints a
traceback.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import IO, Any, Final
from urllib.parse import urlsplit, urlunsplit

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.padding import Padding
from rich.panel import Panel
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from protocol import ErrorCode, Event, RemoteError, Snapshot, Welcome, is_final
from protocol.errors import REFUSALS, RETRY_CLOSE_CODES

from .client import Client, CloseInfo


class Exit(IntEnum):
    """``wirepipe watch``'s exit codes."""

    DONE = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    REFUSED = 4
    INTERRUPTED = 130


#: Log levels by rank, as the web UI ranks them (gateway/static/render.js ``levelRank``).
LEVELS: Final[dict[str, int]] = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3, "OFF": 4}
_RANKS: Final[dict[str, int]] = {
    "TRACE": 0,
    "DEBUG": 0,
    "INFO": 1,
    "SUCCESS": 1,
    "NOTICE": 1,
    "WARNING": 2,
    "WARN": 2,
    "ERROR": 3,
    "CRITICAL": 3,
    "FATAL": 3,
    "EXCEPTION": 3,
}
#: Reconnect backoff (base, cap) in seconds: full jitter, so a countdown a human can read.
BACKOFF: Final = (1.0, 10.0)
#: Lines of stdin read ahead of the asks that take them; the reader waits when it is full.
MAX_QUEUED_ANSWERS: Final = 64
#: A hello not welcomed within this long is announced as waiting for a run to start.
WAIT_NOTE_AFTER: Final = 1.0

_STATUS_STYLE: Final = {
    "running": "cyan",
    "waiting": "yellow",
    "done": "green",
    "failed": "red",
    "cancelled": "magenta",
}
_TASK_MARK: Final = {
    "pending": ("·", "dim"),
    "running": ("▶", "bold cyan"),
    "done": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "skipped": ("↷", "dim"),
}
_OUTPUT_STYLE: Final = {"stdout": "", "stderr": "yellow", "result": "bold", "error": "red"}
_LEVEL_STYLE: Final = {0: "dim", 1: "", 2: "yellow", 3: "bold red"}


def level_rank(level: Any) -> int:
    """A log event's level as a rank 0-3 (unknown names rank as INFO)."""
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        return 3 if level >= 40 else 2 if level >= 30 else 1 if level >= 20 else 0
    return _RANKS.get(str(level).upper(), 1)


def gateway_url(value: str) -> str:
    """The WebSocket URL to watch, from what a user typed.

    ``ws://`` and ``wss://`` are taken as they are; ``http://`` and
    ``https://`` (the web UI's address, which the same port serves) become
    ``ws://`` and ``wss://``.

    Raises:
        ValueError: another scheme, no scheme, or no host (the message says what to type).
    """
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    mapped = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    if mapped not in ("ws", "wss") or not parts.netloc or not parts.hostname:
        hint = "ws://127.0.0.1:8765/ (wss:// over TLS; http:// and https:// are taken as ws:// and wss://)"
        if scheme in ("ws", "wss", "http", "https"):
            raise ValueError(f"{value!r} has no host: give the gateway's URL, e.g. {hint}")
        raise ValueError(f"{value!r} is not a gateway URL: give one like {hint}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    return urlunsplit((mapped, parts.netloc, parts.path or "/", parts.query, ""))


def parse_retries(value: str) -> int | None:
    """``--retries``: a count of reconnects (0 or more), or ``forever`` (None).

    Raises:
        ValueError: neither.
    """
    if value.strip().lower() in ("forever", "inf", "infinite"):
        return None
    n = int(value)
    if n < 0:
        raise ValueError(f"must be 0 or more, or 'forever', not {n}")
    return n


@dataclass(frozen=True)
class WatchOptions:
    """What ``wirepipe watch`` was asked to do (cli.py builds it from the arguments)."""

    url: str
    sid: str
    auth: str | None = None
    start: dict[str, Any] | None = None
    no_input: bool = False
    follow: bool = False
    json: bool = False
    prompt: bool = False
    #: The lowest log level shown (``LEVELS``); None: INFO, or everything with ``json``.
    log_level: str | None = None
    #: Reconnects in a row before giving up (None: until Ctrl-C).
    retries: int | None = 10


# --- text ------------------------------------------------------------------------------------


class WordWrap:
    """Wraps a stream of text deltas on words, into lines of at most ``width`` cells.

    ``feed`` returns the lines a delta completed; ``partial`` is the line
    being written.  A word longer than a line is cut where the line ends.
    """

    def __init__(self, width: int) -> None:
        self.width = max(8, width)
        self.partial = ""

    def feed(self, delta: str) -> list[str]:
        out: list[str] = []
        pieces = delta.replace("\r\n", "\n").replace("\t", "    ").split("\n")
        for i, piece in enumerate(pieces):
            if i:  # a newline ended the line
                out.append(self.partial.rstrip())
                self.partial = ""
            self.partial += piece
            while cell_len(self.partial) > self.width:
                head = _cut(self.partial, self.width + 1)
                space = head.rfind(" ")
                if space > 0:
                    out.append(self.partial[:space].rstrip())
                    self.partial = self.partial[space + 1 :]
                else:  # one word wider than the line
                    head = _cut(self.partial, self.width)
                    out.append(head)
                    self.partial = self.partial[len(head) :]
        return out

    def flush(self) -> list[str]:
        """The line being written, ended (nothing when it is empty)."""
        line, self.partial = self.partial.rstrip(), ""
        return [line] if line else []


def _cut(s: str, cells: int) -> str:
    """The longest start of ``s`` at most ``cells`` cells wide."""
    width = 0
    for i, ch in enumerate(s):
        width += cell_len(ch)
        if width > cells:
            return s[:i]
    return s


def _short(value: Any, limit: int = 120) -> str:
    s = value if isinstance(value, str) else json.dumps(jsonable(value), ensure_ascii=False)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: bytes as base64 text, other map keys as text, NaN as null."""
    if isinstance(value, dict):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return b64encode(value).decode()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bytes):
        return b64encode(k).decode()
    return json.dumps(jsonable(k))


def render_value(value: Any, depth: int = 0) -> RenderableType:
    """A payload made readable: maps as key/value rows, lists as items, JSON inside strings
    parsed, Markdown sections as headings (MetaGPT's final message is Markdown around JSON)."""
    if depth > 6:
        return Text(_short(value, 400))
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(stripped)
                if isinstance(parsed, (dict, list)):
                    return render_value(parsed, depth)
        if any(line.startswith(("#", "```")) for line in value.splitlines()):
            return _markdown(value, depth)
        return Text(value.strip("\n"))
    if isinstance(value, dict):
        if not value:
            return Text("(empty)", style="dim")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(ratio=1)
        for k, v in value.items():
            grid.add_row(Text(str(k)), _field(str(k), v, depth + 1))
        return grid
    if isinstance(value, list):
        if not value:
            return Text("(none)", style="dim")
        if all(isinstance(v, dict) for v in value):
            items: list[RenderableType] = []
            for i, v in enumerate(value, 1):
                name = next((v[k] for k in ("task_id", "id", "name") if k in v), i)
                items.append(Text(f"— {name}", style="bold"))
                items.append(_pad(render_value(v, depth + 1), (0, 0, 0, 2)))
            return Group(*items)
        rows = Table.grid(padding=(0, 1))
        rows.add_column(no_wrap=True)
        rows.add_column(ratio=1)
        for v in value:
            rows.add_row("•", render_value(v, depth + 1))
        return rows
    if isinstance(value, bytes):
        return Text(f"<{len(value)} bytes>", style="dim")
    if value is None:
        return Text("—", style="dim")
    return Text(str(value))


def _pad(renderable: RenderableType, pad: Any) -> Padding:
    return Padding(renderable, pad, expand=False)


def _field(key: str, value: Any, depth: int) -> RenderableType:
    if key in ("code", "source") and isinstance(value, str) and value.strip():
        return _syntax(value.rstrip(), "python")
    return render_value(value, depth)


def _markdown(text: str, depth: int) -> RenderableType:
    """Markdown, section by section: a section whose body is JSON is shown as data."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        if line.startswith("#") and not fence:
            sections.append((line.lstrip("#").strip(), []))
        else:
            sections[-1][1].append(line)
    parts: list[RenderableType] = []
    for title, lines in sections:
        body = "\n".join(lines).strip()
        if title:
            parts.append(Text(title, style="bold underline"))
        if not body:
            continue
        if body[:1] in ("[", "{"):
            try:
                data = json.loads(body)
            except ValueError:
                pass
            else:
                parts.append(_pad(render_value(data, depth + 1), (0, 0, 0, 2)))
                continue
        parts.append(_pad(Markdown(body), (0, 0, 0, 2) if title else 0))
    return Group(*parts)


def _syntax(source: str, lang: str) -> Syntax:
    return Syntax(source, lang or "text", theme="ansi_dark", word_wrap=True, background_color="default")


def plan_table(plan: dict[str, Any], *, results: bool = False, max_rows: int | None = None) -> Table:
    """The plan as a table: each task's state, instruction (and result)."""
    tasks = [t for t in plan.get("tasks") or [] if isinstance(t, dict)]
    done = sum(1 for t in tasks if t.get("status") in ("done", "skipped"))
    title = Text.assemble(("Plan", "bold"), ": ", str(plan.get("goal") or "(no goal)"))
    if plan.get("proposed") is True:
        title.append(" (proposed, not applied yet)", style="yellow")
    table = Table(
        title=title,
        title_justify="left",
        caption=f"{done}/{len(tasks)} done" if tasks else "no tasks",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        expand=True,
        pad_edge=False,
    )
    table.add_column("#", no_wrap=True, style="dim")
    table.add_column("state", no_wrap=True)
    table.add_column("task", ratio=3)
    if results:
        table.add_column("result", ratio=2)
    shown = tasks
    if max_rows is not None and len(tasks) > max_rows:
        current = next((i for i, t in enumerate(tasks) if t.get("id") == plan.get("current")), 0)
        start = max(0, min(current - max_rows // 2, len(tasks) - max_rows))
        shown = tasks[start : start + max_rows]
        table.caption = f"{done}/{len(tasks)} done · showing {start + 1}-{start + len(shown)}"
    for t in shown:
        status = str(t.get("status") or "pending")
        mark, style = _TASK_MARK.get(status, ("?", ""))
        row: list[RenderableType] = [
            Text(str(t.get("id", ""))),
            Text(f"{mark} {status}", style=style),
            Text(str(t.get("instruction") or "")),
        ]
        if results:
            result = t.get("result")
            row.append(render_value(result) if result not in (None, "") else Text(""))
        table.add_row(*row)
    return table


def ask_choices(ask: dict[str, Any]) -> Text:
    """The choices numbered, the default marked."""
    choices = ask.get("choices") or []
    default = ask.get("default")
    has_default = "default" in ask and default is not None
    out = Text()
    for i, choice in enumerate(choices, 1):
        if i > 1:
            out.append("   ")
        out.append(f"[{i}] ", style="bold cyan")
        out.append(_short(choice, 60))
        if has_default and choice == default:
            out.append(" (default)", style="bold")
    if has_default and default not in choices:
        out.append(("   " if choices else "") + f"default: {_short(default, 60)}", style="bold")
    if ask.get("other") is True and choices:
        out.append("   or any other answer", style="dim")
    return out


def resolve_answer(ask: dict[str, Any], line: str) -> tuple[bool, Any]:
    """``(True, value)`` for what ``line`` answers, or ``(False, None)`` when an empty line
    has no default to stand for.  A number picks a choice, a choice's text (any case) is that
    choice, anything else is sent as it is (the gateway judges it)."""
    text = line.strip()
    choices = ask.get("choices") or []
    if not text:
        if ask.get("default") is not None:
            return True, ask["default"]
        return False, None
    if text.isdigit() and 1 <= int(text) <= len(choices):
        return True, choices[int(text) - 1]
    for choice in choices:
        shown = choice if isinstance(choice, str) else json.dumps(jsonable(choice))
        if shown.casefold() == text.casefold():
            return True, choice
    return True, text


# --- input -------------------------------------------------------------------------------------


class Answers:
    """Lines of answers, from stdin (a thread reads it, so nothing blocks the loop) or from
    the keys a terminal sends (``Keys``).  ``None`` in the queue: stdin is closed.

    The queue holds at most ``MAX_QUEUED_ANSWERS`` lines; the reader waits while it is full.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_QUEUED_ANSWERS)
        self.closed = False

    def read_lines(self, fd: int) -> None:
        """Read lines from ``fd`` in a daemon thread.

        The thread reads the file descriptor itself, not ``sys.stdin``: a
        thread blocked inside a buffered reader would hold its lock, and the
        interpreter's shutdown would wait on it.
        """

        def reader() -> None:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            pending = ""
            try:
                while chunk := os.read(fd, 4096):
                    pending += decoder.decode(chunk)
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        asyncio.run_coroutine_threadsafe(self.queue.put(line.rstrip("\r")), self.loop).result()
                if pending:
                    asyncio.run_coroutine_threadsafe(self.queue.put(pending.rstrip("\r")), self.loop).result()
            except (OSError, ValueError, RuntimeError):  # stdin gone, or the loop closed
                pass
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                asyncio.run_coroutine_threadsafe(self.queue.put(None), self.loop)

        threading.Thread(target=reader, name="wirepipe-watch-stdin", daemon=True).start()

    def put(self, line: str | None) -> None:
        """A line typed at the terminal (``Keys``); one that does not fit is dropped."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(line)


class Keys:
    """A terminal's keys, one by one (cbreak mode: no echo, no line editing by the tty;
    Ctrl-C still interrupts), handed to ``on_key``.  ``close`` restores the terminal."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, on_key: Callable[[str], None]) -> None:
        import termios
        import tty

        self.loop, self.fd, self.on_key = loop, fd, on_key
        self._saved = termios.tcgetattr(fd)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        tty.setcbreak(fd)
        loop.add_reader(fd, self._ready)

    def _ready(self) -> None:
        try:
            data = os.read(self.fd, 1024)
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.fd)
            self.on_key("\x04")
            return
        for ch in self._decoder.decode(data):
            self.on_key(ch)

    def close(self) -> None:
        import termios

        with contextlib.suppress(OSError, ValueError):
            self.loop.remove_reader(self.fd)
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)


@dataclass
class Prompt:
    """The ask being answered at the terminal, and what was typed for it."""

    ask: dict[str, Any]
    buffer: str = ""
    error: str = ""
    sending: bool = False


# --- the view ----------------------------------------------------------------------------------


class View:
    """Everything shown: the timeline, and in a terminal the live region (see the module docstring)."""

    def __init__(self, opts: WatchOptions, out: IO[str], err: IO[str]) -> None:
        self.opts = opts
        self.out = out
        self.console = Console(file=out, highlight=False, markup=False, emoji=False)
        self.err = Console(file=err, highlight=False, markup=False, emoji=False, soft_wrap=True)
        self.json = opts.json
        self.live_mode = not opts.json and self.console.is_terminal and not self.console.is_dumb_terminal
        level = opts.log_level or ("DEBUG" if opts.json else "INFO")
        self.min_rank = LEVELS[level]
        self.state = Snapshot()
        self.head = 0
        self.epoch: str | None = None
        self.stream: str | None = None
        self.wrap = WordWrap(self.console.width - 2)
        self.last_message: dict[str, Any] | None = None
        #: Each task's result as its ``task`` events said (a later ``plan`` event carries none).
        self.results: dict[str, Any] = {}
        self.prompt: Prompt | None = None
        #: When each open ask was asked (its event's ts), for the countdown of an ask with a timeout.
        self.asked_at: dict[str, float] = {}
        self.input_note = ""
        self.connection = "connecting"
        self.connected_once = False
        self.retry: tuple[float, str] | None = None  # (when, what) of a scheduled reconnect
        self.waiting_for_run = False
        self.since = time.monotonic()
        self.spinner = Spinner("dots", style="cyan")
        self.live: Live | None = None

    # --- life

    def start(self) -> None:
        if self.live_mode:
            self.live = Live(
                console=self.console,
                get_renderable=self._live,
                transient=True,
                auto_refresh=True,
                refresh_per_second=8,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.live.start()

    def stop(self) -> None:
        self._end_stream()
        if self.live is not None:
            self.live.stop()
            self.live = None

    def print(self, *renderables: RenderableType) -> None:
        if self.json:
            return
        for r in renderables:
            self.console.print(r)

    def note(self, msg: str, *, style: str = "dim") -> None:
        """A line about the watch itself (not the run): the timeline in a terminal, stderr elsewhere."""
        if self.live_mode:
            self._end_stream()
            self.console.print(Text(msg, style=style))
        else:
            self.err.print(Text(f"wirepipe watch: {msg}"))

    def error(self, msg: str) -> None:
        """The last word: on stderr, after the live region is gone."""
        self.stop()
        self.err.print(Text(f"wirepipe watch: {msg}", style="bold red" if self.err.is_terminal else ""))

    def refresh(self) -> None:
        if self.live is not None:
            self.live.refresh()

    # --- connection

    def header(self, url: str, w: Welcome) -> None:
        self.connected_once = True
        self.print(
            Text.assemble(
                ("wirepipe watch ", "bold"),
                ("session ", ""),
                (w.sid, "bold cyan"),
                f" at {url} · epoch {w.epoch} · grant {w.grant.value} · head {w.head}",
            )
        )

    def reset(self, w: Welcome, *, first: bool) -> None:
        """A welcome that starts over: the reducer from its snapshot, events up to its head are history."""
        self._end_stream()
        if not first:
            why = "a new run" if w.epoch != self.epoch else "the stream was reset"
            self.print(Text(f"── {why} (epoch {w.epoch}): rebuilt from the snapshot ──", style="bold yellow"))
        self.state = Snapshot.from_map(w.snapshot)
        self.results = {}
        self.asked_at = {}
        self.head = w.head
        self.epoch = w.epoch
        self.prompt = None

    # --- events

    def event(self, ev: Event) -> None:
        """Fold ``ev`` into the state (unless it is history) and show it."""
        k, d = ev.k, ev.d
        if ev.seq > self.head:
            self.state.apply(k, d)
        if self.json:
            line = {"epoch": self.epoch, "seq": ev.seq, "k": k, "ts": ev.ts, "d": jsonable(d)}
            if k != "log" or not isinstance(d, dict) or level_rank(d.get("level")) >= self.min_rank:
                self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
                self.out.flush()
            return
        if not isinstance(d, dict):
            self._generic(k, d)
            return
        try:
            handler = getattr(self, f"_on_{k}", None)
            if handler is None or k.startswith("_"):
                self._generic(k, d)
            else:
                handler(ev, d)
        except (KeyError, TypeError, ValueError, AttributeError):  # a payload of an odd shape: show it as data
            self._generic(k, d)

    def _out(self, *renderables: RenderableType) -> None:
        self._end_stream()
        self.print(*renderables)

    def _end_stream(self) -> None:
        if self.stream is not None:
            for line in self.wrap.flush():
                self._text_line(line)
            self.stream = None

    def _text_line(self, line: str) -> None:
        self.print(Text.assemble(("│ ", "cyan"), line))

    def _on_text(self, ev: Event, d: dict[str, Any]) -> None:
        sid = str(d.get("id"))
        if sid != self.stream:
            self._end_stream()
            self.print(Text(f"LLM · {sid}", style="bold cyan"))
            self.stream = sid
            self.wrap = WordWrap(self.console.width - 2)
        for line in self.wrap.feed(str(d.get("delta", ""))):
            self._text_line(line)
        if d.get("end"):
            self._end_stream()

    def _on_message(self, ev: Event, d: dict[str, Any]) -> None:
        self.last_message = d
        head = Text.assemble(("message", "bold magenta"), " · ", str(d.get("role") or "?"))
        if d.get("name"):
            head.append(f" · {d['name']}")
        if d.get("cause"):
            head.append(f" (cause: {_short(d['cause'], 60)})", style="dim")
        self._out(head, _pad(render_value(d.get("content")), (0, 0, 0, 2)))

    def _on_plan(self, ev: Event, d: dict[str, Any]) -> None:
        n = len([t for t in d.get("tasks") or [] if isinstance(t, dict)])
        proposed = "proposed " if d.get("proposed") is True else ""
        self._out(Text.assemble((f"{proposed}plan", "bold"), f": {d.get('goal')} — {n} task{'s' * (n != 1)}"))
        if not self.live_mode:
            self.print(plan_table(d))

    def _on_task(self, ev: Event, d: dict[str, Any]) -> None:
        status = str(d.get("status"))
        mark, style = _TASK_MARK.get(status, ("?", ""))
        line = Text.assemble(("task ", "bold"), f"{d.get('id')} ", (f"{mark} {status}", style))
        plan = self.state.plan or {}
        task = next((t for t in plan.get("tasks") or [] if isinstance(t, dict) and t.get("id") == d.get("id")), None)
        if task and task.get("instruction"):
            line.append(f"  {_short(task['instruction'], 80)}", style="dim")
        if d.get("result") not in (None, ""):
            self.results[str(d.get("id"))] = d["result"]
            line.append(f"  → {_short(d['result'], 100)}")
        self._out(line)

    def _on_code(self, ev: Event, d: dict[str, Any]) -> None:
        title = f"code · {d.get('lang')} · {d.get('id')}" + (f" · task {d['task']}" if d.get("task") else "")
        source = str(d.get("source", "")).rstrip()
        self._out(
            Panel(
                _syntax(source, str(d.get("lang") or "text")),
                title=title,
                title_align="left",
                border_style="blue",
                box=box.ROUNDED,
            )
        )

    def _on_output(self, ev: Event, d: dict[str, Any]) -> None:
        stream = str(d.get("stream") or "stdout")
        text = str(d.get("text", "")).rstrip("\n")
        label = Text(f"  {stream} of {d.get('id')}", style="dim")
        body = Text(text, style=_OUTPUT_STYLE.get(stream, ""))
        self._out(label, _pad(body, (0, 0, 0, 4)))

    def _on_tool(self, ev: Event, d: dict[str, Any]) -> None:
        head = Text.assemble(("tool", "bold"), f" · {d.get('name')} ({d.get('type')})")
        self._out(head, _pad(render_value(d.get("value")), (0, 0, 0, 2)))

    def _on_log(self, ev: Event, d: dict[str, Any]) -> None:
        rank = level_rank(d.get("level"))
        if rank < self.min_rank:
            return
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, style="dim")
        grid.add_column(no_wrap=True, width=7)
        grid.add_column(ratio=1)
        logger = str(d.get("logger") or "").rsplit(".", 1)[-1]
        msg = Text.assemble((f"{logger}: ", "dim") if logger else "", str(d.get("msg", "")))
        clock = time.strftime("%H:%M:%S", time.localtime(ev.ts)) if ev.ts else ""
        grid.add_row(clock, Text(str(d.get("level")).upper(), style=_LEVEL_STYLE[rank]), msg)
        self._out(grid)

    def _on_ask(self, ev: Event, d: dict[str, Any]) -> None:
        self.asked_at[str(d.get("id"))] = ev.ts
        prompt = str(d.get("prompt", "")).strip()
        if self.live_mode:  # the live region holds the whole prompt, the choices and the input
            first, _, more = prompt.partition("\n")
            self._out(Text.assemble(("? ", "bold yellow"), (first, "bold"), " …" if more else ""))
            return
        choices = ask_choices(d)
        self._out(Text.assemble(("? ", "bold yellow"), (prompt, "bold")), *([Text("  ") + choices] if choices else []))

    def _on_answer(self, ev: Event, d: dict[str, Any]) -> None:
        if d.get("by") == "closed":
            self._out(Text("✗ the ask was closed without an answer", style="dim"))
        else:
            value = _short(d.get("value"), 200)
            self._out(Text.assemble(("✓ answer: ", "green"), (value, "bold"), f" (by {d.get('by')})"))
        if self.prompt is not None and self.prompt.ask.get("id") == d.get("id"):
            self.prompt = None

    def _on_status(self, ev: Event, d: dict[str, Any]) -> None:
        state = str(d.get("state"))
        self.since = time.monotonic()
        style = _STATUS_STYLE.get(state, "")
        line = Text.assemble(("● ", style), ("status: ", "dim"), (state, style))
        if d.get("detail") not in (None, ""):
            line.append(f" · {_short(d['detail'])}", style="dim")
        self._out(line)

    def _generic(self, k: str, d: Any) -> None:
        self._out(Text(k, style="bold"), _pad(render_value(d), (0, 0, 0, 2)))

    def result(self) -> None:
        """The run's end, readably: its state, and the plan with each task's result (or its last message)."""
        self._end_stream()
        status = self.state.status or {}
        state = str(status.get("state", "?"))
        parts: list[RenderableType] = []
        line = Text.assemble(("Run ", "bold"), (state, f"bold {_STATUS_STYLE.get(state, '')}"))
        if status.get("detail") not in (None, ""):
            line.append(f" · {_short(status['detail'], 300)}")
        parts.append(line)
        if self.state.plan:
            plan = dict(self.state.plan)
            plan["tasks"] = [
                {**t, "result": t.get("result", self.results.get(str(t.get("id"))))}
                for t in plan.get("tasks") or []
                if isinstance(t, dict)
            ]
            parts.append(plan_table(plan, results=True))
        elif self.last_message is not None:
            parts.append(render_value(self.last_message.get("content")))
        self.print(Panel(Group(*parts), title="Result", title_align="left", border_style=_STATUS_STYLE.get(state, "")))

    # --- the live region

    def _live(self) -> RenderableType:
        parts: list[RenderableType] = []
        if self.stream is not None and self.wrap.partial:
            parts.append(Text.assemble(("│ ", "cyan"), self.wrap.partial))
        if self.state.plan:
            rows = max(3, self.console.height - (20 if self.prompt is not None else 12))
            parts.append(plan_table(self.state.plan, max_rows=rows))
        self.spinner.text = self._status_line()
        parts.append(self.spinner)
        if self.prompt is not None:
            parts.append(self._ask_box(self.prompt))
        elif self.input_note:
            parts.append(Text(self.input_note, style="dim"))
        return Group(*parts)

    def _status_line(self) -> Text:
        elapsed = int(time.monotonic() - self.since)
        clock = f" · {elapsed // 60}:{elapsed % 60:02d}"
        if self.retry is not None:
            when, what = self.retry
            left = max(0.0, when - time.monotonic())
            return Text(f"{what}: retrying in {math.ceil(left)} s (Ctrl-C to stop)", style="yellow")
        if self.connection != "open":
            if self.waiting_for_run:
                waiting = f"session {self.opts.sid} has no run yet: waiting for one to start"
                return Text(f"{waiting}{clock}", style="yellow")
            return Text(f"connecting to {self.opts.url}{clock}")
        status = self.state.status or {}
        state = str(status.get("state") or "")
        if state == "waiting":
            detail = status.get("detail") or ("your answer" if self.prompt else "an answer")
            waiting = _short(detail, 60) if status.get("detail") else f"waiting for {detail}"
            return Text(f"{waiting}{clock}", style="yellow")
        if state in ("done", "failed", "cancelled"):
            return Text(f"run {state}", style=_STATUS_STYLE[state])
        plan = self.state.plan or {}
        task = next(
            (t for t in plan.get("tasks") or [] if isinstance(t, dict) and t.get("status") == "running"),
            None,
        )
        doing = f" · task {task.get('id')}: {_short(task.get('instruction') or '', 60)}" if task else ""
        return Text(f"working{doing}{clock}")

    def _ask_box(self, p: Prompt) -> RenderableType:
        ask = p.ask
        rows: list[RenderableType] = [Text(str(ask.get("prompt", "")).strip(), style="bold")]
        choices = ask_choices(ask)
        if choices:
            rows.append(choices)
        timeout, ts = ask.get("timeout"), self.asked_at.get(str(ask.get("id")))
        if isinstance(timeout, (int, float)) and timeout > 0 and isinstance(ts, float):
            left = max(0, int(ts + timeout - time.time()))
            rows.append(Text(f"times out in {left} s", style="dim"))
        if p.error:
            rows.append(Text(p.error, style="bold red"))
        if p.sending:
            rows.append(Text("sending…", style="dim"))
        else:
            hint = "a number or text" + (", Enter for the default" if ask.get("default") is not None else "")
            rows.append(Text.assemble(("> ", "bold yellow"), p.buffer, ("▏", "blink"), (f"   ({hint})", "dim")))
        return Panel(Group(*rows), title="answer", title_align="left", border_style="yellow", box=box.ROUNDED)

    # --- asks at the terminal

    def show_prompt(self, ask: dict[str, Any], error: str = "") -> None:
        """Ask for ``ask``'s answer: in the live region, or (elsewhere) as lines."""
        if self.live_mode and self.opts.json is False:
            self.prompt = Prompt(ask, error=error)
            self.refresh()
            return
        # Printed as lines: the timeline has just shown the ask (in --json, only this shows it).
        lines: list[Text] = []
        if self.json or error:
            lines.append(Text.assemble(("? ", "bold"), str(ask.get("prompt", "")).strip()))
            choices = ask_choices(ask)
            if choices:
                lines.append(Text.assemble("  ", choices))
        if error:
            lines.append(Text(f"  {error}"))
        hint = "a choice's number, its text, or an empty line for the default"
        lines.append(Text(f"  answer with {hint if ask.get('default') is not None else 'a number or text'}:"))
        if self.json:
            for line in lines:
                self.err.print(line)
        else:
            self._out(*lines)

    def key(self, ch: str, answers: Answers) -> None:
        """A key typed at the terminal."""
        p = self.prompt
        if ch == "\x04" and (p is None or not p.buffer):
            answers.put(None)
            return
        if p is None or p.sending:
            return
        if ch in ("\n", "\r"):
            p.sending = True
            answers.put(p.buffer)
        elif ch in ("\x7f", "\b"):
            p.buffer = p.buffer[:-1]
        elif ch == "\x15":  # Ctrl-U
            p.buffer = ""
        elif ch == "\x17":  # Ctrl-W
            p.buffer = p.buffer.rstrip().rpartition(" ")[0] + (" " if " " in p.buffer.rstrip() else "")
        elif ch >= " " and ch != "\x7f" and len(p.buffer) < 4096:
            p.buffer += ch
        self.refresh()


# --- the driver --------------------------------------------------------------------------------


class Watcher:
    """One ``wirepipe watch`` run: connect, show, answer, and say how it ended (``Exit``)."""

    def __init__(self, opts: WatchOptions, *, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.opts = opts
        self.view = View(opts, out or sys.stdout, err or sys.stderr)
        self.client: Client | None = None
        self.stop: asyncio.Future[tuple[Exit, str]] | None = None
        self.last_close: CloseInfo | None = None
        self.consumed = 0
        self.last_seq = 0
        self.resets: list[tuple[int, Welcome]] = []
        self.asks_changed = asyncio.Event()
        self.skip: set[str] = set()
        self.answers: Answers | None = None
        self.keys: Keys | None = None
        self.can_answer = not opts.no_input and (not opts.json or opts.prompt)
        self._wait_timer: asyncio.TimerHandle | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop = loop.create_future()
        opts = self.opts
        self.client = Client(
            opts.url,
            opts.sid,
            auth=opts.auth,
            start=opts.start,
            backoff=BACKOFF,
            max_retries=opts.retries,
            on_reset=self._on_reset,
            on_state=self._on_state,
            on_close=self._on_close,
        )
        handler = _NoteHandler(self.view)
        wp_log = logging.getLogger("wirepipe")
        wp_log.addHandler(handler)
        wp_log.propagate = False
        self.view.start()
        self._arm_wait_note()  # the first attempt is "connecting" from the start
        body = asyncio.ensure_future(self._body(self.client))
        asker: asyncio.Task[None] | None = None
        try:
            if self.can_answer:
                asker = asyncio.create_task(self._asker(self.client))
            first: set[asyncio.Future[Any]] = {body, self.stop}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if not body.done():
                body.cancel()
                await asyncio.gather(body, return_exceptions=True)
                code, msg = self.stop.result()
                self.view.error(msg)
                return int(code)
            return await body
        finally:
            if asker is not None:
                asker.cancel()
                await asyncio.gather(asker, return_exceptions=True)
            if self._wait_timer is not None:
                self._wait_timer.cancel()
            if self.keys is not None:
                self.keys.close()
            self.view.stop()
            await self.client.close()
            wp_log.removeHandler(handler)
            wp_log.propagate = True

    async def _body(self, c: Client) -> int:
        try:
            await c.connect()
            assert c.welcome is not None
            self.view.header(self.opts.url, c.welcome)
            self.view.reset(c.welcome, first=True)
            self.asks_changed.set()
            async for ev in c:
                while self.resets and self.resets[0][0] <= self.consumed:
                    self.view.reset(self.resets.pop(0)[1], first=False)
                    self.last_seq = 0
                    self.asks_changed.set()
                self.consumed += 1
                self.last_seq = ev.seq
                self.view.event(ev)
                if ev.k in ("ask", "answer") or ev.seq == self.view.head:
                    self.asks_changed.set()
                if ev.k == "ask" and self.opts.json and not self.can_answer and isinstance(ev.d, dict):
                    # --json never prompts: say once, on stderr, why the output stops here
                    self.view.note(f"ask {ev.d.get('id')} is open: answer it elsewhere, or pass --prompt")
                if is_final(ev.k, ev.d):
                    self.view.result()
                    if not self.opts.follow:
                        return int(Exit.DONE if ev.d["state"] == "done" else Exit.FAILED)
        except RemoteError as exc:
            code, msg = self._why(exc)
            self.view.error(msg)
            return int(code)
        return int(Exit.DONE)

    def _why(self, exc: RemoteError) -> tuple[Exit, str]:
        """A client that stopped, as an exit code and a sentence."""
        info = self.last_close
        if info is not None and not info.will_retry and info.code in RETRY_CLOSE_CODES:
            attempts = f"{info.attempt} attempt{'s' * (info.attempt != 1)}"
            where = "lost the gateway" if self.view.connected_once else "cannot reach the gateway"
            return Exit.UNREACHABLE, f"{where} at {self.opts.url} ({_reason(info)}); gave up after {attempts}"
        if exc.code in {e.value for e in ErrorCode}:
            return Exit.REFUSED, f"the gateway refused session {self.opts.sid!r}: {exc.code}: {exc.msg or exc.code}"
        return Exit.REFUSED, f"the gateway closed the connection: {exc.code} {exc.msg}".rstrip()

    # --- the client's news

    def _on_reset(self, w: Welcome) -> None:
        assert self.client is not None
        # Applied once the events queued before this welcome are shown (the queue is in order).
        self.resets.append((self.consumed + self.client.buffered, w))

    def _on_state(self, state: str) -> None:
        view = self.view
        view.connection = state
        if state == "open":
            if view.retry is not None and not view.live_mode:
                view.note("reconnected")
            view.retry = None
            view.waiting_for_run = False
        elif state == "connecting":
            self._arm_wait_note()
        view.refresh()

    def _arm_wait_note(self) -> None:
        if self._wait_timer is not None:
            self._wait_timer.cancel()
        self._wait_timer = asyncio.get_running_loop().call_later(WAIT_NOTE_AFTER, self._wait_note)

    def _wait_note(self) -> None:
        """The gateway holds our hello: the sid has no run (yet).  Still opening: look again later."""
        c = self.client
        if c is None or c.state != "connecting" or self.view.waiting_for_run:
            return
        if c.ws is None:
            self._arm_wait_note()
            return
        self.view.waiting_for_run = True
        if self.view.live_mode:
            self.view.refresh()
        else:
            self.view.note(f"session {self.opts.sid!r} has no run yet: waiting for one to start (Ctrl-C to stop)")

    def _on_close(self, info: CloseInfo) -> None:
        self.last_close = info
        view = self.view
        if info.status is not None and 400 <= info.status < 500 and info.status not in (408, 429):
            # Refused before any WebSocket talk (403 Origin/Host, 404 wrong path): a retry will not help.
            assert self.stop is not None
            if not self.stop.done():
                hint = " (is it a wirepipe gateway, and the right path?)" if info.status == 404 else ""
                self.stop.set_result(
                    (Exit.UNREACHABLE, f"{self.opts.url} refused the WebSocket handshake: HTTP {info.status}{hint}")
                )
            return
        if not info.will_retry or info.delay is None:
            return
        # --retries N: the first attempt, then N retries (N + 1 attempts in all)
        of = f"{info.attempt} of {self.opts.retries + 1}" if self.opts.retries is not None else f"{info.attempt}"
        what = "connection lost" if view.connected_once else f"cannot reach {self.opts.url}"
        what = f"{what} ({_reason(info)}); attempt {of} failed"
        view.retry = (time.monotonic() + info.delay, what)
        view.waiting_for_run = False
        if view.live_mode:
            view.refresh()
        else:
            view.note(f"{what}: retrying in {info.delay:.1f} s (Ctrl-C to stop)")

    # --- asks

    def _current_ask(self) -> dict[str, Any] | None:
        if self.last_seq < self.view.head:  # the history first, then its open asks
            return None
        for ask_id, ask in self.view.state.asks.items():
            if ask_id not in self.skip:
                return ask
        return None

    async def _changes(self) -> None:
        await self.asks_changed.wait()
        self.asks_changed.clear()

    def _open_input(self) -> Answers:
        loop = asyncio.get_running_loop()
        answers = Answers(loop)
        stdin = sys.stdin
        if self.view.live_mode and stdin is not None and stdin.isatty():
            try:
                self.keys = Keys(loop, stdin.fileno(), lambda ch: self.view.key(ch, answers))
                return answers
            except (OSError, ImportError, ValueError):  # not a real terminal after all: read lines
                self.keys = None
        if stdin is None or stdin.closed:
            answers.closed = True
            answers.put(None)
        else:
            answers.read_lines(stdin.fileno())
        return answers

    async def _asker(self, c: Client) -> None:
        """Prompt for the oldest open ask, send what is typed, prompt again when refused."""
        line_task: asyncio.Task[str | None] | None = None
        shown: str | None = None
        error = ""
        if self.view.live_mode:  # keys in cbreak mode from the start: nothing typed garbles the screen
            self.answers = self._open_input()
        try:
            while True:
                ask = self._current_ask()
                if ask is None:
                    self.view.prompt = None
                    await self._changes()
                    continue
                if c.welcome is not None and c.welcome.grant.value != "operator":
                    self.view.note("this connection is a viewer: it cannot answer asks (--auth with an operator token)")
                    self.can_answer = False
                    return
                if self.answers is None:
                    self.answers = self._open_input()
                if shown != ask["id"]:
                    self.view.show_prompt(ask, error)
                    shown, error = ask["id"], ""
                if line_task is None:
                    line_task = asyncio.ensure_future(self.answers.queue.get())
                changed = asyncio.ensure_future(self._changes())
                await asyncio.wait({line_task, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if not line_task.done():
                    if self._current_ask() is not ask:
                        shown = None
                    continue
                line, line_task = line_task.result(), None
                if line is None:
                    self.view.prompt = None
                    self.view.input_note = "stdin is closed: answer asks elsewhere (web UI, another watch, HTTP API)"
                    self.view.note(
                        "stdin is closed: the asks must be answered elsewhere (the web UI, another "
                        "wirepipe watch, or the HTTP API); still watching"
                    )
                    self.skip.update(self.view.state.asks)
                    self.can_answer = False
                    return
                ask = self._current_ask()
                if ask is None:
                    continue
                ok, value = resolve_answer(ask, line)
                if not ok:
                    error = "an answer is needed: this ask has no default"
                    shown = None
                    continue
                if self.view.prompt is not None:
                    self.view.prompt.sending = True
                r = await c.reply(ask["id"], value)
                if r.ok:
                    self.skip.add(ask["id"])
                    self.view.prompt = None
                    continue
                code = r.err or "refused"
                reason = f"refused ({code}): {REFUSALS.get(code, code)}"
                if code in (ErrorCode.ASK_CLOSED, ErrorCode.UNKNOWN_ASK, ErrorCode.FORBIDDEN):
                    self.skip.add(ask["id"])
                    self.view.prompt = None
                    self.view.note(f"your answer {_short(value, 60)!r} was {reason}")
                else:
                    error = f"{_short(value, 60)!r} was {reason}; answer again"
                    shown = None
        finally:
            if line_task is not None:
                line_task.cancel()


def _reason(info: CloseInfo) -> str:
    if info.status is not None:
        return f"HTTP {info.status}"
    return info.reason or f"close code {info.code}"


class _NoteHandler(logging.Handler):
    """The client's warnings as notes, one line each (never a traceback)."""

    def __init__(self, view: View) -> None:
        super().__init__(logging.WARNING)
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.view.note(record.getMessage().splitlines()[0], style="yellow")


@contextlib.contextmanager
def _quiet_broken_pipe() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:  # `wirepipe watch ... | head`: the reader left
        with contextlib.suppress(OSError):  # so that the flush at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(opts: WatchOptions) -> int:
    """Watch until the run ends (or Ctrl-C); returns the exit code (``Exit``)."""
    with _quiet_broken_pipe():
        try:
            return asyncio.run(Watcher(opts).run())
        except KeyboardInterrupt:
            print("\nwirepipe watch: stopped (Ctrl-C; a run goes on at the gateway)", file=sys.stderr)
            return int(Exit.INTERRUPTED)
        except BrokenPipeError:
            raise
        except Exception as exc:  # a bug: one line, not a traceback
            print(f"wirepipe watch: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return int(Exit.FAILED)
