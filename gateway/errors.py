"""The gateway's exception hierarchy.

Every error an app can see is a :class:`GatewayError`. Each subclass fixes the HTTP status and
the OpenAI error ``type``/``code``; the API layer turns any of them into OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}``. Lower layers translate the exceptions of
the libraries they use at their boundary (``raise TeacherTimeout(...) from exc``), so nothing
above them needs to know about aiohttp or asyncpg.

    GatewayError
    ├── InvalidRequest          400  malformed JSON, schema violations (``param`` names the field)
    ├── AuthenticationFailed    401  missing, malformed, unknown or revoked API key
    ├── PermissionDenied        403  a valid key without the scope the endpoint needs
    ├── RouteNotFound           404  ``model`` names no route
    ├── PayloadTooLarge         413  body over ``server.max_body_bytes``
    ├── UnsupportedMediaType    415  body is not JSON
    ├── RequestTimeout          408  headers or body too slow (``server.*_timeout_s``)
    ├── RateLimited             429  the key's token bucket is empty (``retry-after`` set)
    ├── StudentNotFound         404  a route has no student of that name
    ├── UnknownDimension        404  a report names a slice dimension the route never had
    ├── RequestNotFound         404  feedback or a review names no logged request
    ├── ReviewNotFound          404  a verdict names no review task
    ├── NoData                  404  a report's window holds no rows of the route
    ├── NotEnoughData           400  rows, but too few for the report to say anything
    └── UpstreamError           the teacher failed
        ├── TeacherUnreachable  502  connection refused / reset / DNS
        ├── TeacherTimeout      504  no answer within the route's ``timeout_s``
        └── TeacherHTTPError    the teacher's own status, its error body passed through

Configuration problems are :class:`ConfigError`; they stop the process at start-up with a plain
message and never reach an app.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import orjson


class ConfigError(Exception):
    """The config file or environment is invalid; the message says what to fix."""


class GatewayError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        # response headers the request path adds (e.g. x-fallback-reason), never secrets
        self.headers: dict[str, str] = {}

    @property
    def http_status(self) -> int:
        return self.status_code

    def to_body(self) -> bytes:
        return error_body(self.message, self.error_type, param=self.param, code=self.code)


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> bytes:
    payload: dict[str, Any] = {
        "error": {"message": message, "type": error_type, "param": param, "code": code}
    }
    return orjson.dumps(payload)


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    """A genuine key without the scope: 403, not 401, since another key (not a retry) fixes it."""

    status_code = 403
    error_type = "invalid_request_error"
    default_code = "insufficient_scope"


class RouteNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RequestTimeout(GatewayError):
    """The body came too slowly (a slow-loris): 408, and the connection is closed."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["connection"] = "close"


class RateLimited(GatewayError):
    """The key is over its rate limit: 429 in OpenAI's shape, with ``retry-after`` seconds."""

    status_code = 429
    error_type = "requests"  # what OpenAI sends for request-rate limits
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float, *, key: str) -> None:
        super().__init__(message)
        self.key = key  # the key's name, never the secret
        self.headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
        self.headers["retry-after-ms"] = str(max(1, math.ceil(retry_after_s * 1000)))


class StudentNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "student_not_found"


class PlanNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "plan_not_found"


class SliceNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "slice_not_found"


class UnknownDimension(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "dimension_not_found"


class RequestNotFound(GatewayError):
    """No logged request has the id (feedback, review)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "request_not_found"


class ReviewNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "review_not_found"


class NoData(GatewayError):
    """Nothing to report on: no rows of the route in the window."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "no_data"


class NotEnoughData(GatewayError):
    """Rows, but too few (or none of the kind the report needs) to say anything."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "not_enough_data"


class UpstreamError(GatewayError):
    error_type = "upstream_error"


class TeacherUnreachable(UpstreamError):
    status_code = 502
    default_code = "teacher_unreachable"


class TeacherTimeout(UpstreamError):
    status_code = 504
    default_code = "teacher_timeout"


class TeacherHTTPError(UpstreamError):
    """The teacher answered with an error status; its body goes back to the app unchanged, with
    the headers that say when to retry (``retry-after``, ``retry-after-ms``, ``x-ratelimit-*``)."""

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"teacher answered HTTP {status}", code="teacher_error")
        self.upstream_status = status
        self.upstream_body = body
        self.content_type = content_type
        # the teacher's retry-after and x-ratelimit-* headers, relayed to the app
        self.headers.update(headers or {})

    @property
    def http_status(self) -> int:
        return self.upstream_status

    def to_body(self) -> bytes:
        # Pass an OpenAI-shaped error through as is; wrap anything else so apps always get one.
        try:
            parsed = orjson.loads(self.upstream_body)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return self.upstream_body
        detail = self.upstream_body[:500].decode("utf-8", "replace").strip()
        return error_body(
            f"teacher answered HTTP {self.upstream_status}: {detail}" if detail else self.message,
            self.error_type,
            code=self.code,
        )
