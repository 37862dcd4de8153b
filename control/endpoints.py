"""Endpoint declarations: one place says, per operation, its path, who may call it, its rate
limit and its request/response models. The same declarations register the aiohttp routes, apply
authentication and limits, validate input, envelope the output and build the OpenAPI document."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from control.bodies import reading_body
from control.envelope import envelope
from control.errors import ApiError, bad_request, not_found

_MAX_DB_INT = 2**63 - 1
_PATH_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


class Access(enum.Enum):
    PUBLIC = "public"
    USER = "user"
    ADMIN = "admin"
    REFRESH = "refresh"


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    operation_id: str
    method: str
    path: str
    summary: str
    access: Access
    rate_limit: str
    handler: Handler
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    multipart: dict[str, str] = field(default_factory=dict)
    # (media type or types, schema) of a success answer that is not the JSON envelope, e.g. a file;
    # ranges such as "video/*" say which kinds of file it may be.
    raw_response: tuple[str | tuple[str, ...], dict[str, Any]] | None = None
    errors: tuple[int, ...] = ()

    @property
    def tag(self) -> str:
        return self.operation_id.split(".", 1)[0]

    @property
    def openapi_path(self) -> str:
        return _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", self.path)

    @property
    def integer_params(self) -> list[str]:
        return [m.group(1) for m in _PATH_PARAM.finditer(self.path) if m.group(0).endswith(r":\d+}")]

    @property
    def string_params(self) -> list[str]:
        return [m.group(1) for m in _PATH_PARAM.finditer(self.path) if m.group(1) not in self.integer_params]


class EndpointGroup:
    """Collects the endpoints of one API area under a common path prefix."""

    def __init__(self, prefix: str, tag: str) -> None:
        self.prefix = prefix
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        name: str,
        summary: str,
        access: Access,
        limit: str,
        **options: Any,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    operation_id=f"{self.tag}.{name}",
                    method=method,
                    path=self.prefix + path,
                    summary=summary,
                    access=access,
                    rate_limit=limit,
                    handler=handler,
                    **options,
                )
            )
            return handler

        return register


def path_int(request: web.Request, name: str, missing: ApiError | None = None) -> int:
    """An integer path parameter; values no row can have answer as an unknown resource."""
    value = int(request.match_info[name])
    if value > _MAX_DB_INT:
        raise missing or not_found()
    return value


def unstorable_text(value: Any) -> str | None:
    """A reason when some string in a decoded document cannot be stored as text (a NUL, or half
    of a UTF-16 surrogate pair); checked once at the edge for every body, query and socket message."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "text must not contain NUL characters"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "text must not contain unpaired surrogates"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def invalid(where: str, errors: list[dict[str, Any]]) -> ApiError:
    """A 400 naming each offending field, e.g. ``{"field": "email", "message": ..., "type": ...}``."""
    return bad_request(f"Invalid {where}", {"errors": errors})


def validation_error(exc: ValidationError, where: str) -> ApiError:
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"]) or where,
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    return invalid(where, errors)


class NotJson(ValueError):
    """A client's document that cannot be decoded; the message completes "The document ..." and
    is safe to show the client."""


def load_json(raw: bytes | str) -> Any:
    """Decode a client's JSON document. Every way ``json.loads`` can fail on hostile input (bad
    syntax or encoding, nesting past the recursion limit, an integer longer than Python converts)
    comes out as ``NotJson``, so no caller answers such input with a server error."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NotJson("is not valid JSON") from None
    except RecursionError:
        raise NotJson("is nested too deeply") from None
    except ValueError:
        # Python refuses to convert integers of more than 4300 digits (int_max_str_digits).
        raise NotJson("holds a number with too many digits") from None


async def parse_json_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    with reading_body():
        raw = await request.read()
    try:
        document = load_json(raw) if raw.strip() else {}
    except NotJson as exc:
        raise bad_request(f"Request body {exc}") from None
    if not isinstance(document, dict):
        raise bad_request("Request body must be a JSON object")
    problem = unstorable_text(document)
    if problem:
        raise bad_request(f"Invalid request body: {problem}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise validation_error(exc, "request body") from None


def parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    query = request.rel_url.query
    duplicated = sorted({key for key in query if len(query.getall(key)) > 1})
    if duplicated:
        raise bad_request(f"Query parameter given more than once: {', '.join(duplicated)}")
    problem = unstorable_text(dict(query))
    if problem:
        raise bad_request(f"Invalid query parameters: {problem}")
    try:
        return model.model_validate(dict(query))
    except ValidationError as exc:
        raise validation_error(exc, "query parameters") from None


Guard = Callable[[web.Request, Endpoint], Awaitable[None]]


def bind(endpoint: Endpoint, guard: Guard) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for an endpoint: guard (auth + limit), parse, call, envelope."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await guard(request, endpoint)
        arguments: dict[str, Any] = {}
        if endpoint.query is not None:
            arguments["query"] = parse_query(request, endpoint.query)
        if endpoint.body is not None:
            arguments["body"] = await parse_json_body(request, endpoint.body)
        result = await endpoint.handler(request, **arguments)
        if isinstance(result, web.StreamResponse):
            return result
        return envelope(request, result, status=endpoint.status)

    handle.__name__ = endpoint.operation_id.replace(".", "_")
    handle.__doc__ = endpoint.summary
    return handle
