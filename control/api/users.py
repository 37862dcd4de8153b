"""/api/v1/users: the caller's own account."""

from __future__ import annotations

import logging

from aiohttp import web

from control.api.auth import duplicate_error
from control.api.schemas import Email, Nickname, Password, RequestModel, TokenPair, UserOut
from control.auth.passwords import hash_password, verify_password
from control.auth.sessions import issue_tokens
from control.avatars import AVATAR_NAME_PATTERN, NotAnImage
from control.context import AVATARS, SETTINGS, STORE, current_user
from control.endpoints import Access, EndpointGroup
from control.errors import BusinessCode, bad_request, not_found
from control.store.users import DuplicateEmail, DuplicateUsername
from control.uploads import read_file_field

log = logging.getLogger("huiyi.users")
group = EndpointGroup("/api/v1/users", "users")


class ProfileUpdate(RequestModel):
    nickname: Nickname | None = None
    email: Email | None = None


class ChangePasswordIn(RequestModel):
    old_password: str
    new_password: Password


@group.route(
    "GET",
    "/profile",
    name="get_profile",
    summary="The caller's profile",
    access=Access.USER,
    limit="100/minute",
    response=UserOut,
)
async def get_profile(request: web.Request) -> UserOut:
    return UserOut.of(current_user(request))


@group.route(
    "PUT",
    "/profile",
    name="update_profile",
    summary="Update the caller's nickname or email",
    access=Access.USER,
    limit="50/minute",
    body=ProfileUpdate,
    response=UserOut,
    errors=(400,),
)
async def update_profile(request: web.Request, body: ProfileUpdate) -> UserOut:
    user = current_user(request)
    changes = body.model_dump(exclude_none=True)
    if not changes:
        return UserOut.of(user)
    try:
        updated = await request.app[STORE].users.update(user.id, **changes)
    except (DuplicateUsername, DuplicateEmail) as exc:
        raise duplicate_error(exc) from None
    assert updated is not None
    return UserOut.of(updated)


@group.route(
    "POST",
    "/change-password",
    name="change_password",
    summary="Change the password; every earlier token is revoked and a new pair returned",
    access=Access.USER,
    limit="10/hour",
    body=ChangePasswordIn,
    response=TokenPair,
    errors=(400,),
)
async def change_password(request: web.Request, body: ChangePasswordIn) -> TokenPair:
    user = current_user(request)
    if not await verify_password(user.password_hash, body.old_password):
        raise bad_request("Old password is wrong", code=BusinessCode.WRONG_PASSWORD)
    if body.old_password == body.new_password:
        raise bad_request("New password must differ from the old one")
    if user.username.lower() in body.new_password.lower():
        raise bad_request("Password must not contain the username")
    password_hash = await hash_password(body.new_password)
    updated = await request.app[STORE].users.update(user.id, revoke_tokens=True, password_hash=password_hash)
    assert updated is not None
    log.info("user %s changed their password; earlier tokens revoked", user.id)
    return await issue_tokens(request.app, updated)


@group.route(
    "POST",
    "/upload-avatar",
    name="upload_avatar",
    summary="Upload an avatar image (multipart field `file`); stored as a square PNG thumbnail",
    access=Access.USER,
    limit="10/hour",
    response=UserOut,
    errors=(400, 413),
    multipart={"file": "JPEG, PNG, GIF or WebP image"},
)
async def upload_avatar(request: web.Request) -> UserOut:
    user = current_user(request)
    settings = request.app[SETTINGS]
    data = await read_file_field(request, ("file", "avatar"), settings.uploads.avatar_max_bytes)
    avatars = request.app[AVATARS]
    try:
        name = await avatars.save(data)
    except NotAnImage as exc:
        raise bad_request(str(exc)) from None
    updated = await request.app[STORE].users.update(user.id, avatar_file=name)
    assert updated is not None
    avatars.remove(user.avatar_file)
    return UserOut.of(updated)


@group.route(
    "GET",
    "/avatars/{name:" + AVATAR_NAME_PATTERN + "}",
    name="get_avatar",
    summary="Download an avatar (public: avatar URLs are unguessable and used in <img> tags)",
    access=Access.PUBLIC,
    limit="600/minute",
    raw_response=("image/png", {"type": "string", "format": "binary"}),
    errors=(404,),
)
async def get_avatar(request: web.Request) -> web.StreamResponse:
    path = request.app[AVATARS].path_of(request.match_info["name"])
    if not path.is_file():
        raise not_found("Avatar not found")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "image/png",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "public, max-age=86400, immutable",
        },
    )


@group.route(
    "DELETE",
    "/account",
    name="delete_account",
    summary="Delete the caller's account: personal data scrubbed, tokens revoked, username and email freed",
    access=Access.USER,
    limit="1/day",
)
async def delete_account(request: web.Request) -> None:
    user = current_user(request)
    await request.app[STORE].users.scrub(user.id)
    request.app[AVATARS].remove(user.avatar_file)
    log.info("user %s deleted their account", user.id)
