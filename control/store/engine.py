"""Opening the database and bringing its schema to the current migration."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from control.private_files import touch_private

log = logging.getLogger("huiyi.store")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same for every process sharing the database.
_MIGRATION_LOCK_KEY = 0x6875_6979


def open_engine(url: str, schema: str = "", pool_size: int = 20) -> AsyncEngine:
    """An async engine; SQLite gets WAL and foreign keys, PostgreSQL an optional schema.

    The pool holds as many connections as requests may run queries at once, so a burst never
    pays for new connections; connections are not pinged at checkout (a round trip per request)
    but recycled after half an hour, and a connection found dead invalidates the pool."""
    parsed = make_url(url)
    options: dict[str, Any] = {}
    in_memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
    if not in_memory:  # an in-memory SQLite database lives in its one connection: no pool to size
        options.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    if parsed.get_backend_name() == "sqlite":
        if not in_memory:
            touch_private(Path(parsed.database))
        options["connect_args"] = {"timeout": 30}
    elif schema:
        options["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = create_async_engine(url, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _upgrade(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate(engine: AsyncEngine, schema: str = "", revision: str = "head") -> None:
    """Apply pending migrations; concurrent starts wait for each other: on PostgreSQL through an
    advisory lock, on SQLite through a lock on a file beside the database.

    On SQLite foreign keys are off while migrating: a migration that rebuilds a table drops the
    old copy, and with them on that drop would first delete every row referring to it."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:":
        async with _file_lock(Path(database + ".migrating")):
            await _migrate(engine, schema, revision)
    else:
        await _migrate(engine, schema, revision)
    log.info("database schema is at migration %s", revision)


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive lock on ``path`` between processes (and engines of one process), waited for
    in a thread so the event loop runs on meanwhile."""
    touch_private(path)
    with path.open("r+b") as handle:
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def _migrate(engine: AsyncEngine, schema: str, revision: str) -> None:
    async with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # The lock (held by the session, across commits) comes first: two concurrent CREATE
            # SCHEMA IF NOT EXISTS of one name can both miss it, and the second then fails.
            await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            if schema:
                await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await connection.commit()
        else:
            # Outside a transaction, or SQLite ignores it.
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            await connection.run_sync(_upgrade, revision)
            if connection.dialect.name == "sqlite":
                broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if broken:
                    raise RuntimeError(f"migration left rows with dangling references: {broken[:5]}")
            await connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            else:
                await connection.rollback()
                await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            await connection.commit()
