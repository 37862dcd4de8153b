"""The aiohttp application factory: services opened in order on start-up, closed in reverse."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web

from ai.service import AiService
from config import Settings
from control.api import GROUPS
from control.api.meta import huiyi_version
from control.api.sessions import STARTED
from control.auth.accounts import AccountCache
from control.auth.guard import guard
from control.auth.secret import load_signing_key, load_turn_secret
from control.auth.throttle import PasswordThrottle
from control.auth.tokens import TokenCodec
from control.avatars import AvatarStore
from control.bus import open_bus
from control.captions import Captioner
from control.context import (
    ACCOUNTS,
    AI,
    AVATARS,
    BACKGROUND,
    CAPTIONS,
    HUB,
    JOBS,
    LIMITER,
    MAILER,
    MEDIA,
    METRICS,
    OPENAPI,
    PASSWORD_THROTTLE,
    RECORDINGS,
    SETTINGS,
    SFU,
    STORAGE,
    STORE,
    STREAMS,
    TOKENS,
    TURN,
    WEBHOOKS,
)
from control.endpoints import Endpoint, bind
from control.enhancement import executors as enhancement_executors
from control.jobs.runner import JobRunner
from control.limits import RateLimiter
from control.lost_nodes import lost_nodes_context
from control.mail import Mailer
from control.media_events import MediaListener
from control.media_router import MediaRouter
from control.metrics.http import metrics_middleware
from control.metrics.instruments import Metrics
from control.metrics.serve import metrics_context, public_metrics
from control.middleware import error_middleware, request_id_middleware
from control.openapi import build_openapi
from control.placement import Placement
from control.readiness import DATABASE_PROBE, DatabaseProbe, redis_context
from control.recordings import Recorder
from control.remote_sfu import RemoteSfu
from control.rooms import close_node_sessions
from control.signaling.hub import Hub
from control.signaling.socket import signaling_socket
from control.storage import LocalStorage
from control.store import Store
from control.store.recordings import RecordingRecord
from control.store.streams import StreamRecord
from control.streams import Streamer
from control.webclient import add_web_client
from control.webhooks.dispatcher import Webhooks
from control.webhooks.events import RECORDING_READY, STREAM_STATE_CHANGED
from sfu.denoise import WorkerSetup
from sfu.pool import media_server
from turn.process import TurnProcess

# Request bodies read whole (JSON) stay small; file uploads are streamed with their own caps.
MAX_JSON_BODY = 1024 * 1024
SERVER_NAME = "huiyi"

log = logging.getLogger("huiyi")


def all_endpoints() -> list[Endpoint]:
    return [endpoint for group in GROUPS for endpoint in group.endpoints]


async def _name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp would answer with its and Python's versions, a map to known flaws: say only what this is."""
    response.headers["Server"] = SERVER_NAME


async def _store_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[STORE] = await Store.open(settings.database_url, settings.database.schema_name, settings.database.pool_size)
    app[DATABASE_PROBE] = DatabaseProbe(app[STORE].engine)
    app[ACCOUNTS] = AccountCache(app[STORE].users, settings.auth.account_cache_seconds)
    yield
    await app[STORE].close()


async def _webhooks_context(app: web.Application) -> AsyncIterator[None]:
    """Started right after the store and closed right before it, so that the events of everything
    else closing (peers leaving, tracks withdrawn) are still written to the queue."""
    settings = app[SETTINGS]
    app[WEBHOOKS] = Webhooks(app[STORE].webhooks, settings.webhooks, settings.node_id, app[METRICS])
    await app[WEBHOOKS].start()
    yield
    await app[WEBHOOKS].close()


async def _signaling_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    bus = open_bus(settings.redis.url, settings.redis.key_prefix, settings.node_id)
    app[HUB] = Hub(bus, settings.node_id, app[ACCOUNTS])
    await app[HUB].start()
    await close_node_sessions(app, settings.node_id)
    app[STORE].users.listeners.append(app[HUB].announce_account)
    yield
    app[STORE].users.listeners.remove(app[HUB].announce_account)
    await app[HUB].close()


