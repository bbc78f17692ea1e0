"""Replay: send logged requests to a student and judge its answers against the logged teacher's.

Before a new student sees live traffic it can be tried on what the route already answered:
each chosen request's logged body goes to the student exactly as a live shadow call would send
it (:func:`~gateway.shadow.dispatcher.student_request`), its answer is compared with the
teacher's logged answer by the route's comparator, and the result becomes the student's row of
``student_answers`` with ``source = 'replay'`` and the request's ``created_at``, written by
the same redacting, journaled, idempotent writer as live answers.

Which requests: the route's, in a window, whose teacher answered (2xx) and whose body was
logged, optionally only those carrying given slice labels, newest first, at most ``limit``.
The choice is fixed by those filters alone, so a replay is **resumable**: running the same
command again skips the requests this student already answered on replay (a row with
``student_status = 'ok'``) and does the rest. A failed call is not written: it is counted, and
tried again on the next run. Cancelling (Ctrl-C) stops the calls in flight, writes every
answer already received and leaves nothing half-done, so the next run resumes cleanly.

Requests are read in keyset pages (``created_at, request_id`` descending), never all at once
and never in one long transaction; at most ``concurrency`` calls are in flight.
"""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.clients.students import Student
from gateway.config import RouteConfig
from gateway.core.outputs import Output
from gateway.db.writer import LogWriter
from gateway.protocol.reports import Window
from gateway.shadow.analysis import RouteAnalysis
from gateway.shadow.answers import REPLAY, answer_row
from gateway.shadow.dispatcher import student_request
from gateway.shadow.records import RowIdentity, student_half

PAGE = 200
# Failed calls in a row after which the replay stops: the student is down, not unlucky.
MAX_FAILURES_IN_A_ROW = 20

