"""Serving the metrics: on an admin listener of their own (no token: keep it off the public
network), and, when a token is set, at /metrics on the public port to holders of the token."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control.auth.guard import bearer_token
from control.context import JOBS, METRICS, SETTINGS
from control.errors import unauthorized
from control.metrics.loop import watch_loop_lag
from control.metrics.node import NodeCollector
from control.store.media import JobRecord

log = logging.getLogger("huiyi.metrics")

COLLECTOR = web.AppKey("metrics_collector", NodeCollector)
# Where the admin listener is bound, once it is: (host, port).
ADMIN_ADDRESS = web.AppKey("metrics_address", tuple)


async def exposition(app: web.Application) -> web.Response:
    """The whole text exposition, its slow sources asked first."""
    await app[COLLECTOR].refresh()
    return web.Response(body=generate_latest(app[METRICS].registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def public_metrics(request: web.Request) -> web.Response:
    """GET /metrics on the public port (registered only when a token is configured)."""
    given = bearer_token(request) or ""
    if not hmac.compare_digest(given.encode(), request.app[SETTINGS].metrics.token.encode()):
        raise unauthorized("The metrics token is required (Authorization: Bearer <token>)")
    return await exposition(request.app)


async def metrics_context(app: web.Application) -> AsyncIterator[None]:
    """Start sampling the loop, timing jobs and, with ``[metrics] port``, the admin listener."""
    settings = app[SETTINGS].metrics
    metrics = app[METRICS]
    collector = app[COLLECTOR] = NodeCollector(app)
    metrics.registry.register(collector)

    async def job_finished(job: JobRecord) -> None:
        if job.started_at is not None and job.finished_at is not None:
            seconds = (job.finished_at - job.started_at).total_seconds()
            metrics.job_seconds.labels(job.kind, job.status).observe(max(0.0, seconds))

    app[JOBS].listeners.append(job_finished)
    lag = asyncio.get_running_loop().create_task(watch_loop_lag(metrics.loop_lag))
    runner = await _admin_listener(app, settings.host, settings.port)
    yield
    if runner is not None:
        await runner.cleanup()
    lag.cancel()
    app[JOBS].listeners.remove(job_finished)


async def _admin_listener(app: web.Application, host: str, port: int) -> web.AppRunner | None:
    """A listener of its own for GET /metrics. A port already taken costs the metrics, not the
    server: it is logged and the node serves on."""

    async def handle(_: web.Request) -> web.Response:
        return await exposition(app)

    admin = web.Application()
    admin.router.add_get("/metrics", handle)
    runner = web.AppRunner(admin, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as exc:
        log.error("metrics listener cannot bind %s:%s (%s); no metrics on it", host, port, exc.strerror or exc)
        await runner.cleanup()
        return None
    bound = runner.addresses[0]
    app[ADMIN_ADDRESS] = (bound[0], bound[1])
    log.info("metrics at http://%s:%s/metrics", bound[0], bound[1])
    return runner
