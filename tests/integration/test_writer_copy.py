"""The log writer's COPY path against the real Postgres: its TEMP batch tables come back with a
new connection, a refused batch leaves the connection usable, a value JSON cannot hold is set
aside; and migration 0016's lz4 on the large jsonb columns, which the batch tables follow so
that a value is compressed once."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from prometheus_client import CollectorRegistry

from gateway.config import DatabaseConfig, LogWriterConfig, PartitionsConfig
from gateway.db.engine import create_engine, plain_dsn
from gateway.db.migrate import alembic_config
from gateway.db.partitions import maintain
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics
from tests.conftest import ADMIN_URL, _admin
from tests.support.db import execute, fetch

CREATED = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
LATER = datetime(2031, 1, 15, tzinfo=UTC)
# about 20 kB of JSON that compresses well: stored compressed, out of line
LOGPROBS = {
    "content": [{"token": f" t{n}", "logprob": -0.25, "top_logprobs": []} for n in range(400)]
}
LZ4_COLUMNS = {
    "requests": {"request_payload", "teacher_response", "student_response", "student_logprobs"},
    "student_answers": {"student_response", "student_logprobs"},
}
COMPRESSION = (
    "SELECT c.relname AS rel, a.attname AS col, a.attcompression AS method "
    "FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid "
    "WHERE c.relname ~ '^(requests|student_answers)' AND c.relkind IN ('r', 'p') "
    "AND a.attnum > 0 AND NOT a.attisdropped AND a.attcompression <> ''"
)


def half(request_id: str, **columns: object) -> dict[str, object]:
    return {
        "request_id": request_id,
        "route": "r",
        "endpoint": "chat",
        "created_at": CREATED,
        "mode": "shadow",
        "slices": {},
        **columns,
    }


def answer(request_id: str, **columns: object) -> dict[str, object]:
    key = {"request_id": request_id, "student": "s1", "source": "live", "created_at": CREATED}
    return {**key, "route": "r", "endpoint": "chat", "slices": {}, **columns}


def new_writer(url: str, tmp_path: Path, registry: CollectorRegistry, **config: Any) -> LogWriter:
    settings = LogWriterConfig(**{"flush_interval_s": 0.05, "retry_interval_s": 0.1, **config})
    return LogWriter(plain_dsn(url), tmp_path / "journal", settings, Metrics(registry))


def rejected(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "journal" / "rejected.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


@pytest.fixture
def scratch_url() -> Iterator[str]:
    """A database of its own, to migrate down."""
    name = f"sgw_copy_{secrets.token_hex(4)}"
    _admin(f'CREATE DATABASE "{name}"')
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migration_0016() -> ModuleType:
    """Migration 0016, whose statement sets the large jsonb columns' compression."""
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
    return script.get_revision("0016").module


