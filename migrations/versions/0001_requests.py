"""The requests table: one row per request, teacher and student halves.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("request_id", sa.Text(), primary_key=True),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("served_by", sa.Text()),
        sa.Column("fallback_reason", sa.Text()),
        sa.Column("stream", sa.Boolean()),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error_type", sa.Text()),
        sa.Column("error_message", sa.Text()),
        sa.Column(
            "slices", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("request_payload", postgresql.JSONB()),
        sa.Column("teacher_model", sa.Text()),
        sa.Column("teacher_status", sa.Integer()),
        sa.Column("teacher_output", sa.Text()),
        sa.Column("teacher_response", postgresql.JSONB()),
        sa.Column("teacher_finish_reason", sa.Text()),
        sa.Column("teacher_latency_ms", sa.Float()),
        sa.Column("teacher_prompt_tokens", sa.Integer()),
        sa.Column("teacher_completion_tokens", sa.Integer()),
        sa.Column("teacher_error", sa.Text()),
        sa.Column("student_model", sa.Text()),
        sa.Column("student_url", sa.Text()),
        sa.Column("student_status", sa.Text()),
        sa.Column("student_http_status", sa.Integer()),
        sa.Column("student_output", sa.Text()),
        sa.Column("student_response", postgresql.JSONB()),
        sa.Column("student_logprobs", postgresql.JSONB()),
        sa.Column("student_finish_reason", sa.Text()),
        sa.Column("student_latency_ms", sa.Float()),
        sa.Column("student_prompt_tokens", sa.Integer()),
        sa.Column("student_completion_tokens", sa.Integer()),
        sa.Column("student_error", sa.Text()),
        sa.Column("student_confidence", sa.Float()),
        sa.Column("agreement_score", sa.Float()),
        sa.Column("agree", sa.Boolean()),
        sa.Column("gateway_overhead_ms", sa.Float()),
    )
    op.create_index("ix_requests_route_created_at", "requests", ["route", "created_at"])
    op.create_index("ix_requests_created_at", "requests", ["created_at"])
    comments = {
        "request_id": "Gateway-assigned id, also sent to the app as x-request-id",
        "served_by": "teacher or student: whose answer the app received",
        "slices": "Slice labels: request metadata and X-Slice-<name> headers",
        "teacher_output": "Text of the teacher's first choice (streams reassembled)",
        "student_output": "Text of the student's first choice",
        "student_status": "ok, timeout, unreachable, http_error, invalid_response, "
        "not_sampled, dropped, no_student, shutdown; NULL while the call is in flight",
        "student_logprobs": "Student tokens: [{token, logprob, top_logprobs: [{token, logprob}]}]",
        "gateway_overhead_ms": "Time the gateway added: total minus the teacher call",
    }
    for column, comment in comments.items():
        quoted = comment.replace("'", "''")
        op.execute(f"COMMENT ON COLUMN requests.{column} IS '{quoted}'")


def downgrade() -> None:
    op.drop_table("requests")
