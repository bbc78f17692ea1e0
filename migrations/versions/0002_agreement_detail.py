"""Why teacher and student disagreed: agreement_reason and per-field agreement_detail.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("agreement_reason", sa.Text()))
    op.add_column("requests", sa.Column("agreement_detail", postgresql.JSONB()))
    op.execute(
        "COMMENT ON COLUMN requests.agreement_reason IS "
        "'Why the comparator did not agree (student_invalid_json, label_mismatch, ...)'"
    )
    op.execute(
        "COMMENT ON COLUMN requests.agreement_detail IS "
        "'Comparator detail, e.g. per-field teacher/student values for the json comparator'"
    )
    op.execute(
        "COMMENT ON COLUMN requests.student_confidence IS "
        "'Student confidence from its logprobs, by the route''s method (rollout.confidence)'"
    )


def downgrade() -> None:
    op.drop_column("requests", "agreement_detail")
    op.drop_column("requests", "agreement_reason")
