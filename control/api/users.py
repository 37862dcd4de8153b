"""/api/v1/users: the caller's own account."""

from __future__ import annotations

import logging
from typing import Annotated

from aiohttp import web
from pydantic import Field

from control.api.auth import duplicate_error
from control.api.schemas import Email, Nickname, Password, RequestModel, TokenPair, UserOut
from control.auth.passwords import hash_password, verify_password
from control.auth.sessions import issue_tokens
from control.avatars import AVATAR_NAME_PATTERN, NotAnImage
from control.context import AVATARS, MAILER, PASSWORD_THROTTLE, SETTINGS, STORE, current_user, run_in_background
from control.downloads import file_download
from control.endpoints import Access, EndpointGroup, invalid
from control.envelope import utc_now
from control.errors import ApiError, BusinessCode, bad_request, not_found, unauthorized
from control.store.users import DuplicateEmail, DuplicateUsername, UserRecord
from control.uploads import read_file_field

log = logging.getLogger("huiyi.users")
group = EndpointGroup("/api/v1/users", "users")


CurrentPassword = Annotated[str, Field(max_length=128, description="the account's current password")]


class ProfileUpdate(RequestModel):
    nickname: Nickname | None = None
    email: Email | None = None
    current_password: CurrentPassword | None = Field(
        None, description="the account's current password; required to change the email"
    )


class ChangePasswordIn(RequestModel):
    old_password: CurrentPassword
    new_password: Password


class DeleteAccountIn(RequestModel):
    current_password: CurrentPassword


def account_gone() -> ApiError:
    return unauthorized("Account no longer exists")


async def check_password(request: web.Request, user: UserRecord, given: str) -> None:
    """Proof that the caller knows the password, not just holds a token: what a stolen token
    must not be enough for (a new password, a new email, deleting the account) asks for it.
    Guesses here back off like failed logins, so a token is no faster a way to guess."""
    throttle, address = request.app[PASSWORD_THROTTLE], request.remote or "unknown"
    await throttle.attempt(user.id, address)
    if not await verify_password(user.password_hash, given):
        raise bad_request("Current password is wrong", code=BusinessCode.WRONG_PASSWORD)
    await throttle.succeeded(user.id, address)


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
    summary="Update the caller's nickname or email; a new email needs `current_password` and is "
    "announced to the old address",
    access=Access.USER,
    limit="50/minute",
    body=ProfileUpdate,
    response=UserOut,
    errors=(400,),
)
async def update_profile(request: web.Request, body: ProfileUpdate) -> UserOut:
    user = current_user(request)
    changes = body.model_dump(exclude_none=True, exclude={"current_password"})
    new_email = changes.get("email", user.email) != user.email
    if new_email:
        if body.current_password is None:
            missing = {"field": "current_password", "message": "Required to change the email", "type": "missing"}
            raise invalid("request body", [missing])
        await check_password(request, user, body.current_password)
    if not changes:
        return UserOut.of(user)
    store = request.app[STORE]
    try:
        updated = await store.users.update(user.id, **changes)
    except (DuplicateUsername, DuplicateEmail) as exc:
        raise duplicate_error(exc) from None
    if updated is None:  # deleted meanwhile
        raise account_gone()
    if new_email:
        # A reset link already mailed to the old address must not outlive the change.
        await store.tokens.revoke_resets(user.id)
        log.info("user %s changed their email address", user.id)
        if user.email:
            run_in_background(request.app, _tell_old_address(request.app, user))
    return UserOut.of(updated)


async def _tell_old_address(app: web.Application, user: UserRecord) -> None:
    """The owner of the old address learns of the change, so a takeover does not go unnoticed."""
    assert user.email is not None
    try:
        await app[MAILER].send(
            user.email,
            "The email address of your huiyi account was changed",
            f"Hello {user.nickname or user.username},\n\n"
            f"On {utc_now():%Y-%m-%d at %H:%M} UTC the email address of the huiyi account "
            f"{user.username} was changed from this address to another one. Mail about the account, "
            f"including password resets, now goes there.\n\n"
            f"If you made this change, there is nothing more to do. If you did not, someone who knows "
            f"your password did: contact the administrator of {app[SETTINGS].base_url} to recover "
            f"the account.\n",
        )
    except Exception:
        log.exception("could not mail the old address about an email change")


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
    await check_password(request, user, body.old_password)
    if body.old_password == body.new_password:
        raise bad_request("New password must differ from the old one")
    if user.username.lower() in body.new_password.lower():
        raise bad_request("Password must not contain the username")
    password_hash = await hash_password(body.new_password)
    store = request.app[STORE]
    updated = await store.users.update(user.id, revoke_tokens=True, password_hash=password_hash)
    if updated is None:  # deleted meanwhile
        raise account_gone()
    await store.tokens.revoke_resets(user.id)
    log.info("user %s changed their password; earlier tokens and reset links revoked", user.id)
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
    if updated is None:  # deleted meanwhile
        raise account_gone()
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
    errors=(404, 416),
)
async def get_avatar(request: web.Request) -> web.StreamResponse:
    path = request.app[AVATARS].path_of(request.match_info["name"])
    if not path.is_file():
        raise not_found("Avatar not found")
    return await file_download(
        request,
        path,
        {
            "Content-Type": "image/png",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "public, max-age=86400, immutable",
        },
    )


@group.route(
    "DELETE",
    "/account",
    name="delete_account",
    summary="Delete the caller's account (needs `current_password`): personal data scrubbed, tokens revoked, "
    "username and email freed",
    access=Access.USER,
    limit="1/day",
    body=DeleteAccountIn,
    errors=(400,),
)
async def delete_account(request: web.Request, body: DeleteAccountIn) -> None:
    user = current_user(request)
    await check_password(request, user, body.current_password)
    await request.app[STORE].users.scrub(user.id)
    request.app[AVATARS].remove(user.avatar_file)
    log.info("user %s deleted their account", user.id)
