"""Hourly rollups, so reports read counts rather than raw rows.

- ``rollup_dirty``: the (route, UTC hour) buckets whose raw rows changed since their rollup
  was computed. Statement-level triggers on ``requests`` and ``student_answers`` add them in
  the writing transaction (every writer: the log writer, journal replay, ``replay``, plain
  SQL), so a changed row and its mark commit together.
- ``rollup_buckets``: each bucket computed, and whether it is being recomputed (``stale``).
- ``rollup_requests``, ``rollup_confidence``, ``rollup_prompt_lengths``: per hour, route,
  teacher version and slice label (and the route as a whole: NULL dimension) the counts the
  slices, thresholds and drift reports and the console's trend need; ``rollup_answers``,
  ``rollup_answer_pairs``, ``rollup_answer_latency``: the same for ``student_answers`` and
  the candidates report.

Every fact row of a bucket is recomputed from the raw rows by the rollup job
(:mod:`gateway.db.rollups`: DELETE + INSERT … SELECT … GROUP BY in one transaction), so a
journal replayed twice or a late student half changes nothing but the bucket's next
recompute. Existing rows are marked dirty here, so the job fills the rollups for them.

``TRUNCATE`` of either table marks every computed bucket stale (recomputed by the next
rounds; read raw meanwhile). Downgrade drops the triggers, their functions and the tables.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-14
"""

# ruff: noqa: S608  (the SQL below is assembled from constants)

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HOUR = "date_bin('1 hour', created_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
WATCHED = ("requests", "student_answers")

_TEACHER = {
    "teacher_model_reported": "The model the teacher reported (requests.teacher_model_reported)",
    "teacher_fingerprint": "The teacher's system_fingerprint (requests.teacher_fingerprint)",
}
_SLICE = {
    "dimension": "A slice dimension; NULL for the route as a whole",
    "value": "The slice's value; NULL for the route as a whole",
}
_BUCKET = {
    "route": "The route",
    "hour": "The UTC hour the rows' created_at falls in (its start)",
}
_ANSWER = {
    "source": "live or replay",
    "student": "The student that answered",
}

TABLES = {
    "rollup_dirty": (
        "Rollup buckets whose raw rows changed since they were computed (set by triggers on "
        "requests and student_answers; the rollup job empties it)",
        {**_BUCKET, "marked_at": "When the first change since the last recompute was made"},
    ),
    "rollup_buckets": (
        "Each rollup bucket computed; a report reads a bucket's rollup only while it is not "
        "stale and not in rollup_dirty",
        {
            **_BUCKET,
            "computed_at": "When its rollup was last computed (NULL: not yet)",
            "stale": "Being recomputed: reports read its raw rows",
        },
    ),
    "rollup_requests": (
        "Per hour, route, teacher version and slice: the requests counts of the slices report "
        "and the agreement trend",
        {
            **_BUCKET,
            **_TEACHER,
            **_SLICE,
            "requests": "Requests",
            "compared": "Requests whose agree is known",
            "agreed": "Requests with agree = true",
            "fallbacks": "Requests with a fallback_reason",
            "out_of_scope": "fallback_reason = out_of_scope",
            "slice_teacher_only": "fallback_reason = slice_teacher_only",
            "student_served": "served_by = student",
            "first_seen": "The earliest created_at counted",
            "last_seen": "The latest created_at counted",
        },
    ),
    "rollup_confidence": (
        "Per hour, route, teacher version and slice: shadow comparisons (teacher served, no "
        "fallback, confidence and agree known) by confidence bin, for threshold calibration",
        {
            **_BUCKET,
            **_TEACHER,
            **_SLICE,
            "bin": "width_bucket(student_confidence, {0, 0.01, ..., 1}): 0 below 0, k for "
            "(k-1)/100 <= confidence < k/100, 101 at 1 and above",
            "compared": "Comparisons",
            "agreed": "Comparisons with agree = true",
        },
    ),
    "rollup_prompt_lengths": (
        "Per hour and route: requests with a stored payload by the length of their prompt (the "
        "last user text), for drift",
        {**_BUCKET, "length": "Characters of the prompt", "requests": "Requests"},
    ),
    "rollup_answers": (
        "Per hour, route, source, student, teacher version and slice: student_answers counts "
        "for the candidates report",
        {
            **_BUCKET,
            **_ANSWER,
            **_TEACHER,
            **_SLICE,
            "answers": "Answers with student_status = ok",
            "compared": "Answers whose agree is known",
            "agreed": "Answers with agree = true",
            "confidence_sum": "Sum of student_confidence",
            "confidences": "Answers with a student_confidence",
        },
    ),
    "rollup_answer_pairs": (
        "Per hour, route, source, student, baseline, teacher version and slice: the paired "
        "2x2 table of the candidates report (the baseline's answer from the same source, else "
        "live)",
        {
            **_BUCKET,
            **_ANSWER,
            "baseline": "The other student it is paired with",
            **_TEACHER,
            **_SLICE,
            "both_agreed": "Both agreed with the teacher",
            "candidate_only": "Only the student agreed",
            "baseline_only": "Only the baseline agreed",
            "neither": "Neither agreed",
        },
    ),
    "rollup_answer_latency": (
        "Per hour, route, source, student, teacher version and slice: successful answers by "
        "latency bin (2% wide), for latency percentiles",
        {
            **_BUCKET,
            **_ANSWER,
            **_TEACHER,
            **_SLICE,
            "bin": "0 below 1 ms, else 1 + floor(ln(ms) / ln(1.02))",
            "answers": "Answers",
        },
    ),
}

