"""The request's sticky bucket, so analysts can see who a rollout chose.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("sticky_bucket", sa.Float()))
    op.execute(
        "COMMENT ON COLUMN requests.sticky_bucket IS 'The request''s place in [0, 100) for its "
        "route''s salt: below rollout_percent means the rollout chose the student'"
    )


def downgrade() -> None:
    op.drop_column("requests", "sticky_bucket")
