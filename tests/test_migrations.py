"""The migrations build exactly the schema the code declares, on both backends."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import delete, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from control.envelope import utc_now
from control.store import Store, schema
from control.store.engine import MIGRATIONS_DIR, migrate, open_engine
from control.store.schema import metadata
from tests.conftest import SettingsFactory


def differences(connection: Connection) -> list[object]:
    with warnings.catch_warnings():
        # SQLite cannot reflect expression indexes (lower(username)); they are compared on PostgreSQL.
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        return compare_metadata(MigrationContext.configure(connection), metadata)


def head_revision() -> str:
    """The newest migration, as the migration scripts chain them."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


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


INTEGER_KEYED = ["users", "password_resets", "meetings", "participants", "chat_messages"]


async def test_upgrade_keeps_rows_and_then_ids_are_never_reused(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    engine = open_engine(settings.database_url, settings.database.schema_name)
    try:
        await migrate(engine, settings.database.schema_name, revision="0003")
        now = utc_now()
        # Rows get ids 1 and 2 (the first of each table), which the references below rely on.
        async with engine.begin() as connection:
            for user_id in (1, 2):
                await connection.execute(
                    schema.users.insert().values(
                        username=f"u{user_id}", password_hash="x", created_at=now, updated_at=now
                    )
                )
                await connection.execute(
                    schema.password_resets.insert().values(
                        user_id=user_id, token_hash=f"h{user_id}", created_at=now, expires_at=now
                    )
                )
                await connection.execute(
                    schema.meetings.insert().values(
                        title="m",
                        start_time=now,
                        max_participants=5,
                        meeting_type="instant",
                        status="scheduled",
                        creator_id=user_id,
                        settings={},
                        created_at=now,
                        updated_at=now,
                    )
                )
                await connection.execute(
                    schema.participants.insert().values(
                        meeting_id=user_id, user_id=user_id, role="host", status="joined", created_at=now
                    )
                )
                await connection.execute(
                    schema.chat_messages.insert().values(
                        meeting_id=user_id, user_id=user_id, text="hi", source="socket", created_at=now
                    )
                )
            await connection.execute(
                schema.refresh_tokens.insert().values(jti="j", user_id=2, family="f", issued_at=now, expires_at=now)
            )
        await migrate(engine, settings.database.schema_name)

        async with engine.begin() as connection:
            for name in [*INTEGER_KEYED, "refresh_tokens"]:
                table = schema.metadata.tables[name]
                count = (await connection.execute(select(func.count()).select_from(table))).scalar_one()
                assert count == (1 if name == "refresh_tokens" else 2), name
            # The unique, case-blind user names survived the rebuild.
            with pytest.raises(IntegrityError):
                async with connection.begin_nested():
                    await connection.execute(
                        schema.users.insert().values(username="U1", password_hash="x", created_at=now, updated_at=now)
                    )
            # Remove the newest row of each table (children first), then add one: it gets a new id.
            for name in reversed(INTEGER_KEYED):
                table = schema.metadata.tables[name]
                if name == "users":
                    await connection.execute(delete(schema.refresh_tokens))
                await connection.execute(delete(table).where(table.c.id == 2))
            await connection.execute(
                schema.users.insert().values(username="new", password_hash="x", created_at=now, updated_at=now)
            )
            new_user = (await connection.execute(select(func.max(schema.users.c.id)))).scalar_one()
            assert new_user > 2
            await connection.execute(
                schema.meetings.insert().values(
                    title="m",
                    start_time=now,
                    max_participants=5,
                    meeting_type="instant",
                    status="scheduled",
                    creator_id=new_user,
                    settings={},
                    invite_code="new-meeting-code",
                    created_at=now,
                    updated_at=now,
                )
            )
            new_meeting = (await connection.execute(select(func.max(schema.meetings.c.id)))).scalar_one()
            assert new_meeting > 2
            for name, values in (
                ("password_resets", {"user_id": new_user, "token_hash": "h3", "created_at": now, "expires_at": now}),
                (
                    "participants",
                    {
                        "meeting_id": new_meeting,
                        "user_id": new_user,
                        "role": "host",
                        "status": "joined",
                        "created_at": now,
                    },
                ),
                (
                    "chat_messages",
                    {
                        "meeting_id": new_meeting,
                        "user_id": new_user,
                        "text": "x",
                        "source": "socket",
                        "created_at": now,
                    },
                ),
            ):
                table = schema.metadata.tables[name]
                await connection.execute(table.insert().values(**values))
                assert (await connection.execute(select(func.max(table.c.id)))).scalar_one() > 2, name
    finally:
        await engine.dispose()


async def test_meetings_made_before_invite_codes_each_get_their_own(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    schema_name = settings.database.schema_name
    engine = open_engine(settings.database_url, schema_name)
    try:
        await migrate(engine, schema_name, revision="0004_ids_never_reused")
        now = utc_now()
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO users (id, username, email, nickname, password_hash, role, status, token_version,"
                    " created_at, updated_at) VALUES (1, 'old', 'old@example.com', '', 'x', 'user', 'active', 0,"
                    " :now, :now)"
                ),
                {"now": now},
            )
            for meeting_id in (1, 2):
                await connection.execute(
                    text(
                        "INSERT INTO meetings (id, title, description, start_time, max_participants, meeting_type,"
                        " status, creator_id, settings, created_at, updated_at) VALUES (:id, 'old', '', :now, 10,"
                        " 'video', 'scheduled', 1, '{}', :now, :now)"
                    ),
                    {"id": meeting_id, "now": now},
                )
        await migrate(engine, schema_name)
        async with engine.connect() as connection:
            codes = (await connection.execute(text("SELECT invite_code FROM meetings ORDER BY id"))).scalars().all()
        assert len(codes) == 2 and len(set(codes)) == 2 and all(len(code) >= 22 for code in codes)
    finally:
        await engine.dispose()


# Rows each revision introduced, written in that revision's own columns (raw SQL: the declared
# schema is the newest one). An upgrade from any older revision must keep all of them.
ROWS_SINCE = {
    "0001": [
        "INSERT INTO users (id, username, email, nickname, password_hash, role, status, token_version,"
        " created_at, updated_at) VALUES (1, 'elder', 'elder@example.com', 'Elder', 'x', 'user', 'active', 3,"
        " :now, :now)",
        "INSERT INTO refresh_tokens (jti, user_id, family, issued_at, expires_at) VALUES ('j1', 1, 'f1', :now, :now)",
    ],
    "0002": [
        "INSERT INTO meetings (id, title, description, start_time, max_participants, meeting_type, status,"
        " creator_id, settings, created_at, updated_at) VALUES (1, 'Old standup', '', :now, 10, 'video',"
        " 'ongoing', 1, '{\"enable_chat\": true}', :now, :now)",
        "INSERT INTO participants (id, meeting_id, user_id, role, status, created_at) VALUES (1, 1, 1, 'host',"
        " 'online', :now)",
        "INSERT INTO chat_messages (id, meeting_id, user_id, text, source, created_at) VALUES (1, 1, 1,"
        " 'hello from before', 'rest', :now)",
        "INSERT INTO signaling_sessions (id, meeting_id, user_id, node_id, client_address, connected_at)"
        " VALUES ('" + "a" * 32 + "', 1, 1, 'old-node', '127.0.0.1', :now)",
    ],
    "0003": [
        "INSERT INTO media_files (id, user_id, meeting_id, file_name, storage_key, file_type, mime_type, size,"
        " created_at) VALUES ('" + "b" * 32 + "', 1, 1, 'notes.txt', '" + "c" * 32 + "', 'document',"
        " 'text/plain', 5, :now)",
        "INSERT INTO jobs (id, user_id, kind, params, status, result_file_ids, created_at) VALUES ('"
        + "d" * 32
        + "', 1, 'thumbnail', '{}', 'succeeded', '[]', :now)",
    ],
}
REVISIONS = ["0001", "0002", "0003", "0004_ids_never_reused"]


@pytest.mark.parametrize("start", REVISIONS)
async def test_upgrading_from_any_revision_keeps_what_was_written(
    settings_factory: SettingsFactory, start: str
) -> None:
    settings = settings_factory()
    engine = open_engine(settings.database_url, settings.database.schema_name)
    try:
        await migrate(engine, settings.database.schema_name, revision=start)
        written = [rows for revision, rows in ROWS_SINCE.items() if revision <= start]
        async with engine.begin() as connection:
            for rows in written:
                for statement in rows:
                    await connection.execute(text(statement), {"now": utc_now()})
    finally:
        await engine.dispose()
    store = await Store.open(settings.database_url, settings.database.schema_name)
    try:
        user = await store.users.get(1)
        assert user is not None and user.username == "elder" and user.token_version == 3
        if len(written) >= 2:
            meeting = await store.meetings.get(1)
            assert meeting is not None and meeting.title == "Old standup" and meeting.settings["enable_chat"]
            assert meeting.invite_code, "meetings made before invite codes get one"
            assert [p.role for p in await store.participants.list(1)] == ["host"]
            assert [m.text for m in await store.chat.page(1, limit=10)] == ["hello from before"]
            assert (await store.sessions.get("a" * 32)) is not None
        if len(written) >= 3:
            media = await store.media.get("b" * 32)
            assert media is not None and media.file_name == "notes.txt"
            job = await store.jobs.get("d" * 32)
            assert job is not None and job.status == "succeeded"
    finally:
        await store.close()


async def test_concurrent_starts_migrate_once(settings_factory: SettingsFactory) -> None:
    """Processes starting together on one empty database wait for each other's migration (an
    advisory lock on PostgreSQL, SQLite's write lock) and all come up on the same schema."""
    settings = settings_factory()
    stores = await asyncio.gather(*(Store.open(settings.database_url, settings.database.schema_name) for _ in range(4)))
    try:
        async with stores[0].engine.connect() as connection:
            assert await connection.run_sync(differences) == []
            versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
        assert versions == [head_revision()]
    finally:
        for store in stores:
            await store.close()
