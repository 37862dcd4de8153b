"""The browser client in ``web/``, served at ``/``: the SDK and the meeting app, plain static files
(ES modules, one folder level deep, no build step)."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from control.downloads import file_download

log = logging.getLogger("huiyi.web")

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# A name, optionally under one folder, of lower-case letters, digits, - and _: nothing that could
# climb out of web/ (no dots but the extension's, no slashes but the folder's).
FILE_PATTERN = r"(?:[a-z][a-z0-9_-]*/)?[a-z][a-z0-9_-]*\.(?:html|js|css|svg)"


async def _serve(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    path = WEB_DIR / name
    if path.suffix not in CONTENT_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    headers = {
        "Content-Type": CONTENT_TYPES[path.suffix],
        "Cache-Control": "no-cache",
        # The app loads nothing from elsewhere: scripts and styles only from this server, media from
        # the browser's own devices, avatars as blobs or from the API.
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
            "connect-src 'self' ws: wss:; style-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'"
        ),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }
    return await file_download(request, path, headers)


def add_web_client(app: web.Application) -> None:
    if not WEB_DIR.is_dir():
        log.warning("no web client at %s; / is not served", WEB_DIR)
        return
    app.router.add_get("/", _serve, name="web_index")
    app.router.add_get("/{name:" + FILE_PATTERN + "}", _serve, name="web_file")
