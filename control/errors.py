"""The one error model: every failure a handler can report is an ApiError carrying the HTTP
status, the business code of the API contract and a message safe to show a client."""

from __future__ import annotations

from typing import Any


class BusinessCode:
    """Business codes of the API contract (returned in the envelope's ``code``)."""

    USERNAME_TAKEN = 1001
    EMAIL_TAKEN = 1002
    USER_NOT_FOUND = 1003
    WRONG_PASSWORD = 1004
    TOKEN_EXPIRED = 1005
    MEETING_NOT_FOUND = 2001
    MEETING_ENDED = 2002
    MEETING_FULL = 2003
    WRONG_MEETING_PASSWORD = 2004
    UPLOAD_FAILED = 3001
    FILE_NOT_FOUND = 3002
    AI_UNAVAILABLE = 4001
    # Recording (docs/recording.md); the contract leaves 5xxx free.
    RECORDING_NOT_FOUND = 5001
    RECORDING_RUNNING = 5002
    RECORDING_NOT_RUNNING = 5003
    RECORDING_DISABLED = 5004
    RECORDING_NO_DISK = 5005
    RECORDING_BUSY = 5006
    MEETING_NOT_STARTED = 5007
    # Live streaming (docs/streaming.md).
    STREAM_NOT_FOUND = 5101
    STREAM_TARGET_BUSY = 5102
    STREAM_NOT_RUNNING = 5103
    STREAMING_UNAVAILABLE = 5104


class ApiError(Exception):
    """An error answered in the envelope; ``code`` defaults to the HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: int | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else status
        self.data = data
        self.headers = headers or {}


def bad_request(message: str, data: Any = None, code: int | None = None) -> ApiError:
    return ApiError(400, message, code=code, data=data)


def unauthorized(message: str = "Authentication required", code: int | None = None) -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str = "Forbidden") -> ApiError:
    return ApiError(403, message)


def not_found(message: str = "Not found", code: int | None = None) -> ApiError:
    return ApiError(404, message, code=code)


def user_not_found() -> ApiError:
    return not_found("User not found", BusinessCode.USER_NOT_FOUND)


def too_large(message: str) -> ApiError:
    return ApiError(413, message)
