"""Typed keys for what the application holds for its handlers."""

from __future__ import annotations

import asyncio

from aiohttp import web

from config import Settings
from control.auth.tokens import TokenCodec
from control.avatars import AvatarStore
from control.limits import RateLimiter
from control.mail import Mailer
from control.store import Store
from control.store.users import UserRecord

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
TOKENS = web.AppKey("tokens", TokenCodec)
LIMITER = web.AppKey("limiter", RateLimiter)
MAILER = web.AppKey("mailer", Mailer)
AVATARS = web.AppKey("avatars", AvatarStore)
OPENAPI = web.AppKey("openapi", dict)
# Work started by a request that must finish before shutdown (e.g. mails sent after answering).
PENDING_MAILS = web.AppKey("pending_mails", set[asyncio.Task[None]])

CURRENT_USER = web.RequestKey("current_user", UserRecord)


def current_user(request: web.Request) -> UserRecord:
    """The authenticated caller; only reached on endpoints whose guard required one."""
    return request[CURRENT_USER]
