"""/api/v1/auth: registration, login, token refresh and password reset by mail."""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta

from aiohttp import web
from pydantic import Field

from control.api.schemas import Email, Nickname, Password, RequestModel, Session, TokenPair, Username, UserOut
from control.auth.guard import TOKEN_CLAIMS
from control.auth.passwords import hash_password, verify_password
from control.auth.sessions import issue_tokens
from control.context import MAILER, PASSWORD_THROTTLE, SETTINGS, STORE, current_user, run_in_background
from control.endpoints import Access, EndpointGroup
from control.envelope import utc_now
from control.errors import ApiError, BusinessCode, bad_request, forbidden, unauthorized, user_not_found
from control.store.tokens import RefreshOutcome
from control.store.users import DuplicateEmail, DuplicateUsername

log = logging.getLogger("huiyi.auth")
group = EndpointGroup("/api/v1/auth", "auth")


class RegisterIn(RequestModel):
    username: Username
    email: Email
    password: Password
    nickname: Nickname | None = None


class LoginIn(RequestModel):
    username: str = Field(min_length=1, max_length=254, description="username or email address")
    password: str = Field(min_length=1, max_length=128)


class ForgotPasswordIn(RequestModel):
    email: Email


class ResetPasswordIn(RequestModel):
    token: str = Field(min_length=1, max_length=256)
    new_password: Password


def duplicate_error(exc: Exception) -> ApiError:
    if isinstance(exc, DuplicateUsername):
        return bad_request("Username is already taken", code=BusinessCode.USERNAME_TAKEN)
    return bad_request("Email is already registered", code=BusinessCode.EMAIL_TAKEN)


def reset_token_digest(token: str) -> str:
    """Only a digest is stored, so a leaked database holds no usable reset link."""
    return hashlib.sha256(token.encode()).hexdigest()


@group.route(
    "POST",
    "/register",
    name="register",
    summary="Register a user",
    access=Access.PUBLIC,
    limit="5/minute",
    body=RegisterIn,
    response=UserOut,
    status=201,
    errors=(400,),
)
async def register(request: web.Request, body: RegisterIn) -> UserOut:
    if body.username.lower() in body.password.lower():
        raise bad_request("Password must not contain the username")
    password_hash = await hash_password(body.password)
    try:
        user = await request.app[STORE].users.create(
            username=body.username,
            email=body.email,
            password_hash=password_hash,
            nickname=body.nickname or body.username,
        )
    except (DuplicateUsername, DuplicateEmail) as exc:
        raise duplicate_error(exc) from None
    log.info("registered user %s (%s)", user.id, user.username)
    return UserOut.of(user)


@group.route(
    "POST",
    "/login",
    name="login",
    summary="Log in with username or email",
    access=Access.PUBLIC,
    limit="5/minute",
    body=LoginIn,
    response=Session,
    errors=(400, 401, 403, 404, 429),
)
async def login(request: web.Request, body: LoginIn) -> Session:
    user = await request.app[STORE].users.find_for_login(body.username)
    if user is None or user.status == "deleted":
        raise user_not_found()
    throttle, address = request.app[PASSWORD_THROTTLE], request.remote or "unknown"
    await throttle.attempt(user.id, address)
    if not await verify_password(user.password_hash, body.password):
        raise ApiError(401, "Wrong password", code=BusinessCode.WRONG_PASSWORD)
    if user.status == "banned":
        raise forbidden("Account is banned")
    await throttle.succeeded(user.id, address)
    tokens = await issue_tokens(request.app, user)
    return Session(**tokens.model_dump(), user=UserOut.of(user))


@group.route(
    "POST",
    "/refresh",
    name="refresh",
    summary="Exchange a refresh token (Bearer) for a new token pair",
    access=Access.REFRESH,
    limit="10/minute",
    response=TokenPair,
    errors=(401, 403),
)
async def refresh(request: web.Request) -> TokenPair:
    claims = request[TOKEN_CLAIMS]
    outcome = await request.app[STORE].tokens.use_refresh(claims.jti)
    if outcome is RefreshOutcome.REUSED:
        log.warning("refresh token of user %s presented twice; its family is revoked", claims.user_id)
        raise unauthorized("Refresh token already used")
    if outcome is RefreshOutcome.UNKNOWN:
        raise unauthorized("Refresh token is not recognised")
    return await issue_tokens(request.app, current_user(request), family=claims.family)


@group.route(
    "POST",
    "/forgot-password",
    name="forgot_password",
    summary="Mail a password-reset token",
    access=Access.PUBLIC,
    limit="3/hour",
    body=ForgotPasswordIn,
    errors=(400,),
)
async def forgot_password(request: web.Request, body: ForgotPasswordIn) -> None:
    """Answers the same whether or not the address is known; the work happens in the
    background so the answer's timing tells nothing either."""
    run_in_background(request.app, _send_reset_mail(request.app, body.email))


async def _send_reset_mail(app: web.Application, email: str) -> None:
    try:
        user = await app[STORE].users.find_for_login(email)
        if user is None or user.status != "active" or user.email is None:
            log.info("password reset requested for an address with no active account")
            return
        settings = app[SETTINGS]
        token = secrets.token_urlsafe(32)
        ttl = timedelta(seconds=settings.auth.reset_token_ttl_seconds)
        await app[STORE].tokens.add_reset(
            user_id=user.id, token_hash=reset_token_digest(token), expires_at=utc_now() + ttl
        )
        minutes = settings.auth.reset_token_ttl_seconds // 60
        await app[MAILER].send(
            user.email,
            "Reset your huiyi password",
            f"Hello {user.nickname or user.username},\n\n"
            f"Someone asked to reset the password of your huiyi account. To choose a new one, open\n\n"
            f"  {settings.base_url}/reset-password?token={token}\n\n"
            f"or send this token to POST /api/v1/auth/reset-password:\n\n  {token}\n\n"
            f"It works once and expires in {minutes} minutes. If you did not ask, ignore this mail.\n",
        )
    except Exception:
        log.exception("could not send the password reset mail")


@group.route(
    "POST",
    "/reset-password",
    name="reset_password",
    summary="Set a new password with a mailed reset token",
    access=Access.PUBLIC,
    limit="5/hour",
    body=ResetPasswordIn,
    errors=(400,),
)
async def reset_password(request: web.Request, body: ResetPasswordIn) -> None:
    store = request.app[STORE]
    user_id = await store.tokens.use_reset(reset_token_digest(body.token))
    user = await store.users.get(user_id) if user_id is not None else None
    if user is None or user.status != "active":
        raise bad_request("Reset token is invalid, expired or already used")
    password_hash = await hash_password(body.new_password)
    await store.users.update(user.id, revoke_tokens=True, password_hash=password_hash)
    log.info("password of user %s reset by mailed token; earlier tokens revoked", user.id)
