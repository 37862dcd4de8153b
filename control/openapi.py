"""The OpenAPI 3.1 document, built from the endpoint declarations and their pydantic models."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from control.endpoints import Access, Endpoint

REF = "#/components/schemas/{model}"

_ERROR_TEXT = {
    400: "Invalid input or a business rule refused it (see `code`)",
    401: "Missing, invalid, expired (code 1005) or revoked token",
    403: "Authenticated but not allowed",
    404: "Unknown resource (see `code`)",
    413: "Upload too large",
    416: "The requested byte range lies past the end of the file; see Content-Range",
    429: "Rate limit exceeded; see Retry-After",
    500: "Unexpected server error",
    503: "A service the server depends on is unreachable",
}


def _envelope_schema(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["code", "message", "data", "timestamp", "request_id"],
        "properties": {
            "code": {"type": "integer", "description": "HTTP status, or a business code on a business error"},
            "message": {"type": "string"},
            "data": data,
            "timestamp": {"type": "string", "description": "ISO 8601, UTC"},
            "request_id": {"type": "string"},
        },
    }


def _json_response(description: str, data: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _envelope_schema(data)}},
    }
    if headers:
        response["headers"] = headers
    return response


def _data_schema(response: Any, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    if response is None:
        return {"type": "null"}
    if get_origin(response) is list:
        return {"type": "array", "items": refs[(get_args(response)[0], "serialization")]}
    return refs[(response, "serialization")]


def _operation(endpoint: Endpoint, refs: dict[Any, dict[str, Any]], schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "x-rate-limit": endpoint.rate_limit,
    }
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
        for name in endpoint.integer_params
    ]
    parameters += [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in endpoint.string_params
    ]
    if endpoint.query is not None:
        query_schema = schemas[endpoint.query.__name__]
        required = set(query_schema.get("required", []))
        for name, schema in query_schema["properties"].items():
            parameters.append({"name": name, "in": "query", "required": name in required, "schema": schema})
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(endpoint.body, "validation")]}},
        }
    elif endpoint.multipart:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": list(endpoint.multipart),
                        "properties": {
                            name: {"type": "string", "format": "binary", "description": description}
                            for name, description in endpoint.multipart.items()
                        },
                    }
                }
            },
        }
    if endpoint.access is not Access.PUBLIC:
        operation["security"] = [{"bearer": []}]
    success: dict[str, Any]
    if endpoint.raw_response:
        media_types, schema = endpoint.raw_response
        names = (media_types,) if isinstance(media_types, str) else media_types
        success = {"description": "Success (not enveloped)", "content": {name: {"schema": schema} for name in names}}
    else:
        success = _json_response("Success", _data_schema(endpoint.response, refs))
    error_data = {"description": "details, e.g. field errors under `errors`"}
    # Any call may break a business rule (400 with a business code), hit its limit or fail.
    statuses = set(endpoint.errors) | {400, 429, 500}
    if endpoint.access is not Access.PUBLIC:
        # Bodies and queries name resources too (a meeting, a file), which may not exist.
        statuses |= {401, 403, 404}
    if endpoint.integer_params or endpoint.string_params:
        statuses.add(404)
    responses: dict[str, Any] = {str(endpoint.status): success}
    for status in sorted(statuses):
        headers = {"Retry-After": {"schema": {"type": "string"}}} if status == 429 else None
        responses[str(status)] = _json_response(_ERROR_TEXT[status], error_data, headers)
    operation["responses"] = responses
    return operation


def build_openapi(endpoints: Iterable[Endpoint], version: str) -> dict[str, Any]:
    endpoints = list(endpoints)
    models: list[tuple[type[BaseModel], Any]] = []
    for endpoint in endpoints:
        response = get_args(endpoint.response)[0] if get_origin(endpoint.response) is list else endpoint.response
        for model, mode in (
            (endpoint.body, "validation"),
            (endpoint.query, "validation"),
            (response, "serialization"),
        ):
            if model is not None and (model, mode) not in models:
                models.append((model, mode))
    refs, definitions = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = definitions.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.openapi_path, {})[endpoint.method.lower()] = _operation(endpoint, refs, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "huiyi API",
            "version": version,
            "description": "Every JSON response uses the envelope {code, message, data, timestamp, request_id}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
