"""live captions: the switch per meeting and the transcript

Revision ID: 0009_captions
Revises: 0008_webhooks
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_captions"
down_revision = "0008_webhooks"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "meeting_captions",
        sa.Column("meeting_id", ID, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("language", sa.String(length=35), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("changed_by", ID, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["changed_by"], ["users.id"]),
        sa.ForeignKeyConstraint(["meeting_id"], ["meetings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("meeting_id"),
    )
    with op.batch_alter_table("meeting_captions", schema=None) as batch_op:
        batch_op.create_index("ix_meeting_captions_enabled", ["enabled"], unique=False)

    op.create_table(
        "transcript_lines",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("meeting_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("language", sa.String(length=35), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["meeting_id"], ["meetings.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("transcript_lines", schema=None) as batch_op:
        batch_op.create_index("ix_transcript_lines_meeting_id", ["meeting_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("transcript_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_transcript_lines_meeting_id")
    op.drop_table("transcript_lines")
    with op.batch_alter_table("meeting_captions", schema=None) as batch_op:
        batch_op.drop_index("ix_meeting_captions_enabled")
    op.drop_table("meeting_captions")
