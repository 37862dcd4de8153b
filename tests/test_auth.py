"""/api/v1/auth: registration rules, login, token types, expiry, rotation and password reset."""

from __future__ import annotations

import re
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import update

from control.auth.tokens import TokenCodec
from control.context import STORE, TOKENS
from control.store.schema import password_resets
from tests.conftest import PASSWORD, Api, sqlite_only


async def test_register_returns_the_user_model(api: Api) -> None:
    body = await api.register(username="Alice_1", email="alice@example.com", nickname="Alice")
    assert body["status"] == 201 and body["code"] == 201 and body["message"] == "Success"
    user = body["data"]
    assert user["username"] == "Alice_1" and user["email"] == "alice@example.com"
    assert user["nickname"] == "Alice" and user["status"] == "active" and user["avatar_url"] is None
    assert isinstance(user["user_id"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", user["created_at"])
    assert "password" not in str(user) and "hash" not in str(user)


async def test_duplicate_username_and_email_are_1001_and_1002(api: Api) -> None:
    await api.register(username="bob", email="bob@example.com")
    taken_name = await api.register(username="BOB", email="other@example.com")
    assert taken_name["status"] == 400 and taken_name["code"] == 1001
    taken_mail = await api.register(username="bobby", email="Bob@Example.com")
    assert taken_mail["status"] == 400 and taken_mail["code"] == 1002


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"username": "ab"}, "username"),
        ({"username": "9lives"}, "username"),
        ({"username": "has space"}, "username"),
        ({"email": "not-an-email"}, "email"),
        ({"password": "short1"}, "password"),
        ({"password": "lettersonly"}, "password"),
        ({"password": "1234567890"}, "password"),
        ({"nickname": "bell\u0007"}, "nickname"),
        ({"role": "admin"}, "role"),
    ],
)
@sqlite_only
async def test_register_validation_names_the_field(api: Api, fields: dict[str, str], bad_field: str) -> None:
    body = await api.register(**fields)
    assert body["status"] == 400 and body["code"] == 400
    assert [error["field"] for error in body["data"]["errors"]] == [bad_field]


@sqlite_only
async def test_password_may_not_contain_the_username(api: Api) -> None:
    body = await api.register(username="carol", password="carol12345")
    assert body["status"] == 400 and "username" in body["message"]


async def test_login_by_username_or_email(api: Api) -> None:
    account = await api.account()
    for identifier in (account.username, account.email.upper()):
        body = await api.call("POST", "/api/v1/auth/login", json={"username": identifier, "password": PASSWORD})
        assert body["status"] == 200
        data = body["data"]
        assert data["token_type"] == "Bearer" and data["user"]["user_id"] == account.id
        assert 0 < data["expires_in"] <= 900 and data["refresh_expires_in"] > data["expires_in"]


async def test_login_errors(api: Api) -> None:
    account = await api.account()
    wrong = await api.call("POST", "/api/v1/auth/login", json={"username": account.username, "password": "nope"})
    assert wrong["status"] == 401 and wrong["code"] == 1004
    unknown = await api.call("POST", "/api/v1/auth/login", json={"username": "ghost", "password": PASSWORD})
    assert unknown["status"] == 404 and unknown["code"] == 1003
    missing = await api.call("POST", "/api/v1/auth/login", json={"username": account.username})
    assert missing["status"] == 400 and missing["data"]["errors"][0]["field"] == "password"


async def test_tokens_carry_their_type(api: Api) -> None:
    account = await api.account()
    as_access = await api.call("GET", "/api/v1/users/profile", token=account.refresh)
    assert as_access["status"] == 401
    as_refresh = await api.call("POST", "/api/v1/auth/refresh", token=account.access)
    assert as_refresh["status"] == 401 and "refresh" in as_refresh["message"].lower()


