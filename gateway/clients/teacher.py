"""The teacher of every route: one upstream per (route, endpoint), resolved from config once.

The request path (the app's answer) and the rollout's background audits both ask the teacher
through this one object, over the teacher's own connection pool.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

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
        return await call_teacher(self._session, self._upstreams[route, endpoint], body)

    async def open_stream(self, route: str, endpoint: Endpoint, body: bytes) -> TeacherStream:
        """A streamed answer, once its status line and headers are in."""
        return await open_teacher_stream(self._session, self._upstreams[route, endpoint], body)
