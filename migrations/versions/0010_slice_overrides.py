"""Per-slice serving: ``route_slice_overrides``.

A route's live knobs (``route_state``) hold for all its traffic; an override changes them for
the requests carrying one slice label (``dimension = value``): ``mode`` ``teacher`` keeps the
slice off the student (it is still shadowed), ``rollout`` serves the slice even while the
route is only shadowing, and ``rollout_percent`` / ``confidence_threshold`` replace the
route's for the slice. NULL leaves the route's value. Like ``route_state``, the config seeds
the rows (``routes[].rollout.slices``), the CLI, the admin API and the guardian change them,
every change audited in ``route_events``, and every replica reloads them on ``NOTIFY``.

Also: a ramp (``rollout_plans``) can now be ``cancelled`` by an SRE, besides ``stopped`` by
the guardian; the status check allows it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMENT = (
    "Per-slice overrides of a route's live knobs (route_state), for requests labelled "
    "dimension=value. Seeded by the config (routes[].rollout.slices), changed by the CLI, the "
    "admin API and the guardian (per-slice rollback); every change also in route_events"
)
COLUMNS = {
    "route": "The route (routes[].name in the config)",
    "dimension": "The slice dimension, e.g. tier",
    "value": "The slice value, e.g. enterprise",
    "mode": "teacher: never served by the student (still shadowed); rollout: served at the "
    "override's (or the route's) percent and threshold even while the route only shadows; "
    "NULL: the route's mode",
    "rollout_percent": "Share of users (0-100) eligible for the student on this slice; NULL: "
    "the route's",
    "confidence_threshold": "Confidence the student needs to answer on this slice; NULL: the "
    "route's",
    "version": "Bumped on every change",
    "updated_at": "When the override last changed",
    "updated_by": "Who last changed it (the API key's name, cli, config, or guardian)",
    "reason": "Why, as given with the last change",
}


def _comment(target: str, comment: str) -> None:
    quoted = comment.replace("'", "''")
    op.execute(f"COMMENT ON {target} IS '{quoted}'")


_STATUSES = ("active", "completed", "stopped")


def _plan_statuses(statuses: tuple[str, ...]) -> None:
    op.drop_constraint("rollout_plans_status", "rollout_plans", type_="check")
    listed = ", ".join(f"'{status}'" for status in statuses)
    op.create_check_constraint("rollout_plans_status", "rollout_plans", f"status IN ({listed})")


def upgrade() -> None:
    _plan_statuses((*_STATUSES, "cancelled"))
    op.create_table(
        "route_slice_overrides",
        sa.Column("route", sa.Text(), primary_key=True),
        sa.Column("dimension", sa.Text(), primary_key=True),
        sa.Column("value", sa.Text(), primary_key=True),
        sa.Column("mode", sa.Text()),
        sa.Column("rollout_percent", sa.Float()),
        sa.Column("confidence_threshold", sa.Float()),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("updated_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.CheckConstraint("mode IN ('teacher', 'rollout')", name="route_slice_overrides_mode"),
        sa.CheckConstraint(
            "rollout_percent BETWEEN 0 AND 100", name="route_slice_overrides_percent"
        ),
        sa.CheckConstraint(
            "confidence_threshold BETWEEN 0 AND 1", name="route_slice_overrides_threshold"
        ),
        sa.CheckConstraint(
            "mode IS NOT NULL OR rollout_percent IS NOT NULL OR confidence_threshold IS NOT NULL",
            name="route_slice_overrides_something",
        ),
    )
    _comment("TABLE route_slice_overrides", COMMENT)
    for column, comment in COLUMNS.items():
        _comment(f"COLUMN route_slice_overrides.{column}", comment)


def downgrade() -> None:
    op.drop_table("route_slice_overrides")
    op.execute("UPDATE rollout_plans SET status = 'stopped' WHERE status = 'cancelled'")
    _plan_statuses(_STATUSES)
