"""The quality report: how often the teacher, and each student, was judged wrong, per slice.

Agreement measures how alike the student is to the teacher; this measures who was right, from
what people (review verdicts) and apps (feedback) said, by the rules of
:mod:`gateway.services.judgements`. Per slice and for the route, per subject (``teacher`` and
each student): the judged answers, the wrong ones, the error rate with its 95% Wilson
interval; and, per student, the reviewed disagreements and the share of them where the
student was right: the answer to "am I distilling the teacher's errors?".
"""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import text

from gateway.core import statistics as stats
from gateway.errors import NoData
from gateway.protocol.reports import Window
from gateway.services.judgements import (
    STUDENT_RIGHT,
    STUDENT_WRONG,
    TEACHER_WRONG,
    feedback_correct_sql,
    verdicts_sql,
)
from gateway.services.reports.common import LABELS, ReportsBase, window_params


def _in_window(alias: str) -> str:
    return (
        f"{alias}.route = :route AND {alias}.request_created_at >= :since"
        f" AND {alias}.request_created_at < :until"
    )


_QUALITY = text(f"""
WITH latest_feedback AS (
    SELECT DISTINCT ON (f.request_id, f.answered_by)
           f.request_id, f.request_created_at, f.answered_by,
           {feedback_correct_sql("f")} AS correct
    FROM feedback AS f
    WHERE {_in_window("f")} AND {feedback_correct_sql("f")} IS NOT NULL
    ORDER BY f.request_id, f.answered_by, f.created_at DESC, f.id DESC
),
latest_verdict AS (
    SELECT DISTINCT ON (t.request_id) t.request_id, t.request_created_at, t.verdict
    FROM reviews AS t
    WHERE {_in_window("t")} AND t.verdict IS NOT NULL
    ORDER BY t.request_id, t.judged_at DESC, t.id DESC
),
teacher_judged AS (
    SELECT request_id, request_created_at FROM latest_verdict
    UNION
    SELECT request_id, request_created_at FROM latest_feedback WHERE answered_by = 'teacher'
),
judged AS (
    SELECT q.slices, 'teacher'::text AS subject,
           CASE WHEN v.verdict IS NOT NULL THEN v.verdict IN {verdicts_sql(TEACHER_WRONG)}
                ELSE NOT fb.correct END AS wrong,
           v.verdict IS NOT NULL AS by_review,
           NULL::boolean AS disagreement
    FROM teacher_judged AS k
    JOIN requests AS q ON q.request_id = k.request_id AND q.created_at = k.request_created_at
    LEFT JOIN latest_verdict AS v
           ON v.request_id = k.request_id AND v.request_created_at = k.request_created_at
    LEFT JOIN latest_feedback AS fb
           ON fb.request_id = k.request_id AND fb.request_created_at = k.request_created_at
          AND fb.answered_by = 'teacher'
    UNION ALL
    -- disagreement: NULL unless the student disagreed; then whether the student was right
    SELECT t.slices, t.student, t.verdict IN {verdicts_sql(STUDENT_WRONG)}, true,
           CASE WHEN t.disagreement THEN t.verdict IN {verdicts_sql(STUDENT_RIGHT)} END
    FROM reviews AS t
    WHERE {_in_window("t")} AND t.verdict IS NOT NULL
    UNION ALL
    SELECT q.slices, fb.answered_by, NOT fb.correct, false, NULL
    FROM latest_feedback AS fb
    JOIN requests AS q ON q.request_id = fb.request_id AND q.created_at = fb.request_created_at
    WHERE fb.answered_by <> 'teacher'
      AND NOT EXISTS (
          SELECT 1 FROM reviews AS t
          WHERE t.request_id = fb.request_id AND t.request_created_at = fb.request_created_at
            AND t.student = fb.answered_by AND t.verdict IS NOT NULL
      )
)
SELECT s.dim, s.val, r.subject,
       count(*) AS judged,
       count(*) FILTER (WHERE r.wrong) AS wrong,
       count(*) FILTER (WHERE r.by_review) AS reviewed,
       count(r.disagreement) AS disagreements,
       count(*) FILTER (WHERE r.disagreement) AS student_right_in_disagreements
FROM judged AS r {LABELS}
GROUP BY 1, 2, 3
""")


def _rate(part: int, whole: int) -> dict[str, Any]:
    low, high = stats.wilson_interval(part, whole) if whole else (None, None)
    return {"rate": part / whole if whole else None, "ci_low": low, "ci_high": high}


def _subject(row: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "judged": row.judged,
        "wrong": row.wrong,
        "from_reviews": row.reviewed,
        "from_feedback": row.judged - row.reviewed,
        "error": _rate(row.wrong, row.judged),
    }
    if row.subject != "teacher":
        figures["reviewed_disagreements"] = row.disagreements
        figures["student_right_in_disagreements"] = _rate(
            row.student_right_in_disagreements, row.disagreements
        )
    return figures


class QualityReport(ReportsBase):
    async def quality(
        self, name: str, window: Window, dimension: str | None = None
    ) -> dict[str, Any]:
        """Per slice and for the route: the teacher's and each student's judged error rate."""
        route = self.route(name)
        async with self._reading() as connection:
            if dimension is not None:
                await self._check_dimension(connection, route, dimension)
            rows = (
                await connection.execute(
                    _QUALITY, window_params(route, window, dimension=dimension)
                )
            ).all()
        per: dict[tuple[str | None, str | None], dict[str, Any]] = defaultdict(dict)
        for row in rows:
            per[(row.dim, row.val)][row.subject] = _subject(row)
        route_wide = per.pop((None, None), None)
        if route_wide is None:
            raise NoData(
                f"Route '{name}' has no reviewed or feedback-judged answer from "
                f"{window.describe()}. Draw review tasks (review sample) or send feedback."
            )
        return {
            "route": name,
            **window.as_json(),
            "dimension": dimension,
            "rules": (
                "A review verdict judges both answers; feedback judges the answer the app got "
                "(correct flag, else a corrected answer means wrong, else score >= 0.5 is "
                "right); for the teacher, a request's latest verdict outranks feedback."
            ),
            "overall": _ordered(route_wide),
            "slices": [
                {"dimension": dim, "value": val, "subjects": _ordered(subjects)}
                for (dim, val), subjects in sorted(per.items(), key=lambda item: str(item[0]))
            ],
        }


def _ordered(subjects: dict[str, Any]) -> dict[str, Any]:
    """The teacher first, then the students by name."""
    return dict(sorted(subjects.items(), key=lambda item: (item[0] != "teacher", item[0])))
