"""/api/v1/users: profile, password change, avatar upload and account deletion."""

from __future__ import annotations

import io
import random
import re

from aiohttp import FormData
from PIL import Image

from control.context import STORE
from tests.conftest import PASSWORD, Api, sqlite_only
from tests.support import file_form, image_bytes, meeting_with, people

PHOTO = (640, 360)  # a camera's shape, which the avatar is cropped square from


def avatar_form(
    data: bytes, field: str = "file", filename: str = "me.png", content_type: str = "image/png"
) -> FormData:
    """The upload-avatar form: ``data`` as a PNG named me.png unless told otherwise."""
    return file_form(data, filename, field=field, content_type=content_type)


async def test_profile_get_and_update(api: Api) -> None:
    account = await api.account()
    profile = await api.call("GET", "/api/v1/users/profile", token=account.access, expect=200)
    assert profile["data"]["user_id"] == account.id and profile["data"]["email"] == account.email

    changed = await api.call(
        "PUT",
        "/api/v1/users/profile",
        token=account.access,
        json={"nickname": "  Neo ", "email": "neo@example.com", "current_password": PASSWORD},
    )
    assert changed["status"] == 200
    assert changed["data"]["nickname"] == "Neo" and changed["data"]["email"] == "neo@example.com"
    again = await api.call("GET", "/api/v1/users/profile", token=account.access)
    assert again["data"]["nickname"] == "Neo"


async def test_profile_email_must_stay_unique_and_fields_are_checked(api: Api) -> None:
    first = await api.account()
    second = await api.account()
    clash = await api.call(
        "PUT",
        "/api/v1/users/profile",
        token=second.access,
        json={"email": first.email.upper(), "current_password": PASSWORD},
    )
    assert clash["status"] == 400 and clash["code"] == 1002
    read_only = await api.call("PUT", "/api/v1/users/profile", token=second.access, json={"avatar_url": "/x.png"})
    assert read_only["status"] == 400 and read_only["data"]["errors"][0]["field"] == "avatar_url"
    too_long = await api.call("PUT", "/api/v1/users/profile", token=second.access, json={"nickname": "n" * 65})
    assert too_long["status"] == 400


async def test_change_password_revokes_earlier_tokens(api: Api) -> None:
    account = await api.account()
    other_session = await api.call(
        "POST", "/api/v1/auth/login", json={"username": account.username, "password": PASSWORD}, expect=200
    )
    wrong = await api.call(
        "POST",
        "/api/v1/users/change-password",
        token=account.access,
        json={"old_password": "wrong-one-1", "new_password": "fresh-pass-99"},
    )
    assert wrong["status"] == 400 and wrong["code"] == 1004

    changed = await api.call(
        "POST",
        "/api/v1/users/change-password",
        token=account.access,
        json={"old_password": PASSWORD, "new_password": "fresh-pass-99"},
        expect=200,
    )
    for stale in (account.access, account.refresh, other_session["data"]["access_token"]):
        assert (await api.call("GET", "/api/v1/users/profile", token=stale))["status"] == 401
    await api.call("GET", "/api/v1/users/profile", token=changed["data"]["access_token"], expect=200)
    await api.call("POST", "/api/v1/auth/refresh", token=changed["data"]["refresh_token"], expect=200)
    login = await api.call(
        "POST", "/api/v1/auth/login", json={"username": account.username, "password": "fresh-pass-99"}
    )
    assert login["status"] == 200


async def test_avatar_is_reencoded_to_a_square_png(api: Api) -> None:
    account = await api.account()
    # A JPEG with foreign bytes appended (a polyglot): none of them may be served back.
    payload = image_bytes("JPEG", PHOTO) + b"<script>alert(1)</script>"
    body = await api.call(
        "POST", "/api/v1/users/upload-avatar", token=account.access, data=avatar_form(payload, filename="../../x.html")
    )
    assert body["status"] == 200, body
    avatar_url = body["data"]["avatar_url"]
    assert avatar_url.startswith("/api/v1/users/avatars/") and avatar_url.endswith(".png")

    response = await api.client.get(avatar_url)
    assert response.status == 200 and response.headers["Content-Type"] == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    served = await response.read()
    assert b"<script>" not in served
    with Image.open(io.BytesIO(served)) as image:
        assert image.format == "PNG" and image.size == (256, 256)
    tail = await api.client.get(avatar_url, headers={"Range": "bytes=-8"})
    assert tail.status == 206 and await tail.read() == served[-8:]
    nothing = await api.client.get(avatar_url, headers={"Range": "bytes=-0"})
    assert nothing.status == 416 and nothing.headers["Content-Range"] == f"bytes */{len(served)}"

    replaced = await api.call(
        "POST",
        "/api/v1/users/upload-avatar",
        token=account.access,
        data=avatar_form(image_bytes("PNG", PHOTO), field="avatar"),
    )
    assert replaced["status"] == 200 and replaced["data"]["avatar_url"] != avatar_url
    gone = await api.client.get(avatar_url)
    assert gone.status == 404, "the replaced avatar is deleted"

    # The people in a meeting with them see it next to their name.
    meeting_id = await meeting_with(api, account)
    listed = await people(api, meeting_id, account)
    assert listed[account.id]["avatar_url"] == replaced["data"]["avatar_url"]


