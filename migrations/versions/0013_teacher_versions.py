"""Teacher versions: ``teacher_versions``, one row per version each route's teacher reported.

A *version* is what the teacher's answers say of themselves: the response's ``model``
(``requests.teacher_model_reported``) and ``system_fingerprint``
(``requests.teacher_fingerprint``). Either may be NULL (vLLM reports no fingerprint), not
both: a row with neither (the teacher failed) has no version. The unique index treats NULL
as '' so a version is recorded once per route; a teacher answering with a version it used
before (load-balanced fingerprints alternate) adds to that row, it is not new.

The gateway fills the table as rows are written (:mod:`gateway.services.teachers`): the first
version a route reports is recorded without an event; each later new one also writes a
``teacher_changed`` event in ``route_events``, once, whichever replica saw it first.

Upgrading fills the table from the rows already logged (``first_request_id`` is left NULL
for those; the first version of each route is not an event). Downgrade drops the table.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMENT = (
    "Each version (reported model, system fingerprint) a route's teacher answered with, once "
    "per route: when it was first and last seen and on how many requests. A new version of a "
    "route that had one is also a teacher_changed event in route_events"
)
COLUMNS = {
    "id": "Identity",
    "route": "The route (routes[].name in the config)",
    "model_reported": "The model the teacher's answers reported (requests.teacher_model_reported); "
    "NULL when they reported none",
    "fingerprint": "The system_fingerprint the teacher's answers reported "
    "(requests.teacher_fingerprint); NULL when they reported none",
    "first_seen": "created_at of the first request answered with this version",
    "last_seen": "created_at of the latest request answered with this version (kept within "
    "seconds)",
    "first_request_id": "The first request answered with this version (requests.request_id); "
    "NULL for versions filled in from older rows by the migration",
    "requests": "Requests answered with this version (kept within seconds)",
}

# Versions already in the log: one row per (route, model, fingerprint), the earliest first.
_BACKFILL = """
INSERT INTO teacher_versions (route, model_reported, fingerprint, first_seen, last_seen, requests)
SELECT route, teacher_model_reported, teacher_fingerprint, min(created_at), max(created_at),
    count(*)
FROM requests
WHERE teacher_model_reported IS NOT NULL OR teacher_fingerprint IS NOT NULL
GROUP BY route, teacher_model_reported, teacher_fingerprint
ORDER BY min(created_at)
ON CONFLICT DO NOTHING
"""


def _comment(target: str, comment: str) -> None:
    quoted = comment.replace("'", "''")
    op.execute(f"COMMENT ON {target} IS '{quoted}'")


def upgrade() -> None:
    op.create_table(
        "teacher_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("model_reported", sa.Text()),
        sa.Column("fingerprint", sa.Text()),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_request_id", sa.Text()),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
        sa.CheckConstraint(
            "model_reported IS NOT NULL OR fingerprint IS NOT NULL",
            name="teacher_versions_something",
        ),
    )
    op.create_index(
        "ux_teacher_versions_version",
        "teacher_versions",
        ["route", sa.text("coalesce(model_reported, '')"), sa.text("coalesce(fingerprint, '')")],
        unique=True,
    )
    _comment("TABLE teacher_versions", COMMENT)
    for column, comment in COLUMNS.items():
        _comment(f"COLUMN teacher_versions.{column}", comment)
    op.execute(_BACKFILL)


def downgrade() -> None:
    op.drop_table("teacher_versions")
