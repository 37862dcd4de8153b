"""The relational schema, shared by SQLite and PostgreSQL (SQLAlchemy Core tables)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UtcDateTime(TypeDecorator[datetime]):
    """Moments in UTC, always timezone-aware: SQLite hands back naive values otherwise, and
    comparing those with aware ones fails."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
IdType = BigInteger().with_variant(Integer(), "sqlite")
# An id names one row for ever: a deleted meeting's id must not come back as a new meeting's,
# or work and links that outlive the first (a job's output, a token, a room) land in the second.
# PostgreSQL sequences never hand a value out twice; SQLite needs AUTOINCREMENT for that, as
# without it a new row takes the largest id in use plus one.
NEVER_REUSED = {"sqlite_autoincrement": True}

users = Table(
    "users",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False),
    Column("email", String(254), nullable=True),
    Column("nickname", String(64), nullable=False, server_default=""),
    Column("avatar_file", String(128), nullable=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False, server_default="user"),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("token_version", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    **NEVER_REUSED,
)
Index("ux_users_username", func.lower(users.c.username), unique=True)
Index("ux_users_email", func.lower(users.c.email), unique=True)
Index("ix_users_status", users.c.status)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("user_id", IdType, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("family", String(64), nullable=False, index=True),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("used_at", UtcDateTime(), nullable=True),
)

