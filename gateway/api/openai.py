"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``.

The two POST handlers are plain Starlette endpoints rather than FastAPI routes: they are the
hot path, and they need the raw body (to pass the app's JSON upstream untouched), not a
parsed model. Validation still happens, with :mod:`gateway.protocol.openai`.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.api.errors import JSON, error_response
from gateway.api.state import GatewayState, gateway_state
from gateway.core.completions import Endpoint
from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.protocol.openai import validate_request
from gateway.services.answers import Answer, RequestContext


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
    try:
        state.keys.authenticate(request.headers.get("authorization"))
        body = await read_json_body(request, state.settings.config.server.max_body_bytes)
        validated = validate_request(endpoint, body)
        ctx = RequestContext(
            request_id=request_id,
            endpoint=endpoint,
            started=started,
            created_at=datetime.now(UTC),
            headers=request.headers.items(),
        )
        answer = await state.proxy.complete(ctx, body, validated.metadata)
    except GatewayError as exc:
        if exc.http_status in (400, 401, 403, 404, 413, 415):
            state.metrics.rejected.labels(str(exc.http_status)).inc()
        return error_response(exc, request_id)
    headers = {"x-request-id": request_id, **answer.headers}
    if isinstance(answer, Answer):
        return Response(
            answer.body,
            status_code=answer.status,
            media_type=answer.content_type,
            headers=headers,
            background=BackgroundTask(answer.after),
        )
    headers["cache-control"] = "no-cache"
    headers["x-accel-buffering"] = "no"  # tell proxies in front of us not to buffer SSE
    return StreamingResponse(answer.chunks, media_type=answer.content_type, headers=headers)


async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "chat")


async def completions(request: Request) -> Response:
    return await _proxy(request, "text")


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


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
]
