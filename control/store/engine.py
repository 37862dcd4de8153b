"""Opening the database and bringing its schema to the current migration."""

from __future__ import annotations

import logging
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


def open_engine(url: str, schema: str = "") -> AsyncEngine:
    """An async engine; SQLite gets WAL and foreign keys, PostgreSQL an optional schema."""
    parsed = make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            touch_private(Path(parsed.database))
        options["connect_args"] = {"timeout": 30}
    elif schema:
        options["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = create_async_engine(url, pool_pre_ping=True, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine, schema: str = "") -> None:
    """Apply pending migrations; on PostgreSQL an advisory lock keeps concurrent starts in line."""
    async with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            if schema:
                await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                await connection.commit()
            await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        try:
            await connection.run_sync(_upgrade)
            await connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                await connection.commit()
    log.info("database schema is at the latest migration")
