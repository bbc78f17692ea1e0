"""``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/models`` and
``/v1/feedback``.

The two POST handlers are plain Starlette endpoints rather than FastAPI routes: they are the
hot path, and they need the raw body (to pass the app's JSON upstream untouched), not a
parsed model. Validation still happens, with :mod:`gateway.protocol.openai`.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway import logs, tracing
from gateway.api.errors import JSON, error_response
from gateway.api.state import GatewayState, gateway_state
from gateway.core.outputs import Endpoint
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
    UnsupportedMediaType,
)
from gateway.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    ResponsesRequest,
    validate_model,
    validate_request,
)
from gateway.services.answers import Answer, RequestContext, StreamAnswer

# An app's own request id is kept and echoed only if it looks like one: no spaces, no control
# characters, nothing a log line or a header could be bent with.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def client_request_id(request: Request) -> str | None:
    """The ``X-Request-Id`` (or ``X-Client-Request-Id``) the app sent, if sane."""
    headers = request.headers
    found = headers.get("x-request-id") or headers.get("x-client-request-id")
    return found if found is not None and _CLIENT_REQUEST_ID.fullmatch(found) else None


def client_gone(request: Request) -> bool:
    """Whether the app has closed its connection, asked without waiting for anything.

    Once the body is read, an ASGI server's ``receive()`` returns ``http.disconnect`` at once
    if the client has gone, and otherwise waits for that. So ``receive()`` is started and, if
    it would wait, closed before it does (its wait is unregistered as it closes): about 5 us,
    where Starlette's ``is_disconnected`` (an anyio cancel scope around the same call) costs
    about 70 us, 6 % of a request at full load (measured; docs/benchmarks.md).
    """
    pending = request.receive()
    if not isinstance(pending, Coroutine):
        return False
    try:
        pending.send(None)
    except StopIteration as done:
        message = done.value
        return isinstance(message, dict) and message.get("type") == "http.disconnect"
    pending.close()
    return False


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type.lower():
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {content_type[:100]!r}."
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.")
    return parse_json_object(received)


def parse_json_object(received: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object, or :class:`InvalidRequest` (invalid UTF-8 or JSON, not an
    object, nested deeper than orjson's 1024 levels)."""
    try:
        body = orjson.loads(received)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc}). "
            "Send a JSON object, encoded as UTF-8.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


async def _proxy(request: Request, endpoint: Endpoint) -> Response:
    started = time.perf_counter()
    state = gateway_state(request)
    request_id = f"req_{uuid.uuid4().hex}"
    client_id = client_request_id(request)
    # Every log line of the request (and of the background work it starts) carries these.
    fields = logs.start_request(request_id, client_id)
    span = (
        tracing.start_request(request.method, request.url.path, request.headers)
        if tracing.enabled
        else None
    )
    ids = {"x-request-id": request_id}
    if client_id is not None:
        ids["x-client-request-id"] = client_id
    response: Response
    try:
        try:
            state.keys.throttle(state.keys.authenticate(request.headers.get("authorization")))
            body = await read_json_body(request, state.settings.config.server.max_body_bytes)
            validated = validate_request(endpoint, body)
            ctx = RequestContext(
                request_id=request_id,
                endpoint=endpoint,
                started=started,
                created_at=datetime.now(UTC),
                headers=request.headers.items(),
                client_request_id=client_id,
            )
            answer = await state.proxy.complete(ctx, body, validated.metadata)
        except RateLimited as exc:
            state.metrics.rejected.labels("429").inc()
            state.metrics.rate_limited.labels(exc.key).inc()
            response = error_response(exc, ids)
        except GatewayError as exc:
            if exc.http_status in (400, 401, 403, 404, 408, 413, 415):
                state.metrics.rejected.labels(str(exc.http_status)).inc()
            response = error_response(exc, ids)
        else:
            response = _respond(request, answer, ids, fields)
        fields["status"] = response.status_code
    except BaseException as exc:
        if span is not None:
            tracing.fail_request(span, fields, exc)
        raise
    if span is not None:
        if isinstance(response, StreamingResponse):
            response.body_iterator = tracing.until_done(response.body_iterator, span, fields)
        else:
            tracing.end_request(span, fields)
    return response


def _respond(
    request: Request, answer: Answer | StreamAnswer, ids: dict[str, str], fields: logs.Fields
) -> Response:
    """The HTTP response for the request path's answer; who answered goes into the request's
    log fields."""
    headers = {**ids, **answer.headers}
    if (served_by := headers.get("x-served-by")) is not None:
        fields["served_by"] = served_by
    if (student := headers.get("x-student")) is not None:
        fields["student"] = student
    if (reason := headers.get("x-fallback-reason")) is not None:
        fields["fallback_reason"] = reason
    if isinstance(answer, Answer):
        # An app that gave up (its timeout) before the answer came must not be logged as served.
        return Response(
            answer.body,
            status_code=answer.status,
            media_type=answer.content_type,
            headers=headers,
            background=BackgroundTask(answer.after, client_gone(request)),
        )
    headers["cache-control"] = "no-cache"
    headers["x-accel-buffering"] = "no"  # tell proxies in front of us not to buffer SSE
    return StreamingResponse(answer.chunks, media_type=answer.content_type, headers=headers)


