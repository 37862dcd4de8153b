"""The migrations build exactly the schema the code declares, on both backends."""

from __future__ import annotations

import warnings

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from control.store import Store
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
