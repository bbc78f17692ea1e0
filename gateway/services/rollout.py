"""Rollout: the student answers first for the users the sticky bucket chose.

For a chosen request the student is asked on the response path, within the route's latency
budget. If it answered, and its confidence (from its logprobs, by the route's method) is at
least the threshold, the app gets the student's answer (``x-served-by: student``); a fraction
``audit_sample`` of those answers is also sent to the teacher in the background, so agreement
on served traffic keeps being measured. Otherwise the teacher answers, with the reason in
``x-fallback-reason`` and in the row, and the student's answer (if any) is compared with it.

Streamed requests: the student's answer is judged whole (it is asked without streaming), then
sent as an SSE stream of the same shape OpenAI's has; on a fallback the teacher's stream is
relayed as usual. So a served stream starts only when the student has finished.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from gateway.clients.upstream import Upstream, call_teacher
from gateway.config import RouteConfig
from gateway.core.completions import keep_top_logprobs, strip_logprobs
from gateway.core.outputs import Endpoint, Output
from gateway.core.routing import RouteState, fallback_reason
from gateway.core.sampling import shadow_sampled
from gateway.core.synthesis import answer_to_sse
from gateway.db.writer import LogWriter
from gateway.errors import GatewayError, TeacherHTTPError
from gateway.metrics import Metrics
from gateway.services.answers import Answer, RequestContext, StreamAnswer
from gateway.shadow.analysis import RouteAnalysis, Verdict
from gateway.shadow.dispatcher import ShadowDispatcher, StudentCall
from gateway.shadow.records import (
    CLIENT_GONE,
    RowIdentity,
    read_answer,
    student_served,
    student_skipped,
    teacher_audit,
)

JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Fallback:
    """The teacher must answer; the student's answer (if it gave one) is judged against it."""

    reason: str
    student: Output | None
    confidence: float | None


def _app_wants_logprobs(endpoint: Endpoint, body: Mapping[str, Any]) -> bool:
    """Chat asks with ``logprobs: true``, legacy completions with a count (0 included), the
    Responses API by including ``message.output_text.logprobs``.

    ``false`` is not a request for them, though ``False == 0`` in Python.
    """
    if endpoint == "responses":
        include = body.get("include")
        return isinstance(include, list) and "message.output_text.logprobs" in include
    value = body.get("logprobs")
    return value is True or (isinstance(value, int) and not isinstance(value, bool))


