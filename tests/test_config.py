"""Settings: shipped defaults < TOML file < HUIYI_* environment < command-line flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, load_settings


def test_defaults_are_the_embedded_ones() -> None:
    settings = load_settings(None, environ={})
    assert settings.server.port == 8000 and settings.server.data_dir == Path("data")
    assert settings.database_url == "sqlite+aiosqlite:///data/huiyi.db"
    assert settings.redis.url == "" and settings.rate_limits.enabled
    assert settings.auth.jwt_secret == "", "no signing key is shipped"
    assert settings.auth.access_token_ttl_seconds == 900 and settings.auth.reset_token_ttl_seconds == 1800
    assert settings.recording.min_free_disk_mb == 1024
    assert load_settings(None, environ={"HUIYI_RECORDING_MIN_FREE_DISK_MB": "50"}).recording.min_free_disk_mb == 50


def test_each_layer_overrides_the_one_before(tmp_path: Path) -> None:
    config = tmp_path / "huiyi.toml"
    config.write_text(
        '[server]\nport = 9001\nhost = "127.0.0.1"\n[auth]\naccess_token_ttl_seconds = 60\n'
        '[rate_limits.endpoints]\n"auth.login" = "10/minute"\n'
    )
    environ = {"HUIYI_SERVER_PORT": "9002", "HUIYI_DATABASE_URL": "postgresql://db/huiyi", "HUIYI_RATE_LIMITS": "off"}
    settings = load_settings(config, {"server": {"port": 9003, "host": None}}, environ=environ)
    assert settings.server.port == 9003
    assert settings.server.host == "127.0.0.1"
    assert settings.auth.access_token_ttl_seconds == 60
    assert settings.rate_limits.endpoints == {"auth.login": "10/minute"}
    assert not settings.rate_limits.enabled
    assert settings.database_url == "postgresql+asyncpg://db/huiyi"
    assert load_settings(config, environ=environ).server.port == 9002


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HUIYI_SERVER_PORT": "99999"}, "server.port"),
        ({"HUIYI_AUTH_ACCESS_TOKEN_TTL_SECONDS": "0"}, "auth.access_token_ttl_seconds"),
        ({"HUIYI_DATABASE_URL": "mysql://x"}, "unsupported database URL"),
        ({"HUIYI_SERVER_LOG_LEVEL": "LOUD"}, "server.log_level"),
        ({"HUIYI_SFU_SILENCE_SECONDS": "0"}, "sfu.silence_seconds"),
        ({"HUIYI_SIGNALING_MAX_SOCKETS_PER_USER": "0"}, "signaling.max_sockets_per_user"),
        ({"HUIYI_AUTH_ACCOUNT_CACHE_SECONDS": "-1"}, "auth.account_cache_seconds"),
        ({"HUIYI_DATABASE_POOL_SIZE": "0"}, "database.pool_size"),
        ({"HUIYI_RECORDING_MIN_FREE_DISK_MB": "-1"}, "recording.min_free_disk_mb"),
        ({"HUIYI_RECORDING_STOP_WAIT_SECONDS": "0"}, "recording.stop_wait_seconds"),
    ],
)
def test_invalid_values_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, environ=environ)


def test_unreadable_or_unknown_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(broken, environ={})
    typo = tmp_path / "typo.toml"
    typo.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings(typo, environ={})
