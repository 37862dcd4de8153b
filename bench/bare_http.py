"""The control plane's baseline: a bare aiohttp handler on uvloop answering a JSON body the size
of huiyi's envelope. What ``python -m bench.api`` measures against it is the cost of everything
huiyi adds per request (routing by declaration, auth, limits, validation, envelope, logging)."""

from __future__ import annotations

import argparse
import json

from aiohttp import web

BODY = json.dumps(
    {
        "code": 200,
        "message": "Success",
        "data": {"status": "ok", "version": "0.1.0", "database": "sqlite"},
        "timestamp": "2026-01-01T00:00:00Z",
        "request_id": "0" * 32,
    },
    separators=(",", ":"),
)


async def answer(request: web.Request) -> web.Response:
    return web.Response(text=BODY, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_http", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    app = web.Application()
    app.router.add_get("/api/v1/health", answer)
    web.run_app(app, host=arguments.host, port=arguments.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
