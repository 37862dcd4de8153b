"""Secrets the server generates when none is configured (the JWT signing key, the TURN secret):
made once into the data directory, readable by this user only, and reused."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from control.private_files import create_private

log = logging.getLogger("huiyi.auth")

SECRET_FILE_NAME = "jwt_secret"
TURN_SECRET_FILE_NAME = "turn_secret"


def load_signing_key(configured: str, data_dir: Path) -> str:
    """Never ship a default key: without one configured, make one and keep it, so tokens survive
    restarts."""
    return load_secret(configured, data_dir / SECRET_FILE_NAME, "JWT signing key")


def load_turn_secret(configured: str, data_dir: Path) -> str:
    """The secret TURN credentials are signed with; kept, so handed-out credentials survive restarts."""
    return load_secret(configured, data_dir / TURN_SECRET_FILE_NAME, "TURN secret")


def load_secret(configured: str, path: Path, what: str) -> str:
    if configured:
        return configured
    try:
        descriptor = create_private(path)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if len(key) < 32:
            raise RuntimeError(f"{what} in {path} is too short; delete it to generate a new one") from None
        return key
    key = secrets.token_hex(32)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    log.info("generated a new %s in %s", what, path)
    return key
