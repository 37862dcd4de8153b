"""The migrations build exactly the schema the code declares, on both backends."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from control.store import Store
from control.store.engine import MIGRATIONS_DIR, migrate, open_engine
from control.store.schema import metadata
from tests.conftest import SettingsFactory


def differences(connection: Connection) -> list[object]:
    with warnings.catch_warnings():
        # SQLite cannot reflect expression indexes (lower(username)); they are compared on PostgreSQL.
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        return compare_metadata(MigrationContext.configure(connection), metadata)


async def test_migrations_match_the_declared_schema(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    store = await Store.open(settings.database_url, settings.database.schema_name)
    try:
        async with store.engine.connect() as connection:
            assert await connection.run_sync(differences) == []
        # Opening again (a restart) finds nothing left to apply.
        again = await Store.open(settings.database_url, settings.database.schema_name)
        await again.close()
    finally:
        await store.close()


def _upgrade_to(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def test_meetings_made_before_invite_codes_each_get_their_own(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    schema = settings.database.schema_name
    engine = open_engine(settings.database_url, schema)
    try:
        async with engine.connect() as connection:
            if schema:
                await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await connection.run_sync(_upgrade_to, "0003")
            await connection.execute(
                text(
                    "INSERT INTO users (id, username, email, nickname, password_hash, role, status, token_version,"
                    " created_at, updated_at) VALUES (1, 'old', 'old@example.com', '', 'x', 'user', 'active', 0,"
                    " :now, :now)"
                ),
                {"now": datetime.now(UTC)},
            )
            for meeting_id in (1, 2):
                await connection.execute(
                    text(
                        "INSERT INTO meetings (id, title, description, start_time, max_participants, meeting_type,"
                        " status, creator_id, settings, created_at, updated_at) VALUES (:id, 'old', '', :now, 10,"
                        " 'video', 'scheduled', 1, '{}', :now, :now)"
                    ),
                    {"id": meeting_id, "now": datetime.now(UTC)},
                )
            await connection.commit()
        await migrate(engine, schema)
        async with engine.connect() as connection:
            codes = (await connection.execute(text("SELECT invite_code FROM meetings ORDER BY id"))).scalars().all()
        assert len(codes) == 2 and len(set(codes)) == 2 and all(len(code) >= 22 for code in codes)
    finally:
        await engine.dispose()
