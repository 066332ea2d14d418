"""A snapshot as HTML and Markdown (``Snapshot._repr_html_`` / ``_repr_markdown_``, ``protocol/display.py``)."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from protocol import Snapshot
from protocol.display import LIMIT


def run(**extra: Any) -> Snapshot:
    s = Snapshot()
    s.apply(
        "plan",
        {
            "goal": "<script>alert('goal')</script>",
            "tasks": [
                {"id": "1", "instruction": "load | the *data*", "status": "pending"},
                {"id": "2", "instruction": "x" * (LIMIT * 2), "status": "pending"},
                "not a task",
            ],
        },
    )
    s.apply("task", {"id": "1", "status": "done", "result": {"rows": 3, "raw": b"\x00\x01"}})
    for k, d in extra.items():
        s.apply(k, d)
    return s


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(html: str) -> Tags:
    p = Tags()
    p.feed(html)
    return p


def test_html_shows_the_run_and_escapes_every_value() -> None:
    s = run(ask={"id": "a1", "prompt": "<b>ship?</b>", "choices": ["yes", "<no>"]}, status={"state": "waiting"})
    html = s._repr_html_()
    p = parsed(html)
    assert set(p.tags) <= {"div", "p", "b", "code", "i", "table", "thead", "tbody", "tr", "th", "td", "ul", "li"}
    text = "".join(p.text)
    assert "<script>alert('goal')</script>" in text  # as text, never markup
    assert "1/2 done" in text and "waiting" in text and "<b>ship?</b>" in text and "<no>" in text
    assert '{"rows": 3, "raw": "b\'\\\\x00\\\\x01\'"}' in text  # bytes are shown, not raised on
    assert "x" * (LIMIT - 1) + "…" in text and "x" * LIMIT not in text


def test_markdown_shows_the_same_and_escapes_markup() -> None:
    s = run(status={"state": "done", "detail": "all `good`"})
    s.apply("text", {"id": "t1", "delta": "half\na thought"})
    md = s._repr_markdown_()
    assert md.startswith("**run**: `done` — all \\`good\\`")
    assert "| 1 | done | load \\| the \\*data\\* |" in md
    assert "\\<script\\>" in md and "<script>" not in md
    assert "- t1: half a thought" in md
    assert md.count("\n| ") == 3  # the header, and one row per task that is a map


def test_an_empty_snapshot_shows_that_there_is_nothing_yet() -> None:
    assert "no status yet" in Snapshot()._repr_html_()
    assert Snapshot()._repr_markdown_() == "**run**: `no status yet`\n"
