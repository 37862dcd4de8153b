"""/api/v1/admin/users: account administration, for the admin role only."""

from __future__ import annotations

import logging
from typing import Literal

from aiohttp import web
from pydantic import Field

from control.api.auth import duplicate_error
from control.api.schemas import Email, Nickname, Page, RequestModel, UserOut
from control.context import AVATARS, STORE, current_user
from control.endpoints import Access, EndpointGroup, path_int
from control.errors import bad_request, user_not_found
from control.store.users import DuplicateEmail, DuplicateUsername, UserRecord

log = logging.getLogger("huiyi.admin")
group = EndpointGroup("/api/v1/admin/users", "admin")
USER_ID = r"{user_id:\d+}"


class UserListQuery(RequestModel):
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(20, ge=1, le=100)
    status: Literal["active", "banned", "deleted"] | None = None
    q: str | None = Field(None, min_length=1, max_length=100, description="matches username, email or nickname")


class AdminUserUpdate(RequestModel):
    nickname: Nickname | None = None
    email: Email | None = None
    role: Literal["user", "admin"] | None = None
    status: Literal["active", "banned"] | None = None


async def _target(request: web.Request) -> UserRecord:
    """The user named in the path; deleted accounts are gone as far as administration goes."""
    user = await request.app[STORE].users.get(path_int(request, "user_id", user_not_found()))
    if user is None or user.status == "deleted":
        raise user_not_found()
    return user


def _refuse_self(request: web.Request, target: UserRecord, action: str) -> None:
    """An admin cannot lock themselves out; another admin has to do it."""
    if target.id == current_user(request).id:
        raise bad_request(f"Administrators cannot {action} their own account")


async def _set_status(request: web.Request, status: str) -> UserOut:
    target = await _target(request)
    _refuse_self(request, target, "ban or unban")
    if target.status == status:
        return UserOut.of(target)
    updated = await request.app[STORE].users.update(target.id, revoke_tokens=True, status=status)
    if updated is None:  # deleted meanwhile
        raise user_not_found()
    log.info("admin %s set user %s to %s", current_user(request).id, target.id, status)
    return UserOut.of(updated)


@group.route(
    "GET",
    "",
    name="list",
    summary="List users, paginated, filtered by status or text",
    access=Access.ADMIN,
    limit="50/minute",
    query=UserListQuery,
    response=Page[UserOut],
    errors=(400, 403),
)
async def list_users(request: web.Request, query: UserListQuery) -> Page[UserOut]:
    items, total = await request.app[STORE].users.search(
        page=query.page, page_size=query.page_size, status=query.status, text=query.q
    )
    return Page[UserOut](
        items=[UserOut.of(user) for user in items], total=total, page=query.page, page_size=query.page_size
    )


@group.route(
    "GET",
    "/" + USER_ID,
    name="get",
    summary="Get a user",
    access=Access.ADMIN,
    limit="100/minute",
    response=UserOut,
    errors=(403, 404),
)
async def get_user(request: web.Request) -> UserOut:
    return UserOut.of(await _target(request))


@group.route(
    "PUT",
    "/" + USER_ID,
    name="update",
    summary="Update a user's nickname, email, role or status",
    access=Access.ADMIN,
    limit="50/minute",
    body=AdminUserUpdate,
    response=UserOut,
    errors=(400, 403, 404),
)
async def update_user(request: web.Request, body: AdminUserUpdate) -> UserOut:
    target = await _target(request)
    changes = body.model_dump(exclude_none=True)
    if changes.get("role", target.role) != target.role or changes.get("status", target.status) != target.status:
        _refuse_self(request, target, "change the role or status of")
    revoke = "status" in changes and changes["status"] != target.status
    try:
        updated = await request.app[STORE].users.update(target.id, revoke_tokens=revoke, **changes)
    except (DuplicateUsername, DuplicateEmail) as exc:
        raise duplicate_error(exc) from None
    if updated is None:  # deleted meanwhile
        raise user_not_found()
    log.info("admin %s updated user %s: %s", current_user(request).id, target.id, ", ".join(sorted(changes)))
    return UserOut.of(updated)


@group.route(
    "DELETE",
    "/" + USER_ID,
    name="delete",
    summary="Delete a user (personal data scrubbed, tokens revoked)",
    access=Access.ADMIN,
    limit="20/minute",
    errors=(400, 403, 404),
)
async def delete_user(request: web.Request) -> None:
    target = await _target(request)
    _refuse_self(request, target, "delete")
    await request.app[STORE].users.scrub(target.id)
    request.app[AVATARS].remove(target.avatar_file)
    log.info("admin %s deleted user %s", current_user(request).id, target.id)


@group.route(
    "POST",
    "/" + USER_ID + "/ban",
    name="ban",
    summary="Ban a user; effective on their very next request",
    access=Access.ADMIN,
    limit="20/minute",
    response=UserOut,
    errors=(400, 403, 404),
)
async def ban_user(request: web.Request) -> UserOut:
    return await _set_status(request, "banned")


@group.route(
    "POST",
    "/" + USER_ID + "/unban",
    name="unban",
    summary="Lift a ban",
    access=Access.ADMIN,
    limit="20/minute",
    response=UserOut,
    errors=(400, 403, 404),
)
async def unban_user(request: web.Request) -> UserOut:
    return await _set_status(request, "active")
