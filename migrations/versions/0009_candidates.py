"""Several students per route: ``route_students`` and ``student_answers``.

``route_students`` is the live registry of each route's students, like ``route_state`` for the
route's knobs: the config file seeds a route's students on its first start, the CLI and the
admin API change them (each change audited in ``route_events``), every replica reloads them. A
student is the ``champion`` (the one a rollout may serve; at most one per route, by a partial
unique index), a ``candidate`` (shadowed only) or ``retired`` (kept for its history, no longer
called).

``student_answers`` holds every student's answer to a request, the champion's included, live
(shadowed as the request came) or replayed later; ``requests`` keeps describing the champion
(or the student that served). Its ``created_at`` is the *request's* time, a replayed answer's
too, so an answer lands in the same time partition as its request and the two join on
``(request_id, created_at)``; replaying a request again rewrites its row (the key is
``(request_id, student, source, created_at)``).

``student_answers`` is range-partitioned on ``created_at`` as ``requests`` is (0006): a
DEFAULT partition (a row outside every range lands there and is never refused) and the
current UTC month's partition, named like 0006's. From here on the gateway (and
``shadow-gateway partitions``) keeps its partitions with ``requests``'s: the same interval,
ahead-count and retention (``database.partitions``).

Downgrade drops both tables, with every answer and registered student in them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STUDENTS_COMMENT = (
    "Each route's students, live like route_state: the config file seeds them on a route's "
    "first start, the admin API and CLI change them (every change also in route_events). At "
    "most one champion per route"
)
STUDENTS_COLUMNS = {
    "route": "The route (routes[].name in the config)",
    "name": "The student's name, unique within its route; student_answers.student",
    "status": "champion (the one a rollout may serve; at most one per route), candidate "
    "(shadowed only) or retired (no longer called, kept for its history)",
    "base_urls": "OpenAI-compatible base URLs of the student's servers, tried in turn",
    "model": "The model name sent to the student",
    "api_key_env": "The environment variable holding the student's API key (NULL: none)",
    "timeout_s": "Seconds a call to the student may take in all",
    "connect_timeout_s": "Seconds to connect to the student",
    "shadow_sample": "Share of the route's requests (0 to 1) sent to this student in shadow",
    "max_concurrency": "Calls to this student in flight at once, at most",
    "top_logprobs": "top_logprobs asked of the student (0 to 20)",
    "breaker_failures": "Failures in a row that stop calls to the student for "
    "breaker_cooldown_s, then one probe",
    "breaker_cooldown_s": "Seconds the breaker keeps calls stopped",
    "version": "Bumped on every change; replicas reload on a new version",
    "created_at": "When the student was registered",
    "updated_at": "When the row last changed",
    "updated_by": "Who last changed it (the API key's name, cli, or config)",
}
ANSWERS_COMMENT = (
    "One row per (request, student, source): every student's answer, the champion's included, "
    "live or replayed. created_at is the request's, so rows join requests on "
    "(request_id, created_at). Partitioned by created_at (UTC) like requests: "
    "student_answers_pYYYYMM / student_answers_pYYYYMMDD, plus student_answers_default; the "
    "gateway creates partitions ahead and drops those past database.partitions.retention_days"
)
ANSWERS_COLUMNS = {
    "request_id": "The request answered; with created_at, joins requests",
    "student": "The student (route_students.name of this route)",
    "source": "live: shadowed as the request came; replay: answered later from the logged "
    "request (a new replay rewrites the row)",
    "created_at": "The REQUEST's start (requests.created_at), also for replayed answers: the "
    "partition key, and the other half of the join to requests",
    "answered_at": "When the student's answer came (or the call ended)",
    "route": "The request's route (as requests.route)",
    "endpoint": "chat, text or responses (as requests.endpoint)",
    "slices": "The request's slice labels (as requests.slices)",
    "student_model": "The model name sent to the student",
    "student_url": "The base URL that answered (or was tried last)",
    "student_status": "The call's outcome, as requests.student_status (ok, timeout, "
    "unreachable, http_error, invalid_response, ...); NULL while the call is in flight",
    "student_http_status": "The student's HTTP status, if it answered",
    "student_error": "Why the call failed, when it did",
    "student_output": "Text of the student's first choice",
    "student_tool_calls": "Tool calls of the student's answer (first choice): "
    "[{id, name, arguments}], arguments as the raw JSON text",
    "student_refusal": "The student's refusal (message.refusal), if it refused",
    "student_response": "The student's whole response body",
    "student_logprobs": "Student tokens: [{token, logprob, top_logprobs: [{token, logprob}]}]",
    "student_finish_reason": "finish_reason of the student's first choice",
    "student_latency_ms": "Milliseconds the student took to answer",
    "student_prompt_tokens": "Prompt tokens the student reported",
    "student_completion_tokens": "Completion tokens the student reported",
    "student_confidence": "Student confidence from its logprobs, by the route's method "
    "(rollout.confidence)",
    "agreement_score": "Agreement with the teacher's answer, 0 to 1, by the route's comparator",
    "agree": "Whether the answer agreed with the teacher's (NULL: not compared)",
    "agreement_reason": "Why the comparator did not agree (student_invalid_json, "
    "label_mismatch, ...)",
    "agreement_detail": "Comparator detail, e.g. per-field teacher/student values for the json "
    "comparator",
}


def _comment(target: str, comment: str) -> None:
    quoted = comment.replace("'", "''")
    op.execute(f"COMMENT ON {target} IS '{quoted}'")


def _route_students() -> None:
    op.create_table(
        "route_students",
        sa.Column("route", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("base_urls", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("api_key_env", sa.Text()),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("connect_timeout_s", sa.Float(), nullable=False),
        sa.Column("shadow_sample", sa.Float(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("top_logprobs", sa.Integer(), nullable=False),
        sa.Column("breaker_failures", sa.Integer(), nullable=False),
        sa.Column("breaker_cooldown_s", sa.Float(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("updated_by", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "status IN ('champion', 'candidate', 'retired')", name="route_students_status"
        ),
        sa.CheckConstraint("shadow_sample BETWEEN 0 AND 1", name="route_students_shadow_sample"),
    )
    op.create_index(
        "ux_route_students_champion",
        "route_students",
        ["route"],
        unique=True,
        postgresql_where=sa.text("status = 'champion'"),
    )
    _comment("TABLE route_students", STUDENTS_COMMENT)
    for column, comment in STUDENTS_COLUMNS.items():
        _comment(f"COLUMN route_students.{column}", comment)


def _student_answers() -> None:
    op.create_table(
        "student_answers",
        sa.Column("request_id", sa.Text(), primary_key=True),
        sa.Column("student", sa.Text(), primary_key=True),
        sa.Column("source", sa.Text(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), primary_key=True, nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True)),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column(
            "slices", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("student_model", sa.Text()),
        sa.Column("student_url", sa.Text()),
        sa.Column("student_status", sa.Text()),
        sa.Column("student_http_status", sa.Integer()),
        sa.Column("student_error", sa.Text()),
        sa.Column("student_output", sa.Text()),
        sa.Column("student_tool_calls", postgresql.JSONB()),
        sa.Column("student_refusal", sa.Text()),
        sa.Column("student_response", postgresql.JSONB()),
        sa.Column("student_logprobs", postgresql.JSONB()),
        sa.Column("student_finish_reason", sa.Text()),
        sa.Column("student_latency_ms", sa.Float()),
        sa.Column("student_prompt_tokens", sa.Integer()),
        sa.Column("student_completion_tokens", sa.Integer()),
        sa.Column("student_confidence", sa.Float()),
        sa.Column("agreement_score", sa.Float()),
        sa.Column("agree", sa.Boolean()),
        sa.Column("agreement_reason", sa.Text()),
        sa.Column("agreement_detail", postgresql.JSONB()),
        sa.CheckConstraint("source IN ('live', 'replay')", name="student_answers_source"),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_student_answers_route_created_at", "student_answers", ["route", "created_at"]
    )
    # the current UTC month by the database's clock, as 0006 made for requests; the
    # maintainer adds the rest
    op.execute("SET LOCAL TimeZone = 'UTC'")
    start: datetime = (
        op.get_bind().execute(sa.text("SELECT date_trunc('month', now())")).scalar_one()
    )
    end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    op.execute(
        f"CREATE TABLE student_answers_p{start:%Y%m} PARTITION OF student_answers "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )
    op.execute("CREATE TABLE student_answers_default PARTITION OF student_answers DEFAULT")
    _comment("TABLE student_answers", ANSWERS_COMMENT)
    for column, comment in ANSWERS_COLUMNS.items():
        _comment(f"COLUMN student_answers.{column}", comment)


def upgrade() -> None:
    _route_students()
    _student_answers()


def downgrade() -> None:
    op.drop_table("student_answers")  # and its partitions
    op.drop_table("route_students")
