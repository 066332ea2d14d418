"""A run as a chat: events rendered as markdown, OpenAI chat-completion shapes, the conversation key.

Pure (no I/O, no Starlette): ``gateway/openai_api.py`` drives it for
``POST /v1/chat/completions`` and ``WebPipe.msg2stream`` for MetaGPT's
``StreamPipe`` contract.  docs/openai.md is the user's reference.

Theory of operation
-------------------
A chat UI has one channel, the assistant message's text, so a ``Renderer``
turns each event into markdown (``Renderer.event``):

- ``text`` deltas (streamed LLM text) pass as they are; a block that
  follows an open text line starts on a fresh paragraph;
- ``plan`` is a numbered list with a status mark per task (a ``proposed``
  plan is titled so), ``task`` a line when a task starts or ends, ``code`` a
  fenced block in its language, ``output`` a fenced ``text`` block (an
  ``error`` stream is titled so), ``tool`` a line, ``message`` the speaker
  in bold and the content;
- ``log`` lines at or above the chosen level (``LEVELS``, loguru's names;
  ``None``: no logs);
- ``ask`` the question, its choices and how to answer: the turn ends there
  (``Turn.ASK``); ``status`` ``done``/``failed``/``cancelled`` a closing line:
  the turn ends (``Turn.END``); ``answer`` a quoted line.

The conversation key is the session's sid, written at the top of every
reply as ``*wirepipe session `<sid>`*`` (``session_line``): every chat UI
sends the history back with the next message, so ``find_session`` finds it
there without any client support.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Any, Final

from protocol import FINAL_STATES, Kind, RunState
from protocol.events import LOG_LEVELS

#: Log levels by name (loguru's, which MetaGPT logs with); an unknown name counts as INFO.
LEVELS: Final[dict[str, int]] = LOG_LEVELS
#: The level a chat shows logs from unless the request chooses (``wirepipe.log_level``).
DEFAULT_LEVEL: Final = "INFO"
#: What a chat sends to show no log lines.
NO_LOGS: Final = frozenset({"NONE", "OFF"})

#: The line that carries the conversation key, and how it is found again.
SESSION_LINE: Final = "*wirepipe session `{sid}`*\n\n"
SESSION_RE: Final = re.compile(r"wirepipe session `([A-Za-z0-9._:-]{1,128})`")

_TASK_MARKS: Final = {"pending": "⬜", "running": "▶️", "done": "✅", "failed": "❌", "skipped": "⏭️"}
_STATE_LINES: Final[dict[str, str]] = {
    RunState.DONE: "✅ **Run done.**",
    RunState.FAILED: "❌ **Run failed**",
    RunState.CANCELLED: "⏹️ **Run cancelled**",
}


class Turn(Enum):
    """Why a chat reply ends: the agent asks (the human's turn) or the run ended."""

    ASK = "ask"
    END = "end"


def level_of(name: Any) -> int | None:
    """The lowest log level to show for ``name`` (None: no logs).

    Raises:
        ValueError: ``name`` is not a level name (``LEVELS``), ``NONE`` or ``OFF``.
    """
    if name is None:
        return LEVELS[DEFAULT_LEVEL]
    key = str(name).upper()
    if key in NO_LOGS:
        return None
    if key not in LEVELS:
        raise ValueError(f"log_level is one of {', '.join([*LEVELS, 'NONE'])}")
    return LEVELS[key]


class Renderer:
    """Events of one run as markdown pieces, in order (see the module docstring)."""

    def __init__(self, level: int | None = LEVELS[DEFAULT_LEVEL]) -> None:
        self.level = level
        #: Task id -> instruction, from the latest plan (task lines name their task).
        self.tasks: dict[str, str] = {}
        #: The last characters written: where the next block must start.
        self._tail = "\n\n"

    def event(self, k: str, d: Any) -> tuple[str, Turn | None]:
        """The markdown of one event (may be empty), and whether the turn ends with it."""
        turn: Turn | None = None
        if not isinstance(d, dict):
            return "", None
        if k == Kind.TEXT:
            piece = str(d.get("delta") or "")
            if d.get("end") and not (self._tail + piece).endswith("\n"):
                piece += "\n"  # an ended stream ends its line
            return self._put(piece), None
        if k == Kind.ASK:
            block, turn = ask_markdown(d), Turn.ASK
        elif k == Kind.STATUS:
            block = status_markdown(d)
            if d.get("state") in FINAL_STATES:
                turn = Turn.END
        else:
            block = self.block(k, d)
        if not block:
            return "", turn
        return self._put(self._sep() + block + "\n\n"), turn

    def block(self, k: str, d: dict[str, Any]) -> str:
        """The markdown block of an event other than text, ask and status ("" for none)."""
        if k == Kind.PLAN:
            tasks = d.get("tasks") or []
            self.tasks = {str(t.get("id")): str(t.get("instruction", "")) for t in tasks if isinstance(t, dict)}
            title = "📋 **Proposed plan**" if d.get("proposed") else "📋 **Plan**"
            lines = [f"{title}: {d.get('goal', '')}", ""]
            for t in tasks:
                if isinstance(t, dict):
                    mark = _TASK_MARKS.get(str(t.get("status")), "⬜")
                    lines.append(f"{mark} {t.get('id')}. {t.get('instruction', '')}")
            return "\n".join(lines)
        if k == Kind.TASK:
            tid, status = str(d.get("id")), str(d.get("status"))
            mark = _TASK_MARKS.get(status, "•")
            what = self.tasks.get(tid, "")
            line = f"{mark} **Task {tid}** {status}" + (f": {what}" if what and status == "running" else "")
            result = d.get("result")
            if result:
                line += f" — {_one_line(result)}"
            return line
        if k == Kind.CODE:
            return fenced(str(d.get("source", "")), str(d.get("lang") or ""))
        if k == Kind.OUTPUT:
            stream = str(d.get("stream"))
            title = "**Error**" if stream == "error" else f"Output ({stream})"
            return f"{title}:\n\n" + fenced(str(d.get("text", "")), "text")
        if k == Kind.LOG:
            level = str(d.get("level", "INFO")).upper()
            if self.level is None or LEVELS.get(level, LEVELS["INFO"]) < self.level:
                return ""
            return f"`{level}` {_one_line(d.get('msg', ''))}"
        if k == Kind.MESSAGE:
            who = d.get("name") or d.get("role") or "agent"
            content = _text(d.get("content")).strip()
            return f"**{who}**:" + ("\n\n" if "\n" in content else " ") + content
        if k == Kind.ANSWER:
            by = d.get("by")
            if by == "closed":
                return "> *(the question was closed unanswered)*"
            return f"> answered `{_one_line(d.get('value'))}`" + (" (timed out)" if by == "timeout" else "")
        if k == Kind.TOOL:
            return f"🔧 **{d.get('name')}** ({d.get('type')}): {_one_line(d.get('value'))}"
        return ""  # a kind this renderer does not know: a chat shows nothing of it

    def _sep(self) -> str:
        """What a block needs before it to start a paragraph."""
        if self._tail.endswith("\n\n"):
            return ""
        return "\n" if self._tail.endswith("\n") else "\n\n"

    def _put(self, piece: str) -> str:
        if piece:
            self._tail = (self._tail + piece)[-2:]
        return piece


def ask_markdown(d: dict[str, Any]) -> str:
    """An ask as the question, its choices, and how to answer in the conversation."""
    prompt = str(d.get("prompt", "")).strip()
    if "\n" in prompt:  # a long question (MetaGPT's reviews) reads as a quote, not as bold
        quoted = "\n".join(f"> {_escape(line)}" if line.strip() else ">" for line in prompt.splitlines())
        lines = ["❓ **The agent asks:**", "", quoted]
    else:
        lines = [f"❓ **{_escape(prompt)}**"]
    choices = d.get("choices")
    if choices:
        listed = " · ".join(f"`{_one_line(c)}`" for c in choices)
        lines += ["", f"Choices: {listed}"]
        how = "Reply with one of them (or its number)"
        if d.get("other"):
            how += ", or in your own words"
        lines += ["", how + "."]
    else:
        lines += ["", "Reply in your own words."]
    if d.get("default") is not None:
        timeout = d.get("timeout")
        after = f" after {timeout:g} s" if isinstance(timeout, (int, float)) else ""
        lines[-1] += f" Unanswered{after}, it takes `{_one_line(d['default'])}`."
    return "\n".join(lines)


def status_markdown(d: dict[str, Any]) -> str:
    state = d.get("state")
    line = _STATE_LINES.get(state, "") if isinstance(state, str) else ""
    if line and d.get("detail") and state != RunState.DONE:
        line += f": {_one_line(d['detail'])}"
    return line


def fenced(body: str, lang: str = "") -> str:
    """``body`` in a code fence longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{body.rstrip(chr(10))}\n{fence}"


def _escape(text: str) -> str:
    """``text`` with what markdown would take for HTML or emphasis escaped (MetaGPT writes ``<task>``)."""
    return re.sub(r"([<>*_`\\])", r"\\\1", text)


def _one_line(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return " ".join(text.split())[:500]


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


# --- the conversation ------------------------------------------------------------------------


def message_text(message: Any) -> str:
    """The text of one chat message: a string content, or its ``text`` parts joined by newlines."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def find_session(messages: list[Any]) -> str | None:
    """The sid of the latest assistant message that carries a session line, or None."""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "assistant":
            found = SESSION_RE.search(message_text(m))
            if found:
                return found.group(1)
    return None


def match_choice(text: str, ask: dict[str, Any]) -> tuple[bool, Any]:
    """The value a chat message gives the ask: (True, value), or (False, None) when it fits no choice.

    A choice matches by its text (any case) or its number (``1`` is the
    first); an ask with ``other`` takes any text; one with no choices takes
    the text as it is.
    """
    text = text.strip()
    choices = ask.get("choices")
    if not choices:
        return True, text
    for c in choices:
        if str(c) == text:
            return True, c
    for c in choices:
        if str(c).casefold() == text.casefold():
            return True, c
    if text.isdigit() and 1 <= int(text) <= len(choices):
        return True, choices[int(text) - 1]
    if ask.get("other"):
        return True, text
    return False, None


# --- OpenAI shapes ------------------------------------------------------------------------------


def chunk(
    cid: str,
    created: int,
    model: str,
    content: str | None = None,
    *,
    role: bool = False,
    finish: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``extra`` rides as ``wirepipe`` (an extension clients ignore)."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None or not finish:
        delta["content"] = content
    out: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if extra is not None:
        out["wirepipe"] = extra
    return out


def completion(cid: str, created: int, model: str, content: str, extra: dict[str, Any]) -> dict[str, Any]:
    """A whole ``chat.completion`` (a request without ``stream``)."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "wirepipe": extra,
    }


#: Token counts: an agent's run is not metered in tokens here; zeros keep clients that read them happy.
USAGE: Final = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` (or ``data: [DONE]``) and the blank line that ends it."""
    return f"data: {data if isinstance(data, str) else dumps(data)}\n\n"


def dumps(data: dict[str, Any]) -> str:
    """Compact JSON, non-ASCII as it is."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


#: The ``type`` of an OpenAI error body, by HTTP status (docs/openai.md, "Errors").
ERROR_TYPES: Final[dict[int, str]] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``: OpenAI's shape, the protocol's ``code``."""
    kind = ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
