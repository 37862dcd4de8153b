"""The browser client in ``web/``, served at ``/``: the SDK and a meeting page, plain static files."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from control.downloads import file_download

log = logging.getLogger("huiyi.web")

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


async def _serve(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    path = WEB_DIR / name
    if path.suffix not in CONTENT_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    return await file_download(request, path, {"Content-Type": CONTENT_TYPES[path.suffix], "Cache-Control": "no-cache"})


def add_web_client(app: web.Application) -> None:
    if not WEB_DIR.is_dir():
        log.warning("no web client at %s; / is not served", WEB_DIR)
        return
    app.router.add_get("/", _serve, name="web_index")
    app.router.add_get(r"/{name:[a-z][a-z0-9_-]*\.(?:html|js|css)}", _serve, name="web_file")
