"""Analyst views per student: ``student_agreement_daily`` and ``student_disagreements``.

``agreement_daily`` and ``disagreements`` read ``requests``, which describes the champion (or
the student that served). With several students per route, an analyst asks the same
questions of each student: these two views are their per-student counterparts over
``student_answers``, with ``student`` and ``source`` (``live`` or ``replay``) as columns.

- ``student_agreement_daily``: per UTC day, route, student, source and slice label (and
  ``(all)``), the answers, comparisons, agreement with its 95 % Wilson interval (the same
  SQL as ``agreement_daily``'s, from migration 0007, so the same counts give the same
  floats), mean score, mean confidence and mean latency.
- ``student_disagreements``: every student answer that disagreed with the teacher, with the
  request's prompt (read as ``disagreements`` reads it, migration 0008) and the teacher's
  answer beside the student's.

Downgrade drops both views.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _migration(name: str) -> ModuleType:
    """An earlier migration's module, whose SQL pieces these views share."""
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"_shadow_gateway_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _agreement_daily() -> str:
    wilson = _migration("0007_wilson_exact.py")
    return f"""
CREATE VIEW student_agreement_daily AS
SELECT
    day, route, student, source, dimension, value, answers, compared, agreed,
    compared - agreed AS disagreed,
    CASE WHEN compared > 0 THEN agreed::float8 / compared END AS agreement,
    CASE WHEN compared > 0 THEN
        CASE WHEN agreed = 0 THEN 0 ELSE GREATEST(0,
            {wilson.CENTRE}
            - {wilson.HALF}
        ) END
    END AS agreement_low,
    CASE WHEN compared > 0 THEN
        CASE WHEN agreed = compared THEN 1 ELSE LEAST(1,
            {wilson.CENTRE}
            + {wilson.HALF}
        ) END
    END AS agreement_high,
    mean_score, mean_confidence, mean_latency_ms
FROM (
    SELECT
        (a.created_at AT TIME ZONE 'UTC')::date AS day,
        a.route,
        a.student,
        a.source,
        label.dimension,
        label.value,
        count(*) FILTER (WHERE a.student_status = 'ok') AS answers,
        count(a.agree) AS compared,
        count(*) FILTER (WHERE a.agree) AS agreed,
        avg(a.agreement_score) AS mean_score,
        avg(a.student_confidence) AS mean_confidence,
        avg(a.student_latency_ms) FILTER (WHERE a.student_status = 'ok') AS mean_latency_ms
    FROM student_answers AS a
    CROSS JOIN LATERAL (
        SELECT '(all)'::text, '(all)'::text
        UNION ALL
        SELECT key, value FROM jsonb_each_text(a.slices)
    ) AS label(dimension, value)
    GROUP BY 1, 2, 3, 4, 5, 6
) AS counts
"""  # noqa: S608


def _disagreements() -> str:
    shapes = _migration("0008_answer_shapes.py")  # its PROMPT ends "AS prompt,"
    return f"""
CREATE VIEW student_disagreements AS
SELECT
    a.request_id,
    a.route,
    a.student,
    a.source,
    a.created_at,
    (a.created_at AT TIME ZONE 'UTC')::date AS day,
    a.slices,
    r.prompt,
    r.teacher_output,
    a.student_output,
    r.teacher_tool_calls,
    a.student_tool_calls,
    r.teacher_refusal,
    a.student_refusal,
    a.agreement_score,
    a.agreement_reason,
    a.agreement_detail,
    a.student_confidence,
    r.teacher_model,
    a.student_model,
    r.request_payload
FROM student_answers AS a
JOIN LATERAL (
    SELECT {shapes.PROMPT.strip()}
        teacher_output, teacher_tool_calls, teacher_refusal, teacher_model, request_payload
    FROM requests
    WHERE requests.request_id = a.request_id AND requests.created_at = a.created_at
) AS r ON true
WHERE a.agree = false
"""  # noqa: S608


COMMENTS = {
    "VIEW student_agreement_daily": "Per UTC day, route, student, source (live, replay) and "
    "slice label ((all) for every request): each student's answers, comparisons and agreement "
    "with the teacher, with a 95% Wilson interval (as agreement_daily)",
    "COLUMN student_agreement_daily.answers": "Calls that gave an answer (student_status ok)",
    "COLUMN student_agreement_daily.compared": "Answers compared with the teacher's",
    "COLUMN student_agreement_daily.agreement_low": "Lower end of the 95% Wilson interval",
    "COLUMN student_agreement_daily.agreement_high": "Upper end of the 95% Wilson interval",
    "VIEW student_disagreements": "Every student answer (any student, live or replayed) that "
    "disagreed with the teacher, with the request's prompt and the teacher's answer",
    "COLUMN student_disagreements.prompt": "The last user message (text parts joined), the "
    "prompt of /v1/completions, or the input of /v1/responses",
}


def _comment(target: str, comment: str) -> None:
    quoted = comment.replace("'", "''")
    op.execute(f"COMMENT ON {target} IS '{quoted}'")


def upgrade() -> None:
    op.execute(_agreement_daily())
    op.execute(_disagreements())
    for target, comment in COMMENTS.items():
        _comment(target, comment)


def downgrade() -> None:
    op.execute("DROP VIEW student_disagreements")
    op.execute("DROP VIEW student_agreement_daily")
