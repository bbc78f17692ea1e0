"""The request path: route → decide → teacher (or the student first) → answer → log.

In shadow mode (and for users a rollout did not choose) the app's answer depends only on the
teacher; the student call, parsing for the log and the database happen after the answer is
handed back or in other tasks. Users a rollout chose get the student first
(:mod:`gateway.services.rollout`), the teacher when it falls back. Errors reach the caller as
GatewayError subclasses; every request that reached a route leaves its row, error or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from gateway.background import RecurringFailure
from gateway.clients.upstream import (
    Upstream,
    call_teacher,
    make_upstream,
    open_teacher_stream,
)
from gateway.config import GatewayConfig, RouteConfig
from gateway.core.outputs import Endpoint, Output
from gateway.core.routing import (
    Decision,
    bucket,
    decide,
    server_state,
    sticky_key,
    student_may_answer,
    teacher_failure_rescuable,
)
from gateway.core.sampling import shadow_sampled
from gateway.core.slices import last_user_text, slice_labels
from gateway.core.streams import summarise_stream
from gateway.db.writer import LogWriter
from gateway.errors import GatewayError, RouteNotFound, TeacherHTTPError
from gateway.metrics import Metrics
from gateway.services.answers import Answer, RequestContext, StreamAnswer
from gateway.services.control import ControlPlane
from gateway.services.rollout import Fallback, StudentFirst
from gateway.shadow.analysis import RouteAnalysis
from gateway.shadow.dispatcher import ENDPOINT_PATHS, ShadowDispatcher
from gateway.shadow.records import (
    CLIENT_GONE,
    STUDENT_NO_STUDENT,
    STUDENT_NOT_SAMPLED,
    STUDENT_SERVER_STATE,
    Reading,
    RowIdentity,
    read_answer,
    student_skipped,
    teacher_half,
)

_log = logging.getLogger("shadow_gateway.proxy")
STUDENT_DISABLED = "disabled"


Then = Callable[[Output | None], None]  # what follows the teacher's answer, given it
Rescue = Callable[[], Awaitable[Answer | StreamAnswer | None]]  # the student, for the teacher


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
        control: ControlPlane,
    ) -> None:
        self._config = config
        self._analyses = analyses
        self._control = control
        self._session = session
        self._dispatcher = dispatcher
        self._writer = writer
        self._metrics = metrics
        self._store_payloads = config.log_writer.store_payloads
        self._teachers: dict[tuple[str, Endpoint], Upstream] = {}
        # Routes whose student stands in for a failing teacher: logged when that starts and ends.
        self._teacher_failures: dict[str, RecurringFailure] = {}
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
        self._student_first = StudentFirst(
            dispatcher,
            session,
            self._teachers,
            writer,
            metrics,
            analyses,
            config.log_writer.store_payloads,
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
        state = self._control.state(route.name)
        header = ctx.header(route.rollout.sticky_header) if route.rollout.sticky_header else None
        sticky = bucket(state.salt, sticky_key(body.get("user"), header, ctx.request_id))
        identity = RowIdentity(
            request_id=ctx.request_id,
            route=route.name,
            endpoint=ctx.endpoint,
            created_at=ctx.created_at,
            mode=state.mode,
            slices=self._analyses[route.name].rules.apply(
                slice_labels(metadata, ctx.headers), last_user_text(body)
            ),
            sticky_bucket=sticky,
            client_request_id=ctx.client_request_id,
        )
        decision = decide(state, sticky)
        fallback: Fallback | None = None
        fallback_reason: str | None = None
        servable = student_may_answer(ctx.endpoint, body)
        if decision == "student_first" and not servable:
            # The teacher's server holds (or will hold) this exchange: it must answer. The
            # student is still shadowed where it can be.
            self._metrics.fallbacks.labels(route.name, "server_state").inc()
            decision, fallback_reason = "shadow", "server_state"
        if decision == "student_first":
            served = await self._student_first.answer(ctx, route, state, identity, body)
            if not isinstance(served, Fallback):
                return served
            fallback = served
            fallback_reason = fallback.reason
        then = self._then(route, identity, body, decision, fallback)
        # The student may stand in for a failed teacher if the route says so and it was not
        # asked already (a rollout fallback) nor switched off (teacher mode).
        rescue: Rescue | None = None
        if (
            route.on_teacher_error == "student"
            and fallback is None
            and servable
            and decision != "teacher_only"
            and self._dispatcher.has_student(route.name)
        ):

            def rescue() -> Awaitable[Answer | StreamAnswer | None]:
                return self._student_first.rescue(ctx, route, state, identity, body)

        if body.get("stream"):
            return await self._stream(ctx, route, identity, body, then, fallback_reason, rescue)
        return await self._complete(ctx, route, identity, body, then, fallback_reason, rescue)

    def _then(
        self,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        decision: Decision,
        fallback: Fallback | None,
    ) -> Then:
        """After the teacher: shadow the student, or judge the answer it already gave."""
        if fallback is None:
            return lambda teacher: self._start_shadow(route, identity, body, teacher, decision)
        student, confidence = fallback.student, fallback.confidence

        def judge(teacher: Output | None) -> None:
            if teacher is not None and student is not None:
                self._dispatcher.spawn(
                    self._student_first.judge(route, identity, teacher, student, confidence)
                )

        return judge

    async def _complete(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        then: Then,
        fallback_reason: str | None,
        rescue: Rescue | None,
    ) -> Answer | StreamAnswer:
        upstream, teacher_body = self._teacher_request(route, ctx, body)
        teacher_started = time.perf_counter()
        try:
            reply = await call_teacher(self._session, upstream, teacher_body)
        except GatewayError as exc:
            failed = time.perf_counter() - teacher_started
            return await self._teacher_failed(
                ctx, route, identity, body, exc, failed, then, fallback_reason, rescue
            )
        finished = time.perf_counter()
        teacher_latency = finished - teacher_started
        overhead = (finished - ctx.started) - teacher_latency

        async def after(client_gone: bool) -> None:
            answer = read_answer(ctx.endpoint, reply.body)
            record = teacher_half(
                identity,
                payload=self._payload(body),
                teacher_model=route.teacher.model,
                stream=False,
                status_code=reply.status,
                teacher_status=reply.status,
                answer=answer,
                teacher_latency_s=teacher_latency,
                overhead_s=overhead,
                completed_at=datetime.now(UTC),
                fallback_reason=fallback_reason,
                **(CLIENT_GONE if client_gone else {}),
            )
            self._writer.submit(record)
            then(answer.output)
            self._observe(route, reply.status, teacher_latency, overhead)

        content_type = reply.content_type or "application/json"
        return Answer(reply.status, reply.body, content_type, after, _headers(fallback_reason))

    def _start_shadow(
        self,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        teacher: Output | None,
        decision: Decision,
    ) -> None:
        """Shadow the request, once the app has its answer (``teacher``'s, if it succeeded).

        Started after the answer rather than beside the teacher call: on a busy core the
        student's reply would otherwise be handled while the teacher's waits (measured: about
        0.4 ms of p50 at 20 req/s; docs/benchmarks.md).
        """
        error = None
        if decision == "teacher_only":
            status = STUDENT_DISABLED
        elif not self._dispatcher.has_student(route.name):
            status = STUDENT_NO_STUDENT
        elif not shadow_sampled(identity.request_id, route.shadow_sample):
            status = STUDENT_NOT_SAMPLED
        elif (field := server_state(identity.endpoint, body)) is not None:
            status = STUDENT_SERVER_STATE
            error = f"the request's {field} names state only the teacher's server holds"
        else:
            self._dispatcher.shadow(identity, body, teacher)
            return
        self._writer.submit(student_skipped(identity, status, error))

    async def _stream(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        then: Then,
        fallback_reason: str | None,
        rescue: Rescue | None,
    ) -> Answer | StreamAnswer:
        upstream, teacher_body = self._teacher_request(route, ctx, body)
        teacher_started = time.perf_counter()
        try:
            stream = await open_teacher_stream(self._session, upstream, teacher_body)
        except GatewayError as exc:
            failed = time.perf_counter() - teacher_started
            return await self._teacher_failed(
                ctx, route, identity, body, exc, failed, then, fallback_reason, rescue
            )
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
                answer = None if summary.body is None else Reading.of(ctx.endpoint, summary.body)
                complete = not disconnected and error is None and summary.error is None
                then(answer.output if complete and answer else None)
                record = teacher_half(
                    identity,
                    payload=self._payload(body),
                    teacher_model=route.teacher.model,
                    stream=True,
                    status_code=200,
                    teacher_status=200,
                    answer=answer,
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
                    fallback_reason=fallback_reason,
                    stream_error=summary.error,
                )
                self._writer.submit(record)
                self._observe(route, 200, teacher_latency, setup_overhead)

        return StreamAnswer(relay(), stream.content_type, _headers(fallback_reason))

    def _teacher_request(
        self, route: RouteConfig, ctx: RequestContext, body: dict[str, Any]
    ) -> tuple[Upstream, bytes]:
        """The teacher's endpoint and the app's body with the teacher's model name."""
        return (
            self._teachers[route.name, ctx.endpoint],
            orjson.dumps({**body, "model": route.teacher.model}),
        )

    def _payload(self, body: dict[str, Any]) -> dict[str, Any] | None:
        return body if self._store_payloads else None

    async def _teacher_failed(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        exc: GatewayError,
        teacher_latency: float,
        then: Then,
        fallback_reason: str | None,
        rescue: Rescue | None,
    ) -> Answer | StreamAnswer:
        """Log the teacher's failure in the row; return the student's stand-in answer where the
        route allows one and the student gives it (``on_teacher_error: student``), else re-raise.

        A rescued request succeeded, so the failure goes only into the teacher's columns.
        """
        status = exc.http_status
        teacher_status = exc.upstream_status if isinstance(exc, TeacherHTTPError) else None
        rescued = None
        if rescue is not None and teacher_failure_rescuable(teacher_status):
            rescued = await rescue()
        record = teacher_half(
            identity,
            payload=self._payload(body),
            teacher_model=route.teacher.model,
            stream=bool(body.get("stream")),
            status_code=status,
            teacher_status=teacher_status,
            answer=(
                read_answer(ctx.endpoint, exc.upstream_body)
                if isinstance(exc, TeacherHTTPError)
                else None
            ),
            teacher_latency_s=teacher_latency,
            overhead_s=time.perf_counter() - ctx.started - teacher_latency,
            completed_at=datetime.now(UTC),
            error_type=exc.error_type,
            error_message=exc.message,
            fallback_reason=fallback_reason,
        )
        if rescued is not None:
            # served_by, status_code and fallback_reason come with the student's served half.
            for column in ("served_by", "status_code", "error_type", "error_message"):
                record.pop(column)
            record["teacher_error"] = exc.message
            failure = self._teacher_failures.get(route.name)
            if failure is None:
                failure = RecurringFailure(_log, f"route {route.name}'s teacher")
                self._teacher_failures[route.name] = failure
            failure.failed(exc, "the student answers in its place (on_teacher_error: student)")
        else:
            then(None)
            if fallback_reason:
                exc.headers["x-fallback-reason"] = fallback_reason
        self._writer.submit(record)
        self._metrics.requests.labels(route.name, "teacher", str(status)).inc()
        if rescued is None:
            raise exc
        return rescued

    def _observe(
        self, route: RouteConfig, status: int, teacher_latency: float, overhead: float
    ) -> None:
        if self._teacher_failures and route.name in self._teacher_failures:
            self._teacher_failures.pop(route.name).succeeded()
        self._metrics.requests.labels(route.name, "teacher", str(status)).inc()
        self._metrics.teacher_latency.labels(route.name).observe(teacher_latency)
        self._metrics.overhead.labels(route.name).observe(overhead)


def _headers(fallback_reason: str | None) -> dict[str, str]:
    headers = {"x-served-by": "teacher"}
    if fallback_reason:
        headers["x-fallback-reason"] = fallback_reason
    return headers
