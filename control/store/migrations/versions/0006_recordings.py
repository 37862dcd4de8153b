"""recordings and their tracks

Revision ID: 0006_recordings
Revises: 0005_meeting_invite_codes
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_recordings"
down_revision = "0005_meeting_invite_codes"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("meeting_id", ID, nullable=False),
        sa.Column("started_by", ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=True),
        sa.Column("layout", sa.String(length=16), nullable=False),
        sa.Column("composite", sa.Boolean(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("directory", sa.String(length=1024), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("size", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("composite_file_id", sa.String(length=32), nullable=True),
        sa.Column("composite_job_id", sa.String(length=32), nullable=True),
        sa.Column("stop_reason", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["composite_file_id"], ["media_files.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["meeting_id"], ["meetings.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["started_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recordings_composite_job_id"), ["composite_job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_recordings_meeting_id"), ["meeting_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_recordings_started_by"), ["started_by"], unique=False)
        batch_op.create_index(batch_op.f("ix_recordings_status"), ["status"], unique=False)

    op.create_table(
        "recording_tracks",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("recording_id", ID, nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("peer_id", sa.String(length=64), nullable=False),
        sa.Column("track_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("codec", sa.String(length=16), nullable=False),
        sa.Column("media_file_id", sa.String(length=32), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("dropped_frames", sa.Integer(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["media_file_id"], ["media_files.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["recording_id"], ["recordings.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("recording_id", "node_id", "file_name", name="uq_recording_tracks_file"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("recording_tracks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recording_tracks_recording_id"), ["recording_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("recording_tracks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recording_tracks_recording_id"))
    op.drop_table("recording_tracks")
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recordings_status"))
        batch_op.drop_index(batch_op.f("ix_recordings_started_by"))
        batch_op.drop_index(batch_op.f("ix_recordings_meeting_id"))
        batch_op.drop_index(batch_op.f("ix_recordings_composite_job_id"))
    op.drop_table("recordings")