def lz4_columns(url: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in fetch(url, COMPRESSION):
        assert row["method"] == b"l"
        found.setdefault(row["rel"], set()).add(row["col"])
    return found


def test_a_new_connection_makes_its_batch_tables_again(clean_db: str, tmp_path: Path) -> None:
    registry = CollectorRegistry()

    async def count(table: str) -> int:
        rows = await asyncio.to_thread(fetch, clean_db, f"SELECT count(*) AS n FROM {table}")
        return int(rows[0]["n"])

    async def until(table: str, rows: int) -> None:
        for _ in range(300):
            if await count(table) == rows:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{table} never held {rows} rows")

    async def run() -> None:
        log = new_writer(clean_db, tmp_path, registry, wal=False)
        await log.start()
        log.submit(half("before", teacher_output="t"))
        log.submit_answer(answer("before", student_output="s"))
        await until("student_answers", 1)
        assert log._conn is not None
        backend = log._conn.get_server_pid()
        await asyncio.to_thread(execute, clean_db, f"SELECT pg_terminate_backend({backend})")
        log.submit(half("after", teacher_output="t"))
        log.submit_answer(answer("after", student_output="s"))
        await until("student_answers", 2)
        assert log._conn is not None
        assert log._conn.get_server_pid() != backend
        await log.close()

    asyncio.run(run())
    assert [r["request_id"] for r in fetch(clean_db, "SELECT * FROM requests ORDER BY 1")] == [
        "after",
        "before",
    ]
    assert rejected(tmp_path) == []


def test_a_batch_table_missing_from_the_session_is_made_again(
    clean_db: str, tmp_path: Path
) -> None:
    """Behind a pool in transaction mode a batch may run on a server connection that never
    made the batch tables: each batch's transaction makes them if they are missing."""
    registry = CollectorRegistry()

    async def run() -> None:
        log = new_writer(clean_db, tmp_path, registry, wal=False, flush_interval_s=60)
        await log.start()
        assert log._conn is not None
        await log._conn.execute("DROP TABLE writer_batch_requests, writer_batch_student_answers")
        log.submit(half("a", teacher_output="t"))
        log.submit_answer(answer("a", student_output="s"))
        await log.close()

    asyncio.run(run())
    assert len(fetch(clean_db, "SELECT 1 FROM requests")) == 1
    assert len(fetch(clean_db, "SELECT 1 FROM student_answers")) == 1
    assert rejected(tmp_path) == []


def test_without_the_temp_privilege_rows_are_journaled_not_rejected(
    scratch_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer that cannot make its batch tables takes Postgres as down: rows go to the
    journal (never to rejected.jsonl), and are written once the privilege is back."""
    command.upgrade(alembic_config(scratch_url), "head")
    database = scratch_url.rsplit("/", 1)[1]
    role = f"sgw_notemp_{secrets.token_hex(4)}"
    _admin(f"CREATE ROLE {role} LOGIN")
    try:
        execute(
            scratch_url,
            f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}; "
            f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC',
        )
        as_role = scratch_url.replace("://postgres@", f"://{role}@")

        async def write(*records: dict[str, object], rows: int = 0) -> LogWriter:
            log = new_writer(as_role, tmp_path, CollectorRegistry())
            await log.start()
            for record in records:
                log.submit(record)
            for _ in range(200):  # until the journal is replayed
                found = await asyncio.to_thread(fetch, scratch_url, "SELECT 1 FROM requests")
                if len(found) == rows:
                    break
                await asyncio.sleep(0.05)
            await log.close()
            return log

        log = asyncio.run(write(half("a", teacher_output="t")))
        assert not log.database_up
        assert log.journal.records == 1
        assert "TEMPORARY on the database" in caplog.text  # the log line says what to grant
        assert fetch(scratch_url, "SELECT 1 FROM requests") == []
        execute(scratch_url, f'GRANT TEMPORARY ON DATABASE "{database}" TO {role}')
        asyncio.run(write(rows=1))  # replays the journal
        assert len(fetch(scratch_url, "SELECT 1 FROM requests")) == 1
        assert rejected(tmp_path) == []
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        _admin(f"DROP ROLE IF EXISTS {role}")


def test_a_refused_batch_leaves_the_connection_usable_and_bad_values_are_set_aside(
    clean_db: str, tmp_path: Path
) -> None:
    """A batch Postgres refuses is rolled back (the next batch goes in whole), and a value
    JSON cannot hold (reachable with the write-ahead log off: it refuses it on submit) is set
    aside like a row Postgres refuses, not the batch's end."""
    registry = CollectorRegistry()

    async def run() -> None:
        log = new_writer(clean_db, tmp_path, registry, wal=False, batch_size=100)
        await log.start()
        log.submit(half("good", teacher_output="fine"))
        log.submit(half("huge", status_code=2**40))  # the driver refuses it: no int4
        log.submit(half("nul", teacher_response={"text": "x\u0000y"}, teacher_output="a\x00b"))
        log.submit(half("json", teacher_response={"n": 2**70}))  # orjson refuses it
        log.submit_answer(answer("good", student_logprobs={"t": "\u0000"}))
        await log.close()
        log = new_writer(clean_db, tmp_path, CollectorRegistry(), wal=False, batch_size=100)
        await log.start()
        for n in range(5):
            log.submit(half(f"next-{n}", teacher_output="fine"))
        await log.close()

    asyncio.run(run())
    stored = {r["request_id"]: r for r in fetch(clean_db, "SELECT * FROM requests")}
    assert set(stored) == {"good", "nul", *(f"next-{n}" for n in range(5))}
    assert orjson.loads(stored["nul"]["teacher_response"]) == {"text": "xy"}
    assert stored["nul"]["teacher_output"] == "ab"
    logprobs = fetch(clean_db, "SELECT student_logprobs FROM student_answers")
    assert [orjson.loads(r["student_logprobs"]) for r in logprobs] == [{"t": ""}]
    assert sorted(r["request_id"] for r in rejected(tmp_path)) == ["huge", "json"]
    assert all(r["_rejected_because"] for r in rejected(tmp_path))
    refusals = registry.get_sample_value(
        "shadow_gateway_db_write_errors_total", {"kind": "rejected"}
    )
    assert refusals == 1  # the first batch only: the second went in whole
    assert registry.get_sample_value("shadow_gateway_log_records_written_total") == 3


def test_the_writer_stores_the_large_values_lz4_compressed(clean_db: str, tmp_path: Path) -> None:
    registry = CollectorRegistry()

    async def run() -> None:
        log = new_writer(clean_db, tmp_path, registry)
        await log.start()
        log.submit(half("a", student_logprobs=LOGPROBS, request_payload=LOGPROBS))
        log.submit_answer(answer("a", student_logprobs=LOGPROBS))
        await log.close()

    asyncio.run(run())
    methods = fetch(
        clean_db,
        "SELECT pg_column_compression(r.student_logprobs) AS r, "
        "pg_column_compression(r.request_payload) AS p, "
        "pg_column_compression(a.student_logprobs) AS a "
        "FROM requests AS r JOIN student_answers AS a USING (request_id, created_at)",
    )
    assert methods == [{"r": "lz4", "p": "lz4", "a": "lz4"}]
    stored = fetch(clean_db, "SELECT student_logprobs FROM student_answers")
    assert orjson.loads(stored[0]["student_logprobs"]) == LOGPROBS


def test_0016_sets_lz4_on_every_partition_new_ones_follow_and_downgrade_resets_it(
    scratch_url: str,
) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0016")
    found = lz4_columns(scratch_url)
    # the parents, this month's partitions and the default ones (migrations 0006 and 0009)
    assert {rel for rel in found if rel.endswith("_default")} == {
        "requests_default",
        "student_answers_default",
    }
    assert len(found) == 6
    for rel, columns in found.items():
        assert (
            columns == LZ4_COLUMNS["requests" if rel.startswith("requests") else "student_answers"]
        )

    async def keep_partitions() -> None:
        engine = create_engine(scratch_url, DatabaseConfig())
        try:
            # days past the migrations' month: partitions made by partitions.py
            await maintain(engine, PartitionsConfig(interval="day", ahead=2), now=LATER)
        finally:
            await engine.dispose()

    asyncio.run(keep_partitions())
    after = lz4_columns(scratch_url)
    assert len(after) > len(found)  # the days made ahead
    assert all(columns in LZ4_COLUMNS.values() for columns in after.values())

    command.downgrade(config, "0015")
    assert fetch(scratch_url, COMPRESSION) == []


def test_0016_on_a_server_without_lz4_changes_nothing(scratch_url: str) -> None:
    command.upgrade(alembic_config(scratch_url), "0015")
    migration = migration_0016()
    migration._HAS_LZ4 = "FALSE"  # as on a server built without lz4
    execute(scratch_url, migration._set_compression("lz4"))
    assert fetch(scratch_url, COMPRESSION) == []


def test_the_writer_follows_the_columns_compression(clean_db: str, tmp_path: Path) -> None:
    """A column set back to pglz (the server's default) gets pglz values: the batch table
    compresses as the table does, on the writer's next connection."""
    migration = migration_0016()
    try:
        execute(clean_db, migration._set_compression("pglz"))
        registry = CollectorRegistry()

        async def run() -> None:
            log = new_writer(clean_db, tmp_path, registry)
            await log.start()
            log.submit(half("a", student_logprobs=LOGPROBS))
            await log.close()

        asyncio.run(run())
        methods = fetch(
            clean_db, "SELECT pg_column_compression(student_logprobs) AS m FROM requests"
        )
        assert methods == [{"m": "pglz"}]
    finally:
        execute(clean_db, migration._set_compression("lz4"))
