"""tests/cases/client_cases.json against the Python client's rules and reducer.

The same file runs against the JavaScript client (clients/js/test/cases.test.js),
so both clients send the same hellos and acks, deliver and drop the same events,
reset at the same welcomes and fold events into the same snapshot.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import msgpack
import pytest

from protocol import (
    ClientProtocol,
    Error,
    Event,
    Pong,
    Replied,
    Snapshot,
    Welcomed,
    decode_client,
    decode_server,
    packb,
)

CASES = json.loads((Path(__file__).parents[1] / "cases" / "client_cases.json").read_text())


def server_frame(raw: dict[str, Any]) -> Any:
    frame = dict(raw)
    if frame["t"] == "welcome":
        frame = {**CASES["welcome_defaults"], **frame}
    elif frame["t"] == "ev":
        frame = {**CASES["event_defaults"], **frame}
    elif frame["t"] == "batch":
        frame["evs"] = [{**CASES["event_defaults"], **e} for e in frame["evs"]]
    return decode_server(packb(frame))


def as_sent(data: bytes) -> dict[str, Any]:
    """A client frame as the cases write it: absent, nil and `live: false` are the same."""
    m = msgpack.unpackb(data, raw=False)
    return {k: v for k, v in m.items() if v is not None and not (k == "live" and v is False)}


@pytest.mark.parametrize("case", CASES["protocol"], ids=[c["name"] for c in CASES["protocol"]])
def test_protocol_case(case: dict[str, Any]) -> None:
    options = {**CASES["options"], **case.get("options", {})}
    proto = ClientProtocol(
        options["sid"],
        auth=options.get("auth"),
        window=options.get("window"),
        start=options.get("start"),
        live=options.get("live", False),
        client=options.get("client"),
    )
    delivered: deque[tuple[int, Event]] = deque()
    for i, step in enumerate(case["steps"]):
        where = f"step {i}: {step}"
        outs: list[Any] = []
        if step.get("open"):
            proto.opened()
        elif "recv" in step:
            outs = proto.receive_frame(server_frame(step["recv"]))
        elif "consume" in step:
            while True:
                generation, ev = delivered.popleft()
                proto.consumed(ev.seq, generation)
                if ev.seq == step["consume"]:
                    break
        elif "request" in step:
            proto.request(decode_client(packb(step["request"])))  # type: ignore[arg-type]
        elif "close" in step:
            assert proto.closed(step["close"]) == step["action"], where
        elif "auth" in step:
            proto.auth = step["auth"]
        else:
            raise AssertionError(f"unknown step {step}")
        events = [o for o in outs if isinstance(o, Event)]
        delivered.extend((proto.generation, ev) for ev in events)
        assert [ev.seq for ev in events] == step.get("events", []), where
        assert [o.rid for o in outs if isinstance(o, Replied)] == step.get("replied", []), where
        assert [o.code for o in outs if isinstance(o, Error)] == step.get("errors", []), where
        assert [o.n for o in outs if isinstance(o, Pong)] == step.get("pongs", []), where
        welcomes = [o for o in outs if isinstance(o, Welcomed)]
        if "welcome" in step:
            assert [{"reset": w.reset, "first": w.first} for w in welcomes] == [step["welcome"]], where
        assert [as_sent(b) for b in proto.data_to_send()] == step.get("sends", []), where
        state = {
            "last_seq": proto.last_seq,
            "epoch": proto.epoch,
            "duplicates": proto.duplicates,
            "gaps": proto.gaps,
            "resets": len(proto.resets),
            "errors": len(proto.errors),
            "connects": proto.connects,
        }
        for key, want in step.get("state", {}).items():
            assert state[key] == want, f"{where}: {key}"


@pytest.mark.parametrize("case", CASES["snapshot"], ids=[c["name"] for c in CASES["snapshot"]])
def test_snapshot_case(case: dict[str, Any]) -> None:
    snap = Snapshot.from_map(case["from"]) if "from" in case else Snapshot()
    for k, d in case["events"]:
        snap.apply(k, d)
    assert snap.as_map() == case["expect"]


def test_every_step_kind_is_exercised() -> None:
    """A typo in a step's key would make the runner raise; make sure each kind runs somewhere."""
    kinds = {
        k
        for c in CASES["protocol"]
        for s in c["steps"]
        for k in ("open", "recv", "consume", "request", "close", "auth")
        if k in s
    }
    assert kinds == {"open", "recv", "consume", "request", "close", "auth"}
