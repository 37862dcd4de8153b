"""How every process of the server writes its log: one readable line per record, or one JSON object
per line for log collectors (``[server] log_format``). Used by the server, the TURN process and the
AI worker nodes alike, so a deployment's logs parse the same whichever process wrote them.

Whatever the format, values that grant access are masked before a record is written: bearer
tokens and JWTs, and the value of any ``password=``, ``token=``, ``secret=``, ``stream_key=``...
pair. The code does not log such values on purpose; this catches the ones a library or an
exception message would carry."""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable

# Record attributes a JSON line carries when a record has them (see control/logcontext.py).
CONTEXT_FIELDS = ("request_id", "meeting_id", "user_id", "peer_id")
MASK = "***"

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_SECRET_PAIR = re.compile(
    r"(?i)\b((?:current_|old_|new_)?password|passwd|secret|(?:access_|refresh_|reset_)?token|stream_?key"
    r"|api_?key|invite_code|credential|authorization)(\"?'?\s*[:=]\s*\"?'?)(?!\*\*\*)([^\s\"'&,;}]+)"
)


def scrub(text: str) -> str:
    """``text`` with every value that grants access replaced by ``***``."""
    if not text:
        return text
    text = _JWT.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, scrubbed."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
    ``logger``, ``message``, the context fields the record carries, ``exception`` when there is a
    traceback."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: str = "text", filters: Iterable[logging.Filter] = ()) -> logging.Handler:
    """Send the process's records at ``level`` and above to standard error in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for item in filters:
        handler.addFilter(item)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Python's warnings too, so that every line written is in the format asked for.
    logging.captureWarnings(True)
    return handler


_PROGRESS = re.compile(r"^\s*\d+(\.\d+)?\s*%\s*$")


def capture_native_output(handler: logging.Handler) -> None:
    """Route what native libraries write straight to file descriptor 2 (a model runtime's
    per-tile progress, say) through the log, so that every line the process writes stays in the
    format asked for: progress lines at DEBUG, anything else at WARNING. The process's own
    records, and Python's ``sys.stderr``, keep the original standard error."""
    if not isinstance(handler, logging.StreamHandler):
        return
    original = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    handler.setStream(original)
    sys.stderr = original
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    native = logging.getLogger("huiyi.native")

    def relay() -> None:
        with os.fdopen(read_end, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                text = line.rstrip()
                if text:
                    native.log(logging.DEBUG if _PROGRESS.match(text) else logging.WARNING, "%s", text)

    thread = threading.Thread(target=relay, name="native-output", daemon=True)
    thread.start()

    def drain() -> None:
        """At exit: give fd 2 back (closing the pipe) and let the last lines through."""
        os.dup2(original.fileno(), 2)
        thread.join(timeout=2)

    atexit.register(drain)
