"""This process's memory as the operating system counts it, and giving freed memory back to it."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def total_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * _PAGE


def release() -> None:
    """Collect garbage and ask the C allocator to return free pages (glibc keeps them otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
