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
from gateway.core.completions import Endpoint, completion_to_sse, strip_logprobs
from gateway.core.routing import RouteState, fallback_reason
from gateway.core.sampling import shadow_sampled
from gateway.db.writer import LogWriter
from gateway.errors import GatewayError, TeacherHTTPError
from gateway.metrics import Metrics
from gateway.services.answers import Answer, RequestContext, StreamAnswer
from gateway.shadow.analysis import RouteAnalysis, Verdict
from gateway.shadow.dispatcher import ShadowDispatcher
from gateway.shadow.records import (
    STUDENT_OK,
    RowIdentity,
    student_served,
    student_skipped,
    teacher_audit,
)

JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Fallback:
    """The teacher must answer; the student's text (if it gave one) is judged against it."""

    reason: str
    student_text: str | None
    confidence: float | None


def _app_wants_logprobs(body: Mapping[str, Any]) -> bool:
    """Chat asks with ``logprobs: true``, legacy completions with a count (0 included).

    ``false`` is not a request for them, though ``False == 0`` in Python.
    """
    value = body.get("logprobs")
    return value is True or (isinstance(value, int) and not isinstance(value, bool))


def _keep_top_logprobs(parsed: dict[str, Any], top: int) -> dict[str, Any]:
    """Chat logprobs with at most ``top`` alternatives a token, as many as the app asked for.

    The student is asked for its configured ``top_logprobs`` (the margin method needs them);
    an app that asked for fewer (none, by default) must not get the gateway's extra ones.
    """
    choices = parsed.get("choices")
    if not isinstance(choices, list):
        return parsed
    kept: list[Any] = []
    for choice in choices:
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        if not isinstance(logprobs, dict) or not isinstance(logprobs.get("content"), list):
            kept.append(choice)
            continue
        tokens = [
            {**token, "top_logprobs": token["top_logprobs"][:top]}
            if isinstance(token, dict) and isinstance(token.get("top_logprobs"), list)
            else token
            for token in logprobs["content"]
        ]
        kept.append({**choice, "logprobs": {**logprobs, "content": tokens}})
    return {**parsed, "choices": kept}


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
        called = await self._ask(route, identity, body)
        if called is None:  # no call could be made: bound full or breaker open
            return self._fall_back(route, "student_unavailable", None, None)
        record, raw = called
        confidence = record["student_confidence"]
        reason = fallback_reason(record["student_status"], confidence, state.confidence_threshold)
        if reason is not None:
            text = record.get("student_output") if record["student_status"] == STUDENT_OK else None
            return self._fall_back(route, reason, text, confidence)
        return self._serve(ctx, route, state, identity, body, record, raw)

    async def rescue(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        state: RouteState,
        identity: RowIdentity,
        body: dict[str, Any],
    ) -> Answer | StreamAnswer | None:
        """The student's answer in place of a failed teacher's; None if it has none either."""
        called = await self._ask(route, identity, body)
        if called is None or called[0]["student_status"] != STUDENT_OK:
            return None
        record, raw = called
        self._metrics.fallbacks.labels(route.name, "teacher_error").inc()
        return self._serve(ctx, route, state, identity, body, record, raw, "teacher_error")

    async def _ask(
        self, route: RouteConfig, identity: RowIdentity, body: dict[str, Any]
    ) -> tuple[dict[str, Any], bytes] | None:
        """Ask the student on the response path within the route's budget; its row half (with
        its confidence) is submitted here. None when no call could be made."""
        assert route.student is not None
        budget = route.rollout.student_budget_s or route.student.timeout_s
        called = await self._dispatcher.call_now(identity, body, budget)
        if isinstance(called, str):
            self._writer.submit(student_skipped(identity, called))
            return None
        record, raw = called
        analysis = self._analyses[route.name]
        record["student_confidence"] = analysis.confidence(record.get("student_logprobs"))
        self._writer.submit(record)
        return record, raw

    def _fall_back(
        self, route: RouteConfig, reason: str, text: str | None, confidence: float | None
    ) -> Fallback:
        self._metrics.fallbacks.labels(route.name, reason).inc()
        return Fallback(reason, text, confidence)

    def _serve(
        self,
        ctx: RequestContext,
        route: RouteConfig,
        state: RouteState,
        identity: RowIdentity,
        body: dict[str, Any],
        record: dict[str, Any],
        raw: bytes,
        fallback_reason: str | None = None,
    ) -> Answer | StreamAnswer:
        """The student's answer to the app; ``fallback_reason`` when it stands in for the teacher
        (then no audit: the teacher has just failed)."""
        parsed = orjson.loads(raw)  # parsed before: student_half accepted it as a completion
        if not _app_wants_logprobs(body):
            parsed = strip_logprobs(parsed)
        elif identity.endpoint == "chat":
            top = body.get("top_logprobs")
            wanted = top if isinstance(top, int) and not isinstance(top, bool) else 0
            parsed = _keep_top_logprobs(parsed, wanted)
        stream = bool(body.get("stream"))
        student_latency = (record.get("student_latency_ms") or 0.0) / 1000.0
        overhead = time.perf_counter() - ctx.started - student_latency
        student_text = record["student_output"]
        confidence = record.get("student_confidence")

        def after() -> None:
            record = student_served(
                identity,
                payload=body if self._store_payloads else None,
                stream=stream,
                completed_at=datetime.now(UTC),
                overhead_s=overhead,
            )
            record["fallback_reason"] = fallback_reason
            self._writer.submit(record)
            self._metrics.requests.labels(route.name, "student", "200").inc()
            self._metrics.overhead.labels(route.name).observe(overhead)
            audit = fallback_reason is None
            if audit and shadow_sampled(f"{identity.request_id}:audit", state.audit_sample):
                self._dispatcher.spawn(self._audit(route, identity, body, student_text, confidence))

        headers = {"x-served-by": "student"}
        if fallback_reason:
            headers["x-fallback-reason"] = fallback_reason
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = completion_to_sse(identity.endpoint, parsed, include_usage)

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    yield events
                finally:  # logged even when the client leaves before the end
                    after()

            return StreamAnswer(chunks(), "text/event-stream", headers)

        async def after_answer() -> None:
            after()

        return Answer(200, orjson.dumps(parsed), JSON_TYPE, after_answer, headers)

    async def _audit(
        self,
        route: RouteConfig,
        identity: RowIdentity,
        body: dict[str, Any],
        student_text: str,
        confidence: float | None,
    ) -> None:
        """Ask the teacher too (in the background) and compare, so served traffic is measured."""
        upstream = self._teachers[route.name, identity.endpoint]
        request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        payload = orjson.dumps({**request, "model": route.teacher.model, "stream": False})
        started = time.perf_counter()
        try:
            reply = await call_teacher(self._session, upstream, payload)
            record = teacher_audit(
                identity,
                teacher_model=route.teacher.model,
                status=reply.status,
                body=reply.body,
                latency_s=time.perf_counter() - started,
                error=None,
            )
        except GatewayError as exc:
            record = teacher_audit(
                identity,
                teacher_model=route.teacher.model,
                status=exc.http_status if isinstance(exc, TeacherHTTPError) else None,
                body=None,
                latency_s=time.perf_counter() - started,
                error=exc.message,
            )
        teacher_text = record.get("teacher_output")
        if teacher_text is not None:
            await self.judge(route, identity, teacher_text, student_text, confidence, record)
        self._writer.submit(record)

    async def judge(
        self,
        route: RouteConfig,
        identity: RowIdentity,
        teacher_text: str,
        student_text: str,
        confidence: float | None,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Compare the two answers; the verdict goes into ``record`` or a row half of its own."""
        analysis = self._analyses[route.name]
        verdict = Verdict(confidence, await analysis.compare(teacher_text, student_text))
        columns = {k: v for k, v in verdict.columns().items() if k != "student_confidence"}
        if record is None:
            self._writer.submit({**identity.columns(), **columns})
        else:
            record.update(columns)
        analysis.observe(self._metrics, route.name, identity.slices, verdict)
