"""Reading request bodies: a client that goes away mid-body, or breaks the body's framing, is the
client's doing. It gets a 400 (if it still listens) and the log an info line, never an error."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp.web import RequestPayloadError

from control.errors import bad_request

log = logging.getLogger("huiyi.http")


@contextmanager
def reading_body() -> Iterator[None]:
    """Wrap every read of a request's body."""
    try:
        yield
    except ConnectionResetError:
        log.info("request body cut off: the client went away before sending all of it")
        raise bad_request("The request body was cut off before it ended") from None
    except RequestPayloadError as exc:
        log.info("request body refused: %s", exc)
        raise bad_request("The request body could not be decoded (broken framing or compression)") from None
