"""The relational schema, shared by SQLite and PostgreSQL (SQLAlchemy Core tables)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    func,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
IdType = BigInteger().with_variant(Integer(), "sqlite")

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
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
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
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

password_resets = Table(
    "password_resets",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("user_id", IdType, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)
