"""The review queue: teacher answers drawn for people to judge, and their verdicts.

``sample`` draws up to N requests per slice (per value of one dimension, or per combination
of labels) at random from a window, optionally only those where the student disagreed, and
makes a task of each (one per request and student; a request already drawn for that student
is skipped). A task shows the prompt, the teacher's answer and every student's; its verdict
says which answer was right (:mod:`gateway.services.judgements` reads them).

Tasks whose teacher and student answers are the same pair (after trimming, lower-casing and
collapsing whitespace) share a ``group_key``: one verdict may cover every open task of the
group. Judging a task again replaces its verdict; ``review_verdicts`` keeps every one.
"""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, text, update

from gateway.core.outputs import Output
from gateway.db.tables import VERDICTS, review_verdicts, reviews
from gateway.errors import InvalidRequest, ReviewNotFound, StudentNotFound
from gateway.protocol.reports import Window, iso_time
from gateway.services.reports.common import ReportsBase, last_user_text_sql, window_params

MAX_PER_SLICE = 10_000


def _normalised(column: str) -> str:
    return f"lower(regexp_replace(btrim({column}), '\\s+', ' ', 'g'))"


_TEACHER = "coalesce(r.teacher_output, r.teacher_tool_calls::text, r.teacher_refusal, '')"
_STUDENT = "coalesce(a.student_output, a.student_tool_calls::text, a.student_refusal, '')"
_GROUP_KEY = f"md5({_normalised(_TEACHER)} || chr(31) || {_normalised(_STUDENT)})"

_SAMPLE = f"""
WITH drawn AS (
    SELECT r.request_id, r.created_at, r.slices, a.agree, {_GROUP_KEY} AS group_key,
           row_number() OVER (PARTITION BY {{stratum}} ORDER BY random()) AS n
    FROM requests AS r
    LEFT JOIN LATERAL (
        SELECT s.agree, s.student_output, s.student_tool_calls, s.student_refusal
        FROM student_answers AS s
        WHERE s.request_id = r.request_id AND s.created_at = r.created_at
          AND s.student = :student AND s.student_status = 'ok'
        ORDER BY (s.source = 'live') DESC
        LIMIT 1
    ) AS a ON true
    WHERE r.route = :route AND r.created_at >= :since AND r.created_at < :until
      AND r.teacher_status = 200 AND r.teacher_error IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM reviews AS v
          WHERE v.route = r.route AND v.request_id = r.request_id AND v.student = :student
      )
      {{only}}
)
INSERT INTO reviews (route, request_id, request_created_at, student, slices, disagreement,
                     group_key, batch, created_by)
SELECT :route, request_id, created_at, :student, slices, NOT agree, group_key, :batch, :actor
FROM drawn WHERE n <= :per_slice
ON CONFLICT DO NOTHING
RETURNING slices
"""

_TASK = f"""
SELECT t.*, {last_user_text_sql("r.request_payload")} AS prompt, r.request_payload,
       r.teacher_output, r.teacher_tool_calls, r.teacher_refusal, r.teacher_model_reported,
       r.teacher_fingerprint, r.served_by, r.served_student,
       (SELECT count(*) FROM reviews AS g
        WHERE g.route = t.route AND g.group_key = t.group_key AND g.student = t.student
          AND g.verdict IS NULL) AS group_open,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
            'student', s.student, 'source', s.source, 'status', s.student_status,
            'output', s.student_output, 'tool_calls', s.student_tool_calls,
            'refusal', s.student_refusal, 'agree', s.agree, 'score', s.agreement_score,
            'confidence', s.student_confidence) ORDER BY s.student, s.source), '[]'::jsonb)
        FROM student_answers AS s
        WHERE s.request_id = t.request_id AND s.created_at = t.request_created_at) AS students
FROM reviews AS t
LEFT JOIN requests AS r ON r.request_id = t.request_id AND r.created_at = t.request_created_at
"""


_ROUTES = text("""
WITH tasks AS (
    SELECT route, student, count(*) FILTER (WHERE verdict IS NULL) AS open,
           count(*) FILTER (WHERE verdict IS NOT NULL) AS judged
    FROM reviews GROUP BY route, student
)
SELECT coalesce(s.route, t.route) AS route, coalesce(s.name, t.student) AS student, s.status,
       coalesce(t.open, 0) AS open, coalesce(t.judged, 0) AS judged
FROM route_students AS s FULL JOIN tasks AS t ON t.route = s.route AND t.student = s.name
""")
_STATUS_ORDER = {"champion": 0, "candidate": 1, "retired": 2}


def _answer(output: Any, tool_calls: Any, refusal: Any) -> str:
    return Output.from_columns(output, tool_calls, refusal).describe()