async def _sfu_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    setup = WorkerSetup(
        model_dir=settings.ai.model_dir,
        cache_dir=str(settings.server.data_dir / "ai-cache"),
        bitrate=settings.sfu.noise_suppression_bitrate,
        log_level=settings.server.log_level,
    )
    app[SFU] = media_server(settings.sfu, setup, settings.server.log_level)
    app[SFU].events = MediaListener(app[WEBHOOKS], app[METRICS])
    await app[SFU].start()
    yield
    await app[SFU].close()


async def _media_router_context(app: web.Application) -> AsyncIterator[None]:
    """With Redis, each meeting's media runs on one node, reached from the others over the bus."""
    settings = app[SETTINGS]
    placement = remote = None
    if settings.redis.url:
        placement = Placement(
            settings.redis.url, settings.redis.key_prefix, settings.node_id, settings.cluster.node_timeout_seconds
        )
        remote = RemoteSfu(app[HUB], app[SFU], settings.node_id)
    app[MEDIA] = MediaRouter(app[SFU], remote, placement, settings.node_id, settings.cluster, settings.internal_url)
    await app[MEDIA].start()
    yield
    await app[MEDIA].close()


async def _turn_context(app: web.Application) -> AsyncIterator[None]:
    """The TURN server is a convenience for clients behind strict networks: when it cannot start
    (its port taken, its certificate unreadable), meetings go on without it and clients are given
    no ICE servers."""
    process = app[TURN]
    if app[SETTINGS].turn.enabled:
        try:
            await process.start()
        except RuntimeError as exc:
            log.error("%s; clients get no ICE servers", exc)
    yield
    await process.close()


async def _close_sockets(app: web.Application) -> None:
    """aiohttp waits for open handlers before cleanup; sockets would hold shutdown up until then."""
    app[HUB].disconnect_all()


async def _jobs_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[JOBS] = JobRunner(
        app[STORE],
        app[STORAGE],
        settings.media.job_workers,
        settings.node_id,
        settings.media.job_lease_seconds,
        executors=enhancement_executors(app[AI], app[STORAGE]),
    )
    await app[JOBS].start()
    yield
    await app[JOBS].close()


async def _recordings_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[RECORDINGS] = Recorder(
        store=app[STORE],
        hub=app[HUB],
        storage=app[STORAGE],
        jobs=app[JOBS],
        media=app[SFU],
        settings=settings.recording,
        data_dir=settings.server.data_dir,
        node_id=settings.node_id,
    )
    await app[RECORDINGS].start()

    async def tell_ready(recording: RecordingRecord) -> None:
        app[WEBHOOKS].emit(
            RECORDING_READY,
            {
                "recording_id": recording.id,
                "meeting_id": recording.meeting_id,
                "duration": recording.duration,
                "size": recording.size,
                "composite_file_id": recording.composite_file_id,
            },
        )

    app[RECORDINGS].ready_listeners.append(tell_ready)
    yield
    await app[RECORDINGS].close()


async def _streams_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[STREAMS] = Streamer(
        store=app[STORE],
        hub=app[HUB],
        media=app[SFU],
        settings=settings.streaming,
        data_dir=settings.server.data_dir,
        node_id=settings.node_id,
        log_level=settings.server.log_level,
    )

    async def tell_state(stream: StreamRecord) -> None:
        data = {"stream_id": stream.id, "meeting_id": stream.meeting_id, "state": stream.status, "error": stream.error}
        app[WEBHOOKS].emit(STREAM_STATE_CHANGED, data)

    app[STREAMS].state_listeners.append(tell_state)
    await app[STREAMS].start()
    yield
    await app[STREAMS].close()


async def _captions_context(app: web.Application) -> AsyncIterator[None]:
    """The caption worker process starts only once a captioned meeting has audio on this node."""
    app[CAPTIONS] = Captioner(store=app[STORE], hub=app[HUB], media=app[SFU], settings=app[SETTINGS])
    await app[CAPTIONS].start()
    yield
    await app[CAPTIONS].close()


