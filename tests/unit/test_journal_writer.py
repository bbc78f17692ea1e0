from __future__ import annotations

import json
import subprocess
import sys
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


DISK_FULL = r"""
import json, resource, sys
from pathlib import Path
from gateway.db.journal import Journal

# The file-size limit makes the kernel refuse writes past it (EFBIG), as a full disk does
# (ENOSPC); Python ignores SIGXFSZ, so the write fails instead of killing the process.
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
journal = Journal(Path(sys.argv[1]))
journal.open()
written = failures = 0
for n in range(100):
    try:
        journal.append([{"request_id": f"r{n}", "text": "x" * 300}])
        written += 1
    except OSError:
        failures += 1
print(json.dumps({"written": written, "failures": failures, "error": journal.error,
                  "records": journal.records}))
"""


def test_a_full_disk_leaves_whole_lines_and_says_so_once(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    outcome = json.loads(result.stdout)
    assert outcome["written"] > 0
    assert outcome["failures"] > 0
    assert "File too large" in outcome["error"]
    # The write that did not fit was cut back: every line on disk is whole and counted.
    (path,) = tmp_path.glob("journal-*.jsonl")
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [orjson.loads(line)["request_id"] for line in lines[:-1]] == [
        f"r{n}" for n in range(outcome["written"])
    ]
    assert outcome["records"] == outcome["written"]
    assert result.stderr.count("cannot write the journal") == 1, result.stderr


def test_an_unwritable_journal_directory_is_reported_and_retried(tmp_path: Path) -> None:
    blocked = tmp_path / "journal"
    blocked.write_text("a file where the journal's directory should be")
    journal = Journal(blocked)
    journal.open()  # not fatal
    assert not journal.writable
    with pytest.raises(FileExistsError):
        journal.append([{"request_id": "a"}])
    assert journal.records == 0
    blocked.unlink()  # the operator frees the path
    journal.append([{"request_id": "a"}])
    assert journal.writable
    assert [r["request_id"] for r in journal.read_own()] == ["a"]
    journal.close()
