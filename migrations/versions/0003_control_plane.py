"""Control plane: live route knobs, their audit log, API keys, staged rollout plans.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "route_state",
        sa.Column("route", sa.Text(), primary_key=True),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("rollout_percent", sa.Float(), nullable=False),
        sa.Column("confidence_threshold", sa.Float(), nullable=False),
        sa.Column("confidence_method", sa.Text(), nullable=False),
        sa.Column("audit_sample", sa.Float(), nullable=False),
        sa.Column("salt", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("updated_by", sa.Text(), nullable=False),
        sa.CheckConstraint("mode IN ('teacher', 'shadow', 'rollout')", name="route_state_mode"),
        sa.CheckConstraint(
            "rollout_percent >= 0 AND rollout_percent <= 100", name="route_state_percent"
        ),
        sa.CheckConstraint(
            "confidence_threshold >= 0 AND confidence_threshold <= 1", name="route_state_threshold"
        ),
        sa.CheckConstraint("audit_sample >= 0 AND audit_sample <= 1", name="route_state_audit"),
    )
    op.create_table(
        "route_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("old", postgresql.JSONB()),
        sa.Column("new", postgresql.JSONB()),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", postgresql.JSONB()),
    )
    op.create_index("ix_route_events_route_at", "route_events", ["route", "at"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False, unique=True),
        sa.Column("key_sha256", postgresql.BYTEA(), nullable=False, unique=True),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_by", sa.Text()),
    )
    op.create_table(
        "rollout_plans",
        sa.Column("route", sa.Text(), primary_key=True),
        sa.Column("steps", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("hold_s", sa.Float(), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "status IN ('active', 'completed', 'stopped')", name="rollout_plans_status"
        ),
    )
    op.execute(
        "COMMENT ON TABLE route_state IS 'Live knobs of each route; the config file seeds them, "
        "the admin API and CLI change them (every change also in route_events)'"
    )
    op.execute("COMMENT ON TABLE route_events IS 'Audit log: who changed what, when, and why'")
    op.execute("COMMENT ON TABLE api_keys IS 'API keys as SHA-256 digests, with scopes'")


def downgrade() -> None:
    op.drop_table("rollout_plans")
    op.drop_table("api_keys")
    op.drop_table("route_events")
    op.drop_table("route_state")
