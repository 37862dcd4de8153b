"""The JWT signing key: from configuration, or generated once into the data directory."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("huiyi.auth")

SECRET_FILE_NAME = "jwt_secret"


def load_signing_key(configured: str, data_dir: Path) -> str:
    """Never ship a default key: without one configured, make one readable by this user only
    and keep it, so tokens survive restarts."""
    if configured:
        return configured
    path = data_dir / SECRET_FILE_NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if len(key) < 32:
            raise RuntimeError(f"signing key in {path} is too short; delete it to generate a new one") from None
        return key
    key = secrets.token_hex(32)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    log.info("generated a new JWT signing key in %s", path)
    return key