def task_view(row: Any, *, full: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id,
        "route": row.route,
        "request_id": row.request_id,
        "request_created_at": iso_time(row.request_created_at),
        "student": row.student,
        "slices": row.slices,
        "disagreement": row.disagreement,
        "group_key": row.group_key,
        "group_open": row.group_open,
        "batch": row.batch,
        "created_at": iso_time(row.created_at),
        "verdict": row.verdict,
        "corrected_output": row.corrected_output,
        "reviewer": row.reviewer,
        "judged_at": iso_time(row.judged_at) if row.judged_at else None,
        "prompt": row.prompt,
        "teacher_answer": _answer(row.teacher_output, row.teacher_tool_calls, row.teacher_refusal),
        "teacher_version": {
            "model": row.teacher_model_reported,
            "fingerprint": row.teacher_fingerprint,
        },
        "served_by": row.served_by,
        "served_student": row.served_student,
        "students": [
            {**answer, "answer": _answer(answer["output"], answer["tool_calls"], answer["refusal"])}
            for answer in row.students
        ],
    }
    if full:
        view["request_payload"] = row.request_payload
    return view


class ReviewQueue(ReportsBase):
    """Draw review tasks, list them, take verdicts."""

    async def _student(self, route: str, student: str | None) -> str:
        """The named student (any status: a retired one's answers can still be judged), or
        the route's champion."""
        query = text("SELECT name, status FROM route_students WHERE route = :route")
        async with self._engine.connect() as connection:
            found = {
                row.name: row.status for row in await connection.execute(query, {"route": route})
            }
        if student is None:
            champions = [name for name, status in found.items() if status == "champion"]
            if not champions:
                raise InvalidRequest(
                    f"Route '{route}' has no champion: name the student to review (--student).",
                    param="student",
                )
            return str(champions[0])
        if student not in found:
            known = ", ".join(sorted(found)) or "none"
            raise StudentNotFound(
                f"Route '{route}' has no student '{student}' (students: {known}).",
                param="student",
            )
        return student

    async def routes(self) -> dict[str, Any]:
        """Every configured route, its students (champion first; a student no longer in the
        registry but with tasks has no status) and the open and judged tasks of each."""
        async with self._reading() as connection:
            rows = (await connection.execute(_ROUTES)).all()
        students: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            students.setdefault(row.route, []).append(
                {"name": row.student, "status": row.status, "open": row.open, "judged": row.judged}
            )
        answer = []
        for route in self._config.routes:
            found = sorted(
                students.get(route.name, []),
                key=lambda s: (_STATUS_ORDER.get(s["status"], 3), s["name"]),
            )
            answer.append(
                {
                    "name": route.name,
                    "open": sum(s["open"] for s in found),
                    "judged": sum(s["judged"] for s in found),
                    "students": found,
                }
            )
        return {"routes": answer}

    async def sample(
        self,
        name: str,
        window: Window,
        *,
        per_slice: int,
        actor: str,
        student: str | None = None,
        dimension: str | None = None,
        disagreements_only: bool = False,
    ) -> dict[str, Any]:
        """Draw up to ``per_slice`` new tasks per slice (per value of ``dimension``, or per
        combination of labels) from the window."""
        route = self.route(name)
        if not 1 <= per_slice <= MAX_PER_SLICE:
            raise InvalidRequest(
                f"per_slice must be between 1 and {MAX_PER_SLICE}, not {per_slice}.",
                param="per_slice",
            )
        chosen = await self._student(route.name, student)
        if dimension is not None:
            async with self._reading() as connection:
                await self._check_dimension(connection, route, dimension)
            stratum = "coalesce(r.slices ->> CAST(:dimension AS text), '(none)')"
        else:
            stratum = "r.slices::text"
        only = "AND a.agree = false" if disagreements_only else ""
        batch = f"rs_{datetime.now(UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"
        params = {
            **window_params(route, window),
            "student": chosen,
            "per_slice": per_slice,
            "batch": batch,
            "actor": actor,
            "dimension": dimension,
        }
        statement = text(_SAMPLE.format(stratum=stratum, only=only))
        async with self._engine.begin() as connection:
            drawn = (await connection.execute(statement, params)).all()
        per: Counter[str] = Counter()
        for (labels,) in drawn:
            if dimension is not None:
                per[str((labels or {}).get(dimension, "(none)"))] += 1
            else:
                shown = ", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))
                per[shown or "(no labels)"] += 1
        return {
            "route": route.name,
            **window.as_json(),
            "student": chosen,
            "batch": batch,
            "per_slice": per_slice,
            "dimension": dimension,
            "disagreements_only": disagreements_only,
            "created": len(drawn),
            "slices": dict(sorted(per.items())),
        }

    async def tasks(
        self,
        *,
        route: str | None = None,
        status: str = "open",
        student: str | None = None,
        batch: str | None = None,
        limit: int = 50,
        after_id: int | None = None,
    ) -> dict[str, Any]:
        """A page of tasks, oldest first (``after_id`` continues it)."""
        if route is not None:
            self.route(route)
        conditions: list[str] = []
        params: dict[str, Any] = {"limit": limit + 1}
        if route is not None:
            conditions.append("t.route = :route")
            params["route"] = route
        if status == "open":
            conditions.append("t.verdict IS NULL")
        elif status == "judged":
            conditions.append("t.verdict IS NOT NULL")
        elif status != "all":
            raise InvalidRequest(
                f"status must be open, judged or all, not {status!r}.", param="status"
            )
        for column, value in (("student", student), ("batch", batch)):
            if value is not None:
                conditions.append(f"t.{column} = :{column}")
                params[column] = value
        if after_id is not None:
            conditions.append("t.id > :after_id")
            params["after_id"] = after_id
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        query = text(f"{_TASK} {where} ORDER BY t.id LIMIT :limit")
        async with self._reading() as connection:
            rows = (await connection.execute(query, params)).all()
            counts = await self._counts(connection, route)
        page = rows[:limit]
        return {
            "tasks": [task_view(row) for row in page],
            "next_after_id": page[-1].id if len(rows) > limit else None,
            "counts": counts,
        }

    async def _counts(self, connection: Any, route: str | None) -> dict[str, int]:
        query = select(
            func.count().filter(reviews.c.verdict.is_(None)),
            func.count().filter(reviews.c.verdict.is_not(None)),
        )
        if route is not None:
            query = query.where(reviews.c.route == route)
        open_, judged = (await connection.execute(query)).one()
        return {"open": open_, "judged": judged}

    async def task(self, review_id: int) -> dict[str, Any]:
        """One task in full, with every verdict it was given."""
        async with self._reading() as connection:
            row = (
                await connection.execute(text(f"{_TASK} WHERE t.id = :id"), {"id": review_id})
            ).first()
            if row is None:
                raise ReviewNotFound(f"No review task has the id {review_id}.", param="id")
            history = (
                await connection.execute(
                    select(review_verdicts)
                    .where(review_verdicts.c.review_id == review_id)
                    .order_by(review_verdicts.c.id)
                )
            ).all()
        return {
            **task_view(row, full=True),
            "history": [
                {
                    "at": iso_time(entry.at),
                    "reviewer": entry.reviewer,
                    "verdict": entry.verdict,
                    "corrected_output": entry.corrected_output,
                    "via_review": entry.via_review,
                }
                for entry in history
            ],
        }

    async def judge(
        self,
        review_id: int,
        verdict: str,
        reviewer: str,
        *,
        corrected_output: str | None = None,
        group: bool = False,
    ) -> dict[str, Any]:
        """Give a task its verdict (replacing an earlier one; both kept in history); with
        ``group``, every open task of its group gets the same verdict too."""
        if verdict not in VERDICTS:
            raise InvalidRequest(
                f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}.",
                param="verdict",
            )
        now = datetime.now(UTC)
        async with self._engine.begin() as connection:
            found = (
                await connection.execute(
                    select(reviews.c.route, reviews.c.group_key, reviews.c.student)
                    .where(reviews.c.id == review_id)
                    .with_for_update()
                )
            ).first()
            if found is None:
                raise ReviewNotFound(f"No review task has the id {review_id}.", param="id")
            targets: Sequence[int] = [review_id]
            if group:
                others = await connection.execute(
                    select(reviews.c.id)
                    .where(
                        reviews.c.route == found.route,
                        reviews.c.group_key == found.group_key,
                        reviews.c.student == found.student,
                        reviews.c.verdict.is_(None),
                        reviews.c.id != review_id,
                    )
                    .order_by(reviews.c.id)
                    .with_for_update()
                )
                targets = [review_id, *(row.id for row in others)]
            await connection.execute(
                update(reviews)
                .where(reviews.c.id.in_(targets))
                .values(
                    verdict=verdict,
                    corrected_output=corrected_output,
                    reviewer=reviewer,
                    judged_at=now,
                )
            )
            await connection.execute(
                insert(review_verdicts),
                [
                    {
                        "review_id": target,
                        "at": now,
                        "reviewer": reviewer,
                        "verdict": verdict,
                        "corrected_output": corrected_output,
                        "via_review": None if target == review_id else review_id,
                    }
                    for target in targets
                ],
            )
        return {"id": review_id, "verdict": verdict, "judged": len(targets), "ids": list(targets)}
