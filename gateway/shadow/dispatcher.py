"""Shadow calls to the student, off the response path and bounded.

Each student has a fixed number of calls that may be in flight (``max_concurrency``). A
request that finds them all busy is not shadowed on it: the drop is counted and recorded, never
queued, so a hanging student costs at most ``max_concurrency`` idle sockets and never memory
or teacher latency. Every task is referenced until done (a set plus ``add_done_callback``).

Every student's calls feed the metrics under its own ``student`` label, the champion's and the
candidates'. A call that finishes after its student was retired writes its row but no metric:
the retirement removed the student's series (:meth:`Metrics.describe_students`), and a late
call would bring them back (an in-flight gauge at -1).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import logs
from gateway.clients.students import Student, StudentPool
from gateway.config import StudentConfig
from gateway.core.breaker import counts_as_failure
from gateway.core.outputs import Endpoint, Output
from gateway.core.sampling import shadow_sampled
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics
from gateway.shadow.analysis import RouteAnalysis, Verdict
from gateway.shadow.answers import answer_row
from gateway.shadow.records import (
    STUDENT_CIRCUIT_OPEN,
    STUDENT_DROPPED,
    STUDENT_NOT_SAMPLED,
    STUDENT_OK,
    STUDENT_SHUTDOWN,
    Record,
    RowIdentity,
    student_half,
    student_skipped,
)

_log = logging.getLogger("shadow_gateway.shadow")

_PROCESS_ENDED = "the gateway process ended mid-call (found when its write-ahead log was replayed)"

# What the student is asked for on the Responses API to get its token logprobs.
LOGPROBS_INCLUDE = "message.output_text.logprobs"


@dataclass(frozen=True)
class StudentCall:
    """One student call: whose, its row half (with its confidence), its answer (None unless
    it gave a usable one), its raw body."""

    student: str
    record: Record
    output: Output | None
    raw: bytes


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
        students: StudentPool,
        writer: LogWriter,
        metrics: Metrics,
        analyses: Mapping[str, RouteAnalysis],
    ) -> None:
        self._students = students
        self._analyses = analyses
        self._writer = writer
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    def shadow(
        self,
        identity: RowIdentity,
        body: Mapping[str, Any],
        teacher: Output | None,
        *,
        asked: str | None = None,
    ) -> None:
        """Shadow the request on the route's live students, each on its sample share.

        ``teacher`` is the teacher's answer (None when it gave none: then nothing is compared);
        ``asked`` names a student already asked on the response path, not asked again. The
        shares nest (one hash of the request id for every student), so a candidate sampled
        at 10 % is compared with a champion at 100 % on every request it answers. The
        champion's half completes the ``requests`` row (``not_sampled`` when its share left the
        request out); each sampled student's call, made or refused, is its row of
        ``student_answers``.
        """
        students = self._students.of(identity.route)
        for student in students:
            if student.name == asked:
                continue
            champion = student is students[0]
            if not shadow_sampled(identity.request_id, student.config.shadow_sample or 0.0):
                if champion:
                    self._writer.submit(student_skipped(identity, STUDENT_NOT_SAMPLED))
                continue
            admitted = self._admit(student, identity)
            if admitted is not None:
                self.record(student.name, champion, student_skipped(identity, admitted))
                continue
            # On disk before the call's task even starts: a process killed from here on
            # leaves the row's half saying so (``shutdown``) at the next start, not empty.
            cut_short = student_skipped(identity, STUDENT_SHUTDOWN, _PROCESS_ENDED)
            marker = self._writer.started(
                {**answer_row(cut_short, student.name), "champion": champion}
            )
            self.spawn(self._shadow(student, champion, identity, body, teacher, marker))

    def record(self, student: str, champion: bool, half: Record) -> None:
        """A student's half: of the ``requests`` row if it is the champion, and its row of
        ``student_answers``."""
        if champion:
            self._writer.submit(half)
        self._writer.submit_answer(answer_row(half, student))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run background work that shutdown waits for (and that is never garbage-collected)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def has_student(self, route: str) -> bool:
        return self._students.champion(route) is not None

    def champion(self, route: str) -> str | None:
        found = self._students.champion(route)
        return None if found is None else found.name

    def observe(self, identity: RowIdentity, student: str, verdict: Verdict) -> None:
        """Count a student's verdict in the agreement metrics, if the student is still live."""
        if self._students.is_live(identity.route, student):
            analysis = self._analyses[identity.route]
            analysis.observe(self._metrics, identity.route, student, identity.slices, verdict)

    def _admit(self, student: Student, identity: RowIdentity) -> str | None:
        """Take one of the student's call slots; or the reason there is none (bound full,
        breaker open). The student is live here: it was just taken from the pool."""
        labels = (identity.route, student.name)
        if student.full:
            self._metrics.shadow_dropped.labels(*labels).inc()
            return STUDENT_DROPPED
        if not student.allowed_now():
            self._metrics.circuit_skipped.labels(*labels).inc()
            return STUDENT_CIRCUIT_OPEN
        student.in_flight += 1
        self._metrics.shadow_in_flight.labels(*labels).inc()
        return None

    async def _ask(
        self,
        student: Student,
        identity: RowIdentity,
        body: Mapping[str, Any],
        timeout_s: float | None = None,
    ) -> StudentCall:
        """One admitted student call, with its confidence; frees the slot after."""
        breaker = student.breaker
        labels = (identity.route, student.name)
        try:
            payload = student_request(identity.endpoint, body, student.config)
            upstream, reply = await student.call(
                self._students.session, identity.endpoint, payload, timeout_s, identity.route
            )
        except asyncio.CancelledError:
            breaker.probe_in_flight = False  # a cancelled probe proved nothing
            raise
        finally:
            student.in_flight -= 1
            if self._students.is_live(*labels):
                self._metrics.shadow_in_flight.labels(*labels).dec()
        analysis = self._analyses[identity.route]
        record, output = student_half(
            identity,
            student_model=student.config.model,
            student_url=upstream.url,
            reply=reply,
            confidence=analysis.confidence,
        )
        outcome = record["student_status"]
        was_open = breaker.is_open
        breaker.record(not counts_as_failure(outcome, reply.status), time.monotonic())
        if breaker.is_open != was_open:  # once per episode: a failed probe keeps it open
            _breaker_changed(identity.route, student, outcome, record.get("student_error"))
        if self._students.is_live(*labels):
            self._metrics.circuit_open.labels(*labels).set(1 if breaker.is_open else 0)
            self._metrics.shadow_calls.labels(*labels, outcome).inc()
            if outcome == STUDENT_OK:
                self._metrics.student_latency.labels(*labels).observe(reply.latency_s)
        return StudentCall(student.name, record, output, reply.body)

    async def call_now(
        self, identity: RowIdentity, body: Mapping[str, Any], budget_s: float | None
    ) -> StudentCall | str:
        """Ask the champion on the response path (rollout) within ``budget_s`` (default: its
        own ``timeout_s``): its row half and its raw answer.

        A status instead when no call can be made (bound full, breaker open): a chosen
        student that cannot take the call is unavailable, never waited for.
        """
        champion = self._students.champion(identity.route)
        assert champion is not None  # callers check has_student
        logs.note("student", champion.name)  # the request's student, served or not
        refused = self._admit(champion, identity)
        if refused is not None:
            return refused
        budget = budget_s or champion.config.timeout_s
        return await self._ask(champion, identity, body, budget)

    async def _shadow(
        self,
        student: Student,
        champion: bool,
        identity: RowIdentity,
        body: Mapping[str, Any],
        teacher: Output | None,
        marker: int | None,
    ) -> None:
        """One shadow call; ``marker`` is its "shadow started" mark (LogWriter.started)."""
        logs.note_in_task("student", student.name)  # this call's lines name its student
        try:
            call = await self._ask(student, identity, body)
            record = call.record
            if call.output is not None and teacher is not None:
                analysis = self._analyses[identity.route]
                verdict = await analysis.verdict(teacher, call.output, record["student_confidence"])
                record.update(verdict.columns())
                self.observe(identity, student.name, verdict)
            self.record(student.name, champion, record)
        except asyncio.CancelledError:
            shutdown = student_skipped(identity, STUDENT_SHUTDOWN, "the gateway shut down mid-call")
            self.record(student.name, champion, shutdown)
            self._count_call(identity.route, student.name, STUDENT_SHUTDOWN)
            raise
        except Exception as exc:  # a bug here must not lose the row's student half silently
            _log.exception("shadow call failed unexpectedly")
            self.record(
                student.name, champion, student_skipped(identity, "internal_error", repr(exc))
            )
            self._count_call(identity.route, student.name, "internal_error")
        finally:
            self._writer.finished(marker)

    def _count_call(self, route: str, student: str, outcome: str) -> None:
        if self._students.is_live(route, student):
            self._metrics.shadow_calls.labels(route, student, outcome).inc()

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


def _breaker_changed(route: str, student: Student, outcome: str, error: object) -> None:
    """One log line when a student's circuit opens, one when it closes again."""
    breaker = student.breaker
    if breaker.is_open:
        _log.warning(
            "route %s: student %s failed %d calls in a row (last: %s%s); not calling it for "
            "%gs, then one probe (shadow calls are logged as circuit_open meanwhile)",
            route,
            student.name,
            breaker.failures,
            outcome,
            f": {str(error)[:200]}" if error else "",
            breaker.cooldown_s,
        )
    else:
        _log.info("route %s: student %s answered a probe; calling it again", route, student.name)
