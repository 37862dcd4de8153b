"""Readiness: unready (503, naming the check) while PostgreSQL or Redis is down, ready again once they
are back; unready on a full disk; liveness stays the cheap check it was."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config import load_settings
from control.app import create_app
from tests.conftest import Api, SettingsFactory, sqlite_only
from tests.private_servers import PrivatePostgres, PrivateRedis
from tests.support import until

READY = "/api/v1/health/ready"


async def test_readiness_follows_postgresql_and_redis(tmp_path: Path, aiohttp_client: Any) -> None:
    postgres, redis = PrivatePostgres(), PrivateRedis()
    await asyncio.to_thread(postgres.start)
    await asyncio.to_thread(redis.start)
    settings = load_settings(
        None,
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "database": {"url": postgres.url},
            "redis": {"url": redis.url},
            "rate_limits": {"enabled": False},
            "sfu": {"workers": 0},
            "turn": {"enabled": False},
            "metrics": {"port": 0},
        },
        environ={},
    )
    client = await aiohttp_client(create_app(settings))
    api = Api(client)

    async def answer() -> dict[str, Any]:
        return await api.call("GET", READY)

    async def answers(status: int, failed: set[str]) -> dict[str, Any] | None:
        body = await answer()
        if body["status"] != status:
            return None
        checks = body["data"]["checks"]
        return body if {name for name, check in checks.items() if check["status"] == "failed"} == failed else None

    try:
        ready = await answer()
        assert ready["status"] == 200 and ready["data"]["status"] == "ready", ready
        assert set(ready["data"]["checks"]) == {"database", "redis", "sfu", "disk"}

        await asyncio.to_thread(postgres.stop)
        unready = await until(lambda: answers(503, {"database"}), "unready without PostgreSQL", 15)
        assert unready["code"] == 503 and unready["message"] == "Not ready: database"
        assert unready["data"]["status"] == "unready" and unready["data"]["checks"]["database"]["detail"]
        assert (await api.call("GET", "/api/v1/health"))["status"] == 503  # liveness says so too
        await asyncio.to_thread(postgres.start)
        await until(lambda: answers(200, set()), "ready once PostgreSQL is back", 30)

        await asyncio.to_thread(redis.stop)
        unready = await until(lambda: answers(503, {"redis"}), "unready without Redis", 15)
        assert unready["message"] == "Not ready: redis"
        assert (await api.call("GET", "/api/v1/health"))["status"] == 200  # liveness needs no Redis
        await asyncio.to_thread(redis.start)
        await until(lambda: answers(200, set()), "ready once Redis is back", 30)
    finally:
        await client.close()
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(postgres.remove)


@sqlite_only
async def test_a_full_disk_makes_the_node_unready(
    settings_factory: SettingsFactory, make_api: Callable[..., Any]
) -> None:
    api: Api = await make_api(settings_factory(health={"min_free_disk_mb": 1 << 40}))
    unready = await api.call("GET", READY, expect=503)
    assert unready["message"] == "Not ready: disk"
    assert "MiB needed" in unready["data"]["checks"]["disk"]["detail"]
    health = await api.call("GET", "/api/v1/health", expect=200)
    assert set(health["data"]) == {"status", "version", "database"}
