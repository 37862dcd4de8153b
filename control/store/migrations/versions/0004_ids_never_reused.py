"""ids are never reused; jobs record the node that runs them and its lease

SQLite hands a deleted row's id to the next row unless the table is declared AUTOINCREMENT, which
only a rebuild can add: each table with an integer key is copied into one that has it, keeping its
rows, indexes and foreign keys. PostgreSQL sequences never reuse a value and need nothing.

Revision ID: 0004_ids_never_reused
Revises: 0003
"""

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0004_ids_never_reused"
down_revision = "0003"
branch_labels = None
depends_on = None

# Parents before children, so each rebuilt table's foreign keys point at a finished table.
INTEGER_KEYED = ["users", "password_resets", "meetings", "participants", "chat_messages"]
# SQLite cannot reflect expression indexes, so a rebuild would drop them: made again afterwards.
USER_INDEXES = {"ux_users_username": "lower(username)", "ux_users_email": "lower(email)"}


def _rebuild(autoincrement: bool) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        for table in INTEGER_KEYED:
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
                pass
    for name, expression in USER_INDEXES.items():
        op.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {name} ON users ({expression})")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=True)
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("node_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("node_id")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=False)
