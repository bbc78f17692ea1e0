"""The log writer against the real Postgres: merging halves, bad rows, idempotent replays."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from gateway.config import LogWriterConfig
from gateway.db.engine import plain_dsn
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics
from tests.support.db import fetch

CREATED = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


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


def writer(url: str, tmp_path: Path) -> LogWriter:
    config = LogWriterConfig(batch_size=10, flush_interval_s=0.05)
    return LogWriter(plain_dsn(url), tmp_path / "journal", config, Metrics(CollectorRegistry()))


def write_all(url: str, tmp_path: Path, *records: dict[str, object]) -> None:
    async def run() -> None:
        log = writer(url, tmp_path)
        await log.start()
        for record in records:
            log.submit(record)
        await log.close()

    asyncio.run(run())


def test_halves_merge_across_batches_and_replays_are_idempotent(
    clean_db: str, tmp_path: Path
) -> None:
    write_all(clean_db, tmp_path, half("a", teacher_output="t", served_by="teacher"))
    student_half = half("a", student_output="s", student_status="ok")
    write_all(clean_db, tmp_path, student_half, student_half)  # the second: a replayed duplicate
    rows = fetch(clean_db, "SELECT teacher_output, student_output, served_by FROM requests")
    assert rows == [{"teacher_output": "t", "student_output": "s", "served_by": "teacher"}]


def test_a_row_postgres_refuses_is_kept_aside_and_the_rest_land(
    clean_db: str, tmp_path: Path
) -> None:
    write_all(
        clean_db,
        tmp_path,
        half("good", teacher_output="fine"),
        half("nul", teacher_output="a\x00b", teacher_response={"text": "x\u0000y"}),
        half("huge", status_code=2**40),  # does not fit an integer column
    )
    stored = {r["request_id"]: r for r in fetch(clean_db, "SELECT * FROM requests")}
    assert set(stored) == {"good", "nul"}
    assert stored["nul"]["teacher_output"] == "ab"  # Postgres text cannot hold NUL
    rejected = [
        orjson.loads(line)
        for line in (tmp_path / "journal" / "rejected.jsonl").read_bytes().splitlines()
    ]
    assert [r["request_id"] for r in rejected] == ["huge"]
    assert "_rejected_because" in rejected[0]
