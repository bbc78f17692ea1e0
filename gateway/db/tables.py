"""Table definitions, kept equal to what the Alembic migrations create (a test compares them).

The migrations are the truth for the schema; these objects exist so queries are written
against typed columns, and so the log writer knows each column's Postgres type. Not mirrored
here (SQLAlchemy has no notion of it, the comparison does not see it): the lz4 TOAST
compression of the log tables' large jsonb columns (migration 0016), which the log writer reads
from the catalog.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB

metadata = MetaData()


def _student_answer_columns() -> list[Column[object]]:
    """What a student's call produced, the same in ``requests`` (the champion's, or the
    student that served) and ``student_answers`` (every student's): fresh Column objects for
    each table, so the two can never drift apart."""
    return [
        Column("student_model", Text),
        Column("student_url", Text),
        Column("student_status", Text),
        Column("student_http_status", Integer),
        Column("student_error", Text),
        Column("student_output", Text),
        Column("student_tool_calls", JSONB),
        Column("student_refusal", Text),
        Column("student_response", JSONB),
        Column("student_logprobs", JSONB),
        Column("student_finish_reason", Text),
        Column("student_latency_ms", Float),
        Column("student_prompt_tokens", Integer),
        Column("student_completion_tokens", Integer),
        Column("student_confidence", Float),
        Column("agreement_score", Float),
        Column("agree", Boolean),
        Column("agreement_reason", Text),
        Column("agreement_detail", JSONB),
    ]


requests = Table(
    "requests",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("route", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    # the partition key, so part of the primary key (migration 0006); both halves of a row
    # carry the same value, so the writer's upsert still finds the row it merges into
    Column("created_at", DateTime(timezone=True), primary_key=True, nullable=False),
    Column("completed_at", DateTime(timezone=True)),
    Column("mode", Text, nullable=False),
    Column("sticky_bucket", Float),
    Column("served_by", Text),
    Column("fallback_reason", Text),
    Column("stream", Boolean),
    Column("status_code", Integer),
    Column("error_type", Text),
    Column("error_message", Text),
    Column("slices", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("request_payload", JSONB),
    Column("teacher_model", Text),
    Column("teacher_status", Integer),
    Column("teacher_output", Text),
    Column("teacher_response", JSONB),
    Column("teacher_finish_reason", Text),
    Column("teacher_latency_ms", Float),
    Column("teacher_prompt_tokens", Integer),
    Column("teacher_completion_tokens", Integer),
    Column("teacher_error", Text),
    *_student_answer_columns(),
    Column("gateway_overhead_ms", Float),
    # migration 0008: answers that are not plain text, the teacher's reported version, the
    # app's own request id
    Column("client_request_id", Text),
    Column("teacher_tool_calls", JSONB),
    Column("teacher_refusal", Text),
    Column("teacher_model_reported", Text),
    Column("teacher_fingerprint", Text),
    # migration 0012: the student that answered the app (NULL when the teacher did)
    Column("served_student", Text),
    Index("ix_requests_route_created_at", "route", "created_at"),
    Index("ix_requests_created_at", "created_at"),
    # the UTC day the analyst views (migration 0005) group by, so filtering them on day is fast
    Index("ix_requests_day_route", text("((created_at AT TIME ZONE 'UTC')::date)"), "route"),
    Index(
        "ix_requests_disagreements",
        "route",
        "created_at",
        postgresql_where=text("agree = false"),
    ),
    # partitions: gateway.db.partitions creates and drops them (migration 0006)
    postgresql_partition_by="RANGE (created_at)",
)

# One row per (request, student, source): every candidate's answer, live or replayed
# (migration 0009). ``requests`` keeps describing the champion (or the student that served);
# this table holds every student's, the champion's included. ``created_at`` is the request's
# (a replayed answer's too), so a row sits in the same time partition as its request and the
# two join on (request_id, created_at); replaying a request again rewrites its row.
student_answers = Table(
    "student_answers",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("student", Text, primary_key=True),
    Column("source", Text, primary_key=True),  # live | replay
    Column("created_at", DateTime(timezone=True), primary_key=True, nullable=False),
    Column("answered_at", DateTime(timezone=True)),
    Column("route", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("slices", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    *_student_answer_columns(),
    Index("ix_student_answers_route_created_at", "route", "created_at"),
    # partitions: gateway.db.partitions creates and drops them, with requests's (migration 0009)
    postgresql_partition_by="RANGE (created_at)",
)

# Each route's students, live state like route_state: the config seeds them on a route's first
# start; the CLI and admin API change them (audited in route_events), every replica reloads.
route_students = Table(
    "route_students",
    metadata,
    Column("route", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("status", Text, nullable=False),  # champion | candidate | retired
    Column("base_urls", ARRAY(Text), nullable=False),
    Column("model", Text, nullable=False),
    Column("api_key_env", Text),
    Column("timeout_s", Float, nullable=False),
    Column("connect_timeout_s", Float, nullable=False),
    Column("shadow_sample", Float, nullable=False),
    Column("max_concurrency", Integer, nullable=False),
    Column("top_logprobs", Integer, nullable=False),
    Column("breaker_failures", Integer, nullable=False),
    Column("breaker_cooldown_s", Float, nullable=False),
    Column("version", Integer, nullable=False, server_default=text("1")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_by", Text, nullable=False),
    # migration 0014: the dataset it was trained on, when known
    Column("train_dataset_id", BigInteger, ForeignKey("datasets.id", ondelete="SET NULL")),
    CheckConstraint("status IN ('champion', 'candidate', 'retired')", name="route_students_status"),
    CheckConstraint("shadow_sample BETWEEN 0 AND 1", name="route_students_shadow_sample"),
    # at most one champion per route
    Index(
        "ux_route_students_champion",
        "route",
        unique=True,
        postgresql_where=text("status = 'champion'"),
    ),
)

route_state = Table(
    "route_state",
    metadata,
    Column("route", Text, primary_key=True),
    Column("mode", Text, nullable=False),
    Column("rollout_percent", Float, nullable=False),
    Column("confidence_threshold", Float, nullable=False),
    Column("confidence_method", Text, nullable=False),
    Column("audit_sample", Float, nullable=False),
    Column("salt", Text, nullable=False),
    Column("version", Integer, nullable=False, server_default=text("1")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_by", Text, nullable=False),
)

# Per-slice overrides of route_state (migration 0010): NULL leaves the route's value.
route_slice_overrides = Table(
    "route_slice_overrides",
    metadata,
    Column("route", Text, primary_key=True),
    Column("dimension", Text, primary_key=True),
    Column("value", Text, primary_key=True),
    Column("mode", Text),
    Column("rollout_percent", Float),
    Column("confidence_threshold", Float),
    Column("version", Integer, nullable=False, server_default=text("1")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_by", Text, nullable=False),
    Column("reason", Text, nullable=False),
)

route_events = Table(
    "route_events",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("route", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("old", JSONB),
    Column("new", JSONB),
    Column("reason", Text, nullable=False),
    Column("detail", JSONB),
    Index("ix_route_events_route_at", "route", "at"),
)

# Each version (reported model, system fingerprint) a route's teacher answered with, once per
# route (migration 0013; gateway.services.teachers fills it). NULL is one value in the unique
# index, so a version without a fingerprint is recorded once too.
teacher_versions = Table(
    "teacher_versions",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("route", Text, nullable=False),
    Column("model_reported", Text),
    Column("fingerprint", Text),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("first_request_id", Text),
    Column("requests", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint(
        "model_reported IS NOT NULL OR fingerprint IS NOT NULL", name="teacher_versions_something"
    ),
    Index(
        "ux_teacher_versions_version",
        "route",
        text("coalesce(model_reported, '')"),
        text("coalesce(fingerprint, '')"),
        unique=True,
    ),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("key_sha256", BYTEA, nullable=False, unique=True),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", Text, nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", Text),
)

# What apps said of their answers, and people's reviews of teacher answers (migration 0012).
VERDICTS = ("teacher_correct", "student_correct", "both_correct", "both_wrong")

feedback = Table(
    "feedback",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("request_id", Text, nullable=False),
    Column("request_created_at", DateTime(timezone=True), nullable=False),
    Column("route", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("key_name", Text, nullable=False),
    Column("source", Text),
    Column("answered_by", Text, nullable=False),  # teacher, or the student's name
    Column("score", Float),
    Column("correct", Boolean),
    Column("label", Text),
    Column("comment", Text),
    Column("corrected_output", Text),
    Index("ix_feedback_route_created_at", "route", "created_at"),
    Index("ix_feedback_request_id", "request_id"),
)

reviews = Table(
    "reviews",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("route", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("request_created_at", DateTime(timezone=True), nullable=False),
    Column("student", Text, nullable=False),
    Column("slices", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("disagreement", Boolean),
    Column("group_key", Text, nullable=False),
    Column("batch", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", Text, nullable=False),
    Column("verdict", Text),
    Column("corrected_output", Text),
    Column("reviewer", Text),
    Column("judged_at", DateTime(timezone=True)),
    UniqueConstraint("route", "request_id", "student", name="ux_reviews_request_student"),
    Index("ix_reviews_route_verdict", "route", "verdict"),
    Index("ix_reviews_group_key", "route", "group_key"),
)

review_verdicts = Table(
    "review_verdicts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("review_id", BigInteger, ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("reviewer", Text, nullable=False),
    Column("verdict", Text, nullable=False),
    Column("corrected_output", Text),
    Column("via_review", BigInteger),
    Index("ix_review_verdicts_review_id", "review_id"),
)

# Datasets the export registered, their items, and distill runs (migration 0014).
datasets = Table(
    "datasets",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("route", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", Text, nullable=False),
    Column("kind", Text, nullable=False),  # train | eval
    Column("split_of", BigInteger, ForeignKey("datasets.id", ondelete="SET NULL")),
    Column("manifest", JSONB, nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("items", Integer, nullable=False),
    Index("ix_datasets_route_created_at", "route", "created_at"),
)

dataset_items = Table(
    "dataset_items",
    metadata,
    Column(
        "dataset_id",
        BigInteger,
        ForeignKey("datasets.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("request_id", Text, primary_key=True),
    Column("request_created_at", DateTime(timezone=True), nullable=False),
    Column("prompt_key", Text, nullable=False),
    Column("frequency", Integer, nullable=False, server_default=text("1")),
    Index("ix_dataset_items_prompt_key", "prompt_key"),
)

distill_runs = Table(
    "distill_runs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("route", Text, nullable=False),
    Column("student", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", Text, nullable=False),
    Column("status", Text, nullable=False),  # running | failed | stopped | done
    Column("stage", Text),
    Column("stages", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("options", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("train_dataset_id", BigInteger, ForeignKey("datasets.id", ondelete="SET NULL")),
    Column("eval_dataset_id", BigInteger, ForeignKey("datasets.id", ondelete="SET NULL")),
    Column("output_dir", Text),
    Column("error", Text),
    Index("ix_distill_runs_route_student", "route", "student"),
)

rollout_plans = Table(
    "rollout_plans",
    metadata,
    Column("route", Text, primary_key=True),
    Column("steps", ARRAY(Float), nullable=False),
    Column("hold_s", Float, nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("next_at", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


# Hourly rollups (migrations 0015, 0017; gateway.services.rollups computes them, reports read
# them).
# Triggers on requests and student_answers mark a changed (route, hour) in rollup_dirty.
rollup_dirty = Table(
    "rollup_dirty",
    metadata,
    Column("route", Text, primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("marked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

rollup_buckets = Table(
    "rollup_buckets",
    metadata,
    Column("route", Text, primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("computed_at", DateTime(timezone=True)),
    Column("stale", Boolean, nullable=False, server_default=text("false")),
    Index("ix_rollup_buckets_stale", "hour", postgresql_where=text("stale")),
)


def _rollup_key(*answer: str) -> list[Column[Any]]:
    """route, hour, [source, student, baseline,] teacher version and slice label."""
    return [
        Column("route", Text, nullable=False),
        Column("hour", DateTime(timezone=True), nullable=False),
        *[Column(name, Text, nullable=False) for name in answer],
        Column("teacher_model_reported", Text),
        Column("teacher_fingerprint", Text),
        Column("dimension", Text),  # NULL: the route as a whole
        Column("value", Text),
    ]


def _rollup_counts(*names: str) -> list[Column[Any]]:
    return [Column(name, BigInteger, nullable=False) for name in names]


rollup_requests = Table(
    "rollup_requests",
    metadata,
    *_rollup_key(),
    *_rollup_counts(
        "requests",
        "compared",
        "agreed",
        "fallbacks",
        "out_of_scope",
        "slice_teacher_only",
        "student_served",
    ),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Index("ix_rollup_requests_route_hour", "route", "hour"),
)


def _rollup_bins(*counts: str) -> list[Column[Any]]:
    """The occupied bins, ascending, and each count per bin in the same order (migration
    0017: one row per key rather than one per bin)."""
    return [
        Column("bins", ARRAY(SmallInteger), nullable=False),
        *[Column(name, ARRAY(BigInteger), nullable=False) for name in counts],
    ]


rollup_confidence = Table(
    "rollup_confidence",
    metadata,
    *_rollup_key(),
    *_rollup_bins("compared", "agreed"),
    Index("ix_rollup_confidence_route_hour", "route", "hour"),
)

rollup_prompt_lengths = Table(
    "rollup_prompt_lengths",
    metadata,
    Column("route", Text, nullable=False),
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("length", Integer),  # NULL where the prompt has none
    *_rollup_counts("requests"),
    Index("ix_rollup_prompt_lengths_route_hour", "route", "hour"),
)

rollup_answers = Table(
    "rollup_answers",
    metadata,
    *_rollup_key("source", "student"),
    *_rollup_counts("answers", "compared", "agreed"),
    Column("confidence_sum", Float, nullable=False),
    *_rollup_counts("confidences"),
    Index("ix_rollup_answers_route_hour", "route", "hour"),
)

rollup_answer_pairs = Table(
    "rollup_answer_pairs",
    metadata,
    *_rollup_key("source", "student", "baseline"),
    *_rollup_counts("both_agreed", "candidate_only", "baseline_only", "neither"),
    Index("ix_rollup_answer_pairs_route_hour", "route", "hour"),
)

rollup_answer_latency = Table(
    "rollup_answer_latency",
    metadata,
    *_rollup_key("source", "student"),
    *_rollup_bins("answers"),
    Index("ix_rollup_answer_latency_route_hour", "route", "hour"),
)


def declared(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name`` filter: tables not declared here are left alone.

    The partitions of ``requests`` and ``student_answers`` (``requests_p…``,
    ``student_answers_default``, …) are made at run time (:mod:`gateway.db.partitions`), so
    autogenerate must not propose dropping them: only the tables named here are compared.
    """
    return type_ != "table" or name in metadata.tables
