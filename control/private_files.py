"""Everything the server writes under its data directory (the database, media, avatars, mail,
the signing key) is for its own user only: files 0600, directories 0700. The command line also
sets a umask at start-up, but the modes are given here explicitly where files are made, so an
application embedded in another process is just as private."""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def private_directory(path: Path) -> None:
    """Make ``path`` and any missing parents 0700 (``Path.mkdir`` gives parents the default mode)."""
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        directory.mkdir(mode=DIRECTORY_MODE, exist_ok=True)


def create_private(path: Path) -> int:
    """A descriptor open for writing on a new file (never an existing one) that only we can read."""
    private_directory(path.parent)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def write_private(path: Path, data: bytes) -> None:
    with os.fdopen(create_private(path), "wb") as handle:
        handle.write(data)


def touch_private(path: Path) -> None:
    """Create ``path`` empty and private if it is missing, so what opens it later (SQLite, which
    gives its -wal and -shm files the database file's mode) keeps that mode."""
    private_directory(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
