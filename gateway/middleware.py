"""Middleware: where an event passes before it is stored, and a request before the agent sees it.

    class Redact(Middleware):
        def on_event(self, sid, k, d):
            if k == "log":
                d = {**d, "msg": d["msg"].replace(SECRET, "***")}
            return k, d

    Gateway(middleware=[DropDebug(), Redact(), Audit()])   # wirepipe serve --middleware mod:Redact

Every event an agent writes goes through each middleware's ``on_event``, in
order, before it takes its seq: return ``(k, d)`` (changed or not) or None
to drop it.  Every ``reply``, ``send`` and ``cancel`` a client sends goes
through each ``on_request``, in order, before the session acts on it: return
the frame (changed or not) or None to refuse it, which the client gets as
``replied ok: false, err: "refused"``.

Nothing is lost when a middleware fails, and no session wedges:

- ``on_event`` raising, or returning something that is not a well-formed
  event, keeps the event as it came to that middleware (the error is
  logged) and the next middleware sees it;
- the events that steer a run, ``ask``, ``answer`` and ``status``, may be
  changed but not dropped nor turned into another kind (an ask nobody sees
  would wait forever, a run without its final status would never end): such
  a result keeps the event as it was;
- ``on_request`` raising refuses the request (``refused``), logged.

``on_event`` runs where the agent writes (any thread, under no lock of the
gateway's): keep it quick, and thread-safe if the agent writes from several
threads.  ``on_request`` runs on the event loop: never block in it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from protocol import Cancel, Grant, Kind, Reply, Send, check_event, check_value

log = logging.getLogger("wirepipe.middleware")

#: Kinds that steer a run: a middleware may change them, not drop them or change their kind.
CONTROL_KINDS: Final = frozenset({Kind.ASK, Kind.ANSWER, Kind.STATUS})

Request = Reply | Send | Cancel


class Middleware:
    """Subclass and override either hook; the defaults pass everything through."""

    def on_event(self, sid: str, k: str, d: Any) -> tuple[str, Any] | None:
        """An event about to be stored: ``(k, d)`` to keep (changed or not), None to drop it."""
        return k, d

    def on_request(self, sid: str, request: Request, grant: Grant) -> Request | None:
        """A client's reply, send or cancel for ``sid``: the request to act on, or None to refuse it."""
        return request


def apply_events(chain: Sequence[Middleware], sid: str, k: str, d: Any) -> tuple[str, Any] | None:
    """``(k, d)`` through every middleware's ``on_event``, with the rules of this module."""
    for mw in chain:
        try:
            out = mw.on_event(sid, k, d)
        except Exception:
            log.exception(
                "middleware %s failed on a %r event of %s; the event is kept as it was", type(mw).__name__, k, sid
            )
            continue
        if out is None:
            if k in CONTROL_KINDS:
                log.error(
                    "middleware %s tried to drop a %r event of %s; kept (it steers the run)", type(mw).__name__, k, sid
                )
                continue
            return None
        why = _why_bad(k, out)
        if why is not None:
            log.error(
                "middleware %s returned %s for a %r event of %s; the event is kept as it was",
                type(mw).__name__,
                why,
                k,
                sid,
            )
            continue
        k, d = out
    return k, d


def _why_bad(k: str, out: object) -> str | None:
    if not isinstance(out, tuple) or len(out) != 2:
        return "not a (kind, payload) pair"
    new_k, new_d = out
    if k in CONTROL_KINDS and new_k != k:
        return f"another kind ({new_k!r})"
    return check_event(new_k, new_d) or check_value(new_d)


def apply_requests(chain: Sequence[Middleware], sid: str, request: Request, grant: Grant) -> Request | None:
    """``request`` through every middleware's ``on_request``; None if one refused it (or failed)."""
    for mw in chain:
        try:
            out = mw.on_request(sid, request, grant)
        except Exception:
            log.exception(
                "middleware %s failed on a %s request of %s; the request is refused",
                type(mw).__name__,
                request.t.value,
                sid,
            )
            return None
        if out is None:
            return None
        if not isinstance(out, (Reply, Send, Cancel)) or out.rid != request.rid:
            log.error(
                "middleware %s returned %r for a %s request of %s; the request is refused",
                type(mw).__name__,
                type(out).__name__,
                request.t.value,
                sid,
            )
            return None
        request = out
    return request
