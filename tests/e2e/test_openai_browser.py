"""A page's ``fetch`` in Debian's chromium reads the chat stream of ``/v1/chat/completions`` (docs/openai.md).

The page is the gateway's own web UI (one origin): it runs the reader of
docs/openai.md on a demo run, then answers the ask in the same conversation
by sending the history back, as a chat UI does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway import Gateway, MemoryStore
from gateway.integrations.demo import app as demo

pytestmark = pytest.mark.browser

#: docs/openai.md's reader, as a function of the messages: the text and the last chunk.
TURN = """async (messages) => {
  const r = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'demo', stream: true, messages,
                           wirepipe: { input: { steps: 1, delay: 0 } } }),
  });
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = '', last = null;
  for (let buf = ''; ; ) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let end;
    while ((end = buf.indexOf('\\n\\n')) >= 0) {
      const event = buf.slice(0, end); buf = buf.slice(end + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      last = JSON.parse(event.slice(6));
      text += last.choices[0]?.delta?.content ?? '';
    }
  }
  return { text, last, session: r.headers.get('X-Wirepipe-Session') };
}"""


async def test_a_page_streams_a_run_and_answers_its_ask_with_fetch(
    open_page: Callable[..., Awaitable[Any]],
) -> None:
    async with Gateway(host="127.0.0.1", port=0, store=MemoryStore(), apps={"demo": demo}) as gw:
        p = await open_page(gw.http_url, name="openai-fetch")
        messages: list[dict[str, str]] = [{"role": "user", "content": "hi"}]
        first = await p.evaluate(TURN, messages)
        assert "❓ **Ship the result?**" in first["text"] and "```python" in first["text"]
        assert first["last"]["choices"][0]["finish_reason"] == "stop"
        assert first["last"]["wirepipe"]["state"] == "waiting"
        assert first["session"] == first["last"]["wirepipe"]["session"]
        messages += [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": "yes"}]
        second = await p.evaluate(TURN, messages)
        assert second["session"] == first["session"]
        assert "> answered `yes`" in second["text"] and second["last"]["wirepipe"]["state"] == "done"
        await p.close()
