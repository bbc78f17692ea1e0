"""lz4 TOAST compression for the log tables' large jsonb columns, where the server has lz4.

The columns: ``requests.request_payload``, ``teacher_response``, ``student_response`` and
``student_logprobs``, and ``student_answers.student_response`` and ``student_logprobs`` (the
student's logprobs, about 38 kB of JSON with 160 tokens and 5 alternatives, are most of a
row). Against the default ``pglz``, lz4 took a quarter off Postgres's CPU per row written, for
+18 % on disk (docs/benchmarks.md, "The log writer's capacity").

``ALTER TABLE … SET COMPRESSION`` on a partitioned table sets the parent only (PostgreSQL 15):
partitions made after it copy it (``PARTITION OF``, and :mod:`gateway.db.partitions`'s
``LIKE … INCLUDING COMPRESSION``), existing ones do not, so every existing partition is set
too. Values already stored keep their compression: only new values use lz4. Each ``ALTER``
takes its table's ACCESS EXCLUSIVE lock for a catalog change only (no rewrite).

A server built without lz4 (``default_toast_compression`` does not offer it) migrates
without changing anything, with a NOTICE. Downgrade sets the columns back to the server's
default (``default_toast_compression``, ``pglz`` unless changed), everywhere.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-15
"""

# ruff: noqa: S608  (the SQL below is assembled from constants)

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {
    "requests": ("request_payload", "teacher_response", "student_response", "student_logprobs"),
    "student_answers": ("student_response", "student_logprobs"),
}
_HAS_LZ4 = (
    "EXISTS (SELECT FROM pg_settings WHERE name = 'default_toast_compression' "
    "AND 'lz4' = ANY (enumvals))"
)


def _set_compression(method: str) -> str:
    """A DO block that sets ``method`` on the columns of each table and of all its partitions
    (``pg_partition_tree``: the table itself, and every level below it)."""
    loops = []
    for table, columns in COLUMNS.items():
        alters = ", ".join(f"ALTER COLUMN {c} SET COMPRESSION {method}" for c in columns)
        loops.append(
            f"FOR part IN SELECT relid FROM pg_partition_tree('{table}') LOOP "
            f"EXECUTE format('ALTER TABLE %s {alters}', part); END LOOP;"
        )
    guard = ""
    if method == "lz4":
        guard = (
            f"IF NOT {_HAS_LZ4} THEN RAISE NOTICE 'this PostgreSQL is built without lz4: "
            "the log tables keep their TOAST compression'; RETURN; END IF; "
        )
    return f"DO $$ DECLARE part regclass; BEGIN {guard}{' '.join(loops)} END $$"


def upgrade() -> None:
    op.execute(_set_compression("lz4"))


def downgrade() -> None:
    op.execute(_set_compression("default"))
