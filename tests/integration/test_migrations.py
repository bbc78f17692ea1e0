"""The migrations and the table definitions in gateway.db.tables describe the same schema;
0006 (partitioning ``requests``) keeps every row on the way up and on the way down; 0007
changes only agreement_daily's interval, and back; 0009 adds the students' registry and their
answers (partitioned like ``requests``), and takes them away."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db.engine import plain_dsn, sqlalchemy_url
from gateway.db.migrate import alembic_config, current_revision, head_revision
from gateway.db.tables import (
    dataset_items,
    datasets,
    declared,
    distill_runs,
    feedback,
    metadata,
    review_verdicts,
    reviews,
    rollup_answer_latency,
    rollup_answer_pairs,
    rollup_answers,
    rollup_buckets,
    rollup_confidence,
    rollup_dirty,
    rollup_prompt_lengths,
    rollup_requests,
    route_slice_overrides,
    route_students,
    student_answers,
    teacher_versions,
)
from tests.support.db import execute, fetch

ADMIN_URL = os.environ.get("SGW_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def test_database_is_at_head(database_url: str) -> None:
    assert asyncio.run(current_revision(database_url)) == head_revision()


def test_tables_module_matches_migrations(database_url: str) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_name": declared}
        )
        changes = []
        for change in compare_metadata(context, metadata):
            # column changes come grouped in lists; comments live in the migration only
            for step in change if isinstance(change, list) else [change]:
                if step[0] not in ("modify_comment", "remove_table_comment"):
                    changes.append(step)
        return changes

    async def run() -> list[object]:
        engine = create_async_engine(sqlalchemy_url(database_url))
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(diff)
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == []


def test_requests_is_partitioned_by_created_at(database_url: str) -> None:
    [table] = fetch(
        database_url,
        "SELECT p.partstrat::text, a.attname FROM pg_partitioned_table AS p "
        "JOIN pg_attribute AS a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
        "WHERE p.partrelid = 'requests'::regclass",
    )
    assert table == {"partstrat": "r", "attname": "created_at"}
    key = fetch(
        database_url,
        "SELECT a.attname FROM pg_index AS i JOIN pg_attribute AS a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = 'requests'::regclass AND i.indisprimary ORDER BY a.attnum",
    )
    assert [row["attname"] for row in key] == ["request_id", "created_at"]
    default = fetch(
        database_url,
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'requests'::regclass "
        "AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'",
    )
    assert default == [{"relname": "requests_default"}]


# --- 0006 up and down with rows in the table ---------------------------------------------------


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(plain_dsn(ADMIN_URL), timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture
def scratch_url() -> Iterator[str]:
    """A database of its own: these tests migrate down, which the shared one must never be."""
    name = f"sgw_mig_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# Rows over three months, one far in the past, every column kind; agree drives the views.
ROWS = """
INSERT INTO requests (request_id, route, endpoint, created_at, mode, served_by, slices,
    request_payload, teacher_output, student_output, student_confidence, agree,
    agreement_reason, fallback_reason, sticky_bucket, student_logprobs)
SELECT 'req-' || g, 'r' || g % 2, 'chat', timestamptz '2026-09-20 12:00Z' + g * interval '13 hours',
    'shadow', CASE WHEN g % 5 = 0 THEN 'student' ELSE 'teacher' END,
    jsonb_build_object('tier', (ARRAY['free', 'paid'])[1 + g % 2]),
    jsonb_build_object('messages', jsonb_build_array(
        jsonb_build_object('role', 'user', 'content', 'question ' || g))),
    'teacher ' || g, 'student ' || g, (g % 10) / 10.0, g % 3 <> 0,
    CASE WHEN g % 3 = 0 THEN 'label_mismatch' END,
    CASE WHEN g % 7 = 0 THEN 'low_confidence' END, g % 100,
    jsonb_build_array(jsonb_build_object('token', 'x', 'logprob', -0.5))
