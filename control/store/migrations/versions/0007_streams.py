"""live streams and the push destinations they hold

Revision ID: 0007_streams
Revises: 0006_recordings
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_streams"
down_revision = "0006_recordings"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "streams",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("meeting_id", ID, nullable=False),
        sa.Column("started_by", ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=True),
        sa.Column("layout", sa.String(length=16), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("fps", sa.Integer(), nullable=False),
        sa.Column("video_bitrate", sa.Integer(), nullable=False),
        sa.Column("audio_bitrate", sa.Integer(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("public_token", sa.String(length=64), nullable=True, unique=True),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stop_reason", sa.String(length=200), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["meeting_id"], ["meetings.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["started_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_streams_meeting_id"), ["meeting_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_streams_started_by"), ["started_by"], unique=False)
        batch_op.create_index(batch_op.f("ix_streams_status"), ["status"], unique=False)

    op.create_table(
        "stream_targets",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("stream_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("digest"),
    )
    with op.batch_alter_table("stream_targets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stream_targets_stream_id"), ["stream_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stream_targets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_targets_stream_id"))
    op.drop_table("stream_targets")
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_streams_status"))
        batch_op.drop_index(batch_op.f("ix_streams_started_by"))
        batch_op.drop_index(batch_op.f("ix_streams_meeting_id"))
    op.drop_table("streams")
