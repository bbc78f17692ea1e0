"""Shadow calls to the student, off the response path and bounded.

Each route has a fixed number of student calls that may be in flight (``max_concurrency``).
A request that finds them all busy is not shadowed: the drop is counted and recorded, never
queued, so a hanging student costs at most ``max_concurrency`` idle sockets and never memory
or teacher latency. Every task is referenced until done (a set plus ``add_done_callback``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.clients.upstream import Upstream, call_student, make_upstream
from gateway.config import RouteConfig, StudentConfig
from gateway.core.breaker import CircuitBreaker, counts_as_failure
from gateway.core.outputs import Endpoint, Output
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics
from gateway.shadow.analysis import RouteAnalysis
from gateway.shadow.records import (
    STUDENT_CIRCUIT_OPEN,
    STUDENT_DROPPED,
    STUDENT_OK,
    STUDENT_SHUTDOWN,
    Record,
    RowIdentity,
    student_half,
    student_skipped,
)

_log = logging.getLogger("shadow_gateway.shadow")

ENDPOINT_PATHS: Mapping[Endpoint, str] = {
    "chat": "/chat/completions",
    "text": "/completions",
    "responses": "/responses",
}
# What the student is asked for on the Responses API to get its token logprobs.
LOGPROBS_INCLUDE = "message.output_text.logprobs"


@dataclass(frozen=True)
class StudentCall:
    """One student call: its row half, its answer (None unless it gave a usable one), its
    raw body."""

    record: Record
    output: Output | None
    raw: bytes


@dataclass
class _RouteStudents:
    config: StudentConfig
    upstreams: dict[Endpoint, list[Upstream]]
    cursor: Iterator[int]
    breaker: CircuitBreaker
    in_flight: int = 0

    def next_upstream(self, endpoint: Endpoint) -> Upstream:
        candidates = self.upstreams[endpoint]
        return candidates[next(self.cursor) % len(candidates)]


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def student_request(endpoint: Endpoint, body: Mapping[str, Any], student: StudentConfig) -> bytes:
    """The app's request, re-aimed at the student: its model, no streaming, logprobs on.

    At least the route's ``top_logprobs`` alternatives are asked for, more if the app asked
    for more (a served answer then carries what the app wanted). On the Responses API the
    student keeps nothing (``store: false``) and runs in the foreground.
    """
    dropped = ("stream", "stream_options", "background")
    request = {k: v for k, v in body.items() if k not in dropped}
    request["model"] = student.model
    request["stream"] = False
    if endpoint == "chat":
        top = max(student.top_logprobs, _count(body.get("top_logprobs")))
        request["logprobs"] = True
        if top:
            request["top_logprobs"] = top
    elif endpoint == "responses":
        request["store"] = False
        request["top_logprobs"] = max(student.top_logprobs, _count(body.get("top_logprobs")))
        include = body.get("include")
        include = [i for i in include if i != LOGPROBS_INCLUDE] if isinstance(include, list) else []
        request["include"] = [*include, LOGPROBS_INCLUDE]
    else:
        request["logprobs"] = max(student.top_logprobs, _count(body.get("logprobs")), 1)
    return orjson.dumps(request)


class ShadowDispatcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        routes: list[RouteConfig],
        api_keys: Mapping[str, str],
        writer: LogWriter,
        metrics: Metrics,
        analyses: Mapping[str, RouteAnalysis],
    ) -> None:
        self._session = session
        self._analyses = analyses
        self._writer = writer
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._routes: dict[str, _RouteStudents] = {}
        for route in routes:
            student = route.student
            if student is None:
                continue
            key = api_keys.get(student.api_key_env) if student.api_key_env else None
            self._routes[route.name] = _RouteStudents(
                config=student,
                upstreams={
                    endpoint: [
                        make_upstream(
                            str(url), path, key, student.timeout_s, student.connect_timeout_s
                        )
                        for url in student.base_urls
                    ]
                    for endpoint, path in ENDPOINT_PATHS.items()
                },
                cursor=itertools.count(),
                breaker=CircuitBreaker(student.breaker_failures, student.breaker_cooldown_s),
            )

    def shadow(
        self, identity: RowIdentity, body: Mapping[str, Any], teacher: Output | None
    ) -> None:
        """Start a student call for this request, or record why it is skipped; ``teacher`` is
        the teacher's answer, None when it gave none (then nothing is compared)."""
        skipped = self._admit(identity)
        if skipped is not None:
            self._writer.submit(student_skipped(identity, skipped))
            return
        self.spawn(self._shadow(identity, body, teacher))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run background work that shutdown waits for (and that is never garbage-collected)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def has_student(self, route: str) -> bool:
        return route in self._routes

    def _admit(self, identity: RowIdentity) -> str | None:
        """Take a call slot; or the reason there is none (bound full, breaker open)."""
        students = self._routes[identity.route]
        if students.in_flight >= students.config.max_concurrency:
            self._metrics.shadow_dropped.labels(identity.route).inc()
            return STUDENT_DROPPED
        if not students.breaker.allow(time.monotonic()):
            self._metrics.circuit_skipped.labels(identity.route).inc()
            return STUDENT_CIRCUIT_OPEN
        students.in_flight += 1
        self._metrics.shadow_in_flight.labels(identity.route).inc()
        return None

    async def _ask(
        self, identity: RowIdentity, body: Mapping[str, Any], timeout_s: float | None = None
    ) -> StudentCall:
        """One admitted student call; frees the slot after."""
        students = self._routes[identity.route]
        upstream = students.next_upstream(identity.endpoint)
        breaker = students.breaker
        try:
            payload = student_request(identity.endpoint, body, students.config)
            reply = await call_student(self._session, upstream, payload, timeout_s=timeout_s)
        except asyncio.CancelledError:
            breaker.probe_in_flight = False  # a cancelled probe proved nothing
            raise
        finally:
            students.in_flight -= 1
            self._metrics.shadow_in_flight.labels(identity.route).dec()
        record, output = student_half(
            identity, student_model=students.config.model, student_url=upstream.url, reply=reply
        )
        outcome = record["student_status"]
        breaker.record(not counts_as_failure(outcome, reply.status), time.monotonic())
        self._metrics.circuit_open.labels(identity.route).set(1 if breaker.is_open else 0)
        self._metrics.shadow_calls.labels(identity.route, outcome).inc()
        if outcome == STUDENT_OK:
            self._metrics.student_latency.labels(identity.route).observe(reply.latency_s)
        return StudentCall(record, output, reply.body)

    async def call_now(
        self, identity: RowIdentity, body: Mapping[str, Any], budget_s: float
    ) -> StudentCall | str:
        """Ask the student on the response path (rollout): its row half and its raw answer.

        A status instead when no call can be made (bound full, breaker open): a chosen
        student that cannot take the call is unavailable, never waited for.
        """
        skipped = self._admit(identity)
        if skipped is not None:
            return skipped
        return await self._ask(identity, body, budget_s)

    async def _shadow(
        self, identity: RowIdentity, body: Mapping[str, Any], teacher: Output | None
    ) -> None:
        try:
            call = await self._ask(identity, body)
            record = call.record
            if call.output is not None:
                analysis = self._analyses[identity.route]
                verdict = await analysis.judge(teacher, call.output, record["student_logprobs"])
                record.update(verdict.columns())
                analysis.observe(self._metrics, identity.route, identity.slices, verdict)
            self._writer.submit(record)
        except asyncio.CancelledError:
            self._writer.submit(
                student_skipped(identity, STUDENT_SHUTDOWN, "the gateway shut down mid-call")
            )
            self._metrics.shadow_calls.labels(identity.route, STUDENT_SHUTDOWN).inc()
            raise
        except Exception as exc:  # a bug here must not lose the row's student half silently
            _log.exception("shadow call failed unexpectedly")
            self._writer.submit(student_skipped(identity, "internal_error", repr(exc)))
            self._metrics.shadow_calls.labels(identity.route, "internal_error").inc()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight student calls finish for up to ``timeout_s``, then cancel the rest."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            _log.warning("cancelled %d shadow call(s) still running at shutdown", len(pending))
