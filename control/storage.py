"""File storage behind an interface, with the local-disk backend of the embedded default.

Files live under generated keys, never under names a client chose; a write goes to a temporary
file first and is renamed into place only when complete, so a crash or a cut upload never leaves a
half file where a finished one is expected."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Protocol

from control.private_files import FILE_MODE, create_private, private_directory

_LEGACY_SCRATCH = re.compile(r"[0-9a-f]{32}(\.part)?")
# A node of an earlier version, still running beside this one during an upgrade, writes directly
# in the shared scratch folder; what it is writing changes often, what a crash left does not.
LEGACY_SCRATCH_IDLE_SECONDS = 3600.0


class TooLarge(Exception):
    """The stream went past the size cap; nothing was kept."""


class Storage(Protocol):
    async def save(self, chunks: AsyncIterable[bytes], max_bytes: int) -> tuple[str, int]: ...

    def local_path(self, key: str) -> Path: ...

    def scratch_path(self, suffix: str) -> Path: ...

    async def adopt(self, scratch: Path) -> tuple[str, int]: ...

    async def delete(self, key: str) -> None: ...


class LocalStorage:
    def __init__(self, root: Path, node_id: str = "") -> None:
        self.root = root
        # Each node writes its half-done files (uploads in flight, job outputs) in a folder of its
        # own, so that on start it can clear what a crash left there without touching the work of
        # another node sharing this storage.
        self._scratch = root / ".scratch" / _folder_name(node_id)

    def clear_scratch(self) -> int:
        """Remove what this node's previous run left half done; how many entries went. Entries
        of the layout before scratch folders were per node (directly in ``.scratch``, so of no
        node in particular) go too once nothing in them changed for LEGACY_SCRATCH_IDLE_SECONDS."""
        shared = self._scratch.parent
        idle_since = time.time() - LEGACY_SCRATCH_IDLE_SECONDS
        leftovers = (
            [
                entry
                for entry in shared.iterdir()
                if _LEGACY_SCRATCH.fullmatch(entry.name) and _last_change(entry) < idle_since
            ]
            if shared.is_dir()
            else []
        )
        if self._scratch.is_dir():
            leftovers += list(self._scratch.iterdir())
        for entry in leftovers:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return len(leftovers)

    def _new_key(self) -> str:
        return secrets.token_hex(16)

    def local_path(self, key: str) -> Path:
        if len(key) != 32 or any(char not in "0123456789abcdef" for char in key):
            raise ValueError("not a storage key")
        return self.root / key[:2] / key

    def scratch_path(self, suffix: str) -> Path:
        """A fresh path for a worker to write a result into before it is adopted."""
        private_directory(self._scratch)
        return self._scratch / f"{secrets.token_hex(16)}{suffix}"

    async def save(self, chunks: AsyncIterable[bytes], max_bytes: int) -> tuple[str, int]:
        temporary = self.scratch_path(".part")
        size = 0
        try:
            with os.fdopen(create_private(temporary), "wb") as handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f"larger than {max_bytes} bytes")
                    await asyncio.to_thread(handle.write, chunk)
            key, _ = await self.adopt(temporary)
        finally:
            temporary.unlink(missing_ok=True)
        return key, size

    async def adopt(self, scratch: Path) -> tuple[str, int]:
        key = self._new_key()
        target = self.local_path(key)
        private_directory(target.parent)
        # A job's worker wrote the file with the process's umask: it becomes private before it
        # is in place.
        await asyncio.to_thread(os.chmod, scratch, FILE_MODE)
        await asyncio.to_thread(os.replace, scratch, target)
        return key, target.stat().st_size

    async def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)


def _last_change(entry: Path) -> float:
    """When anything in ``entry`` (a file, or a folder and all it holds) last changed; an entry
    that went meanwhile counts as changed now, so that it is left alone."""
    try:
        times = [entry.lstat().st_mtime]
        if entry.is_dir() and not entry.is_symlink():
            times += [inner.lstat().st_mtime for inner in entry.rglob("*")]
    except OSError:
        return time.time()
    return max(times)


def _folder_name(node_id: str) -> str:
    """A node id as a folder name: readable, and distinct for distinct ids."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", node_id)[:40]
    return f"{readable}-{hashlib.sha256(node_id.encode()).hexdigest()[:8]}"
