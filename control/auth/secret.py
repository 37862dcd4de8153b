"""The JWT signing key: from configuration, or generated once into the data directory."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from control.private_files import create_private

log = logging.getLogger("huiyi.auth")

SECRET_FILE_NAME = "jwt_secret"


def load_signing_key(configured: str, data_dir: Path) -> str:
    """Never ship a default key: without one configured, make one readable by this user only
    and keep it, so tokens survive restarts."""
    if configured:
        return configured
    path = data_dir / SECRET_FILE_NAME
    try:
        descriptor = create_private(path)
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
