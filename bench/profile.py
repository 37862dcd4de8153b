"""``python -m bench.profile --pid PID [--seconds 12]``: sample a running server with py-spy and name
where its time goes, by function (self time) and by call path (inclusive time).

Start it once a benchmark is in its steady phase; account creation (Argon2) would otherwise dominate."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path


def _name(frame: str) -> str:
    """``func (path/file.py:12)`` becomes ``func (file.py)``."""
    if " (" not in frame:
        return frame or "(native)"
    function, _, where = frame.partition(" (")
    return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def summarize(raw: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        names = [_name(frame) for frame in stack.split(";")]
        own[names[-1]] += samples
        for name in set(names):
            inclusive[name] += samples
    lines = [f"{total} samples", "", "self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    arguments = parser.parse_args()
    raw = Path(tempfile.mkdtemp(prefix="huiyi-profile-")) / "stacks.txt"
    command = ["py-spy", "record", "--pid", str(arguments.pid), "--duration", str(arguments.seconds)]
    command += ["--rate", str(arguments.rate), "--format", "raw", "--nonblocking", "-o", str(raw)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0 or not raw.exists():
        print(completed.stderr, file=sys.stderr)
        return 1
    print(summarize(raw, arguments.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