_CHOSEN = (
    "FROM requests AS r WHERE r.route = :route AND r.created_at >= :since "
    "AND r.created_at < :until AND r.teacher_status BETWEEN 200 AND 299 "
    "AND r.request_payload IS NOT NULL AND r.slices @> CAST(:slices AS jsonb)"
)
_DONE = (
    "EXISTS (SELECT 1 FROM student_answers AS a WHERE a.request_id = r.request_id "
    "AND a.created_at = r.created_at AND a.student = :student AND a.source = 'replay' "
    "AND a.student_status = 'ok')"
)
_PLAN = text(
    f"SELECT count(*) AS chosen, count(*) FILTER (WHERE done) AS done FROM ("
    f"SELECT {_DONE} AS done {_CHOSEN} "
    "ORDER BY r.created_at DESC, r.request_id DESC LIMIT :limit) AS chosen"
)
_PAGE = text(
    "SELECT r.request_id, r.created_at, r.endpoint, r.mode, r.slices, r.sticky_bucket, "
    "r.client_request_id, r.request_payload, r.teacher_output, r.teacher_tool_calls, "
    f"r.teacher_refusal, {_DONE} AS done {_CHOSEN} "
    "AND (CAST(:after_at AS timestamptz) IS NULL "
    "OR (r.created_at, r.request_id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS text))) "
    "ORDER BY r.created_at DESC, r.request_id DESC LIMIT :page"
)


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay run will do: ``chosen`` requests, of which ``done`` already answered."""

    chosen: int
    done: int

    @property
    def to_do(self) -> int:
        return self.chosen - self.done


@dataclass
class ReplayOutcome:
    """What a run did: answers written (``agreed`` of ``compared`` agreed), failures by kind."""

    answered: int = 0
    compared: int = 0
    agreed: int = 0
    skipped: int = 0  # answered on an earlier run
    failed: Counter[str] = field(default_factory=Counter)
    stopped: str | None = None  # why the run stopped early, if it did

    def as_json(self) -> dict[str, Any]:
        return {
            "answered": self.answered,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement": self.agreed / self.compared if self.compared else None,
            "skipped": self.skipped,
            "failed": dict(self.failed),
            "stopped": self.stopped,
        }


class StudentDown(Exception):
    """The student failed every call for a while; the replay stops (and can be resumed)."""


class Replay:
    """One student's replay over one route's logged requests."""

    def __init__(
        self,
        engine: AsyncEngine,
        route: RouteConfig,
        analysis: RouteAnalysis,
        student: Student,
        window: Window,
        *,
        slices: Sequence[tuple[str, str]] = (),
        limit: int | None = None,
    ) -> None:
        self._engine = engine
        self._route = route
        self._analysis = analysis
        self._student = student
        self._params: dict[str, Any] = {
            "route": route.name,
            "since": window.since,
            "until": window.until,
            "slices": orjson.dumps(dict(slices)).decode(),
            "student": student.name,
            "limit": limit,
        }

    # Which requests: a subclass may choose others with queries of the same columns and
    # parameters (gateway.services.distill.replays: one dataset's requests).
    _plan_query = _PLAN
    _page_query = _PAGE

    async def plan(self) -> ReplayPlan:
        async with self._engine.connect() as connection:
            row = (await connection.execute(self._plan_query, self._params)).one()
        return ReplayPlan(row.chosen, row.done)

    async def run(
        self,
        session: aiohttp.ClientSession,
        writer: LogWriter,
        concurrency: int,
        progress: Callable[[ReplayOutcome], None] = lambda _outcome: None,
    ) -> ReplayOutcome:
        """Replay every chosen request not answered yet, ``concurrency`` calls at a time.

        Cancelled (Ctrl-C), it stops the calls in flight, whose answers are not written, and
        re-raises: what was answered is with ``writer``, which the caller closes to flush it.
        """
        outcome = ReplayOutcome()
        slots = asyncio.Semaphore(concurrency)
        failures_in_a_row = 0

        async def one(row: Any) -> None:
            nonlocal failures_in_a_row
            try:
                written = await self._one(session, writer, row, outcome)
            finally:
                slots.release()
            failures_in_a_row = 0 if written else failures_in_a_row + 1
            progress(outcome)
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                kinds = ", ".join(f"{kind}: {n}" for kind, n in outcome.failed.most_common())
                raise StudentDown(
                    f"student {self._student.name!r} failed {failures_in_a_row} calls in a row "
                    f"({kinds}); stopped"
                )

        try:
            async with asyncio.TaskGroup() as calls:
                async for row in self._rows():
                    if row.done:
                        outcome.skipped += 1
                        progress(outcome)
                        continue
                    await slots.acquire()
                    calls.create_task(one(row))
        except* StudentDown as stopped:
            outcome.stopped = str(stopped.exceptions[0])
        return outcome

    async def _rows(self) -> AsyncIterator[Any]:
        """The chosen requests, newest first, a page at a time (no transaction held between)."""
        remaining = self._params["limit"]
        after: tuple[datetime, str] | None = None
        while remaining is None or remaining > 0:
            size = PAGE if remaining is None else min(PAGE, remaining)
            params = {
                **self._params,
                "page": size,
                "after_at": after[0] if after else None,
                "after_id": after[1] if after else None,
            }
            async with self._engine.connect() as connection:
                rows = (await connection.execute(self._page_query, params)).all()
            for row in rows:
                yield row
            if len(rows) < size:
                return
            after = (rows[-1].created_at, rows[-1].request_id)
            if remaining is not None:
                remaining -= len(rows)

    async def _one(self, session: Any, writer: LogWriter, row: Any, outcome: ReplayOutcome) -> bool:
        """Replay one request; whether its answer was written."""
        identity = RowIdentity(
            request_id=row.request_id,
            route=self._route.name,
            endpoint=row.endpoint,
            created_at=row.created_at,
            mode=row.mode,
            slices=row.slices if isinstance(row.slices, dict) else {},
            sticky_bucket=row.sticky_bucket,
            client_request_id=row.client_request_id,
        )
        student = self._student
        payload = student_request(row.endpoint, row.request_payload, student.config)
        upstream, reply = await student.call(session, row.endpoint, payload)
        record, output = student_half(
            identity,
            student_model=student.config.model,
            student_url=upstream.url,
            reply=reply,
            confidence=self._analysis.confidence,
        )
        if output is None:
            outcome.failed[record["student_status"]] += 1
            return False
        teacher = Output.from_columns(
            row.teacher_output, row.teacher_tool_calls, row.teacher_refusal
        )
        verdict = await self._analysis.verdict(teacher, output, record["student_confidence"])
        record.update(verdict.columns())
        writer.submit_answer(answer_row(record, student.name, REPLAY))
        outcome.answered += 1
        if verdict.agreement is not None:
            outcome.compared += 1
            outcome.agreed += int(verdict.agreement.agree)
        return True
