"""/api/v1/admin/users: the admin boundary, listing, updates, bans and deletion."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD, Api

ADMIN_CALLS = [
    ("GET", "/api/v1/admin/users", None),
    ("GET", "/api/v1/admin/users/{id}", None),
    ("PUT", "/api/v1/admin/users/{id}", {"nickname": "x"}),
    ("DELETE", "/api/v1/admin/users/{id}", None),
    ("POST", "/api/v1/admin/users/{id}/ban", None),
    ("POST", "/api/v1/admin/users/{id}/unban", None),
]


@pytest.mark.parametrize(("method", "path", "payload"), ADMIN_CALLS)
async def test_admin_endpoints_refuse_ordinary_users(api: Api, method: str, path: str, payload: object) -> None:
    user = await api.account()
    victim = await api.account()
    url = path.format(id=victim.id)
    refused = await api.call(method, url, token=user.access, json=payload)
    assert refused["status"] == 403 and refused["code"] == 403
    anonymous = await api.call(method, url, json=payload)
    assert anonymous["status"] == 401
    still_there = await api.call("GET", "/api/v1/users/profile", token=victim.access)
    assert still_there["status"] == 200 and still_there["data"]["nickname"] != "x"


async def test_list_paginates_and_filters(api: Api) -> None:
    admin = await api.admin()
    created = [await api.account(nickname=f"Crew {n}") for n in range(5)]
    first = await api.call("GET", "/api/v1/admin/users/?page=1&page_size=2", token=admin.access, expect=200)
    assert first["data"]["total"] == 6 and first["data"]["page_size"] == 2
    assert [user["user_id"] for user in first["data"]["items"]] == [admin.id, created[0].id]
    third = await api.call("GET", "/api/v1/admin/users?page=3&page_size=2", token=admin.access)
    assert [user["user_id"] for user in third["data"]["items"]] == [created[3].id, created[4].id]
    beyond = await api.call("GET", "/api/v1/admin/users?page=9&page_size=2", token=admin.access)
    assert beyond["data"]["items"] == [] and beyond["data"]["total"] == 6

    by_text = await api.call("GET", "/api/v1/admin/users?q=crew%202", token=admin.access)
    assert [user["user_id"] for user in by_text["data"]["items"]] == [created[2].id]
    wildcard = await api.call("GET", "/api/v1/admin/users?q=%25", token=admin.access)
    assert wildcard["data"]["total"] == 0, "LIKE wildcards in q are matched literally"

    await api.call("POST", f"/api/v1/admin/users/{created[1].id}/ban", token=admin.access, expect=200)
    banned = await api.call("GET", "/api/v1/admin/users?status=banned", token=admin.access)
    assert [user["user_id"] for user in banned["data"]["items"]] == [created[1].id]

    for bad in ("page=0", "page_size=101", "status=zombie", "page=abc", "page=1&page=2"):
        invalid = await api.call("GET", f"/api/v1/admin/users?{bad}", token=admin.access)
        assert invalid["status"] == 400, bad


async def test_get_and_update_a_user(api: Api) -> None:
    admin = await api.admin()
    user = await api.account()
    got = await api.call("GET", f"/api/v1/admin/users/{user.id}", token=admin.access, expect=200)
    assert got["data"]["username"] == user.username and got["data"]["role"] == "user"

    updated = await api.call(
        "PUT",
        f"/api/v1/admin/users/{user.id}",
        token=admin.access,
        json={"nickname": "Promoted", "email": "promoted@example.com", "role": "admin"},
        expect=200,
    )
    assert updated["data"]["role"] == "admin" and updated["data"]["email"] == "promoted@example.com"
    as_admin = await api.call("GET", "/api/v1/admin/users", token=user.access)
    assert as_admin["status"] == 200, "the new role applies to the user's existing token"

    clash = await api.call("PUT", f"/api/v1/admin/users/{user.id}", token=admin.access, json={"email": admin.email})
    assert clash["status"] == 400 and clash["code"] == 1002
    bad_role = await api.call("PUT", f"/api/v1/admin/users/{user.id}", token=admin.access, json={"role": "root"})
    assert bad_role["status"] == 400


@pytest.mark.parametrize("path", ["/api/v1/admin/users/999999", "/api/v1/admin/users/99999999999999999999999"])
async def test_unknown_user_is_1003(api: Api, path: str) -> None:
    admin = await api.admin()
    for method, suffix in (("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/ban"), ("POST", "/unban")):
        body = await api.call(method, path + suffix, token=admin.access, json={} if method == "PUT" else None)
        assert body["status"] == 404 and body["code"] == 1003, (method, suffix)
    not_a_number = await api.call("GET", "/api/v1/admin/users/abc", token=admin.access)
    assert not_a_number["status"] == 404


async def test_ban_takes_effect_on_the_next_request_and_unban_restores_login(api: Api) -> None:
    admin = await api.admin()
    user = await api.account()
    await api.call("GET", "/api/v1/users/profile", token=user.access, expect=200)
    banned = await api.call("POST", f"/api/v1/admin/users/{user.id}/ban", token=admin.access, expect=200)
    assert banned["data"]["status"] == "banned"

    assert (await api.call("GET", "/api/v1/users/profile", token=user.access))["status"] == 403
    assert (await api.call("POST", "/api/v1/auth/refresh", token=user.refresh))["status"] == 403
    login = await api.call("POST", "/api/v1/auth/login", json={"username": user.username, "password": PASSWORD})
    assert login["status"] == 403

    await api.call("POST", f"/api/v1/admin/users/{user.id}/unban", token=admin.access, expect=200)
    stale = await api.call("GET", "/api/v1/users/profile", token=user.access)
    assert stale["status"] == 401, "tokens issued before the ban stay revoked"
    relogin = await api.call("POST", "/api/v1/auth/login", json={"username": user.username, "password": PASSWORD})
    assert relogin["status"] == 200


async def test_ban_by_status_update_and_delete(api: Api) -> None:
    admin = await api.admin()
    user = await api.account()
    await api.call("PUT", f"/api/v1/admin/users/{user.id}", token=admin.access, json={"status": "banned"}, expect=200)
    assert (await api.call("GET", "/api/v1/users/profile", token=user.access))["status"] == 403

    await api.call("DELETE", f"/api/v1/admin/users/{user.id}", token=admin.access, expect=200)
    again = await api.call("DELETE", f"/api/v1/admin/users/{user.id}", token=admin.access)
    assert again["status"] == 404 and again["code"] == 1003
    login = await api.call("POST", "/api/v1/auth/login", json={"username": user.username, "password": PASSWORD})
    assert login["code"] == 1003


async def test_admins_cannot_lock_themselves_out(api: Api) -> None:
    admin = await api.admin()
    for method, suffix, payload in (
        ("POST", "/ban", None),
        ("DELETE", "", None),
        ("PUT", "", {"role": "user"}),
        ("PUT", "", {"status": "banned"}),
    ):
        body = await api.call(method, f"/api/v1/admin/users/{admin.id}{suffix}", token=admin.access, json=payload)
        assert body["status"] == 400, (method, suffix, payload)
    renamed = await api.call("PUT", f"/api/v1/admin/users/{admin.id}", token=admin.access, json={"nickname": "Boss"})
    assert renamed["status"] == 200 and renamed["data"]["role"] == "admin"
