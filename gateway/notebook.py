"""Watch and answer a run from a Jupyter notebook: ``watch(url, sid)`` is a live widget.

    from gateway.notebook import watch

    w = watch("ws://127.0.0.1:8765/", "run-1")   # the cell's output shows the run live
    await w.wait()                               # in a later cell: "done", "failed" or "cancelled"

Needs the ``notebook`` extra (``pip install 'wirepipe[notebook]'``: anywidget);
the core never imports this module.

Theory of operation
-------------------
A ``RunWidget`` is an anywidget: one Python class (this one) and one ES
module (``gateway/static/widget.js``).  Two things follow the run, each
over its own connection, each resuming by itself after a drop:

- **each view** (a browser tab showing the cell's output) runs the JS
  client and the web UI's ``View``, both imported from the gateway itself
  (``/esm/``, ``gateway/http_front.py``): the live plan, streamed text, code
  and its output, logs, the status, and ask cards whose buttons and free
  text answer the agent.  So the page's origin must pass the gateway's front
  door: a gateway lets in only its own pages unless started with
  ``--allow-origin`` (``allow_origins=``) naming Jupyter's origin
  (docs/notebook.md).  The modules are the gateway's own version, never a
  copy bundled here that could drift from the protocol it speaks.
- **the kernel** runs ``gateway.client.Client`` as a task on the kernel's
  event loop, folds the events into the snapshot (``protocol.Snapshot``) and
  syncs what code needs as traitlets: ``status``, ``plan``, ``asks``,
  ``error`` and ``conn``.  They work with no browser at all (``nbclient``,
  a script of cells), are what ``wait()`` and ``next_ask()`` wait on, and
  are what a saved notebook keeps.  A trait changes only when its value
  does (plan, task, status, ask and answer events), never once per token.
  The follow
  runs in no cell's context, so ipykernel sends its updates as part of the
  request running then; ``wait()`` and ``next_ask()`` send the state once
  more from the cell that awaits them (a headless runner such as nbclient
  records only a running cell's messages).

The views only read the model.  A credential is never a trait (a notebook
may save widget state): a view that needs one asks the kernel for it with
a custom message, which the kernel answers when it is not busy running a cell.

The kernel's follow ends when the widget is closed, or when the client
gives up (the gateway refused the session for good, or ``max_retries``):
``error`` then says why, and the views show it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    import anywidget
    import traitlets
except ImportError as exc:  # the optional extra is missing: say which
    raise ImportError(f"gateway.notebook needs anywidget ({exc}): pip install 'wirepipe[notebook]'") from exc

from protocol import FINAL_STATES, RemoteError, Snapshot

from .client import Client

log = logging.getLogger("wirepipe.notebook")

__all__ = ["RunWidget", "watch"]

#: The widget's ES module (it imports the client and the view from the gateway).
ESM = Path(__file__).parent / "static" / "widget.js"
#: The kernel's flow-control window (docs/protocol.md section 6): at most about two of it buffered.
FOLLOW_WINDOW = 1000
#: Kinds whose events change what the traits show.
_STATE_KINDS = frozenset({"status", "plan", "task", "ask", "answer"})


def http_base(url: str) -> str:
    """The HTTP root of the gateway at WebSocket ``url``: where its web UI and modules are.

    ``ws://h:p/agents/`` -> ``http://h:p/agents/`` (``wss`` -> ``https``); the
    last path segment is dropped unless it ends with ``/``, as a page's
    relative URL would (the gateway's socket is at the root of its mount).

    Raises:
        ValueError: not a ``ws``, ``wss``, ``http`` or ``https`` URL with a host.
    """
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a gateway URL (ws://host:port/): {url!r}")
    path = parts.path if parts.path.endswith("/") else parts.path.rsplit("/", 1)[0] + "/"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can carry it (a trait's state): bytes and other values become text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth > 32:
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return repr(value)


class RunWidget(anywidget.AnyWidget):
    """A run, live in a notebook cell's output; see the module docstring.

    Make one with ``watch()`` (or ``Client.widget()``).  The traits ``status``,
    ``plan``, ``asks``, ``error`` and ``conn`` are the kernel's view of the run.
    """

    _esm = ESM

    #: The gateway's WebSocket URL, as the browser reaches it.
    url = traitlets.Unicode("").tag(sync=True)
    #: The gateway's HTTP root, as the browser reaches it: the view's modules and style come from there.
    base = traitlets.Unicode("").tag(sync=True)
    sid = traitlets.Unicode("").tag(sync=True)
    #: A view must ask the kernel for the credential (it is never a trait).
    needs_auth = traitlets.Bool(False).tag(sync=True)
    #: The run's state: "" (none yet), running, waiting, done, failed, cancelled.
    status = traitlets.Unicode("").tag(sync=True)
    #: The plan as the snapshot holds it (goal, tasks with their status, current), {} before one.
    plan = traitlets.Dict().tag(sync=True)
    #: The open asks' payloads (id, prompt, choices, default, ...), oldest first.
    asks: traitlets.List[dict[str, Any]] = traitlets.List(traitlets.Dict()).tag(sync=True)
    #: Why the kernel's follow of the run stopped ("" while it runs).
    error = traitlets.Unicode("").tag(sync=True)
    #: The kernel's connection: connecting, open, recovering or closed (a view shows its own).
    conn = traitlets.Unicode("connecting").tag(sync=True)

    def __init__(self, client: Client, *, browser_url: str | None = None) -> None:
        """Follow ``client``'s session (the widget owns the client: do not iterate it yourself).

        Raises:
            ValueError: ``browser_url`` (or the client's URL) is not a gateway URL.
            RuntimeError: no event loop is running (a Jupyter kernel runs one).
        """
        try:
            loop = asyncio.get_running_loop()  # before any comm opens
        except RuntimeError:
            raise RuntimeError(
                "the widget follows its run on a running event loop: call it in a Jupyter kernel "
                "(which runs one), or from a coroutine (docs/notebook.md)"
            ) from None
        shown = browser_url or client.url
        base = http_base(shown)
        super().__init__(url=shown, base=base, sid=client.sid, needs_auth=bool(client.auth))
        self.client = client
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._ended = False
        self._failure: RemoteError | None = None  # why the follow stopped, when the gateway said
        self._shown: Snapshot | None = None  # the snapshot the traits were last set from
        self.on_msg(self._on_msg)
        told = client.on_state

        def on_state(state: str) -> None:
            self.conn = state
            if told is not None:
                told(state)

        client.on_state = on_state
        # An empty context: the follow belongs to no cell, so ipykernel sends its
        # trait updates as part of the request it handles now (the cell running
        # when the run changes), not of the cell that made the widget, which
        # has long ended (a headless runner, nbclient, keeps only a running cell's).
        self._task = loop.create_task(
            self._follow(), name=f"wirepipe-watch-{client.sid}", context=contextvars.Context()
        )

    # --- the kernel's follow ------------------------------------------------------------------

    async def _follow(self) -> None:
        client = self.client
        try:
            await client.connect()
            self._sync()
            async for ev in client:
                # A new snapshot object: the stream was reset (a new run under the sid).
                if ev.k in _STATE_KINDS or client.snapshot is not self._shown:
                    self._sync()
        except asyncio.CancelledError:
            raise
        except RemoteError as exc:
            self._failure = exc
            self.error = f"{exc.code}: {exc.msg}" if exc.msg else str(exc.code)
        except Exception as exc:  # a bug: the notebook shows it rather than a widget that froze
            log.exception("watching %s stopped", client.sid)
            self.error = f"{type(exc).__name__}: {exc}"
        else:
            self.error = "the connection was closed"
        finally:
            self._ended = True
            self._wake()

    def _sync(self) -> None:
        """Set the traits from the client's snapshot (traitlets sends only those that changed)."""
        snap = self._shown = self.client.snapshot
        state = snap.status.get("state") if snap.status else None
        self.status = state if isinstance(state, str) else ""
        self.plan = _plain(snap.plan) if snap.plan else {}
        self.asks = [_plain(a) for a in snap.asks.values()]
        self._wake()

    def _on_msg(self, _widget: Any, content: Any, _buffers: Sequence[bytes]) -> None:
        if isinstance(content, dict) and content.get("type") == "auth":
            self.send({"type": "auth", "auth": self.client.auth or ""})

    def _wake(self) -> None:
        for pred, fut in self._waiters:
            if not fut.done() and (self._ended or pred()):
                fut.set_result(None)
        self._waiters = [(p, f) for p, f in self._waiters if not f.done()]

    async def _until(self, pred: Callable[[], bool]) -> None:
        if not (pred() or self._ended):
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((pred, fut))
            await fut
        # Once more, from the awaiting cell: a change made while no cell ran
        # went out as part of the last request, which a headless runner
        # (nbclient) stopped listening to; this cell's it records.
        self.send_state(["status", "plan", "asks", "error", "conn"])

    def _stopped(self) -> RemoteError:
        """Why the follow stopped: the gateway's error, or a ``closed`` one saying what happened."""
        return self._failure or RemoteError("closed", self.error or "the widget was closed")

    # --- what notebook code uses -------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The run ended (done, failed or cancelled)."""
        return self.status in FINAL_STATES

    async def wait(self) -> str:
        """Until the run ends; returns its final state ("done", "failed" or "cancelled").

        Raises:
            RemoteError: the kernel's follow stopped first (``error`` says why).
        """
        await self._until(lambda: self.finished)
        if not self.finished:
            raise self._stopped()
        return self.status

    async def next_ask(self) -> dict[str, Any]:
        """The oldest open ask's payload (``id``, ``prompt``, ``choices``, ...), once there is one.

        Raises:
            RemoteError: the run ended, or the kernel's follow stopped, with no ask open.
        """
        await self._until(lambda: bool(self.asks) or self.finished)
        if not self.asks:
            raise self._stopped() if self._ended else RemoteError("closed", f"no ask is open: the run is {self.status}")
        first: dict[str, Any] = self.asks[0]
        return first

    async def reply(self, ask: str, value: Any) -> bool:
        """Answer the ask ``ask`` from code, as a click in a view would; True if it was taken.

        Raises:
            RemoteError: the kernel's follow has stopped.
        """
        replied = await self.client.reply(ask, value)
        return replied.ok

    @property
    def snapshot(self) -> Snapshot:
        """The run's state as the kernel received it (``protocol.Snapshot``; shows as a table)."""
        return self.client.snapshot

    def close(self) -> None:
        """Stop following the run (the kernel's connection and every view's), and close the widget.

        ipywidgets calls it too when the widget is collected, maybe with no loop running.
        """
        task: asyncio.Task[None] | None = getattr(self, "_task", None)
        if task is not None and not task.done():
            task.cancel()  # the follow's client closes with its task: cancel, then close
            try:  # the client's own task holds the socket: close it too (kept, so it is not collected)
                self._closing = asyncio.get_running_loop().create_task(self.client.close())
            except RuntimeError:  # no loop runs: the socket dies with the loop
                pass
            self._ended = True
            self._wake()
        super().close()


def watch(
    url: str,
    sid: str,
    auth: str | None = None,
    *,
    start: dict[str, Any] | None = None,
    browser_url: str | None = None,
    **client_options: Any,
) -> RunWidget:
    """A widget that shows the run of session ``sid`` on the gateway at ``url``, live.

    Display it (the last expression of a cell); then ``await w.wait()``,
    ``await w.next_ask()``, ``await w.reply(ask_id, value)``, ``w.status``,
    ``w.plan``, ``w.asks``, ``w.snapshot`` (docs/notebook.md).

    ``start``: ``{"app": name, "input": value}`` starts a run of a registered
    app (the kernel's connection starts it; the views only watch).
    ``browser_url``: the gateway's WebSocket URL as the browser reaches it,
    when it differs from the kernel's (a proxy, a remote kernel).
    ``client_options``: the rest of ``Client``'s options (``window``, by
    default ``FOLLOW_WINDOW``, ``max_retries``, ...).  Call it in the kernel
    (its event loop runs).

    Raises:
        ValueError: ``sid`` is not a valid session id, or a URL is not a gateway URL.
        RuntimeError: no event loop is running.
    """
    # A window bounds what the kernel's client buffers while a cell keeps the loop busy.
    client_options.setdefault("window", FOLLOW_WINDOW)
    return RunWidget(Client(url, sid, auth=auth, start=start, **client_options), browser_url=browser_url)
