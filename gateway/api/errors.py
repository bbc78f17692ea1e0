"""Every error leaves the gateway in OpenAI's shape, whatever raised it."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, error_body

_log = logging.getLogger("shadow_gateway.api")
JSON = "application/json"


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
