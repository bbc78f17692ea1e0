"""The request path: route → teacher (and, in the background, the student) → answer → log.

The app's answer depends only on the teacher. Everything else (parsing the teacher's body for
the log, the student call, the database) happens after the answer is handed back or in other
tasks. Errors reach the caller as GatewayError subclasses; every request that reached a route
leaves a teacher half in the log, error or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from gateway.clients.upstream import (
    Upstream,
    call_teacher,
    make_upstream,
    open_teacher_stream,
)
from gateway.config import GatewayConfig, RouteConfig
from gateway.core.completions import Endpoint, summarise_stream
from gateway.core.sampling import shadow_sampled
from gateway.core.slices import last_user_text, slice_labels
from gateway.db.writer import LogWriter
from gateway.errors import GatewayError, RouteNotFound, TeacherHTTPError
from gateway.metrics import Metrics
from gateway.shadow.analysis import RouteAnalysis
from gateway.shadow.dispatcher import ENDPOINT_PATHS, ShadowDispatcher
from gateway.shadow.records import (
    STUDENT_DROPPED,
    STUDENT_NO_STUDENT,
    STUDENT_NOT_SAMPLED,
    RowIdentity,
    student_skipped,
    teacher_half,
)

_log = logging.getLogger("shadow_gateway.proxy")
STUDENT_DISABLED = "disabled"


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    endpoint: Endpoint
    started: float  # time.perf_counter() at arrival
    created_at: datetime
    headers: list[tuple[str, str]]


@dataclass
class Answer:
    """A complete answer; ``after`` runs once it has been sent (logging)."""

    status: int
    body: bytes
    content_type: str
    after: Callable[[], Awaitable[None]]


@dataclass
class StreamAnswer:
    chunks: AsyncIterator[bytes]
    content_type: str


class ProxyService:
    def __init__(
        self,
        config: GatewayConfig,
        upstream_keys: Mapping[str, str],
        session: aiohttp.ClientSession,
        dispatcher: ShadowDispatcher,
        writer: LogWriter,
        metrics: Metrics,
        analyses: Mapping[str, RouteAnalysis],
    ) -> None:
        self._config = config
        self._analyses = analyses
        self._session = session
        self._dispatcher = dispatcher
        self._writer = writer
        self._metrics = metrics
        self._store_payloads = config.log_writer.store_payloads
        self._teachers: dict[tuple[str, Endpoint], Upstream] = {}
        for route in config.routes:
            teacher = route.teacher
            key = upstream_keys.get(teacher.api_key_env) if teacher.api_key_env else None
            for endpoint, path in ENDPOINT_PATHS.items():
                self._teachers[route.name, endpoint] = make_upstream(
                    str(teacher.base_url),
                    path,
                    key,
                    teacher.timeout_s,
                    teacher.connect_timeout_s,
                )

    def route(self, model: str) -> RouteConfig:
        route = self._config.route(model)
        if route is None:
            known = ", ".join(sorted(r.name for r in self._config.routes))
            raise RouteNotFound(
                f"The model '{model}' does not exist. Models (routes) served here: {known}.",
                param="model",
            )
        return route

    async def complete(
        self, ctx: RequestContext, body: dict[str, Any], metadata: Mapping[str, str] | None
    ) -> Answer | StreamAnswer:
        route = self.route(body["model"])
        identity = RowIdentity(
            request_id=ctx.request_id,
            route=route.name,
            endpoint=ctx.endpoint,
            created_at=ctx.created_at,
            mode=route.mode,
            slices=self._analyses[route.name].rules.apply(
                slice_labels(metadata, ctx.headers), last_user_text(body)
            ),
        )
        upstream = self._teachers[route.name, ctx.endpoint]
        teacher_body = orjson.dumps({**body, "model": route.teacher.model})
        if body.get("stream"):
            return await self._stream(ctx, route, identity, body, upstream, teacher_body)
        teacher_started = time.perf_counter()
        try:
            reply = await call_teacher(self._session, upstream, teacher_body)
        except GatewayError as exc:
            self._log_failure(
                ctx, route, identity, body, exc, time.perf_counter() - teacher_started
            )
            raise
        finished = time.perf_counter()
        teacher_latency = finished - teacher_started
        overhead = (finished - ctx.started) - teacher_latency

        async def after() -> None:
            record = teacher_half(
                identity,
                payload=self._payload(body),
                teacher_model=route.teacher.model,
                stream=False,
                status_code=reply.status,
                teacher_status=reply.status,
                body=reply.body,
                summary=None,
                teacher_latency_s=teacher_latency,
                overhead_s=overhead,
                completed_at=datetime.now(UTC),
            )
            self._writer.submit(record)
            self._start_shadow(route, identity, body, record["teacher_output"])
            self._observe(route, reply.status, teacher_latency, overhead)

        return Answer(reply.status, reply.body, reply.content_type or "application/json", after)

    def _start_shadow(
        self,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        teacher_text: str | None,
    ) -> None:
        """Shadow the request, once the app has its answer (``teacher_text`` if it succeeded).

        Started after the answer rather than beside the teacher call: on a busy core the
        student's reply would otherwise be handled while the teacher's waits (measured: about
        0.4 ms of p50 at 20 req/s; docs/benchmarks.md).
        """
        if route.mode == "teacher":
            status = STUDENT_DISABLED
        elif route.student is None:
            status = STUDENT_NO_STUDENT
        elif not shadow_sampled(identity.request_id, route.shadow_sample):
            status = STUDENT_NOT_SAMPLED
        elif self._dispatcher.try_shadow(identity, body, teacher_text):
            return
        else:
            status = STUDENT_DROPPED
        self._writer.submit(student_skipped(identity, status))

    async def _stream(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        upstream: Upstream,
        teacher_body: bytes,
    ) -> StreamAnswer:
        teacher_started = time.perf_counter()
        try:
            stream = await open_teacher_stream(self._session, upstream, teacher_body)
        except GatewayError as exc:
            self._log_failure(
                ctx, route, identity, body, exc, time.perf_counter() - teacher_started
            )
            raise
        setup_overhead = teacher_started - ctx.started

        async def relay() -> AsyncIterator[bytes]:
            collected = bytearray()
            error: GatewayError | None = None
            disconnected = False
            try:
                async for chunk in stream.chunks():
                    collected += chunk
                    yield chunk
            except GatewayError as exc:
                # Headers are gone already: tell the client in-band, the way OpenAI does.
                error = exc
                yield b"data: " + exc.to_body() + b"\n\n"
            except BaseException:  # the client went away (cancelled) or the server is closing
                disconnected = True
                stream.close()
                raise
            finally:
                teacher_latency = time.perf_counter() - teacher_started
                summary = summarise_stream(ctx.endpoint, bytes(collected))
                complete = not disconnected and error is None and summary.error is None
                self._start_shadow(route, identity, body, summary.text if complete else None)
                record = teacher_half(
                    identity,
                    payload=self._payload(body),
                    teacher_model=route.teacher.model,
                    stream=True,
                    status_code=200,
                    teacher_status=200,
                    body=None,
                    summary=summary,
                    teacher_latency_s=teacher_latency,
                    overhead_s=setup_overhead,
                    completed_at=datetime.now(UTC),
                    error_type=(
                        "client_disconnected"
                        if disconnected
                        else error.error_type
                        if error
                        else None
                    ),
                    error_message=(
                        "the client closed the connection mid-stream"
                        if disconnected
                        else error.message
                        if error
                        else None
                    ),
                )
                self._writer.submit(record)
                self._observe(route, 200, teacher_latency, setup_overhead)

        return StreamAnswer(relay(), stream.content_type)

    def _payload(self, body: dict[str, Any]) -> dict[str, Any] | None:
        return body if self._store_payloads else None

    def _log_failure(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        exc: GatewayError,
        teacher_latency: float,
    ) -> None:
        self._start_shadow(route, identity, body, None)
        status = exc.http_status
        self._writer.submit(
            teacher_half(
                identity,
                payload=self._payload(body),
                teacher_model=route.teacher.model,
                stream=bool(body.get("stream")),
                status_code=status,
                teacher_status=exc.upstream_status if isinstance(exc, TeacherHTTPError) else None,
                body=exc.upstream_body if isinstance(exc, TeacherHTTPError) else None,
                summary=None,
                teacher_latency_s=teacher_latency,
                overhead_s=time.perf_counter() - ctx.started - teacher_latency,
                completed_at=datetime.now(UTC),
                error_type=exc.error_type,
                error_message=exc.message,
            )
        )
        self._metrics.requests.labels(route.name, "teacher", str(status)).inc()

    def _observe(
        self, route: RouteConfig, status: int, teacher_latency: float, overhead: float
    ) -> None:
        self._metrics.requests.labels(route.name, "teacher", str(status)).inc()
        self._metrics.teacher_latency.labels(route.name).observe(teacher_latency)
        self._metrics.overhead.labels(route.name).observe(overhead)
