"""Files for pages of other origins: CORS for an allowed origin, and ``/esm/`` (the import map applied).

The notebook widget runs in Jupyter's page, which has no import map and is
not the gateway's origin: it loads the JS client and the web UI's view
from ``/esm/`` with ``import()``.  Both fronts (the gateway's port and
``gw.asgi()`` under a mount) answer the same.  The real browser test is
tests/e2e/test_notebook.py.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from support import TIMEOUT

from gateway.http_front import STATIC, client_dir, import_map, resolve_imports

pytestmark = pytest.mark.fronts

JUPYTER = "http://localhost:8888"
SPECIFIER = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)(['"])([^'"\s]+)\1""")


def code_of(js: str) -> str:
    """``js`` without its comments (JSDoc names types with ``import('...')`` that no browser loads)."""
    js = re.sub(r"/\*.*?\*/", "", js, flags=re.DOTALL)
    return "\n".join(line for line in js.splitlines() if not line.lstrip().startswith("//"))


async def get(url: str, origin: str | None = None) -> httpx.Response:
    headers = {"Origin": origin} if origin else {}
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        return await http.get(url, headers=headers)


# --- CORS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["client/wirepipe.js", "vendor/msgpack/index.mjs", "esm/render.js", "esm/style.css", "esm/client/state.js"]
)
async def test_an_allowed_origin_may_read_the_files(make_gw: Any, path: str) -> None:
    gw = await make_gw(allow_origins=[JUPYTER])
    r = await get(urljoin(gw.http_url, path), JUPYTER)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == JUPYTER
    assert r.headers["vary"] == "Origin"


@pytest.mark.parametrize("path", ["render.js", "style.css", "index.html"])
async def test_the_pages_own_files_stay_its_own(make_gw: Any, path: str) -> None:
    """Outside /client/, /vendor/ and /esm/, no other origin reads a file, allowed or not."""
    gw = await make_gw(allow_origins=[JUPYTER])
    r = await get(urljoin(gw.http_url, path), JUPYTER)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_no_cors_without_an_origin(make_gw: Any) -> None:
    gw = await make_gw(allow_origins=[JUPYTER])
    r = await get(urljoin(gw.http_url, "esm/client/wirepipe.js"))
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_another_origin_is_refused_without_cors(make_gw: Any) -> None:
    gw = await make_gw(allow_origins=[JUPYTER])
    r = await get(urljoin(gw.http_url, "esm/render.js"), "http://localhost:9999")
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


# --- /esm/ --------------------------------------------------------------------------------------


async def test_the_module_graph_of_the_widget_closes_under_esm(make_gw: Any) -> None:
    """Every import reachable from the client and the view resolves to a served file, none bare."""
    gw = await make_gw(allow_origins=[JUPYTER])
    base = urljoin(gw.http_url, "esm/")
    todo = [urljoin(base, "client/wirepipe.js"), urljoin(base, "render.js")]
    seen: set[str] = set()
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        r = await get(url, JUPYTER)
        assert r.status_code == 200, url
        assert r.headers["content-type"] == "text/javascript; charset=utf-8"
        for _quote, spec in SPECIFIER.findall(code_of(r.text)):
            if spec == "ws":  # Node's WebSocket package, a variable's value, never imported in a browser
                continue
            assert spec.startswith("."), f"{url} imports {spec!r}: a page without an import map cannot resolve it"
            todo.append(urljoin(url, spec))
    assert urljoin(base, "client/state.js") in seen and urljoin(base, "vendor/msgpack/index.mjs") in seen


async def test_esm_serves_the_same_files_with_only_imports_changed(make_gw: Any) -> None:
    gw = await make_gw()
    r = await get(urljoin(gw.http_url, "esm/render.js"))
    source = (STATIC / "render.js").read_text()
    assert r.text == resolve_imports(source, "render.js", import_map())
    assert SPECIFIER.sub("", r.text) == SPECIFIER.sub("", source)
    style = await get(urljoin(gw.http_url, "esm/style.css"))
    assert style.content == (STATIC / "style.css").read_bytes()
    js = await get(urljoin(gw.http_url, "esm/client/wirepipe.js"))
    assert "from '../vendor/msgpack/index.mjs'" in js.text
    assert js.text.count("\n") == (client_dir() / "wirepipe.js").read_text().count("\n")


@pytest.mark.parametrize(
    "path", ["esm/", "esm/nope.js", "esm/../../pyproject.toml", "esm/esm/render.js", "esm/%2e%2e/app.js"]
)
async def test_esm_serves_nothing_else(make_gw: Any, path: str) -> None:
    gw = await make_gw()
    r = await get(urljoin(gw.http_url, path))
    assert r.status_code == 404 or (path == "esm/" and r.headers["content-type"].startswith("text/html"))


def test_resolve_imports() -> None:
    imports = {"@msgpack/msgpack": "vendor/msgpack/index.mjs", "@wirepipe/client/": "client/", "@x/": "deep/x/"}
    src = (
        "import { a } from '@wirepipe/client/state.js';\n"
        'export { b } from "@msgpack/msgpack";\n'
        "import './side-effect.js';\n"
        "const m = await import('@x/y/z.js');\n"
        "import { c } from 'unmapped';\n"
        "import { d } from 'https://cdn.example/d.js';\n"
        "// src/ imports only '@msgpack/msgpack' and relative files\n"
    )
    out = resolve_imports(src, "client/sub/mod.js", imports)
    assert out.splitlines() == [
        "import { a } from '../state.js';",
        'export { b } from "../../vendor/msgpack/index.mjs";',
        "import './side-effect.js';",
        "const m = await import('../../deep/x/y/z.js');",
        "import { c } from 'unmapped';",
        "import { d } from 'https://cdn.example/d.js';",
        "// src/ imports only '@msgpack/msgpack' and relative files",
    ]
    assert resolve_imports("import '@wirepipe/client/a.js';", "top.js", imports) == "import './client/a.js';"