async def _ai_context(app: web.Application) -> AsyncIterator[None]:
    """Worker nodes start on the first AI request, so a server never asked for AI work spends nothing on it."""
    app[AI] = AiService(app[SETTINGS])
    yield
    await app[AI].close()


async def _limiter_context(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[LIMITER].close()
    await app[PASSWORD_THROTTLE].close()


async def _background_context(app: web.Application) -> AsyncIterator[None]:
    yield
    if app[BACKGROUND]:
        await asyncio.wait(app[BACKGROUND], timeout=30)


def create_app(settings: Settings) -> web.Application:
    middlewares = [request_id_middleware, error_middleware]
    if settings.metrics.enabled:
        middlewares.insert(0, metrics_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=MAX_JSON_BODY)
    data_dir = settings.server.data_dir
    endpoints = all_endpoints()
    app[SETTINGS] = settings
    app[TOKENS] = TokenCodec(
        load_signing_key(settings.auth.jwt_secret, data_dir),
        access_ttl=timedelta(seconds=settings.auth.access_token_ttl_seconds),
        refresh_ttl=timedelta(seconds=settings.auth.refresh_token_ttl_seconds),
    )
    app[LIMITER] = RateLimiter(
        {endpoint.operation_id: endpoint.rate_limit for endpoint in endpoints},
        settings.rate_limits.endpoints,
        enabled=settings.rate_limits.enabled,
        redis_url=settings.redis.url,
        key_prefix=settings.redis.key_prefix,
    )
    app[PASSWORD_THROTTLE] = PasswordThrottle(
        enabled=settings.rate_limits.enabled, redis_url=settings.redis.url, key_prefix=settings.redis.key_prefix
    )
    app[MAILER] = Mailer(settings.mail, data_dir / "outbox")
    app[AVATARS] = AvatarStore(data_dir / "avatars", settings.uploads.avatar_size_px)
    app[BACKGROUND] = set()
    app[OPENAPI] = build_openapi(endpoints, huiyi_version())
    app[STARTED] = time.monotonic()
    app[METRICS] = Metrics(huiyi_version(), settings.node_id)
    app[STORAGE] = LocalStorage(data_dir / "media", settings.node_id)
    turn_secret = load_turn_secret(settings.turn.secret, data_dir) if settings.turn.enabled else ""
    app[TURN] = TurnProcess(settings.turn, turn_secret, settings.server.log_level, settings.server.log_format)
    # Closed in reverse: sockets and jobs stop first, then their cleanups are awaited while the
    # store is still open.
    app.cleanup_ctx.extend(
        [
            _store_context,
            _webhooks_context,
            _background_context,
            redis_context,
            _signaling_context,
            _sfu_context,
            _media_router_context,
            lost_nodes_context,
            _turn_context,
            # Before the jobs: denoising and enhancement jobs run on the AI worker nodes.
            _ai_context,
            _jobs_context,
            _recordings_context,
            _streams_context,
            _captions_context,
            _limiter_context,
        ]
    )
    if settings.metrics.enabled:
        app.cleanup_ctx.append(metrics_context)

    prefixes = {group.prefix for group in GROUPS}
    for endpoint in endpoints:
        handler = bind(endpoint, guard)
        app.router.add_route(endpoint.method, endpoint.path, handler, name=endpoint.operation_id)
        if endpoint.path in prefixes:
            # A collection is reachable with and without the trailing slash.
            app.router.add_route(endpoint.method, endpoint.path + "/", handler)
    app.router.add_get("/ws/signaling", signaling_socket, name="signaling")
    if settings.metrics.enabled and settings.metrics.token:
        app.router.add_get("/metrics", public_metrics, name="metrics")
    add_web_client(app)
    app.on_shutdown.append(_close_sockets)
    app.on_response_prepare.append(_name_the_server)
    return app
