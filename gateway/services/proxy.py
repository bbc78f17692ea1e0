"""The request path: route → decide → teacher (or the student first) → answer → log.

In shadow mode (and for users a rollout did not choose) the app's answer depends only on the
teacher; the student call, parsing for the log and the database happen after the answer is
handed back or in other tasks. Users a rollout chose get the student first
(:mod:`gateway.services.rollout`), the teacher when it falls back. Errors reach the caller as
GatewayError subclasses; every request that reached a route leaves its row, error or not.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway import logs
from gateway.background import RecurringFailure
from gateway.clients.teacher import Teacher
from gateway.config import GatewayConfig, RouteConfig
from gateway.core.outputs import Output
from gateway.core.routing import (
    bucket,
    decide,
    server_state,
    serving,
    sticky_key,
    student_may_answer,
    teacher_failure_rescuable,
)
from gateway.core.slices import last_user_text, slice_labels
from gateway.core.streams import summarise_stream
from gateway.db.writer import LogWriter
from gateway.errors import GatewayError, TeacherHTTPError
from gateway.metrics import Metrics
from gateway.services.answers import Answer, RequestContext, StreamAnswer
from gateway.services.control import ControlPlane
from gateway.services.exchange import Exchange, Fallback
from gateway.services.rollout import StudentFirst
from gateway.shadow.analysis import RouteAnalysis
from gateway.shadow.dispatcher import ShadowDispatcher
from gateway.shadow.records import (
    CLIENT_GONE,
    STUDENT_NO_STUDENT,
    STUDENT_SERVER_STATE,
    Reading,
    RowIdentity,
    read_answer,
    student_skipped,
    teacher_half,
)

# An SSE stream's last event (chat and text completions). The Responses API ends with one
# terminal event instead: its name on an SSE event line, or as the type of a data line's
# object (never inside a text delta, where JSON escapes the quotes and the newline).
_DONE = b"data: [DONE]"
_DONE_END = b"[DONE]\n\n"
_TERMINAL = re.compile(
    rb'(?:^event: *|(?<!\\)"type": *")response\.(?:completed|failed|incomplete)\b', re.MULTILINE
)

_log = logging.getLogger("shadow_gateway.proxy")
STUDENT_DISABLED = "disabled"


class ProxyService:
    def __init__(
        self,
        config: GatewayConfig,
        teacher: Teacher,
        dispatcher: ShadowDispatcher,
        writer: LogWriter,
        metrics: Metrics,
        analyses: Mapping[str, RouteAnalysis],
        control: ControlPlane,
    ) -> None:
        self._config = config
        self._analyses = analyses
        self._control = control
        self._teacher = teacher
        self._dispatcher = dispatcher
        self._writer = writer
        self._metrics = metrics
        self._store_payloads = config.log_writer.store_payloads
        # Routes whose student stands in for a failing teacher: logged when that starts and ends.
        self._teacher_failures: dict[str, RecurringFailure] = {}
        self._student_first = StudentFirst(
            dispatcher, teacher, writer, metrics, analyses, config.log_writer.store_payloads
        )

    def route(self, model: str) -> RouteConfig:
        return self._config.find_route(model, param="model")

    async def complete(
        self, ctx: RequestContext, body: dict[str, Any], metadata: Mapping[str, str] | None
    ) -> Answer | StreamAnswer:
        ex = self._exchange(ctx, body, metadata)
        if ex.decision == "student_first":
            served = await self._student_first.answer(ex)
            if not isinstance(served, Fallback):
                return served
            ex.fallback = served
        if ex.stream:
            return await self._stream(ex)
        return await self._complete(ex)

    def _exchange(
        self, ctx: RequestContext, body: dict[str, Any], metadata: Mapping[str, str] | None
    ) -> Exchange:
        """Route, live state, sticky bucket, slices and the decision for one request."""
        route = self.route(body["model"])
        logs.note("route", route.name)
        state = self._control.state(route.name)
        header = ctx.header(route.rollout.sticky_header) if route.rollout.sticky_header else None
        sticky = bucket(state.salt, sticky_key(body.get("user"), header, ctx.request_id))
        analysis = self._analyses[route.name]
        text = last_user_text(body)
        slices = analysis.rules.apply(slice_labels(metadata, ctx.headers), text)
        knobs = serving(state, slices)
        identity = RowIdentity(
            request_id=ctx.request_id,
            route=route.name,
            endpoint=ctx.endpoint,
            created_at=ctx.created_at,
            mode=knobs.mode,
            slices=slices,
            sticky_bucket=sticky,
            client_request_id=ctx.client_request_id,
        )
        ex = Exchange(
            ctx=ctx,
            route=route,
            state=state,
            serving=knobs,
            identity=identity,
            body=body,
            decision=decide(knobs, sticky),
            student_may_answer=student_may_answer(ctx.endpoint, body),
        )
        if ex.decision != "student_first":
            return ex
        # Chosen for the student, but the teacher must answer: a slice kept on the teacher,
        # a request outside the student's scope, or one the teacher's server holds (or will
        # hold). The student is still shadowed where it can be.
        if knobs.kept_by is not None:
            kept = "slice_teacher_only"
        elif not analysis.scope.everything and (outside := analysis.scope.outside(slices, text)):
            _log.debug("request %s out of scope: %s", ctx.request_id, outside)
            kept = "out_of_scope"
        elif not ex.student_may_answer:
            kept = "server_state"
        else:
            return ex
        champion = self._dispatcher.champion(route.name) or ""
        self._metrics.fallbacks.labels(route.name, champion, kept).inc()
        ex.decision, ex.fallback = "shadow", Fallback(kept, asked=False)
        return ex

    def _after_teacher(self, ex: Exchange, teacher: Output | None) -> None:
        """Once the app has the teacher's answer (``teacher``, None if it failed): shadow the
        student, or judge the answer a chosen student already gave.

        Started after the answer rather than beside the teacher call: on a busy core the
        student's reply would otherwise be handled while the teacher's waits (measured: about
        0.4 ms of p50 at 20 req/s; docs/benchmarks.md).
        """
        fallback = ex.fallback
        if fallback is not None and fallback.asked:
            # The champion answered already (and was not served): judge it; the candidates
            # are compared with the same teacher answer.
            if teacher is not None and fallback.student is not None:
                self._dispatcher.spawn(
                    self._student_first.judge(
                        ex, fallback.asker, teacher, fallback.student, fallback.confidence
                    )
                )
            if teacher is not None:
                self._dispatcher.shadow(ex.identity, ex.body, teacher, asked=fallback.asker)
            return
        error = None
        if ex.decision == "teacher_only":
            status = STUDENT_DISABLED
        elif not self._dispatcher.has_student(ex.route.name):
            status = STUDENT_NO_STUDENT
        elif (field := server_state(ex.endpoint, ex.body)) is not None:
            status = STUDENT_SERVER_STATE
            error = f"the request's {field} names state only the teacher's server holds"
        else:
            self._dispatcher.shadow(ex.identity, ex.body, teacher)
            return
        self._writer.submit(student_skipped(ex.identity, status, error))

    def _may_rescue(self, ex: Exchange) -> bool:
        """May the student stand in for a failed teacher? If the route says so, the app may
        get its answer, and it was not asked already (a fallback) nor switched off."""
        return (
            ex.route.on_teacher_error == "student"
            and ex.fallback is None
            and ex.student_may_answer
            and ex.decision != "teacher_only"
            and self._dispatcher.has_student(ex.route.name)
        )

    def _teacher_body(self, ex: Exchange) -> bytes:
        """The app's body with the teacher's model name."""
        return orjson.dumps({**ex.body, "model": ex.route.teacher.model})

    def _payload(self, ex: Exchange) -> dict[str, Any] | None:
        return ex.body if self._store_payloads else None

    async def _complete(self, ex: Exchange) -> Answer | StreamAnswer:
        teacher_started = time.perf_counter()
        try:
            reply = await self._teacher.call(ex.route.name, ex.endpoint, self._teacher_body(ex))
        except GatewayError as exc:
            return await self._teacher_failed(ex, exc, time.perf_counter() - teacher_started)
        finished = time.perf_counter()
        teacher_latency = finished - teacher_started
        overhead = (finished - ex.ctx.started) - teacher_latency

        # The row's teacher half is submitted before the app gets the answer: in the write-ahead
        # log when submit returns, so a process killed now loses no answered request.
        answer = read_answer(ex.endpoint, reply.body)
        self._writer.submit(
            teacher_half(
                ex.identity,
                payload=self._payload(ex),
                teacher_model=ex.route.teacher.model,
                stream=False,
                status_code=reply.status,
                teacher_status=reply.status,
                answer=answer,
                teacher_latency_s=teacher_latency,
                overhead_s=overhead,
                completed_at=datetime.now(UTC),
                fallback_reason=ex.fallback_reason,
            )
        )

        async def after(client_gone: bool) -> None:
            if client_gone:  # it gave up before the answer was sent: not served after all
                self._writer.submit({**ex.identity.columns(), **CLIENT_GONE})
            self._after_teacher(ex, answer.output)
            self._observe(ex, reply.status, teacher_latency, overhead)

        content_type = reply.content_type or "application/json"
        return Answer(reply.status, reply.body, content_type, after, _headers(ex))

    async def _stream(self, ex: Exchange) -> Answer | StreamAnswer:
        teacher_started = time.perf_counter()
        try:
            stream = await self._teacher.open_stream(
                ex.route.name, ex.endpoint, self._teacher_body(ex)
            )
        except GatewayError as exc:
            return await self._teacher_failed(ex, exc, time.perf_counter() - teacher_started)
        setup_overhead = teacher_started - ex.ctx.started

        def finish(disconnected: bool, error: GatewayError | None, collected: bytes) -> None:
            """Summarise the relayed stream into the row's teacher half and submit it."""
            teacher_latency = time.perf_counter() - teacher_started
            summary = summarise_stream(ex.endpoint, collected)
            answer = None if summary.body is None else Reading.of(ex.endpoint, summary.body)
            complete = not disconnected and error is None and summary.error is None
            self._after_teacher(ex, answer.output if complete and answer else None)
            error_type, error_message = None, None
            if disconnected:
                error_type = "client_disconnected"
                error_message = "the client closed the connection mid-stream"
            elif error is not None:
                error_type, error_message = error.error_type, error.message
            record = teacher_half(
                ex.identity,
                payload=self._payload(ex),
                teacher_model=ex.route.teacher.model,
                stream=True,
                status_code=200,
                teacher_status=200,
                answer=answer,
                teacher_latency_s=teacher_latency,
                overhead_s=setup_overhead,
                completed_at=datetime.now(UTC),
                fallback_reason=ex.fallback_reason,
                error_type=error_type,
                error_message=error_message,
                stream_error=summary.error,
            )
            self._writer.submit(record)
            self._observe(ex, 200, teacher_latency, setup_overhead)

        async def relay() -> AsyncIterator[bytes]:
            collected = bytearray()
            error: GatewayError | None = None
            disconnected = False
            finished = False
            terminal_at = -1  # where the Responses stream's terminal event was seen
            sent = 0
            try:
                async for chunk in stream.chunks():
                    collected += chunk
                    if ex.endpoint == "responses" and not finished:
                        # Its terminal event is held until whole, and the row submitted (in the
                        # write-ahead log) before the app reads it: as [DONE] below.
                        if terminal_at < 0:
                            found = _TERMINAL.search(collected, max(0, sent - 64))
                            terminal_at = -1 if found is None else found.start()
                        if terminal_at < 0:
                            sent = len(collected)
                            yield chunk
                        elif collected.find(b"\n\n", terminal_at) >= 0:
                            finish(False, None, bytes(collected))
                            finished = True
                            yield bytes(collected[sent:])
                        continue
                    done_at = chunk.find(_DONE) if chunk.endswith(_DONE_END) else -1
                    if done_at < 0:
                        yield chunk
                        continue
                    # The stream's end: the row is submitted (in the write-ahead log) before
                    # the app reads [DONE], so a process killed now loses no answered stream.
                    if done_at:
                        yield chunk[:done_at]
                    finish(False, None, bytes(collected))
                    finished = True
                    yield chunk[done_at:]
                if terminal_at >= 0 and not finished:  # a last event with no blank line after
                    finish(False, None, bytes(collected))
                    finished = True
                    yield bytes(collected[sent:])
            except GatewayError as exc:
                # Headers are gone already: tell the client in-band, the way OpenAI does.
                error = exc
                yield b"data: " + exc.to_body() + b"\n\n"
            except BaseException:  # the client went away (cancelled) or the server is closing
                disconnected = True
                stream.close()
                raise
            finally:
                if not finished:
                    finish(disconnected, error, bytes(collected))

        return StreamAnswer(relay(), stream.content_type, _headers(ex))

    async def _teacher_failed(
        self, ex: Exchange, exc: GatewayError, teacher_latency: float
    ) -> Answer | StreamAnswer:
        """Log the teacher's failure in the row; return the student's stand-in answer where the
        route allows one and the student gives it (``on_teacher_error: student``), else re-raise.

        A rescued request succeeded, so the failure goes only into the teacher's columns.
        """
        route = ex.route
        teacher_status = exc.upstream_status if isinstance(exc, TeacherHTTPError) else None
        rescued = None
        if self._may_rescue(ex) and teacher_failure_rescuable(teacher_status):
            rescued = await self._student_first.rescue(ex)
        record = teacher_half(
            ex.identity,
            payload=self._payload(ex),
            teacher_model=route.teacher.model,
            stream=ex.stream,
            status_code=exc.http_status,
            teacher_status=teacher_status,
            answer=(
                read_answer(ex.endpoint, exc.upstream_body)
                if isinstance(exc, TeacherHTTPError)
                else None
            ),
            teacher_latency_s=teacher_latency,
            overhead_s=time.perf_counter() - ex.ctx.started - teacher_latency,
            completed_at=datetime.now(UTC),
            error_type=exc.error_type,
            error_message=exc.message,
            fallback_reason=ex.fallback_reason,
            served=rescued is None,
        )
        self._writer.submit(record)
        self._metrics.requests.labels(route.name, "teacher", str(exc.http_status)).inc()
        if rescued is not None:
            failure = self._teacher_failures.get(route.name)
            if failure is None:
                failure = RecurringFailure(_log, f"route {route.name}'s teacher")
                self._teacher_failures[route.name] = failure
            failure.failed(exc, "the student answers in its place (on_teacher_error: student)")
            return rescued
        self._count_slices(ex, "teacher")  # a rescued one counts once: the student served it
        self._after_teacher(ex, None)
        if ex.fallback_reason:
            exc.headers["x-fallback-reason"] = ex.fallback_reason
        raise exc

    def _observe(self, ex: Exchange, status: int, teacher_latency: float, overhead: float) -> None:
        route = ex.route
        if self._teacher_failures and route.name in self._teacher_failures:
            self._teacher_failures.pop(route.name).succeeded()
        self._metrics.requests.labels(route.name, "teacher", str(status)).inc()
        self._count_slices(ex, "teacher")
        self._metrics.teacher_latency.labels(route.name).observe(teacher_latency)
        self._metrics.overhead.labels(route.name).observe(overhead)

    def _count_slices(self, ex: Exchange, served_by: str) -> None:
        allowed = self._analyses[ex.route.name].allowed
        self._metrics.count_slices(
            ex.route.name, ex.identity.slices, allowed, served_by, ex.fallback_reason
        )


def _headers(ex: Exchange) -> dict[str, str]:
    headers = {"x-served-by": "teacher"}
    if ex.fallback_reason:
        headers["x-fallback-reason"] = ex.fallback_reason
    return headers