_MARK = f"""
CREATE FUNCTION rollup_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_dirty (route, hour)
    SELECT DISTINCT route, {HOUR} FROM changed
    ON CONFLICT (route, hour) DO NOTHING;
    RETURN NULL;
END
$$
"""

# TRUNCATE (or a partition dropped by hand) changes rows without a row trigger: every bucket
# computed goes stale, so reports read raw rows until the job has recomputed it.
_STALE_ALL = """
CREATE FUNCTION rollup_mark_all_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rollup_buckets SET stale = true WHERE NOT stale;
    RETURN NULL;
END
$$
"""


def _comment(target: str, comment: str) -> None:
    quoted = comment.replace("'", "''")
    op.execute(f"COMMENT ON {target} IS '{quoted}'")


def _teacher_and_slice() -> list[sa.Column[object]]:
    return [
        sa.Column("teacher_model_reported", sa.Text()),
        sa.Column("teacher_fingerprint", sa.Text()),
        sa.Column("dimension", sa.Text()),
        sa.Column("value", sa.Text()),
    ]


def _bucket() -> list[sa.Column[object]]:
    return [
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
    ]


def _answer() -> list[sa.Column[object]]:
    return [
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("student", sa.Text(), nullable=False),
    ]


def _counts(*names: str) -> list[sa.Column[object]]:
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in names]


def upgrade() -> None:
    op.create_table(
        "rollup_dirty",
        sa.Column("route", sa.Text(), primary_key=True),
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column(
            "marked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "rollup_buckets",
        sa.Column("route", sa.Text(), primary_key=True),
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("computed_at", sa.DateTime(timezone=True)),
        sa.Column("stale", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "rollup_requests",
        *_bucket(),
        *_teacher_and_slice(),
        *_counts(
            "requests",
            "compared",
            "agreed",
            "fallbacks",
            "out_of_scope",
            "slice_teacher_only",
            "student_served",
        ),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rollup_confidence",
        *_bucket(),
        *_teacher_and_slice(),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        *_counts("compared", "agreed"),
    )
    op.create_table(
        "rollup_prompt_lengths",
        *_bucket(),
        sa.Column("length", sa.Integer()),
        *_counts("requests"),
    )
    op.create_table(
        "rollup_answers",
        *_bucket(),
        *_answer(),
        *_teacher_and_slice(),
        *_counts("answers", "compared", "agreed"),
        sa.Column("confidence_sum", sa.Float(), nullable=False),
        *_counts("confidences"),
    )
    op.create_table(
        "rollup_answer_pairs",
        *_bucket(),
        *_answer(),
        sa.Column("baseline", sa.Text(), nullable=False),
        *_teacher_and_slice(),
        *_counts("both_agreed", "candidate_only", "baseline_only", "neither"),
    )
    op.create_table(
        "rollup_answer_latency",
        *_bucket(),
        *_answer(),
        *_teacher_and_slice(),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        *_counts("answers"),
    )
    for table in TABLES:
        if table not in ("rollup_dirty", "rollup_buckets"):
            op.create_index(f"ix_{table}_route_hour", table, ["route", "hour"])
    op.create_index("ix_rollup_buckets_stale", "rollup_buckets", ["hour"], postgresql_where="stale")
    op.execute(_MARK)
    op.execute(_STALE_ALL)
    for table in WATCHED:
        for event, transition in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
            op.execute(
                f"CREATE TRIGGER rollup_mark_{event.lower()} AFTER {event} ON {table} "
                f"REFERENCING {transition} TABLE AS changed FOR EACH STATEMENT "
                "EXECUTE FUNCTION rollup_mark_dirty()"
            )
        op.execute(
            f"CREATE TRIGGER rollup_mark_truncate AFTER TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION rollup_mark_all_stale()"
        )
    # the rows already logged: every bucket they fall in is computed by the job's first rounds
    op.execute(
        f"INSERT INTO rollup_dirty (route, hour) SELECT DISTINCT route, {HOUR} FROM requests "
        f"UNION SELECT DISTINCT route, {HOUR} FROM student_answers"
    )
    for table, (comment, columns) in TABLES.items():
        _comment(f"TABLE {table}", comment)
        for column, text in columns.items():
            _comment(f"COLUMN {table}.{column}", text)


def downgrade() -> None:
    for table in WATCHED:
        for event in ("insert", "update", "delete", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS rollup_mark_{event} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS rollup_mark_dirty()")
    op.execute("DROP FUNCTION IF EXISTS rollup_mark_all_stale()")
    for table in reversed(TABLES):
        op.drop_table(table)
