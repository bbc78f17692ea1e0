"""The binned rollups hold one row per key, its bins as arrays.

``rollup_confidence`` (up to 102 confidence bins) and ``rollup_answer_latency`` (about 120
occupied 2% latency bins) had one row per bin: a week's thresholds or candidates report
aggregated 30,000-60,000 rows in Postgres, the cost of a report growing with the hours, slices
and bins (docs/benchmarks.md, "Reports through the rollups"). Each now has one row per (hour,
route, [source, student,] teacher version, slice) with its occupied bins ascending in ``bins``
and the counts in parallel arrays of the same length; the reports add the arrays up.

The rows already computed are converted in place (``array_agg`` one way, ``unnest`` the
other), so no bucket is recomputed and a report reads the same figures before and after.
Each table is rebuilt (a new table filled from the old one, then the old one dropped) under
its ACCESS EXCLUSIVE lock; the rollup tables are small (tens of MB at most).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-16
"""

# ruff: noqa: S608  (the SQL below is assembled from constants)

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEACHER = ("teacher_model_reported", "teacher_fingerprint")
_SLICE = ("dimension", "value")
# table → (key columns after route and hour that are NOT NULL, the bin's comment, counts)
TABLES = {
    "rollup_confidence": (
        (),
        "width_bucket(student_confidence, {0, 0.01, ..., 1}): 0 below 0, k for "
        "(k-1)/100 <= confidence < k/100, 101 at 1 and above",
        {"compared": "Comparisons", "agreed": "Comparisons with agree = true"},
    ),
    "rollup_answer_latency": (
        ("source", "student"),
        "0 below 1 ms, else 1 + floor(ln(ms) / ln(1.02))",
        {"answers": "Answers"},
    ),
}
_KEY_COMMENTS = {
    "route": "The route",
    "hour": "The UTC hour the rows' created_at falls in (its start)",
    "source": "live or replay",
    "student": "The student that answered",
    "teacher_model_reported": "The model the teacher reported (requests.teacher_model_reported)",
    "teacher_fingerprint": "The teacher's system_fingerprint (requests.teacher_fingerprint)",
    "dimension": "A slice dimension; NULL for the route as a whole",
    "value": "The slice's value; NULL for the route as a whole",
}
_TABLE_COMMENTS = {
    "rollup_confidence": "Per hour, route, teacher version and slice: shadow comparisons "
    "(teacher served, no fallback, confidence and agree known) by confidence bin, for "
    "threshold calibration; one row, the bins and their counts as parallel arrays",
    "rollup_answer_latency": "Per hour, route, source, student, teacher version and slice: "
    "successful answers by latency bin (2% wide), for latency percentiles; one row, the bins "
    "and their counts as parallel arrays",
}


def _comment(target: str, comment: str) -> None:
    quoted = comment.replace("'", "''")
    op.execute(f"COMMENT ON {target} IS '{quoted}'")


def _key(answer: Sequence[str]) -> list[sa.Column[Any]]:
    return [
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        *[sa.Column(name, sa.Text(), nullable=False) for name in answer],
        *[sa.Column(name, sa.Text()) for name in (*_TEACHER, *_SLICE)],
    ]


def _set_aside(table: str) -> str:
    """Rename ``table`` and its index out of the way; the old name, for the copy."""
    old = f"{table}_before_0017"
    op.rename_table(table, old)
    op.execute(f"ALTER INDEX ix_{table}_route_hour RENAME TO ix_{old}_route_hour")
    return old


def upgrade() -> None:
    for table, (answer, bin_comment, counts) in TABLES.items():
        old = _set_aside(table)
        op.create_table(
            table,
            *_key(answer),
            sa.Column("bins", postgresql.ARRAY(sa.SmallInteger()), nullable=False),
            *[
                sa.Column(name, postgresql.ARRAY(sa.BigInteger()), nullable=False)
                for name in counts
            ],
        )
        op.create_index(f"ix_{table}_route_hour", table, ["route", "hour"])
        key = ", ".join(("route", "hour", *answer, *_TEACHER, *_SLICE))
        arrays = ", ".join(f"array_agg({name} ORDER BY bin)" for name in ("bin", *counts))
        op.execute(
            f"INSERT INTO {table} ({key}, bins, {', '.join(counts)}) "
            f"SELECT {key}, {arrays} FROM {old} GROUP BY {key}"
        )
        op.drop_table(old)
        _comment(f"TABLE {table}", _TABLE_COMMENTS[table])
        for column in ("route", "hour", *answer, *_TEACHER, *_SLICE):
            _comment(f"COLUMN {table}.{column}", _KEY_COMMENTS[column])
        _comment(f"COLUMN {table}.bins", f"The occupied bins, ascending: {bin_comment}")
        for name, text in counts.items():
            _comment(f"COLUMN {table}.{name}", f"{text} per bin, in the order of bins")


def downgrade() -> None:
    for table, (answer, bin_comment, counts) in TABLES.items():
        old = _set_aside(table)
        op.create_table(
            table,
            *_key(answer),
            sa.Column("bin", sa.SmallInteger(), nullable=False),
            *[sa.Column(name, sa.BigInteger(), nullable=False) for name in counts],
        )
        op.create_index(f"ix_{table}_route_hour", table, ["route", "hour"])
        key = ", ".join(("route", "hour", *answer, *_TEACHER, *_SLICE))
        names = ", ".join(counts)
        op.execute(
            f"INSERT INTO {table} ({key}, bin, {names}) SELECT {key}, u.bin, "
            f"{', '.join(f'u.{name}' for name in counts)} FROM {old} "
            f"CROSS JOIN LATERAL unnest(bins, {names}) AS u(bin, {names})"
        )
        op.drop_table(old)
        _comment(f"TABLE {table}", _TABLE_COMMENTS[table].split("; one row")[0])
        for column in ("route", "hour", *answer, *_TEACHER, *_SLICE):
            _comment(f"COLUMN {table}.{column}", _KEY_COMMENTS[column])
        _comment(f"COLUMN {table}.bin", bin_comment)
        for name, text in counts.items():
            _comment(f"COLUMN {table}.{name}", text)
