"""Command line: ``run_server.py [flags]`` serves; ``run_server.py create-admin ...`` bootstraps
the first administrator, which the admin API itself cannot create."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web, web_response
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from config import ConfigError, Settings, load_settings
from config.logformat import configure_logging
from control.api.auth import RegisterIn, duplicate_error
from control.auth.passwords import hash_password
from control.logcontext import ContextFilter
from control.middleware import AccessLogger
from control.store import Store
from control.store.users import DuplicateEmail, DuplicateUsername

log = logging.getLogger("huiyi")


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file overriding config/default.toml")
    parser.add_argument("--data-dir", type=Path, help="SQLite file, uploads and generated secrets (default ./data)")
    parser.add_argument(
        "--database-url", help="sqlite:///path or postgresql://user@host/db (default: SQLite in the data dir)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format", choices=("text", "json"), help="text lines, or one JSON object per line (default text)"
    )


def _settings(args: argparse.Namespace, **server: object) -> Settings:
    return load_settings(
        args.config,
        {
            "server": {
                "data_dir": args.data_dir,
                "log_level": args.log_level,
                "log_format": args.log_format,
                **server,
            },
            "database": {"url": args.database_url},
            "redis": {"url": getattr(args, "redis_url", None)},
        },
    )


class _MalformedRequestsAreInfo(logging.Filter):
    """aiohttp logs every request it cannot parse as an error with a traceback. Such a request is
    the client's fault, and anyone can send many: one info line each, so errors stay worth reading."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            reason = exc.message.splitlines()[0].rstrip(":") if exc.message else ""
            record.msg = f"{record.getMessage()}: {exc.code} {reason}"
            record.args = None
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            # The logger let the record through as an error: as info it must pass the level again.
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.server.log_level, settings.server.log_format, [ContextFilter()])
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequestsAreInfo())


async def _status_on_sigusr1(app: web.Application) -> None:
    """``kill -USR1 <pid>`` logs the media server's load and the TURN server's counters: the
    process has one app, so the signal is the command line's to give out (an embedding program
    keeps its own signals)."""
    from control.context import SFU, TURN

    def log_status() -> None:
        app[SFU].log_status()
        app[TURN].log_status()

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_status)


async def _drain_on_sigterm(app: web.Application) -> None:
    """With ``cluster.drain_seconds`` set, SIGTERM drains the node (docs/operations.md#draining-a-node):
    no new rooms are placed on it, and it stops once the rooms it runs have ended or the time
    is up. A second SIGTERM, or SIGINT, stops it at once. Without it, SIGTERM stops at once."""
    from control.context import MEDIA, SETTINGS

    if app[SETTINGS].cluster.drain_seconds <= 0:
        return
    loop = asyncio.get_running_loop()
    draining: set[asyncio.Task[None]] = set()

    def stop_now() -> None:
        raise web.GracefulExit()  # as aiohttp's own handler does: the server shuts down cleanly

    def drain() -> None:
        loop.add_signal_handler(signal.SIGTERM, stop_now)
        task = loop.create_task(app[MEDIA].drain())
        draining.add(task)
        task.add_done_callback(lambda _: loop.call_soon(stop_now))

    loop.add_signal_handler(signal.SIGTERM, drain)


def serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="run_server.py", description="Start the huiyi server.")
    _common_flags(parser)
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--redis-url", help="redis://host:6379/0 to share rate limits (and later the bus) across nodes")
    args = parser.parse_args(argv)
    settings = _settings(args, host=args.host, port=args.port)
    _configure_logging(settings)
    # A status request that comes while the server is still starting is ignored, not fatal (the
    # signal's default action ends the process); the handler replaces this once the loop runs.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from control.app import SERVER_NAME, create_app

    # The application names itself on every answer it makes; aiohttp answers requests it cannot
    # parse before any application sees them, with its default (its and Python's versions).
    web_response.SERVER_SOFTWARE = SERVER_NAME

    log.info(
        "starting huiyi on %s:%s (database %s, data dir %s, rate limits %s)",
        settings.server.host,
        settings.server.port,
        settings.database_url.split("://", 1)[0],
        settings.server.data_dir,
        "on" if settings.rate_limits.enabled else "off",
    )
    app = create_app(settings)
    app.on_startup.append(_status_on_sigusr1)
    app.on_startup.append(_drain_on_sigterm)
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        access_log_class=AccessLogger,
        # aiohttp closes a connection that waits this long for a request's headers (the first
        # one, or the next on a kept-alive connection), so slow or silent clients cannot hold
        # connections open.
        keepalive_timeout=settings.server.header_timeout_seconds,
        print=None,
    )
    return 0


async def _create_admin(settings: Settings, username: str, email: str, password: str) -> int:
    store = await Store.open(settings.database_url, settings.database.schema_name)
    try:
        user = await store.users.create(
            username=username, email=email, password_hash=await hash_password(password), nickname=username, role="admin"
        )
    except (DuplicateUsername, DuplicateEmail) as exc:
        log.error("%s", duplicate_error(exc).message)
        return 1
    finally:
        await store.close()
    log.info("created administrator %s with id %s", user.username, user.id)
    return 0


def create_admin(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="run_server.py create-admin",
        description="Create an administrator account. The password comes from HUIYI_ADMIN_PASSWORD or a prompt.",
    )
    _common_flags(parser)
    parser.add_argument("--username", required=True)
    parser.add_argument("--email", required=True)
    args = parser.parse_args(argv)
    settings = _settings(args)
    _configure_logging(settings)
    password = os.environ.get("HUIYI_ADMIN_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            log.error("set HUIYI_ADMIN_PASSWORD or run from a terminal to be prompted")
            return 2
        password = getpass.getpass("Password for the new administrator: ")
        if password != getpass.getpass("Repeat it: "):
            log.error("the passwords differ")
            return 2
    try:
        RegisterIn.model_validate({"username": args.username, "email": args.email, "password": password})
    except ValidationError as exc:
        for error in exc.errors():
            log.error("%s: %s", ".".join(str(part) for part in error["loc"]), error["msg"])
        return 2
    return asyncio.run(_create_admin(settings, args.username, args.email, password))


def worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="run_server.py worker",
        description="Run an AI worker node that takes speech jobs from the Redis queue (docs/ai.md).",
    )
    _common_flags(parser)
    parser.add_argument("--redis-url", help="redis://host:6379/0, the one the servers use (required)")
    parser.add_argument("--node-id", help="this node's name in GET /api/v1/nodes (default: <hostname>-<pid>)")
    parser.add_argument("--model-dir", help="directory of installed models (default: [ai] model_dir)")
    args = parser.parse_args(argv)
    settings = load_settings(
        args.config,
        {
            "server": {
                "data_dir": args.data_dir,
                "log_level": args.log_level,
                "log_format": args.log_format,
                "node_id": args.node_id,
            },
            "redis": {"url": args.redis_url},
            "ai": {"model_dir": args.model_dir},
        },
    )
    _configure_logging(settings)
    if not settings.redis.url:
        log.error("a worker node takes its work from Redis: give --redis-url (or HUIYI_REDIS_URL)")
        return 2
    from ai.redis_queue import RedisNode
    from ai.service import worker_node_id

    RedisNode(settings, worker_node_id(settings)).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Whatever this process or a library it uses writes (the database, media, mail) is for this
    # user only; where the server creates files it also says so explicitly.
    os.umask(0o077)
    try:
        if argv[:1] == ["create-admin"]:
            return create_admin(argv[1:])
        if argv[:1] == ["worker"]:
            return worker(argv[1:])
        return serve(argv)
    except ConfigError as exc:
        print(f"huiyi: {exc}", file=sys.stderr)
        return 2