FROM generate_series(1, 150) AS g
UNION ALL
SELECT 'ancient', 'r0', 'text', timestamptz '1999-12-31 23:59:59.999999Z', 'teacher', 'teacher',
    '{}', '{"prompt": "old"}', 'old answer', NULL, NULL, NULL, NULL, NULL, NULL, NULL
"""
# Everything a row holds, as one text per row: equal before and after means nothing was lost.
SNAPSHOT = "SELECT request_id, md5(r::text) AS digest FROM requests AS r ORDER BY request_id"
VIEWS = (
    "SELECT (SELECT count(*) FROM disagreements) AS disagreements, "
    "(SELECT sum(requests) FROM agreement_daily) AS daily, "
    "(SELECT sum(fallbacks) FROM fallbacks_daily) AS fallbacks"
)


def _partitions(url: str) -> dict[str, int]:
    rows = fetch(
        url, "SELECT tableoid::regclass::text AS part, count(*) AS n FROM requests GROUP BY 1"
    )
    return {row["part"]: row["n"] for row in rows}


def test_0006_moves_every_row_into_partitions_and_back(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0005")
    execute(scratch_url, ROWS)
    before, views = fetch(scratch_url, SNAPSHOT), fetch(scratch_url, VIEWS)
    assert len(before) == 151

    command.upgrade(config, "0006")
    assert fetch(scratch_url, SNAPSHOT) == before
    assert fetch(scratch_url, VIEWS) == views
    parts = _partitions(scratch_url)
    # a partition per month with rows (and the current month's, empty here); none in default
    assert set(parts) == {
        f"requests_p{m}" for m in ("199912", "202609", "202610", "202611", "202612")
    }
    assert sum(parts.values()) == 151
    indexes = fetch(
        scratch_url,
        "SELECT indexrelid::regclass::text AS name FROM pg_index "
        "WHERE indrelid = 'requests'::regclass ORDER BY 1",
    )
    assert [i["name"] for i in indexes] == [
        "ix_requests_created_at",
        "ix_requests_day_route",
        "ix_requests_disagreements",
        "ix_requests_route_created_at",
        "requests_pkey",
    ]

    command.downgrade(config, "0005")
    assert fetch(scratch_url, SNAPSHOT) == before
    assert fetch(scratch_url, VIEWS) == views
    [kind] = fetch(
        scratch_url, "SELECT relkind::text FROM pg_class WHERE oid = 'requests'::regclass"
    )
    assert kind == {"relkind": "r"}
    assert fetch(scratch_url, "SELECT to_regclass('requests_default') AS t") == [{"t": None}]

    # and up again, as a deploy after a rollback would (to 0006: later revisions add columns,
    # which changes every row's text)
    command.upgrade(config, "0006")
    assert fetch(scratch_url, SNAPSHOT) == before


def test_0006_on_an_empty_table_makes_the_current_month_and_the_default(scratch_url: str) -> None:
    command.upgrade(alembic_config(scratch_url), "0006")
    names = fetch(
        scratch_url,
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'requests'::regclass ORDER BY 1",
    )
    [month] = fetch(scratch_url, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMM') AS m")
    assert [n["relname"] for n in names] == ["requests_default", f"requests_p{month['m']}"]


def test_downgrade_refuses_to_merge_rows_that_share_a_request_id(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0006")
    execute(
        scratch_url,
        "INSERT INTO requests (request_id, route, endpoint, created_at, mode) VALUES "
        "('twice', 'r', 'chat', '2026-11-01Z', 'shadow'), "
        "('twice', 'r', 'chat', '2026-11-02Z', 'shadow')",
    )
    with pytest.raises(RuntimeError, match="twice"):
        command.downgrade(config, "0005")
    assert asyncio.run(current_revision(scratch_url)) == "0006"
    assert len(fetch(scratch_url, "SELECT 1 FROM requests WHERE request_id = 'twice'")) == 2


# --- 0007: agreement_daily's interval at full precision ----------------------------------------

# The view as a client sees it: its definition, then its columns (order, type, comment) and grants.
VIEW_DEFINITION = "SELECT pg_get_viewdef('agreement_daily'::regclass) AS definition"
VIEW_SHAPE = (
    "SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type, "
    "col_description(a.attrelid, a.attnum) AS comment, "
    "obj_description(a.attrelid, 'pg_class') AS view_comment, c.relacl::text AS grants "
    "FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid "
    "WHERE a.attrelid = 'agreement_daily'::regclass AND a.attnum > 0 ORDER BY a.attnum"
)
BOUNDS = (
    "SELECT value, agreement_low, agreement_high FROM agreement_daily "
    "WHERE dimension = 'tier' ORDER BY day, route, value"
)


def test_0007_changes_only_the_interval_and_downgrades_to_the_0006_view(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0006")
    execute(scratch_url, ROWS)
    execute(scratch_url, "GRANT SELECT ON agreement_daily TO PUBLIC")  # kept like the comments
    definition, shape = fetch(scratch_url, VIEW_DEFINITION), fetch(scratch_url, VIEW_SHAPE)
    bounds, views = fetch(scratch_url, BOUNDS), fetch(scratch_url, VIEWS)

    command.upgrade(config, "0007")
    assert fetch(scratch_url, VIEW_SHAPE) == shape
    assert fetch(scratch_url, VIEWS) == views
    new_definition = fetch(scratch_url, VIEW_DEFINITION)
    assert new_definition != definition
    assert "1.959963984540054" in new_definition[0]["definition"]
    new_bounds = fetch(scratch_url, BOUNDS)
    assert [b["value"] for b in new_bounds] == [b["value"] for b in bounds]
    for old, new in zip(bounds, new_bounds, strict=True):  # the same figures, to 0005's precision
        assert new["agreement_low"] == pytest.approx(old["agreement_low"], abs=1e-6)
        assert new["agreement_high"] == pytest.approx(old["agreement_high"], abs=1e-6)

    command.downgrade(config, "0006")
    assert asyncio.run(current_revision(scratch_url)) == "0006"
    assert fetch(scratch_url, VIEW_DEFINITION) == definition
    assert fetch(scratch_url, VIEW_SHAPE) == shape
    assert fetch(scratch_url, BOUNDS) == bounds

    command.upgrade(config, "0007")  # and up again
    assert fetch(scratch_url, VIEW_DEFINITION) == new_definition
    assert fetch(scratch_url, VIEW_SHAPE) == shape
    assert fetch(scratch_url, BOUNDS) == new_bounds


# --- 0008: tool calls, refusals, the teacher's version, the app's request id -------------------

NEW_COLUMNS = (
    "client_request_id",
    "teacher_tool_calls",
    "teacher_refusal",
    "teacher_model_reported",
    "teacher_fingerprint",
    "student_tool_calls",
    "student_refusal",
)
COLUMNS_OF = (
    "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
    "AND NOT attisdropped ORDER BY attnum"
)
DISAGREEMENTS_DEFINITION = "SELECT pg_get_viewdef('disagreements'::regclass) AS definition"


def test_0008_adds_the_answer_columns_and_downgrades_to_the_0007_schema(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0007")
    execute(scratch_url, ROWS)
    rows_before, views = fetch(scratch_url, SNAPSHOT), fetch(scratch_url, VIEWS)
    view_before = fetch(scratch_url, DISAGREEMENTS_DEFINITION)
    view_columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, "disagreements")]

    command.upgrade(config, "0008")
    columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, "requests")]
    assert columns[-len(NEW_COLUMNS) :] == list(NEW_COLUMNS)
    assert fetch(scratch_url, VIEWS) == views  # the same rows in every view
    widened = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, "disagreements")]
    assert widened[: len(view_columns)] == view_columns  # earlier columns kept, in order
    assert widened[len(view_columns) :] == [
        "teacher_tool_calls",
        "student_tool_calls",
        "teacher_refusal",
        "student_refusal",
        "client_request_id",
    ]

    command.downgrade(config, "0007")
    assert fetch(scratch_url, SNAPSHOT) == rows_before
    assert fetch(scratch_url, DISAGREEMENTS_DEFINITION) == view_before
    assert [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, "disagreements")] == view_columns
    command.upgrade(config, "head")
    assert asyncio.run(current_revision(scratch_url)) == head_revision()


# --- 0009: route_students and student_answers ---------------------------------------------------

CONSTRAINTS_OF = (
    "SELECT conname, contype::text FROM pg_constraint WHERE conrelid = $1::regclass ORDER BY 1"
)
UNCOMMENTED = (
    "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
    "AND NOT attisdropped AND col_description(attrelid, attnum) IS NULL"
)
STUDENT = (
    "INSERT INTO route_students (route, name, status, base_urls, model, timeout_s, "
    "connect_timeout_s, shadow_sample, max_concurrency, top_logprobs, breaker_failures, "
    "breaker_cooldown_s, updated_by) VALUES ('{route}', '{name}', '{status}', "
    "ARRAY['http://127.0.0.1:9/v1'], 'm', 10, 2, {sample}, 64, 5, 5, 10, 'test')"
)
ANSWER = (
    "INSERT INTO student_answers (request_id, student, source, created_at, route, endpoint) "
    "VALUES ('req', 's', '{source}', '{at}', 'r', 'chat')"
)


def _student(url: str, route: str, name: str, status: str, sample: float = 1.0) -> None:
    execute(url, STUDENT.format(route=route, name=name, status=status, sample=sample))


def test_0009_adds_students_and_answers_and_takes_them_away(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0008")
    command.upgrade(config, "0009")
    later = {"train_dataset_id"}  # route_students' column of migration 0014
    for table in (route_students, student_answers):
        columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, table.name)]
        assert columns == [c.name for c in table.columns if c.name not in later]
        assert fetch(scratch_url, UNCOMMENTED, table.name) == []  # every column explained
    assert fetch(scratch_url, CONSTRAINTS_OF, "route_students") == [
        {"conname": "route_students_pkey", "contype": "p"},
        {"conname": "route_students_shadow_sample", "contype": "c"},
        {"conname": "route_students_status", "contype": "c"},
    ]
    assert fetch(scratch_url, CONSTRAINTS_OF, "student_answers") == [
        {"conname": "student_answers_pkey", "contype": "p"},
        {"conname": "student_answers_source", "contype": "c"},
    ]

    # partitioned like requests: by range of created_at, the current month and a default
    [kind] = fetch(
        scratch_url,
        "SELECT p.partstrat::text, a.attname FROM pg_partitioned_table AS p "
        "JOIN pg_attribute AS a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
        "WHERE p.partrelid = 'student_answers'::regclass",
    )
    assert kind == {"partstrat": "r", "attname": "created_at"}
    names = fetch(
        scratch_url,
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'student_answers'::regclass ORDER BY 1",
    )
    [month] = fetch(scratch_url, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMM') AS m")
    assert [n["relname"] for n in names] == [
        "student_answers_default",
        f"student_answers_p{month['m']}",
    ]

    # one champion per route, any number of candidates; the vocabularies are enforced
    _student(scratch_url, "r", "a", "champion")
    _student(scratch_url, "r", "b", "candidate", 0.25)
    _student(scratch_url, "r", "c", "retired", 0)
    _student(scratch_url, "other", "a", "champion")
    with pytest.raises(asyncpg.UniqueViolationError, match="ux_route_students_champion"):
        _student(scratch_url, "r", "d", "champion")
    with pytest.raises(asyncpg.CheckViolationError, match="route_students_status"):
        _student(scratch_url, "r", "e", "shadow")
    with pytest.raises(asyncpg.CheckViolationError, match="route_students_shadow_sample"):
        _student(scratch_url, "r", "f", "candidate", 1.5)
    with pytest.raises(asyncpg.CheckViolationError, match="student_answers_source"):
        execute(scratch_url, ANSWER.format(source="guess", at="2026-01-01Z"))
    execute(scratch_url, ANSWER.format(source="live", at="1999-01-01Z"))  # outside: the default
    execute(scratch_url, ANSWER.format(source="replay", at="1999-01-01Z"))  # one per source
    with pytest.raises(asyncpg.UniqueViolationError):
        execute(scratch_url, ANSWER.format(source="replay", at="1999-01-01Z"))
    rows = fetch(scratch_url, "SELECT tableoid::regclass::text AS part FROM student_answers")
    assert rows == [{"part": "student_answers_default"}] * 2

    command.downgrade(config, "0008")
    assert asyncio.run(current_revision(scratch_url)) == "0008"
    gone = fetch(
        scratch_url,
        "SELECT to_regclass('route_students') AS students, "
        "to_regclass('student_answers') AS answers, "
        "to_regclass('student_answers_default') AS default_partition",
    )
    assert gone == [{"students": None, "answers": None, "default_partition": None}]

    command.upgrade(config, "0009")  # and up again
    assert fetch(scratch_url, "SELECT count(*) AS n FROM route_students") == [{"n": 0}]
    _student(scratch_url, "r", "a", "champion")


def test_0010_adds_slice_overrides_and_takes_them_away(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0009")
    command.upgrade(config, "0010")
    columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, "route_slice_overrides")]
    assert columns == [c.name for c in route_slice_overrides.columns]
    assert fetch(scratch_url, UNCOMMENTED, "route_slice_overrides") == []
    insert = (
        "INSERT INTO route_slice_overrides (route, dimension, value, mode, rollout_percent, "
        "confidence_threshold, updated_by, reason) VALUES ('r', 'tier', '{value}', {mode}, "
        "{percent}, {threshold}, 'cli', 'why')"
    )
    execute(
        scratch_url, insert.format(value="a", mode="'teacher'", percent="NULL", threshold="NULL")
    )
    execute(scratch_url, insert.format(value="b", mode="NULL", percent="5", threshold="0.9"))
    for values, constraint in (
        (("c", "'shadow'", "NULL", "NULL"), "route_slice_overrides_mode"),
        (("c", "NULL", "101", "NULL"), "route_slice_overrides_percent"),
        (("c", "NULL", "NULL", "1.5"), "route_slice_overrides_threshold"),
        (("c", "NULL", "NULL", "NULL"), "route_slice_overrides_something"),
    ):
        value, mode, percent, threshold = values
        with pytest.raises(asyncpg.CheckViolationError, match=constraint):
            execute(
                scratch_url,
                insert.format(value=value, mode=mode, percent=percent, threshold=threshold),
            )
    # a ramp can be cancelled; going down, a cancelled ramp reads as stopped
    execute(
        scratch_url,
        "INSERT INTO rollout_plans (route, steps, hold_s, step_index, next_at, status, "
        "created_by, reason) VALUES ('r', '{5, 50}', 60, 0, now(), 'cancelled', 'a', 'x')",
    )
    command.downgrade(config, "0009")
    gone = fetch(scratch_url, "SELECT to_regclass('route_slice_overrides') AS t")
    assert gone == [{"t": None}]
    assert fetch(scratch_url, "SELECT status FROM rollout_plans") == [{"status": "stopped"}]
    with pytest.raises(asyncpg.CheckViolationError, match="rollout_plans_status"):
        execute(scratch_url, "UPDATE rollout_plans SET status = 'cancelled'")


def test_0011_adds_the_student_views_and_takes_them_away(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0011")
    views = (
        "SELECT to_regclass('student_agreement_daily') AS a, "
        "to_regclass('student_disagreements') AS d"
    )
    assert fetch(scratch_url, views) == [
        {"a": "student_agreement_daily", "d": "student_disagreements"}
    ]
    described = fetch(
        scratch_url,
        "SELECT obj_description('student_agreement_daily'::regclass) AS a, "
        "obj_description('student_disagreements'::regclass) AS d",
    )
    assert all(described[0].values())
    command.downgrade(config, "0010")
    assert fetch(scratch_url, views) == [{"a": None, "d": None}]


def test_0012_adds_feedback_and_reviews_and_takes_them_away(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0012")
    for table in (feedback, reviews, review_verdicts):
        columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, table.name)]
        assert columns == [c.name for c in table.columns]
        assert fetch(scratch_url, UNCOMMENTED, table.name) == []
    execute(
        scratch_url,
        "INSERT INTO reviews (route, request_id, request_created_at, student, group_key, "
        "batch, created_by) VALUES ('r', 'req', now(), 's', 'g', 'b', 'cli')",
    )
    with pytest.raises(asyncpg.CheckViolationError, match="reviews_verdict"):
        execute(scratch_url, "UPDATE reviews SET verdict = 'maybe'")
    feedback_row = (
        "INSERT INTO feedback (request_id, request_created_at, route, key_name, answered_by{}) "
        "VALUES ('req', now(), 'r', 'app', 'teacher'{})"
    )
    with pytest.raises(asyncpg.CheckViolationError, match="feedback_something"):
        execute(scratch_url, feedback_row.format("", ""))
    with pytest.raises(asyncpg.CheckViolationError, match="feedback_score"):
        execute(scratch_url, feedback_row.format(", score", ", 2"))
    command.downgrade(config, "0011")
    gone = fetch(
        scratch_url,
        "SELECT to_regclass('feedback') AS f, to_regclass('reviews') AS r, "
        "to_regclass('review_verdicts') AS v",
    )
    assert gone == [{"f": None, "r": None, "v": None}]
    served = fetch(scratch_url, COLUMNS_OF, "requests")
    assert "served_student" not in {row["attname"] for row in served}


# --- 0013: teacher_versions ---------------------------------------------------------------------

TEACHER_VERSIONS = (
    "SELECT route, model_reported, fingerprint, first_seen, last_seen, first_request_id, "
    "requests FROM teacher_versions ORDER BY route, first_seen, fingerprint NULLS FIRST"
)
VERSIONS_OF_ROWS = (
    "SELECT route, teacher_model_reported AS model_reported, teacher_fingerprint AS fingerprint, "
    "min(created_at) AS first_seen, max(created_at) AS last_seen, NULL AS first_request_id, "
    "count(*) AS requests FROM requests "
    "WHERE teacher_model_reported IS NOT NULL OR teacher_fingerprint IS NOT NULL "
    "GROUP BY 1, 2, 3 ORDER BY route, first_seen, fingerprint NULLS FIRST"
)
VERSION = (
    "INSERT INTO teacher_versions (route, model_reported, fingerprint, first_seen, last_seen) "
    "VALUES ('r9', {model}, {fingerprint}, now(), now())"
)


def test_0013_adds_teacher_versions_filled_from_the_log_and_takes_them_away(
    scratch_url: str,
) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0012")
    execute(scratch_url, ROWS)
    # route r0 changes fingerprint halfway; r1 reports a model without one; 'ancient' nothing
    execute(
        scratch_url,
        "UPDATE requests SET teacher_model_reported = 'm-' || route, teacher_fingerprint = "
        "CASE WHEN route = 'r1' THEN NULL WHEN created_at < '2026-10-20Z' THEN 'fp_1' "
        "ELSE 'fp_2' END WHERE request_id <> 'ancient'",
    )
    rows_before = fetch(scratch_url, SNAPSHOT)

    command.upgrade(config, "0013")
    columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, "teacher_versions")]
    assert columns == [c.name for c in teacher_versions.columns]
    assert fetch(scratch_url, UNCOMMENTED, "teacher_versions") == []
    filled = fetch(scratch_url, TEACHER_VERSIONS)
    assert [(v["route"], v["model_reported"], v["fingerprint"]) for v in filled] == [
        ("r0", "m-r0", "fp_1"),
        ("r0", "m-r0", "fp_2"),
        ("r1", "m-r1", None),
    ]
    assert filled == fetch(scratch_url, VERSIONS_OF_ROWS)
    assert sum(v["requests"] for v in filled) == 150
    assert fetch(scratch_url, "SELECT count(*) AS n FROM route_events") == [{"n": 0}]
    assert fetch(scratch_url, SNAPSHOT) == rows_before

    # once per route: a missing half counts as one value; a version says something
    execute(scratch_url, VERSION.format(model="'m'", fingerprint="NULL"))
    execute(scratch_url, VERSION.format(model="NULL", fingerprint="'m'"))  # another version
    with pytest.raises(asyncpg.UniqueViolationError, match="ux_teacher_versions_version"):
        execute(scratch_url, VERSION.format(model="'m'", fingerprint="NULL"))
    with pytest.raises(asyncpg.CheckViolationError, match="teacher_versions_something"):
        execute(scratch_url, VERSION.format(model="NULL", fingerprint="NULL"))

    command.downgrade(config, "0012")
    assert fetch(scratch_url, "SELECT to_regclass('teacher_versions') AS t") == [{"t": None}]
    assert fetch(scratch_url, SNAPSHOT) == rows_before
    command.upgrade(config, "head")
    assert len(fetch(scratch_url, TEACHER_VERSIONS)) == 3


def test_0014_adds_datasets_and_distill_runs_and_takes_them_away(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0014")
    for table in (datasets, dataset_items, distill_runs):
        columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, table.name)]
        assert columns == [c.name for c in table.columns]
        assert fetch(scratch_url, UNCOMMENTED, table.name) == []
    assert fetch(scratch_url, UNCOMMENTED, "route_students") == []
    with pytest.raises(asyncpg.CheckViolationError, match="datasets_kind"):
        execute(
            scratch_url,
            "INSERT INTO datasets (route, created_by, kind, manifest, path, sha256, items) "
            "VALUES ('r', 'cli', 'test', '{}', '/x', 'abc', 0)",
        )
    command.downgrade(config, "0013")
    gone = fetch(
        scratch_url,
        "SELECT to_regclass('datasets') AS d, to_regclass('dataset_items') AS i, "
        "to_regclass('distill_runs') AS r",
    )
    assert gone == [{"d": None, "i": None, "r": None}]
    columns = {row["attname"] for row in fetch(scratch_url, COLUMNS_OF, "route_students")}
    assert "train_dataset_id" not in columns


# The binned rollups as 0015 made them: a row per bin (0017 makes the bins arrays).
_KEY_0015 = ["route", "hour", "teacher_model_reported", "teacher_fingerprint", "dimension"]
BINNED_AT_0015 = {
    "rollup_confidence": [*_KEY_0015, "value", "bin", "compared", "agreed"],
    "rollup_answer_latency": [
        *_KEY_0015[:2],
        "source",
        "student",
        *_KEY_0015[2:],
        "value",
        "bin",
        "answers",
    ],
}
ROLLUPS = (
    rollup_dirty,
    rollup_buckets,
    rollup_requests,
    rollup_confidence,
    rollup_prompt_lengths,
    rollup_answers,
    rollup_answer_pairs,
    rollup_answer_latency,
)


def test_0015_adds_the_rollups_marks_logged_hours_and_takes_them_away(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0014")
    execute(
        scratch_url,
        "INSERT INTO requests (request_id, route, endpoint, created_at, mode) "
        "VALUES ('old', 'r', 'chat', '2026-11-30 10:20:00+00', 'shadow')",
    )
    command.upgrade(config, "0015")
    for table in ROLLUPS:
        columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, table.name)]
        assert columns == BINNED_AT_0015.get(table.name, [c.name for c in table.columns])
        assert fetch(scratch_url, UNCOMMENTED, table.name) == []
    marked = fetch(scratch_url, "SELECT route, hour FROM rollup_dirty")
    assert [(r["route"], r["hour"].isoformat()) for r in marked] == [
        ("r", "2026-11-30T10:00:00+00:00")
    ]
    command.downgrade(config, "0014")
    left = fetch(
        scratch_url,
        "SELECT count(*) AS n FROM pg_class WHERE relname LIKE 'rollup\\_%' AND relkind = 'r'",
    )
    assert left == [{"n": 0}]
    triggers = fetch(scratch_url, "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'rollup%'")
    assert triggers == []
    execute(scratch_url, "UPDATE requests SET mode = 'teacher'")  # no trigger left behind


# Per-bin rows as 0015 keeps them: two keys of rollup_confidence (one the route as a whole,
# with NULL teacher and slice), one of rollup_answer_latency, bins given out of order.
BINNED_ROWS = (
    "INSERT INTO rollup_confidence (route, hour, teacher_model_reported, teacher_fingerprint, "
    "dimension, value, bin, compared, agreed) VALUES "
    "('r', '2026-12-01 10:00+00', 'm', 'fp', 'tier', 'gold', 57, 4, 3), "
    "('r', '2026-12-01 10:00+00', 'm', 'fp', 'tier', 'gold', 3, 2, 0), "
    "('r', '2026-12-01 10:00+00', NULL, NULL, NULL, NULL, 101, 5, 5), "
    "('r', '2026-12-01 10:00+00', NULL, NULL, NULL, NULL, 0, 1, 0); "
    "INSERT INTO rollup_answer_latency (route, hour, source, student, teacher_model_reported, "
    "teacher_fingerprint, dimension, value, bin, answers) VALUES "
    "('r', '2026-12-01 11:00+00', 'live', 's', 'm', NULL, NULL, NULL, 300, 7), "
    "('r', '2026-12-01 11:00+00', 'live', 's', 'm', NULL, NULL, NULL, 32767, 1), "
    "('r', '2026-12-01 11:00+00', 'live', 's', 'm', NULL, NULL, NULL, 12, 2)"
)
BINNED_AS_ROWS = (
    "SELECT route, hour, NULL AS source, NULL AS student, teacher_model_reported, "
    "teacher_fingerprint, dimension, value, bin, compared, agreed FROM rollup_confidence "
    "UNION ALL SELECT route, hour, source, student, teacher_model_reported, teacher_fingerprint, "
    "dimension, value, bin, answers, NULL FROM rollup_answer_latency ORDER BY 1, 2, 3, 4, 7, 9"
)


def test_0017_turns_the_bins_into_arrays_and_back_keeping_every_count(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0016")
    execute(scratch_url, BINNED_ROWS)
    before = fetch(scratch_url, BINNED_AS_ROWS)
    command.upgrade(config, "0017")
    for table in (rollup_confidence, rollup_answer_latency):
        columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, table.name)]
        assert columns == [c.name for c in table.columns]
        assert fetch(scratch_url, UNCOMMENTED, table.name) == []
    confidence = fetch(
        scratch_url,
        "SELECT dimension, bins, compared, agreed FROM rollup_confidence ORDER BY dimension",
    )
    assert confidence == [
        {"dimension": "tier", "bins": [3, 57], "compared": [2, 4], "agreed": [0, 3]},
        {"dimension": None, "bins": [0, 101], "compared": [1, 5], "agreed": [0, 5]},
    ]
    latency = fetch(scratch_url, "SELECT student, bins, answers FROM rollup_answer_latency")
    assert latency == [{"student": "s", "bins": [12, 300, 32767], "answers": [2, 7, 1]}]
    command.downgrade(config, "0016")
    assert fetch(scratch_url, BINNED_AS_ROWS) == before
    for name, columns_then in BINNED_AT_0015.items():
        columns = [r["attname"] for r in fetch(scratch_url, COLUMNS_OF, name)]
        assert columns == columns_then
        assert fetch(scratch_url, UNCOMMENTED, name) == []
    indexes = fetch(
        scratch_url,
        "SELECT indexname FROM pg_indexes WHERE tablename IN "
        "('rollup_confidence', 'rollup_answer_latency') ORDER BY 1",
    )
    assert [row["indexname"] for row in indexes] == [
        "ix_rollup_answer_latency_route_hour",
        "ix_rollup_confidence_route_hour",
    ]
