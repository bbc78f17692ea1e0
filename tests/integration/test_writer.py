"""The log writer against the real Postgres: merging halves, bad rows, idempotent replays,
for ``requests`` and ``student_answers`` alike."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import LogWriterConfig
from gateway.db.engine import plain_dsn
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics
from tests.support.db import execute, fetch

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


def answer(request_id: str, student: str = "s1", **columns: object) -> dict[str, object]:
    """A ``student_answers`` record: its key, and what every half carries."""
    return {
        "request_id": request_id,
        "student": student,
        "source": "live",
        "created_at": CREATED,
        "route": "r",
        "endpoint": "chat",
        "slices": {},
        **columns,
    }


class Answer(dict[str, object]):
    """A record for ``submit_answer`` (``write_all`` sends the rest to ``submit``)."""


@pytest.fixture
def answers_db(clean_db: str) -> str:
    execute(clean_db, "TRUNCATE student_answers")
    return clean_db


def writer(
    url: str, tmp_path: Path, batch_size: int = 10, registry: CollectorRegistry | None = None
) -> LogWriter:
    config = LogWriterConfig(batch_size=batch_size, flush_interval_s=0.05)
    metrics = Metrics(registry or CollectorRegistry())
    return LogWriter(plain_dsn(url), tmp_path / "journal", config, metrics)


def write_all(url: str, tmp_path: Path, *records: dict[str, object], batch_size: int = 10) -> float:
    """Submit ``records`` to a fresh writer, close it; the rows it wrote (the metric)."""

    registry = CollectorRegistry()

    async def run() -> float:
        log = writer(url, tmp_path, batch_size, registry)
        await log.start()
        for record in records:
            if isinstance(record, Answer):
                log.submit_answer(dict(record))
            else:
                log.submit(record)
        await log.close()
        return registry.get_sample_value("shadow_gateway_log_records_written_total") or 0.0

    return asyncio.run(run())


def answers(url: str) -> list[dict[str, Any]]:
    return fetch(url, "SELECT * FROM student_answers ORDER BY request_id, student")


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


def test_answers_merge_from_two_halves_and_replays_are_idempotent(
    answers_db: str, tmp_path: Path
) -> None:
    first = Answer(answer("a", student_output="s", student_status="ok"))
    write_all(answers_db, tmp_path, first, Answer(answer("b", "s2", student_status="timeout")))
    verdict = Answer(answer("a", agree=True, agreement_score=0.9, agreement_detail={"k": 1}))
    write_all(answers_db, tmp_path, verdict, first, verdict)  # first again: a replayed duplicate
    stored = answers(answers_db)
    assert [(r["request_id"], r["student"]) for r in stored] == [("a", "s1"), ("b", "s2")]
    assert stored[0]["student_output"] == "s"
    assert stored[0]["agree"] is True
    assert orjson.loads(stored[0]["agreement_detail"]) == {"k": 1}
    assert stored[0]["created_at"] == CREATED


def test_one_batch_holds_both_tables_and_keeps_their_rows_apart(
    answers_db: str, tmp_path: Path
) -> None:
    records = [
        half("a", teacher_output="t"),
        Answer(answer("a", "s1", student_output="one")),
        Answer(answer("a", "s2", student_output="two")),
        Answer(answer("a", "s1", source="replay", student_output="again")),
        half("a", student_output="champion"),  # merged with the first requests half
        Answer(answer("a", "s2", agree=False)),  # merged with s2's live answer
    ]
    # All in one batch: one statement per table, four rows in all.
    assert write_all(answers_db, tmp_path, *records, batch_size=100) == 4
    row = fetch(answers_db, "SELECT teacher_output, student_output FROM requests")
    assert row == [{"teacher_output": "t", "student_output": "champion"}]
    got = {(r["student"], r["source"]): r for r in answers(answers_db)}
    assert set(got) == {("s1", "live"), ("s2", "live"), ("s1", "replay")}
    assert got["s2", "live"]["student_output"] == "two"
    assert got["s2", "live"]["agree"] is False
    assert got["s1", "replay"]["student_output"] == "again"


def test_an_orphan_journal_of_both_formats_replays_into_both_tables_once(
    answers_db: str, tmp_path: Path
) -> None:
    stamp = CREATED.isoformat()
    old_format = [  # lines as the version before student_answers wrote them: no table marker
        {**half("a", teacher_output="t"), "created_at": stamp},
        {**half("a", student_output="s", student_status="ok"), "created_at": stamp},
    ]
    answer_lines = [
        {**answer("a", student_output="s"), "created_at": stamp, "_table": "student_answers"},
        {**answer("a", agree=True), "created_at": stamp, "_table": "student_answers"},
        {**answer("a", "s2", answered_at=stamp), "created_at": stamp, "_table": "student_answers"},
    ]
    lines = old_format + answer_lines + old_format + answer_lines  # a batch journaled twice
    journal = tmp_path / "journal"
    journal.mkdir()
    orphan = journal / "journal-99999-deadbeef.jsonl"
    orphan.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))

    async def replay() -> None:
        log = writer(answers_db, tmp_path, batch_size=3)  # a few lines at a time
        await log.start()
        for _ in range(200):
            if not orphan.exists():
                break
            await asyncio.sleep(0.05)
        await log.close()

    asyncio.run(replay())
    assert not orphan.exists()
    requests_rows = fetch(answers_db, "SELECT teacher_output, student_output FROM requests")
    assert requests_rows == [{"teacher_output": "t", "student_output": "s"}]
    stored = answers(answers_db)
    assert [(r["student"], r["student_output"], r["agree"]) for r in stored] == [
        ("s1", "s", True),
        ("s2", None, None),
    ]
    assert stored[1]["answered_at"] == CREATED
    assert not (journal / "rejected.jsonl").exists()


def test_an_answer_postgres_refuses_is_kept_aside_with_its_table(
    answers_db: str, tmp_path: Path
) -> None:
    write_all(
        answers_db,
        tmp_path,
        half("a", teacher_output="fine"),
        Answer(answer("a", student_output="fine")),
        Answer(answer("a", "s2", source="bogus")),  # the table's check: live or replay
        Answer(answer("a", "s3", student_http_status=2**40)),  # does not fit an integer
    )
    assert len(fetch(answers_db, "SELECT * FROM requests")) == 1
    assert [r["student"] for r in answers(answers_db)] == ["s1"]
    rejected = [
        orjson.loads(line)
        for line in (tmp_path / "journal" / "rejected.jsonl").read_bytes().splitlines()
    ]
    assert sorted(r["student"] for r in rejected) == ["s2", "s3"]
    assert {r["_table"] for r in rejected} == {"student_answers"}
    assert all("_rejected_because" in r for r in rejected)