password_resets = Table(
    "password_resets",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("user_id", IdType, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("used_at", UtcDateTime(), nullable=True),
    **NEVER_REUSED,
)

meetings = Table(
    "meetings",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("title", String(200), nullable=False),
    Column("description", String(2000), nullable=False, server_default=""),
    Column("start_time", UtcDateTime(), nullable=False),
    Column("end_time", UtcDateTime(), nullable=True),
    Column("max_participants", Integer, nullable=False),
    Column("meeting_type", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("creator_id", IdType, ForeignKey("users.id"), nullable=False, index=True),
    Column("settings", JSON, nullable=False),
    Column("password_hash", String(255), nullable=True),
    # Unguessable: with the numeric id it lets a user join who was neither invited nor told the password.
    Column("invite_code", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=True),
    Column("ended_at", UtcDateTime(), nullable=True),
    **NEVER_REUSED,
)
Index("ix_meetings_status_start", meetings.c.status, meetings.c.start_time)

participants = Table(
    "participants",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("meeting_id", IdType, ForeignKey("meetings.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", IdType, ForeignKey("users.id"), nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("removed", Boolean, nullable=False, server_default=false()),
    # Added by a host or moderator (or the creator): needs no invite code or password, skips the waiting room.
    Column("invited", Boolean, nullable=False, server_default=false()),
    Column("audio", Boolean, nullable=False, server_default=true()),
    Column("video", Boolean, nullable=False, server_default=true()),
    Column("screen", Boolean, nullable=False, server_default=false()),
    Column("joined_at", UtcDateTime(), nullable=True),
    Column("left_at", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("meeting_id", "user_id", name="uq_participants_meeting_user"),
    **NEVER_REUSED,
)

chat_messages = Table(
    "chat_messages",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("meeting_id", IdType, ForeignKey("meetings.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", IdType, ForeignKey("users.id"), nullable=False),
    Column("text", Text, nullable=False),
    Column("source", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    **NEVER_REUSED,
)
Index("ix_chat_messages_meeting_id", chat_messages.c.meeting_id, chat_messages.c.id)

signaling_sessions = Table(
    "signaling_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("meeting_id", IdType, ForeignKey("meetings.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("user_id", IdType, ForeignKey("users.id"), nullable=False, index=True),
    Column("node_id", String(64), nullable=False),
    Column("client_address", String(64), nullable=False),
    Column("connected_at", UtcDateTime(), nullable=False),
    Column("disconnected_at", UtcDateTime(), nullable=True),
    Column("close_reason", String(200), nullable=True),
    Column("messages_in", Integer, nullable=False, server_default="0"),
    Column("messages_out", Integer, nullable=False, server_default="0"),
)

media_files = Table(
    "media_files",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", IdType, ForeignKey("users.id"), nullable=False, index=True),
    Column("meeting_id", IdType, ForeignKey("meetings.id", ondelete="SET NULL"), nullable=True, index=True),
    Column("file_name", String(255), nullable=False),
    Column("storage_key", String(128), nullable=False),
    Column("file_type", String(16), nullable=False),
    Column("mime_type", String(127), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("duration", Float, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", IdType, ForeignKey("users.id"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("params", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("progress", Integer, nullable=False, server_default="0"),
    Column("error", String(1000), nullable=True),
    Column("result_file_ids", JSON, nullable=False),
    # What a job measured besides its files (a denoising's levels), or why it failed (error_kind).
    Column("result", JSON, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=True),
    Column("finished_at", UtcDateTime(), nullable=True),
    # The node running the job, and until when its claim holds unless renewed: another node takes
    # the job over only once the claim has lapsed (its owner stopped without finishing it).
    Column("node_id", String(64), nullable=True),
    Column("lease_expires_at", UtcDateTime(), nullable=True),
)

recordings = Table(
    "recordings",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("meeting_id", IdType, ForeignKey("meetings.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("started_by", IdType, ForeignKey("users.id"), nullable=False, index=True),
    # recording | stopping | processing | ready | failed | interrupted
    Column("status", String(16), nullable=False, index=True),
    Column("error", String(1000), nullable=True),
    Column("layout", String(16), nullable=False),
    Column("composite", Boolean, nullable=False),
    # The node answerable for the row while it is recording or stopping: the one that started it,
    # then the one stopping it. Starting again after a crash, a node marks its rows interrupted.
    Column("node_id", String(64), nullable=False),
    Column("directory", String(1024), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("stopped_at", UtcDateTime(), nullable=True),
    Column("duration", Float, nullable=True),
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("composite_file_id", String(32), ForeignKey("media_files.id", ondelete="SET NULL"), nullable=True),
    Column("composite_job_id", String(32), nullable=True, index=True),
    Column("stop_reason", String(200), nullable=True),
    **NEVER_REUSED,
)

recording_tracks = Table(
    "recording_tracks",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("recording_id", IdType, ForeignKey("recordings.id", ondelete="CASCADE"), nullable=False, index=True),
    # Each node records the peers connected through it, into a file named after the track.
    Column("node_id", String(64), nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("user_id", IdType, ForeignKey("users.id"), nullable=False),
    Column("peer_id", String(64), nullable=False),
    Column("track_id", String(128), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("codec", String(16), nullable=False),
    Column("media_file_id", String(32), ForeignKey("media_files.id", ondelete="SET NULL"), nullable=True),
    # Wall clock of the first and last frame written.
    Column("started_at", UtcDateTime(), nullable=True),
    Column("ended_at", UtcDateTime(), nullable=True),
    Column("frames", Integer, nullable=True),
    Column("dropped_frames", Integer, nullable=True),
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("reason", String(200), nullable=False),
    UniqueConstraint("recording_id", "node_id", "file_name", name="uq_recording_tracks_file"),
    **NEVER_REUSED,
)

# Receivers of event notifications (docs/operations.md#webhooks): registered through the admin API,
# or configured in the nodes' settings (those carry a key, the hash of their URL, so nodes starting
# together add each once).
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("url", String(2048), nullable=False),
    Column("secret", String(256), nullable=False),
    # Event types delivered; empty: every type.
    Column("events", JSON, nullable=False),
    Column("description", String(200), nullable=False, server_default=""),
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("settings_key", String(64), nullable=True, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # The node delivering to this receiver, and until when unless renewed: one node at a time, so
    # the receiver gets its events one after the other, in order.
    Column("lease_node", String(64), nullable=True),
    Column("lease_until", UtcDateTime(), nullable=True),
    **NEVER_REUSED,
)

# One event for one receiver: pending until delivered, or dropped once retrying is over.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("webhook_id", IdType, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", String(40), nullable=False),
    Column("event_type", String(64), nullable=False),
    # The JSON document sent, exactly as signed.
    Column("body", Text, nullable=False),
    # pending | delivered | dropped
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime(), nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", String(500), nullable=True),
    **NEVER_REUSED,
)
Index(
    "ix_webhook_deliveries_queue",
    webhook_deliveries.c.webhook_id,
    webhook_deliveries.c.status,
    webhook_deliveries.c.id,
)
Index("ix_webhook_deliveries_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_at)
Index("ix_webhook_deliveries_finished", webhook_deliveries.c.finished_at)
streams = Table(
    "streams",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("meeting_id", IdType, ForeignKey("meetings.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("started_by", IdType, ForeignKey("users.id"), nullable=False, index=True),
    # starting | live | reconnecting | stopped | failed
    Column("status", String(16), nullable=False, index=True),
    Column("error", String(1000), nullable=True),
    Column("layout", String(16), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("fps", Integer, nullable=False),
    Column("video_bitrate", Integer, nullable=False),
    Column("audio_bitrate", Integer, nullable=False),
    # Each output as shown ({"type", "url" masked, "public"}); a push URL's stream key is never stored.
    Column("outputs", JSON, nullable=False),
    # The secret part of the public HLS address, when the host asked for a public stream.
    Column("public_token", String(64), nullable=True, unique=True),
    # The node whose compositor runs the stream.
    Column("node_id", String(64), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("stopped_at", UtcDateTime(), nullable=True),
    Column("stop_reason", String(200), nullable=True),
    # The last figures the compositor reported (frames, drops, bit rate, each output's state).
    Column("stats", JSON, nullable=False),
    **NEVER_REUSED,
)

# The push destinations of the streams running now, by a digest of the URL (stream key included):
# its primary key holds one stream per destination, across nodes, without storing the key.
stream_targets = Table(
    "stream_targets",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("stream_id", IdType, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False, index=True),
)
# Live captions: whether a meeting is captioned (one row once switched), and what was said.
meeting_captions = Table(
    "meeting_captions",
    metadata,
    Column("meeting_id", IdType, ForeignKey("meetings.id", ondelete="CASCADE"), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("language", String(35), nullable=False),
    Column("model_id", String(64), nullable=False),
    Column("changed_by", IdType, ForeignKey("users.id"), nullable=False),
    Column("changed_at", UtcDateTime(), nullable=False),
)
Index("ix_meeting_captions_enabled", meeting_captions.c.enabled)

transcript_lines = Table(
    "transcript_lines",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("meeting_id", IdType, ForeignKey("meetings.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", IdType, ForeignKey("users.id"), nullable=False),
    Column("text", Text, nullable=False),
    Column("language", String(35), nullable=False),
    Column("model_id", String(64), nullable=False),
    # Wall clock of capture: when the utterance began and when its speech ended.
    Column("started_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    **NEVER_REUSED,
)
Index("ix_transcript_lines_meeting_id", transcript_lines.c.meeting_id, transcript_lines.c.id)
