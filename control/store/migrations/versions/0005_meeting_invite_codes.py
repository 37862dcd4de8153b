"""meeting invite codes

Revision ID: 0005_meeting_invite_codes
Revises: 0004_ids_never_reused
"""

import secrets
import warnings

import sqlalchemy as sa
from alembic import op

revision = "0005_meeting_invite_codes"
down_revision = "0004_ids_never_reused"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("meetings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("invite_code", sa.String(length=64), nullable=True))
    # Every existing meeting gets a code of its own, so none is left joinable by its number alone.
    meetings = sa.table("meetings", sa.column("id", sa.BigInteger()), sa.column("invite_code", sa.String()))
    connection = op.get_bind()
    for (meeting_id,) in connection.execute(sa.select(meetings.c.id)).all():
        connection.execute(
            meetings.update().where(meetings.c.id == meeting_id).values(invite_code=secrets.token_urlsafe(16))
        )
    # On SQLite this rebuilds the table, which must stay AUTOINCREMENT (ids never reused); reflecting
    # the users table it refers to skips its expression indexes, which the rebuild leaves alone.
    with (
        warnings.catch_warnings(),
        op.batch_alter_table("meetings", schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op,
    ):
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        batch_op.alter_column("invite_code", existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("meetings", schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.drop_column("invite_code")
