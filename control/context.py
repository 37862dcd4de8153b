"""Typed keys for what the application holds for its handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from ai.service import AiService
from config import Settings
from control.auth.accounts import AccountCache
from control.auth.throttle import PasswordThrottle
from control.auth.tokens import TokenCodec
from control.avatars import AvatarStore
from control.captions import Captioner
from control.jobs.runner import JobRunner
from control.limits import RateLimiter
from control.mail import Mailer
from control.media_router import MediaRouter
from control.metrics.instruments import Metrics
from control.recordings import Recorder
from control.signaling.hub import Hub
from control.storage import LocalStorage
from control.store import Store
from control.store.users import UserRecord
from control.streams import Streamer
from control.webhooks.dispatcher import Webhooks
from sfu.pool import MediaServer
from turn.process import TurnProcess

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
ACCOUNTS = web.AppKey("accounts", AccountCache)
TOKENS = web.AppKey("tokens", TokenCodec)
LIMITER = web.AppKey("limiter", RateLimiter)
PASSWORD_THROTTLE = web.AppKey("password_throttle", PasswordThrottle)
MAILER = web.AppKey("mailer", Mailer)
AVATARS = web.AppKey("avatars", AvatarStore)
OPENAPI = web.AppKey("openapi", dict)
HUB = web.AppKey("hub", Hub)
STORAGE = web.AppKey("storage", LocalStorage)
JOBS = web.AppKey("jobs", JobRunner)
# This node's media: in this process, or its worker processes (sfu/pool.py).
SFU = web.AppKey("sfu", MediaServer)
# The signaling socket's way to a session's media, on this node's SFU or the room's node's.
MEDIA = web.AppKey("media", MediaRouter)
RECORDINGS = web.AppKey("recordings", Recorder)
STREAMS = web.AppKey("streams", Streamer)
# The TURN server's process; not started (no endpoints) when turn.enabled is false.
TURN = web.AppKey("turn", TurnProcess)
AI = web.AppKey("ai", AiService)
METRICS = web.AppKey("metrics", Metrics)
# Event notifications: ``app[WEBHOOKS].emit(type, data)`` (types in control/webhooks/events.py).
WEBHOOKS = web.AppKey("webhooks", Webhooks)
CAPTIONS = web.AppKey("captions", Captioner)
# Work a request starts that must finish even if the request ends first (mails sent after the
# answer, a socket's cleanup after its peer vanished); awaited before shutdown.
BACKGROUND = web.AppKey("background", set[asyncio.Task[None]])


def run_in_background(app: web.Application, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(work)
    app[BACKGROUND].add(task)
    task.add_done_callback(app[BACKGROUND].discard)
    return task


CURRENT_USER = web.RequestKey("current_user", UserRecord)


def current_user(request: web.Request) -> UserRecord:
    """The authenticated caller; only reached on endpoints whose guard required one."""
    return request[CURRENT_USER]
