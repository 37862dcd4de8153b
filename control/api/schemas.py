"""Models shared by several API areas: the public view of a user, token pairs, field rules."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from control.avatars import avatar_url
from control.envelope import iso_utc
from control.store.users import UserRecord

USERNAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{2,31}$"


def _strong_password(value: str) -> str:
    if not re.search(r"[A-Za-z]", value) or not re.search(r"\d", value):
        raise ValueError("password must contain at least one letter and one digit")
    return value


def _printable(value: str) -> str:
    if any(unicodedata.category(char)[0] == "C" for char in value):
        raise ValueError("must not contain control characters")
    return value


Username = Annotated[str, StringConstraints(pattern=USERNAME_PATTERN)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128), AfterValidator(_strong_password)]
Email = Annotated[EmailStr, StringConstraints(max_length=254)]
Nickname = Annotated[str, StringConstraints(strip_whitespace=True, max_length=64), AfterValidator(_printable)]


class RequestModel(BaseModel):
    """Requests name every field they accept; anything else is refused as a likely typo."""

    model_config = ConfigDict(extra="forbid")


class UserOut(BaseModel):
    user_id: int
    username: str
    email: str | None
    nickname: str
    avatar_url: str | None
    role: Literal["user", "admin"]
    status: Literal["active", "banned", "deleted"]
    created_at: str = Field(description="ISO 8601, UTC")
    updated_at: str = Field(description="ISO 8601, UTC")

    @classmethod
    def of(cls, user: UserRecord) -> UserOut:
        return cls(
            user_id=user.id,
            username=user.username,
            email=user.email,
            nickname=user.nickname,
            avatar_url=avatar_url(user.avatar_file),
            role=user.role,  # type: ignore[arg-type]
            status=user.status,  # type: ignore[arg-type]
            created_at=iso_utc(user.created_at),
            updated_at=iso_utc(user.updated_at),
        )


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """One page of a paginated list."""

    items: list[Item]
    total: int
    page: int
    page_size: int


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="seconds until the access token expires")
    refresh_expires_in: int = Field(description="seconds until the refresh token expires")


class Session(TokenPair):
    user: UserOut


def seconds_until(moment: datetime, now: datetime) -> int:
    return max(0, int((moment - now).total_seconds()))
