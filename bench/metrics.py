"""CPU and memory of a process, read from /proc: the server's cost and the harness's own."""

from __future__ import annotations

import os
import resource
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children(pid: int, module: bytes) -> list[int]:
    """The processes ``python -m <module>`` that ``pid`` started."""
    found = []
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            parent = int((process / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (process / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and command[1:3] == [b"-m", module]:
            found.append(int(process.name))
    return found


def turn_child(pid: int) -> int | None:
    """The TURN process (``python -m turn``) the server ``pid`` started, if it runs one."""
    children = _children(pid, b"turn")
    return children[0] if children else None


def media_workers(pid: int) -> list[int]:
    """The media worker processes (``python -m sfu.worker``, docs/sfu.md#workers) of the server ``pid``."""
    return _children(pid, b"sfu.worker")


def pid_listening_on(port: int) -> int | None:
    """The process with a TCP socket listening on ``port`` on this host, if it can be seen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            columns = row.split()
            if columns[3] == "0A" and int(columns[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(columns[9])
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            for fd in (process / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(process.name)
        except OSError:
            continue
    return None