async def test_missing_forged_and_expired_tokens(api: Api) -> None:
    account = await api.account()
    missing = await api.call("GET", "/api/v1/users/profile")
    assert missing["status"] == 401 and missing["headers"]["WWW-Authenticate"] == "Bearer"
    claims = jwt.decode(account.access, options={"verify_signature": False})
    forged = jwt.encode(claims, "not-the-server-key-but-long-enough-for-hs256", algorithm="HS256")
    assert (await api.call("GET", "/api/v1/users/profile", token=forged))["status"] == 401
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert (await api.call("GET", "/api/v1/users/profile", token=unsigned))["status"] == 401

    real = api.app[TOKENS]
    expired_codec = TokenCodec(real._key, access_ttl=timedelta(seconds=-5), refresh_ttl=timedelta(seconds=-5))
    expired = expired_codec.encode(expired_codec.issue(account.id, 0, "access"))
    body = await api.call("GET", "/api/v1/users/profile", token=expired)
    assert body["status"] == 401 and body["code"] == 1005


async def test_refresh_rotates_and_refuses_a_used_token(api: Api) -> None:
    account = await api.account()
    first = await api.call("POST", "/api/v1/auth/refresh", token=account.refresh, expect=200)
    rotated = first["data"]["refresh_token"]
    assert rotated != account.refresh
    profile = await api.call("GET", "/api/v1/users/profile", token=first["data"]["access_token"])
    assert profile["status"] == 200

    reused = await api.call("POST", "/api/v1/auth/refresh", token=account.refresh)
    assert reused["status"] == 401
    # Reuse means the token leaked: the token rotated from it dies too.
    after_reuse = await api.call("POST", "/api/v1/auth/refresh", token=rotated)
    assert after_reuse["status"] == 401


async def _reset_token(api: Api) -> str:
    await api.settle()
    mails = api.outbox()
    assert mails, "no reset mail was written"
    assert mails[-1]["Subject"] == "Reset your huiyi password"
    found = re.search(r"token=([\w-]+)", mails[-1].get_content())
    assert found
    return found.group(1)


async def test_forgot_and_reset_password(api: Api) -> None:
    account = await api.account()
    known = await api.call("POST", "/api/v1/auth/forgot-password", json={"email": account.email}, expect=200)
    unknown = await api.call("POST", "/api/v1/auth/forgot-password", json={"email": "nobody@example.com"})
    assert unknown["status"] == 200 and unknown["message"] == known["message"]
    token = await _reset_token(api)
    assert len(api.outbox()) == 1

    new_password = "brand-new-pass-7"
    payload = {"token": token, "new_password": new_password}
    await api.call("POST", "/api/v1/auth/reset-password", json=payload, expect=200)
    again = await api.call("POST", "/api/v1/auth/reset-password", json=payload)
    assert again["status"] == 400, "a reset token works once"

    for earlier in (account.access, account.refresh):
        revoked = await api.call("GET", "/api/v1/users/profile", token=earlier)
        assert revoked["status"] == 401
    old = await api.call("POST", "/api/v1/auth/login", json={"username": account.username, "password": PASSWORD})
    assert old["code"] == 1004
    await api.call(
        "POST", "/api/v1/auth/login", json={"username": account.username, "password": new_password}, expect=200
    )


async def test_only_the_newest_reset_mail_works_and_expired_tokens_fail(api: Api) -> None:
    account = await api.account()
    await api.call("POST", "/api/v1/auth/forgot-password", json={"email": account.email}, expect=200)
    first = await _reset_token(api)
    await api.call("POST", "/api/v1/auth/forgot-password", json={"email": account.email}, expect=200)
    second = await _reset_token(api)
    assert first != second
    stale = await api.call(
        "POST", "/api/v1/auth/reset-password", json={"token": first, "new_password": "another-pass-8"}
    )
    assert stale["status"] == 400

    async with api.app[STORE].engine.begin() as connection:
        await connection.execute(update(password_resets).values(expires_at=password_resets.c.created_at))
    expired = await api.call(
        "POST", "/api/v1/auth/reset-password", json={"token": second, "new_password": "another-pass-8"}
    )
    assert expired["status"] == 400


@sqlite_only
async def test_reset_password_validates_input(api: Api) -> None:
    weak = await api.call("POST", "/api/v1/auth/reset-password", json={"token": "x", "new_password": "weak"})
    assert weak["status"] == 400 and weak["data"]["errors"][0]["field"] == "new_password"
    bad_mail = await api.call("POST", "/api/v1/auth/forgot-password", json={"email": "no"})
    assert bad_mail["status"] == 400
