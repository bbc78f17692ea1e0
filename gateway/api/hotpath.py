"""The OpenAI POST endpoints' own way in, ahead of FastAPI's and Starlette's layers.

Every request to FastAPI passes about ten ASGI layers before it reaches a handler: FastAPI's
body-limit and telemetry wrappers, Starlette's server-error and exception middleware (twice,
once more around the route), FastAPI's exit-stack middleware, and the router trying each
route's pattern in turn; each wraps ``send`` again, so every message of the response passes
them all. Measured with py-spy at full load (docs/benchmarks.md), those layers took 17 % of a
core, more than the gateway's whole request handling. The app's chat, text and Responses
calls (and its feedback) are the traffic the gateway exists for, so :class:`GatewayApp`
sends them straight to their handlers, keeping what those layers did for them:

- the body deadline (:class:`~gateway.api.limits.BodyDeadline`, the same class);
- an OpenAI-shaped error for anything a handler raises (the handlers answer their own
  :class:`~gateway.errors.GatewayError`\\ s; this is the safety net), logged, and re-raised
  to the server as Starlette's server-error middleware does;
- ``scope["app"]``, which the handlers read the gateway's state through.

Anything else (another method, a trailing slash, every admin and console path) goes through
FastAPI as before, so 404s, 405s and redirects are FastAPI's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.errors import error_response, unexpected_error_handler
from gateway.api.limits import BodyDeadline
from gateway.errors import GatewayError

Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint_app(endpoint: Endpoint) -> ASGIApp:
    """An ASGI app calling ``endpoint`` with the answer it needs if the endpoint raises."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
            await response(scope, receive, watched)
        except GatewayError as exc:  # the body's deadline, raised past the handler
            if started:
                raise
            await error_response(exc)(scope, receive, send)
        except Exception as exc:
            if not started:
                await (await unexpected_error_handler(request, exc))(scope, receive, send)
            raise

    return app


class GatewayApp(FastAPI):
    """FastAPI, with the hot POST endpoints (``hot``: path → handler) answered before its
    middleware stack; ``body_timeout_s`` and ``body_min_rate`` are the body deadline's."""

    def __init__(
        self,
        *,
        hot: Mapping[str, Endpoint],
        body_timeout_s: float,
        body_min_rate: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._hot: dict[str, ASGIApp] = {
            path: BodyDeadline(
                _endpoint_app(endpoint), timeout_s=body_timeout_s, min_rate=body_min_rate
            )
            for path, endpoint in hot.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            hot = self._hot.get(scope["path"])
            if hot is not None:
                scope["app"] = self
                await hot(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
