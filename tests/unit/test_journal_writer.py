from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from gateway.config import StudentConfig
from gateway.db.journal import Journal
from gateway.db.writer import _dedupe, merge
from gateway.shadow.dispatcher import student_request


def test_journal_round_trip_with_torn_tail(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    created = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    journal.append([{"request_id": "a", "created_at": created, "slices": {"k": "v"}}])
    journal.append([{"request_id": "b", "created_at": created}])
    assert journal.records == 2
    records = list(journal.read_own())
    assert [r["request_id"] for r in records] == ["a", "b"]
    assert records[0]["created_at"] == created
    journal.truncate_own()
    assert list(journal.read_own()) == []
    journal.close()

    dead = tmp_path / "journal-1-dead.jsonl"
    dead.write_bytes(orjson.dumps({"request_id": "c"}) + b"\n" + b'{"request_id": "to')
    assert [r["request_id"] for r in journal.read(dead)] == ["c"]


def test_live_journals_are_not_orphans(tmp_path: Path) -> None:
    alive, other = Journal(tmp_path), Journal(tmp_path)
    alive.open()
    alive.append([{"request_id": "x"}])
    other.open()
    assert other.orphans() == []  # alive holds its lock
    alive._file.close()  # type: ignore[union-attr]  # as if its process died
    assert len(other.orphans()) == 1
    other.close()


def test_closing_an_empty_journal_removes_its_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.close()
    assert list(tmp_path.iterdir()) == []


def test_halves_merge_set_values_win() -> None:
    teacher = {"request_id": "r", "route": "x", "teacher_output": "t", "student_output": None}
    student = {"request_id": "r", "route": "x", "student_output": "s", "teacher_output": None}
    merge(teacher, student)
    assert teacher["teacher_output"] == "t"
    assert teacher["student_output"] == "s"
    merged = _dedupe(
        [{"request_id": "a", "v": 1}, {"request_id": "b"}, {"request_id": "a", "w": 2}]
    )
    assert merged == [{"request_id": "a", "v": 1, "w": 2}, {"request_id": "b"}]


@pytest.mark.parametrize("endpoint", ["chat", "text"])
def test_student_request_asks_for_logprobs_without_streaming(endpoint: str) -> None:
    student = StudentConfig(base_urls=["http://h/v1"], model="small", top_logprobs=3)  # type: ignore[list-item]
    app_body = {"model": "route", "stream": True, "stream_options": {"include_usage": True}, "x": 1}
    sent = orjson.loads(student_request(endpoint, app_body, student))  # type: ignore[arg-type]
    assert sent["model"] == "small"
    assert sent["stream"] is False
    assert "stream_options" not in sent
    assert sent["x"] == 1
    assert sent["logprobs"] == (True if endpoint == "chat" else 3)
    assert app_body["model"] == "route"  # the app's body is not modified
