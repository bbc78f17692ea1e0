"""Every error leaves the gateway in OpenAI's shape, whatever raised it; and how the admin
API's OpenAPI document says so (:func:`documented_errors`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, error_body
from gateway.protocol.responses import OpenAIError

_log = logging.getLogger("shadow_gateway.api")
JSON = "application/json"

# What each status means on the admin API (a route may say more of its 404).
_MEANINGS: dict[int | str, str] = {
    400: "Bad input: a parameter or body field is malformed or out of range (`param` names "
    "it). Validation errors are answered so too, never with a 422.",
    401: "No API key, or an unknown or revoked one (`invalid_api_key`); or a console session "
    "that is no longer valid.",
    403: "The key lacks the scope the endpoint needs (`insufficient_scope`), or a console "
    "change came without its CSRF token.",
    404: "Not found: `code` says what (`model_not_found` for a route).",
    413: "The body is over the limit (`request_too_large`).",
    415: "The body is not JSON (`unsupported_media_type`).",
    "default": "Any other error, in the same shape: 408 for a body too slow to arrive, 500 for "
    "an internal error.",
}


def documented_errors(
    *statuses: int, not_found: str | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for an admin route: each status, and any other (``default``), in
    OpenAI's error shape. Documenting them also keeps FastAPI from listing its 422, which
    this API never answers (:func:`validation_error_handler` makes it a 400)."""
    documented: dict[int | str, dict[str, Any]] = {}
    every: tuple[int | str, ...] = (*statuses, "default")
    for status in every:
        meaning = not_found if status == 404 and not_found else _MEANINGS[status]
        documented[status] = {"model": OpenAIError, "description": meaning}
    return documented


def error_response(exc: GatewayError, ids: Mapping[str, str] | None = None) -> Response:
    """The error in OpenAI's shape; ``ids`` are the request's id headers (``x-request-id``)."""
    headers = {**exc.headers, **(ids or {})}
    return Response(exc.to_body(), status_code=exc.http_status, media_type=JSON, headers=headers)


async def gateway_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = (
        f"Unknown path {request.method} {request.url.path}."
        if exc.status_code == 404
        else str(exc.detail)
    )
    return Response(
        error_body(message, kind, code=code),
        status_code=exc.status_code,
        media_type=JSON,
        headers=exc.headers,
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    _log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response(
        error_body(
            "The gateway hit an internal error; it has been logged.",
            "server_error",
            code="internal_error",
        ),
        status_code=500,
        media_type=JSON,
    )


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 for a bad admin body, in OpenAI's shape (400, the field named)."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = f"Invalid value for '{param}': {first['msg']}" if param else str(first["msg"])
    return Response(
        error_body(message, "invalid_request_error", param=param, code="invalid_value"),
        status_code=400,
        media_type=JSON,
    )
