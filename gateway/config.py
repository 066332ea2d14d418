"""The gateway's knobs: one frozen ``Config``, every field with a ``wirepipe serve`` flag."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol import DEFAULT_MAX_FRAME, Grant

from .sessions import Limits

if TYPE_CHECKING:
    from .pipe import WebPipe

#: An app: ``async def app(pipe, input)`` (or a plain function, run in a thread).
App = Callable[["WebPipe", Any], Any]
#: An auth hook: ``(credential, sid) -> "viewer" | "operator" | None`` (may be async).
Auth = Callable[[str | None, str], "str | None | Awaitable[str | None]"]


#: ``Config.front``'s choices.
FRONTS = ("uvicorn", "websockets")


@dataclass(frozen=True)
class Config:
    """Limits and knobs.

    Every field has a ``wirepipe serve`` flag of the same name (``max_frame``:
    ``--max-frame``), except the booleans and the grant, which say it the
    other way round: ``--no-compression``, ``--no-ui`` (``serve_ui``),
    ``--no-wait-for-run``, and ``--insecure`` (``default_grant`` operator).
    ``tests/gateway/test_cli.py`` keeps this true.
    """

    max_frame: int = DEFAULT_MAX_FRAME
    handshake_timeout: float = 10.0
    heartbeat: float = 20.0
    compression: bool = True
    write_limit: int = 64 * 1024
    batch_max: int = 1000
    token_ttl: float = 24 * 3600.0
    #: What a client gets when there is no ``auth`` hook.  None: operator on a
    #: loopback bind, viewer on any other (where "no credentials" must not mean
    #: "anyone on the network may run code").  ``--insecure`` sets operator.
    default_grant: Grant | None = None
    wait_for_run: bool = True
    rate: float = 200.0
    burst: float = 400.0
    rate_strikes: int = 20
    serve_ui: bool = True
    close_timeout: float = 2.0
    #: Seconds a client may take no byte at all while the gateway has a frame
    #: for it before it is dropped (None: ``heartbeat``).  It comes back and
    #: resumes; a stalled socket never holds the gateway or its shutdown.
    stall_timeout: float | None = None
    #: Per session: events written and not yet stored (the store is down) before
    #: writes raise ``BacklogFull``, and their bytes.
    backlog_events: int = Limits.backlog_events
    backlog_bytes: int = Limits.backlog_bytes
    #: Per session: client ``send`` messages the agent has not taken, and their bytes.
    inbox_messages: int = Limits.inbox_messages
    inbox_bytes: int = Limits.inbox_bytes
    #: Seconds ``close()`` waits for sessions to store what they hold.
    drain_timeout: float = 5.0
    #: Origins (``scheme://host[:port]``) allowed besides the gateway's own;
    #: ``"*"`` allows every origin, ``"null"`` included (unsafe).  docs/security.md.
    allow_origins: tuple[str, ...] = ()
    #: Host names allowed besides loopback ones (``host`` or ``host:port``; ``"*"``:
    #: any).  On a non-loopback bind, Host is checked only when this is set.
    allow_hosts: tuple[str, ...] = ()
    #: Open WebSocket connections; the next handshake gets HTTP 503 + Retry-After.
    max_connections: int = 4096
    #: Per watched session: the newest events its feed holds for the local
    #: watchers (``gateway/feed.py``), and their bytes; a watcher behind them
    #: reads the store itself.
    feed_events: int = 2048
    feed_bytes: int = 1024 * 1024
    #: What answers on the gateway's port (docs/http.md, "Fronts"): ``"uvicorn"``,
    #: uvicorn for HTTP (the page, REST, SSE) with every WebSocket handed to
    #: websockets' own connection, all on one origin; or ``"websockets"``,
    #: websockets' server alone (the page and the WebSocket, no REST or SSE).
    front: str = "uvicorn"

    @property
    def stall_limit(self) -> float | None:
        """Seconds a client may take no byte of what waits for it: ``stall_timeout``, else ``heartbeat``.

        None, no stall rule, when that is 0 or less (``--heartbeat 0`` with no
        ``--stall-timeout``: no heartbeat and no stall watchdog either).
        """
        limit = self.stall_timeout if self.stall_timeout is not None else self.heartbeat
        return limit if limit > 0 else None

    def __post_init__(self) -> None:
        # lists are accepted (Gateway(allow_origins=[...])); a frozen config holds tuples
        for name in ("allow_origins", "allow_hosts"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{name} takes a list of strings, not a string")
            object.__setattr__(self, name, tuple(value))
        if self.front not in FRONTS:
            raise ValueError(f"front must be one of {', '.join(FRONTS)}, not {self.front!r}")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