class StudentFirst:
    def __init__(
        self,
        dispatcher: ShadowDispatcher,
        session: aiohttp.ClientSession,
        teachers: Mapping[tuple[str, Endpoint], Upstream],
        writer: LogWriter,
        metrics: Metrics,
        analyses: Mapping[str, RouteAnalysis],
        store_payloads: bool,
    ) -> None:
        self._dispatcher = dispatcher
        self._session = session
        self._teachers = teachers
        self._writer = writer
        self._metrics = metrics
        self._analyses = analyses
        self._store_payloads = store_payloads

    async def answer(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        state: RouteState,
        identity: RowIdentity,
        body: dict[str, Any],
    ) -> Answer | StreamAnswer | Fallback:
        call = await self._ask(route, identity, body)
        if call is None:  # no call could be made: bound full or breaker open
            return self._fall_back(route, "student_unavailable", None, None)
        confidence = call.record["student_confidence"]
        status = call.record["student_status"]
        reason = fallback_reason(status, confidence, state.confidence_threshold)
        if reason is not None:
            return self._fall_back(route, reason, call.output, confidence)
        return self._serve(ctx, route, state, identity, body, call)

    async def rescue(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        state: RouteState,
        identity: RowIdentity,
        body: dict[str, Any],
    ) -> Answer | StreamAnswer | None:
        """The student's answer in place of a failed teacher's; None if it has none either."""
        call = await self._ask(route, identity, body)
        if call is None or call.output is None:
            return None
        self._metrics.fallbacks.labels(route.name, "teacher_error").inc()
        return self._serve(ctx, route, state, identity, body, call, "teacher_error")

    async def _ask(
        self, route: RouteConfig, identity: RowIdentity, body: dict[str, Any]
    ) -> StudentCall | None:
        """Ask the student on the response path within the route's budget; its row half (with
        its confidence) is submitted here. None when no call could be made."""
        assert route.student is not None
        budget = route.rollout.student_budget_s or route.student.timeout_s
        call = await self._dispatcher.call_now(identity, body, budget)
        if isinstance(call, str):
            self._writer.submit(student_skipped(identity, call))
            return None
        analysis = self._analyses[route.name]
        call.record["student_confidence"] = analysis.confidence(call.record.get("student_logprobs"))
        self._writer.submit(call.record)
        return call

    def _fall_back(
        self, route: RouteConfig, reason: str, student: Output | None, confidence: float | None
    ) -> Fallback:
        self._metrics.fallbacks.labels(route.name, reason).inc()
        return Fallback(reason, student, confidence)

    def _serve(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        state: RouteState,
        identity: RowIdentity,
        body: dict[str, Any],
        call: StudentCall,
        fallback_reason: str | None = None,
    ) -> Answer | StreamAnswer:
        """The student's answer to the app; ``fallback_reason`` when it stands in for the teacher
        (then no audit: the teacher has just failed)."""
        endpoint = identity.endpoint
        parsed = orjson.loads(call.raw)  # parsed before: student_half accepted it as an answer
        if not _app_wants_logprobs(endpoint, body):
            parsed = strip_logprobs(endpoint, parsed)
        else:
            top = body.get("top_logprobs")
            wanted = top if isinstance(top, int) and not isinstance(top, bool) else 0
            parsed = keep_top_logprobs(endpoint, parsed, wanted)
        stream = bool(body.get("stream"))
        student_latency = (call.record.get("student_latency_ms") or 0.0) / 1000.0
        overhead = time.perf_counter() - ctx.started - student_latency
        student = call.output
        assert student is not None  # only a usable answer is served
        confidence = call.record.get("student_confidence")

        def after(client_gone: bool = False) -> None:
            record = student_served(
                identity,
                payload=body if self._store_payloads else None,
                stream=stream,
                completed_at=datetime.now(UTC),
                overhead_s=overhead,
            )
            record["fallback_reason"] = fallback_reason
            if client_gone:
                record.update(CLIENT_GONE)
            self._writer.submit(record)
            self._metrics.requests.labels(route.name, "student", "200").inc()
            self._metrics.overhead.labels(route.name).observe(overhead)
            audit = fallback_reason is None
            if audit and shadow_sampled(f"{identity.request_id}:audit", state.audit_sample):
                self._dispatcher.spawn(self._audit(route, identity, body, student, confidence))

        headers = {"x-served-by": "student"}
        if fallback_reason:
            headers["x-fallback-reason"] = fallback_reason
        if stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            events = answer_to_sse(endpoint, parsed, include_usage=include_usage)

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    yield events
                finally:  # logged even when the client leaves before the end
                    after()

            return StreamAnswer(chunks(), "text/event-stream", headers)

        async def after_answer(client_gone: bool) -> None:
            after(client_gone)

        return Answer(200, orjson.dumps(parsed), JSON_TYPE, after_answer, headers)

    async def _audit(
        self,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        student: Output,
        confidence: float | None,
    ) -> None:
        """Ask the teacher too (in the background) and compare, so served traffic is measured."""
        upstream = self._teachers[route.name, identity.endpoint]
        request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        payload = orjson.dumps({**request, "model": route.teacher.model, "stream": False})
        started = time.perf_counter()
        try:
            reply = await call_teacher(self._session, upstream, payload)
            answer = read_answer(identity.endpoint, reply.body)
            record = teacher_audit(
                identity,
                teacher_model=route.teacher.model,
                status=reply.status,
                answer=answer,
                latency_s=time.perf_counter() - started,
                error=None,
            )
        except GatewayError as exc:
            answer = None
            record = teacher_audit(
                identity,
                teacher_model=route.teacher.model,
                status=exc.http_status if isinstance(exc, TeacherHTTPError) else None,
                answer=None,
                latency_s=time.perf_counter() - started,
                error=exc.message,
            )
        if answer is not None and answer.output is not None:
            await self.judge(route, identity, answer.output, student, confidence, record)
        self._writer.submit(record)

    async def judge(
        self,
        route: RouteConfig,
        identity: RowIdentity,
        teacher: Output,
        student: Output,
        confidence: float | None,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Compare the two answers; the verdict goes into ``record`` or a row half of its own."""
        analysis = self._analyses[route.name]
        verdict = Verdict(confidence, await analysis.compare(teacher, student))
        columns = {k: v for k, v in verdict.columns().items() if k != "student_confidence"}
        if record is None:
            self._writer.submit({**identity.columns(), **columns})
        else:
            record.update(columns)
        analysis.observe(self._metrics, route.name, identity.slices, verdict)
