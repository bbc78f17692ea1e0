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
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.clients.teacher import Teacher
from gateway.core.completions import keep_top_logprobs, strip_logprobs
from gateway.core.outputs import Endpoint, Output
from gateway.core.routing import fallback_reason
from gateway.core.sampling import shadow_sampled
from gateway.core.synthesis import answer_to_sse
from gateway.db.writer import LogWriter
from gateway.errors import GatewayError, TeacherHTTPError
from gateway.metrics import Metrics
from gateway.services.answers import Answer, StreamAnswer
from gateway.services.exchange import Exchange, Fallback
from gateway.shadow.analysis import RouteAnalysis, Verdict
from gateway.shadow.answers import answer_row
from gateway.shadow.dispatcher import ShadowDispatcher, StudentCall
from gateway.shadow.records import (
    CLIENT_GONE,
    Reading,
    read_answer,
    student_served,
    student_skipped,
    teacher_audit,
)

JSON_TYPE = "application/json"


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
        teacher: Teacher,
        writer: LogWriter,
        metrics: Metrics,
        analyses: Mapping[str, RouteAnalysis],
        store_payloads: bool,
    ) -> None:
        self._dispatcher = dispatcher
        self._teacher = teacher
        self._writer = writer
        self._metrics = metrics
        self._analyses = analyses
        self._store_payloads = store_payloads

    async def answer(self, ex: Exchange) -> Answer | StreamAnswer | Fallback:
        """The student's answer for a chosen request, or why the teacher must answer."""
        call = await self._ask(ex)
        if call is None:  # no call could be made: bound full or breaker open
            champion = self._dispatcher.champion(ex.route.name)
            return self._fall_back(ex, Fallback("student_unavailable", asker=champion))
        confidence = call.record.get("student_confidence")
        status = call.record["student_status"]
        reason = fallback_reason(status, confidence, ex.serving.confidence_threshold)
        if reason is not None:
            return self._fall_back(
                ex, Fallback(reason, True, call.student, call.output, confidence)
            )
        return self._serve(ex, call)

    async def rescue(self, ex: Exchange) -> Answer | StreamAnswer | None:
        """The student's answer in place of a failed teacher's; None if it has none either."""
        call = await self._ask(ex)
        if call is None or call.output is None:
            return None
        self._metrics.fallbacks.labels(ex.route.name, call.student, "teacher_error").inc()
        return self._serve(ex, call, stands_in=True)

    async def _ask(self, ex: Exchange) -> StudentCall | None:
        """Ask the student on the response path within the route's budget; its row half (with
        its confidence) is submitted here. None when no call could be made."""
        budget = ex.route.rollout.student_budget_s
        call = await self._dispatcher.call_now(ex.identity, ex.body, budget)
        champion = self._dispatcher.champion(ex.route.name)
        assert champion is not None  # call_now needs one
        if isinstance(call, str):
            self._dispatcher.record(champion, True, student_skipped(ex.identity, call))
            return None
        self._dispatcher.record(champion, True, call.record)
        return call

    def _fall_back(self, ex: Exchange, fallback: Fallback) -> Fallback:
        """Count the fallback under the champion it was chosen for (the one asked)."""
        student = fallback.asker or self._dispatcher.champion(ex.route.name) or ""
        self._metrics.fallbacks.labels(ex.route.name, student, fallback.reason).inc()
        return fallback

    def _serve(
        self, ex: Exchange, call: StudentCall, stands_in: bool = False
    ) -> Answer | StreamAnswer:
        """The student's answer to the app; ``stands_in`` when it answers for a failed teacher
        (``teacher_error``; then no audit: the teacher has just failed)."""
        endpoint, body, identity = ex.endpoint, ex.body, ex.identity
        parsed = orjson.loads(call.raw)  # parsed before: student_half accepted it as an answer
        if not _app_wants_logprobs(endpoint, body):
            parsed = strip_logprobs(endpoint, parsed)
        else:
            top = body.get("top_logprobs")
            wanted = top if isinstance(top, int) and not isinstance(top, bool) else 0
            parsed = keep_top_logprobs(endpoint, parsed, wanted)
        student_latency = (call.record.get("student_latency_ms") or 0.0) / 1000.0
        overhead = time.perf_counter() - ex.ctx.started - student_latency
        student = call.output
        assert student is not None  # only a usable answer is served
        confidence = call.record.get("student_confidence")
        reason = "teacher_error" if stands_in else None

        def record() -> None:
            """The row's served half, submitted before the app gets the answer (in the
            write-ahead log when submit returns: a process killed now loses nothing)."""
            self._writer.submit(
                student_served(
                    identity,
                    call.student,
                    payload=body if self._store_payloads else None,
                    stream=ex.stream,
                    completed_at=datetime.now(UTC),
                    overhead_s=overhead,
                    fallback_reason=reason,
                )
            )

        def after(client_gone: bool = False) -> None:
            if client_gone:  # it gave up before the answer was sent: not served after all
                self._writer.submit({**identity.columns(), **CLIENT_GONE})
            self._metrics.requests.labels(ex.route.name, "student", "200").inc()
            allowed = self._analyses[ex.route.name].allowed
            self._metrics.count_slices(ex.route.name, identity.slices, allowed, "student", reason)
            self._metrics.overhead.labels(ex.route.name).observe(overhead)
            audited = shadow_sampled(f"{identity.request_id}:audit", ex.state.audit_sample)
            if not stands_in and audited:
                self._dispatcher.spawn(self._audit(ex, call.student, student, confidence))

        headers = {"x-served-by": "student", "x-student": call.student}
        if reason:
            headers["x-fallback-reason"] = reason
        if ex.stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            events = answer_to_sse(endpoint, parsed, include_usage=include_usage)

            async def chunks() -> AsyncIterator[bytes]:
                record()
                try:
                    yield events
                finally:  # counted even when the client leaves before the end
                    after()

            return StreamAnswer(chunks(), "text/event-stream", headers)

        async def after_answer(client_gone: bool) -> None:
            after(client_gone)

        record()
        return Answer(200, orjson.dumps(parsed), JSON_TYPE, after_answer, headers)

    async def _audit(
        self, ex: Exchange, name: str, student: Output, confidence: float | None
    ) -> None:
        """Ask the teacher too (in the background) and compare, so served traffic is measured;
        with the teacher's answer known, the candidates are compared on the request as well."""
        route, identity = ex.route, ex.identity
        request = {k: v for k, v in ex.body.items() if k not in ("stream", "stream_options")}
        payload = orjson.dumps({**request, "model": route.teacher.model, "stream": False})
        started = time.perf_counter()
        answer: Reading | None = None
        status: int | None = None
        error: str | None = None
        try:
            reply = await self._teacher.call(route.name, ex.endpoint, payload)
            answer = read_answer(ex.endpoint, reply.body)
            status, error = reply.status, None
        except GatewayError as exc:
            status = exc.http_status if isinstance(exc, TeacherHTTPError) else None
            error = exc.message
        record = teacher_audit(
            identity,
            teacher_model=route.teacher.model,
            status=status,
            answer=answer,
            latency_s=time.perf_counter() - started,
            error=error,
        )
        if answer is not None and answer.output is not None:
            await self.judge(ex, name, answer.output, student, confidence, record)
        self._writer.submit(record)
        if answer is not None and answer.output is not None:
            self._dispatcher.shadow(identity, ex.body, answer.output, asked=name)

    async def judge(
        self,
        ex: Exchange,
        name: str | None,
        teacher: Output,
        student: Output,
        confidence: float | None,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Compare the champion's answer (``name``'s) with the teacher's; the verdict goes into
        ``record`` (the teacher's audit half) or a row half of its own, and into the champion's
        row of ``student_answers`` and its agreement metrics (under its ``student`` label)."""
        analysis = self._analyses[ex.route.name]
        verdict = Verdict(confidence, await analysis.compare(teacher, student))
        columns = {k: v for k, v in verdict.columns().items() if k != "student_confidence"}
        half = {**ex.identity.columns(), **columns}
        if record is None:
            self._writer.submit(half)
        else:
            record.update(columns)
        if name is not None:
            self._writer.submit_answer(answer_row(half, name))
            self._dispatcher.observe(ex.identity, name, verdict)
