"""The teacher of every route: one upstream per (route, endpoint), resolved from config once.

The request path (the app's answer) and the rollout's background audits both ask the teacher
through this one object, over the teacher's own connection pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import aiohttp

from gateway import tracing
from gateway.clients.upstream import (
    ENDPOINT_PATHS,
    TeacherStream,
    Upstream,
    UpstreamReply,
    call_teacher,
    make_upstream,
    open_teacher_stream,
)
from gateway.config import RouteConfig
from gateway.core.outputs import Endpoint

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class Teacher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        routes: list[RouteConfig],
        api_keys: Mapping[str, str],
    ) -> None:
        self._session = session
        self._upstreams: dict[tuple[str, Endpoint], Upstream] = {}
        for route in routes:
            teacher = route.teacher
            key = api_keys.get(teacher.api_key_env) if teacher.api_key_env else None
            for endpoint, path in ENDPOINT_PATHS.items():
                self._upstreams[route.name, endpoint] = make_upstream(
                    str(teacher.base_url), path, key, teacher.timeout_s, teacher.connect_timeout_s
                )

    async def call(self, route: str, endpoint: Endpoint, body: bytes) -> UpstreamReply:
        """The whole answer; a GatewayError on any failure (see :func:`call_teacher`)."""
        upstream = self._upstreams[route, endpoint]
        if not tracing.enabled:
            return await call_teacher(self._session, upstream, body)
        span, headers = _start_span(route, endpoint, upstream)
        try:
            reply = await call_teacher(self._session, upstream, body, headers)
        except BaseException as exc:
            tracing.end_call(span, getattr(exc, "upstream_status", None), exc)
            raise
        tracing.end_call(span, reply.status)
        return reply

    async def open_stream(self, route: str, endpoint: Endpoint, body: bytes) -> TeacherStream:
        """A streamed answer, once its status line and headers are in."""
        upstream = self._upstreams[route, endpoint]
        if not tracing.enabled:
            return await open_teacher_stream(self._session, upstream, body)
        span, headers = _start_span(route, endpoint, upstream)
        try:
            return await open_teacher_stream(self._session, upstream, body, headers, span)
        except BaseException as exc:
            tracing.end_call(span, getattr(exc, "upstream_status", None), exc)
            raise


def _start_span(route: str, endpoint: Endpoint, upstream: Upstream) -> tuple[Span, dict[str, str]]:
    """The teacher call's span (see :mod:`gateway.tracing`) and its headers."""
    return tracing.start_call(
        f"teacher {endpoint}", upstream.url, upstream.headers, {"route": route}
    )
