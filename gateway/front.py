"""The front door: which requests get in, and what the WebSocket library may log.

Theory of operation
-------------------
A browser lets any web page open a WebSocket to any address, loopback
included, and sends the page's ``Origin`` with the handshake; the gateway,
not the browser, has to refuse a page it did not serve (cross-site
WebSocket hijacking).  So a request that carries ``Origin`` gets in only if
that origin is the gateway's own (its scheme, host and port name the
``Host`` the request was sent to) or is allowed by ``allow_origins``.
Non-browser clients send no ``Origin`` and are not affected.

Same-origin alone is defeated by DNS rebinding: a page on ``evil.example``
whose name is re-pointed at 127.0.0.1 sends ``Origin`` and ``Host`` that
agree.  What it cannot forge is ``Host``: it is always the attacker's name.
So a gateway bound to loopback also requires ``Host`` to be a loopback
name (or one of ``allow_hosts``, for a reverse proxy that forwards a
public ``Host``).

The rules are pure functions of the request's headers and the
configuration (``FrontDoor.refusal``), so they are tested without sockets.

``redacting_logger`` is the logger handed to ``websockets``: at DEBUG that
library writes request lines (``/?auth=...``), headers (``Authorization``,
``Cookie``) and previews of frame payloads (a ``hello`` with its ``auth``).
Its filter rewrites those records before any handler sees them.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.frames import Close, Frame, Opcode

#: ``allow_origins`` / ``allow_hosts`` entry that lets anything in (unsafe).
ANY = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ::1 (brackets allowed)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _split_hostport(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) -> (lower-case host without brackets, port).

    Raises:
        ValueError: not a host with an optional port.
    """
    if not value or any(c in value for c in "/?#@ \t\\"):
        raise ValueError(f"not a host[:port]: {value!r}")
    parts = urlsplit("//" + value)
    host = parts.hostname
    if not host:
        raise ValueError(f"not a host[:port]: {value!r}")
    return host.rstrip("."), parts.port  # .port raises ValueError on a bad port


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in canonical form (lower case, no default port).

    ``null`` and ``*`` are returned as they are.

    Raises:
        ValueError: not an origin (no scheme or host, a path, credentials, a bad port).
    """
    value = origin.strip()
    if value in (ANY, "null"):
        return value
    parts = urlsplit(value)
    if (
        not parts.scheme
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    scheme, host, port = parts.scheme.lower(), parts.hostname.rstrip("."), parts.port
    shown = f"[{host}]" if ":" in host else host
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{shown}"
    return f"{scheme}://{shown}:{port}"


def normalize_host(entry: str) -> str:
    """An ``allow_hosts`` entry, ``host`` or ``host:port``, in canonical form.

    Raises:
        ValueError: not a host with an optional port.
    """
    value = entry.strip()
    if value == ANY:
        return value
    host, port = _split_hostport(value)
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


@dataclass(frozen=True)
class FrontDoor:
    """The Origin and Host rules of one gateway (see the module docstring)."""

    #: The gateway listens on a loopback address: Host is checked.
    loopback: bool
    #: Canonical allowed origins (``normalize_origin``); ``*`` allows any.
    allow_origins: frozenset[str] = frozenset()
    #: Canonical allowed hosts (``normalize_host``); ``*`` allows any.
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, bind_host: str, allow_origins: Iterable[str] = (), allow_hosts: Iterable[str] = ()) -> FrontDoor:
        """The rules for a gateway bound to ``bind_host``.

        Raises:
            ValueError: an entry of ``allow_origins`` or ``allow_hosts`` is malformed.
        """
        return cls(
            loopback=is_loopback(bind_host),
            allow_origins=frozenset(normalize_origin(o) for o in allow_origins),
            allow_hosts=frozenset(normalize_host(h) for h in allow_hosts),
        )

    def refusal(self, headers: Mapping[str, str]) -> str | None:
        """Why a request with these headers is refused, or None to let it in.

        ``headers`` look names up case-insensitively (websockets' and Starlette's do).
        """
        host = headers.get("Host")
        if not self._host_ok(host):
            return "host not allowed"
        origin = headers.get("Origin")
        if origin is not None and not self._origin_ok(origin, host):
            return "origin not allowed"
        return None

    def _host_ok(self, host: str | None) -> bool:
        if not self.loopback and not self.allow_hosts:
            return True
        # No Host at all cannot come from a browser (HTTP/1.1 requires it, and
        # every browser sends it), so it cannot be a rebinding attack.
        if host is None or ANY in self.allow_hosts:
            return True
        try:
            name, port = _split_hostport(host)
        except ValueError:
            return False
        if is_loopback(name):
            return True
        shown = f"[{name}]" if ":" in name else name
        return shown in self.allow_hosts or f"{shown}:{port}" in self.allow_hosts

    def _origin_ok(self, origin: str, host: str | None) -> bool:
        if ANY in self.allow_origins:
            return True
        try:
            canonical = normalize_origin(origin)
        except ValueError:
            return False
        if canonical in self.allow_origins:
            return True
        if canonical in (ANY, "null") or host is None:
            return False
        # The gateway's own page: the origin names the host and port the
        # request went to.  Either scheme: behind a TLS proxy the page is https.
        parts = urlsplit(canonical)
        if parts.scheme not in ("http", "https"):
            return False
        try:
            name, port = _split_hostport(host)
        except ValueError:
            return False
        default = _DEFAULT_PORTS[parts.scheme]
        return parts.hostname == name and (parts.port or default) == (port or default)


# --- logs ------------------------------------------------------------------------------------

REDACTED = "[redacted]"
#: Query parameters whose values are credentials (matched anywhere in the name).
_QUERY_SECRET = re.compile(
    r"([?&;][^=&;#\s]*(?:auth|token|key|secret|passw|pwd|session|sig)[^=&;#\s]*=)[^&;#\s]*",
    re.IGNORECASE,
)
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_HEADER_FORMATS = frozenset({"< %s: %s", "> %s: %s"})


def redact_text(text: str) -> str:
    """``text`` with the values of credential-like query parameters replaced."""
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)


def _frame_summary(frame: Frame) -> str:
    """Opcode and length only: a payload (a hello's ``auth``) never reaches the log."""
    size = f"[{len(frame.data)} bytes]"
    if frame.opcode is Opcode.CLOSE:
        try:
            return f"CLOSE {Close.parse(frame.data).code} {size}"
        except Exception:  # a malformed close frame: the length will do
            return f"CLOSE {size}"
    return f"{frame.opcode.name} {size}"


class RedactCredentials(logging.Filter):
    """Rewrites a ``websockets`` log record so that it carries no credential.

    Query values of credential-like parameters, the values of
    Authorization / Proxy-Authorization / Cookie / Set-Cookie headers, and
    frame payloads are replaced; tracebacks are redacted like messages.
    Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            if record.msg in _HEADER_FORMATS and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
                record.args = (args[0], REDACTED)
            else:
                record.args = tuple(_redact_arg(a) for a in args)
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True


def _redact_arg(arg: Any) -> Any:
    if isinstance(arg, Frame):
        return _frame_summary(arg)
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return f"[{len(arg)} bytes]"
    if isinstance(arg, str):
        return redact_text(arg)
    return arg


def redacting_logger(name: str) -> logging.Logger:
    """The logger ``name`` with a ``RedactCredentials`` filter (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactCredentials) for f in logger.filters):
        logger.addFilter(RedactCredentials())
    return logger


#: What an operator passes to let in what the front door refused (``FrontDoor.refusal``'s texts):
#: said in the gateway's log, not to the refused client.
FIXES = {
    "origin not allowed": "if that page is yours, pass --allow-origin ORIGIN (Config.allow_origins)",
    "host not allowed": "behind a reverse proxy, pass --allow-host NAME (Config.allow_hosts)",
}
