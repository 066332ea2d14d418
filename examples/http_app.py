"""The whole gateway inside a Starlette app, as docs/http.md shows it.

    ./run python -m uvicorn --app-dir examples http_app:app --port 8000

FastAPI is the same: ``app = FastAPI(lifespan=lifespan)`` then
``app.mount("/agents", gw.asgi())``.  Everything is on the app's origin:
REST and SSE under ``/agents/api/v1``, the WebSocket at
``ws://127.0.0.1:8000/agents/``, the web UI at ``http://127.0.0.1:8000/agents/``;
the gateway's own port (8765 here) serves its clients too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

from gateway import Gateway


async def review(pipe: Any, value: Any) -> None:
    """Drafts something, asks a person to confirm it, says what they said."""
    pipe.emit("log", {"level": "INFO", "msg": f"drafting {value}"})
    answer = await pipe.ask("Ship it?", choices=["yes", "no"])
    pipe.emit("log", {"level": "INFO", "msg": f"human said {answer}"})


gw = Gateway(host="127.0.0.1", port=8765, apps={"review": review})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with gw:  # the gateway starts with the app and closes with it
        yield


app = Starlette(lifespan=lifespan, routes=[Mount("/agents", app=gw.asgi())])
