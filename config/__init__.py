"""Settings loading: shipped defaults, an optional TOML file, HUIYI_* environment, flags."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