async def test_avatar_rejects_non_images_oversize_and_wrong_bodies(api: Api) -> None:
    account = await api.account()
    not_image = await api.call(
        "POST",
        "/api/v1/users/upload-avatar",
        token=account.access,
        data=avatar_form(b"%PDF-1.4 definitely not an image", content_type="image/png"),
    )
    assert not_image["status"] == 400
    bmp = await api.call(
        "POST", "/api/v1/users/upload-avatar", token=account.access, data=avatar_form(image_bytes("BMP", PHOTO))
    )
    assert bmp["status"] == 400 and "BMP" in bmp["message"]
    huge = await api.call(
        "POST", "/api/v1/users/upload-avatar", token=account.access, data=avatar_form(b"\xff" * (5 * 1024 * 1024 + 1))
    )
    assert huge["status"] == 413
    json_body = await api.call("POST", "/api/v1/users/upload-avatar", token=account.access, json={"file": "x"})
    assert json_body["status"] == 400
    wrong_field = await api.call(
        "POST",
        "/api/v1/users/upload-avatar",
        token=account.access,
        data=avatar_form(image_bytes("PNG", PHOTO), field="picture"),
    )
    assert wrong_field["status"] == 400 and "file" in wrong_field["message"]
    profile = await api.call("GET", "/api/v1/users/profile", token=account.access)
    assert profile["data"]["avatar_url"] is None