async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "chat")


async def completions(request: Request) -> Response:
    return await _proxy(request, "text")


async def responses(request: Request) -> Response:
    return await _proxy(request, "responses")


async def feedback(request: Request) -> Response:
    """``POST /v1/feedback``: what the app says of an answer it got (201, or an OpenAI error)."""
    state = gateway_state(request)
    try:
        key = state.keys.authenticate(request.headers.get("authorization"))
        state.keys.throttle(key)
        body = await read_json_body(request, state.settings.config.server.max_body_bytes)
        parsed = validate_model(FeedbackRequest, body)
        if not parsed.judges_something():
            raise InvalidRequest(
                "Feedback needs at least one of score, correct, label, comment or "
                "corrected_output.",
                code="missing_required_parameter",
            )
        stored = await state.feedback.record(parsed, key.name)
    except RateLimited as exc:
        state.metrics.rejected.labels("429").inc()
        state.metrics.rate_limited.labels(exc.key).inc()
        return error_response(exc)
    except GatewayError as exc:
        return error_response(exc)
    judged = "teacher" if stored["answered_by"] == "teacher" else "student"
    state.metrics.feedback.labels(stored["route"], judged).inc()
    return Response(orjson.dumps(stored), status_code=201, media_type=JSON)


def _model_card(state: GatewayState, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": state.started_at,
        "owned_by": "shadow-gateway",
    }


async def list_models(request: Request) -> Response:
    state = gateway_state(request)
    try:
        state.keys.authenticate(request.headers.get("authorization"))
    except GatewayError as exc:
        return error_response(exc)
    data = [_model_card(state, route.name) for route in state.settings.config.routes]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)


async def retrieve_model(request: Request) -> Response:
    state = gateway_state(request)
    try:
        state.keys.authenticate(request.headers.get("authorization"))
        route = state.proxy.route(request.path_params["model"])
    except GatewayError as exc:
        return error_response(exc)
    return Response(orjson.dumps(_model_card(state, route.name)), media_type=JSON)


def _error_responses(*statuses: int) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/OpenAIError"}
    return {
        str(status): {"description": "An error", "content": {JSON: {"schema": error}}}
        for status in statuses
    }


def _completion_operation(summary: str, model: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": model,
        "tags": ["openai"],
        "security": [{"bearer": []}],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model}"}}},
        },
        "responses": {
            "200": {
                "description": "The teacher's (or, in a rollout, the student's) answer",
                "content": {JSON: {"schema": {"type": "object"}}, "text/event-stream": {}},
            },
            **_error_responses(400, 401, 403, 404, 408, 413, 415, 429, 502, 504),
        },
    }


def add_to_openapi(app: FastAPI) -> None:
    """Describe the raw Starlette routes above in the app's OpenAPI document.

    FastAPI documents only its own routes; these are plain Starlette ones (the hot path), so
    their paths, request models (from :mod:`gateway.protocol.openai`) and error shape are
    added here, to the document FastAPI builds once.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for request_model in (
            ChatCompletionRequest,
            CompletionRequest,
            ResponsesRequest,
            FeedbackRequest,
        ):
            found = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(found.pop("$defs", {}))
            schemas[request_model.__name__] = found
        schemas["OpenAIError"] = OPENAI_ERROR_SCHEMA
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
        }
        models = {
            "summary": "The models (routes) served",
            "operationId": "list_models",
            "tags": ["openai"],
            "security": [{"bearer": []}],
            "responses": {
                "200": {
                    "description": "The routes",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                **_error_responses(401, 403),
            },
        }
        model = {
            **models,
            "summary": "One model (route)",
            "operationId": "retrieve_model",
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "The route",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                **_error_responses(401, 403, 404),
            },
        }
        schema["paths"].update(
            {
                "/v1/chat/completions": {
                    "post": _completion_operation("Chat completion", "ChatCompletionRequest")
                },
                "/v1/completions": {
                    "post": _completion_operation("Text completion", "CompletionRequest")
                },
                "/v1/responses": {
                    "post": _completion_operation("Response (Responses API)", "ResponsesRequest")
                },
                "/v1/feedback": {
                    "post": {
                        "summary": "Feedback on an answer (by its x-request-id)",
                        "operationId": "create_feedback",
                        "tags": ["openai"],
                        "security": [{"bearer": []}],
                        "requestBody": {
                            "required": True,
                            "content": {
                                JSON: {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}
                            },
                        },
                        "responses": {
                            "201": {
                                "description": "Stored",
                                "content": {JSON: {"schema": {"type": "object"}}},
                            },
                            **_error_responses(400, 401, 403, 404, 413, 415, 429),
                        },
                    }
                },
                "/v1/models": {"get": models},
                "/v1/models/{model}": {"get": model},
            }
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

# Answered ahead of FastAPI's layers (gateway.api.hotpath); the routes below serve the same
# paths to anything else (another method, a root path), and describe them.
HOT = {
    "/v1/chat/completions": chat_completions,
    "/v1/completions": completions,
    "/v1/responses": responses,
    "/v1/feedback": feedback,
}

routes = [
    *(Route(path, endpoint, methods=["POST"]) for path, endpoint in HOT.items()),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
]