async def test_avatar_near_the_size_cap_is_accepted(api: Api) -> None:
    account = await api.account()
    noise = Image.frombytes("RGB", (1100, 1100), random.Random(7).randbytes(1100 * 1100 * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG")
    assert 3 * 1024 * 1024 < len(out.getvalue()) < 5 * 1024 * 1024
    body = await api.call("POST", "/api/v1/users/upload-avatar", token=account.access, data=avatar_form(out.getvalue()))
    assert body["status"] == 200 and body["data"]["avatar_url"]


@sqlite_only
async def test_unknown_avatar_is_404(api: Api) -> None:
    missing = await api.call("GET", "/api/v1/users/avatars/" + "0" * 32 + ".png")
    assert missing["status"] == 404
    traversal = await api.client.get("/api/v1/users/avatars/..%2F..%2Fjwt_secret")
    assert traversal.status == 404 and b"jwt" not in await traversal.read()


async def test_delete_account_scrubs_and_frees_the_name(api: Api) -> None:
    account = await api.account(nickname="Doomed")
    await api.call(
        "POST", "/api/v1/users/upload-avatar", token=account.access, data=avatar_form(image_bytes("PNG", PHOTO))
    )
    await api.call(
        "DELETE", "/api/v1/users/account", token=account.access, json={"current_password": PASSWORD}, expect=200
    )

    assert (await api.call("GET", "/api/v1/users/profile", token=account.access))["status"] == 401
    assert (await api.call("POST", "/api/v1/auth/refresh", token=account.refresh))["status"] == 401
    login = await api.call("POST", "/api/v1/auth/login", json={"username": account.username, "password": PASSWORD})
    assert login["status"] == 404 and login["code"] == 1003

    admin = await api.admin()
    scrubbed = await api.call("GET", f"/api/v1/admin/users/{account.id}", token=admin.access)
    assert scrubbed["status"] == 404
    listed = await api.call("GET", "/api/v1/admin/users?status=deleted", token=admin.access, expect=200)
    (row,) = [user for user in listed["data"]["items"] if user["user_id"] == account.id]
    assert row["status"] == "deleted" and row["email"] is None and row["nickname"] == ""
    assert row["avatar_url"] is None and account.username not in row["username"]

    again = await api.register(username=account.username, email=account.email)
    assert again["status"] == 201, "a deleted account's username and email are free again"


async def test_a_stolen_access_token_cannot_take_the_account_over(api: Api) -> None:
    """Holding only an access token (no password), an attacker can neither move the account to
    their address (and then reset the password) nor delete it."""
    victim = await api.account()
    move = {"email": "attacker@example.com"}
    missing = await api.call("PUT", "/api/v1/users/profile", token=victim.access, json=move)
    assert missing["status"] == 400
    assert [error["field"] for error in missing["data"]["errors"]] == ["current_password"]
    guessed = await api.call(
        "PUT", "/api/v1/users/profile", token=victim.access, json={**move, "current_password": "guess-123"}
    )
    assert guessed["status"] == 400 and guessed["code"] == 1004

    missing = await api.call("DELETE", "/api/v1/users/account", token=victim.access)
    assert missing["status"] == 400
    assert [error["field"] for error in missing["data"]["errors"]] == ["current_password"]
    guessed = await api.call(
        "DELETE", "/api/v1/users/account", token=victim.access, json={"current_password": "guess-123"}
    )
    assert guessed["status"] == 400 and guessed["code"] == 1004

    profile = await api.call("GET", "/api/v1/users/profile", token=victim.access, expect=200)
    assert profile["data"]["email"] == victim.email and profile["data"]["status"] == "active"
    await api.call("POST", "/api/v1/auth/forgot-password", json={"email": "attacker@example.com"}, expect=200)
    await api.settle()
    assert api.outbox() == [], "no reset mail goes to the attacker's address"


async def test_changing_the_email_tells_the_old_address_and_voids_its_reset_links(api: Api) -> None:
    account = await api.account(nickname="Mover")
    await api.call("POST", "/api/v1/auth/forgot-password", json={"email": account.email}, expect=200)
    await api.settle()
    (reset_mail,) = api.outbox()
    found = re.search(r"token=([\w-]+)", reset_mail.get_content())
    assert found

    # Sending the unchanged address along with a new nickname is no change of email.
    same = {"nickname": "Still me", "email": account.email}
    await api.call("PUT", "/api/v1/users/profile", token=account.access, json=same, expect=200)
    changed = await api.call(
        "PUT",
        "/api/v1/users/profile",
        token=account.access,
        json={"email": "moved@example.com", "current_password": PASSWORD},
        expect=200,
    )
    assert changed["data"]["email"] == "moved@example.com"
    await api.settle()
    notice = api.outbox()[-1]
    assert notice["To"] == account.email and "was changed" in notice["Subject"]
    assert account.username in notice.get_content() and "moved@example.com" not in notice.get_content()

    reset = {"token": found.group(1), "new_password": "taken-over-1"}
    stale = await api.call("POST", "/api/v1/auth/reset-password", json=reset)
    assert stale["status"] == 400, "a reset link mailed to the old address dies with the change"
    await api.call("GET", "/api/v1/users/profile", token=account.access, expect=200)


async def test_change_password_voids_mailed_reset_links(api: Api) -> None:
    account = await api.account()
    await api.call("POST", "/api/v1/auth/forgot-password", json={"email": account.email}, expect=200)
    await api.settle()
    found = re.search(r"token=([\w-]+)", api.outbox()[0].get_content())
    assert found
    await api.call(
        "POST",
        "/api/v1/users/change-password",
        token=account.access,
        json={"old_password": PASSWORD, "new_password": "fresh-pass-99"},
        expect=200,
    )
    reset = {"token": found.group(1), "new_password": "other-pass-42"}
    assert (await api.call("POST", "/api/v1/auth/reset-password", json=reset))["status"] == 400


async def test_a_deleted_account_takes_no_late_writes(api: Api) -> None:
    """A write that lands after the deletion (an avatar upload still being decoded, say) changes
    nothing: no personal data comes back to the scrubbed row, and its caller learns the account is gone."""
    account = await api.account()
    await api.call(
        "DELETE", "/api/v1/users/account", token=account.access, json={"current_password": account.password}, expect=200
    )
    users = api.app[STORE].users
    assert await users.update(account.id, avatar_file="late.png", nickname="back again") is None
    row = await users.get(account.id)
    assert row is not None and row.status == "deleted" and row.avatar_file is None and row.nickname == ""
