"""The journal's format and the writer's pending map, for both tables; no Postgres here."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import LogWriterConfig, StudentConfig
from gateway.core.redact import EMAIL, Redactor
from gateway.db.journal import TABLE_KEY, Journal
from gateway.db.tables import student_answers
from gateway.db.wal import WriteAheadLog
from gateway.db.writer import WAL_KEY, LogWriter, _dedupe, merge, upsert_statement
from gateway.metrics import Metrics
from gateway.shadow.dispatcher import student_request
from gateway.shadow.records import RedactingWriter

CREATED = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def answer(request_id: str, student: str = "s1", **columns: object) -> dict[str, object]:
    key = {"request_id": request_id, "student": student, "source": "live"}
    return {**key, "created_at": CREATED, "route": "r", "endpoint": "chat", **columns}


def offline_writer(tmp_path: Path, **config: int) -> tuple[LogWriter, CollectorRegistry]:
    """A writer never started: submit() and the journal work, nothing talks to Postgres."""
    registry = CollectorRegistry()
    settings = LogWriterConfig(**config)
    return LogWriter("postgresql://unused", tmp_path, settings, Metrics(registry)), registry


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
    sealed = journal.seal()  # replayed: handed over, the next record starts a new file
    assert sealed is not None
    sealed[0].unlink()
    sealed[1].close()
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


def test_a_probe_tells_when_the_disk_takes_writes_again_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "journal"
    blocked.write_text("a file where the journal's directory should be")
    journal = Journal(blocked)
    journal.open()
    assert not journal.probe()
    assert not journal.writable
    blocked.unlink()
    assert journal.probe()
    assert journal.writable
    assert [p.name for p in blocked.iterdir() if p.name.startswith(".probe")] == []
    journal.close()


def test_answer_lines_carry_their_table_and_old_lines_are_requests(tmp_path: Path) -> None:
    log, _ = offline_writer(tmp_path)
    log.journal.open()
    log.submit({"request_id": "a", "created_at": CREATED, "teacher_output": "t"})
    log.submit_answer(answer("a", answered_at=CREATED, student_output="s"))
    log._spill(log._take(10))
    path = next(tmp_path.glob("journal-*.jsonl"))
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert TABLE_KEY not in lines[0]  # requests lines are written as before answers existed
    assert lines[1][TABLE_KEY] == "student_answers"
    assert lines[1]["answered_at"] == CREATED.isoformat()
    read = list(log.journal.read_own())
    assert read[1]["answered_at"] == CREATED  # a datetime again, as asyncpg binds it
    assert [r.get(TABLE_KEY) for r in read] == [None, "student_answers"]
    log.journal.close()


def test_a_line_whose_table_marker_is_not_a_name_is_unreadable(tmp_path: Path) -> None:
    dead = tmp_path / "journal-1-dead.jsonl"
    lines = [{"request_id": "a"}, {"request_id": "b", TABLE_KEY: ["x"]}, {"request_id": "c"}]
    dead.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    assert [r["request_id"] for r in Journal(tmp_path).read(dead)] == ["a", "c"]


def test_dedupe_merges_each_tables_rows_by_their_own_key() -> None:
    marker = {TABLE_KEY: "student_answers"}
    merged = _dedupe(
        [
            {"request_id": "a", "teacher_output": "t"},
            {**answer("a"), **marker, "student_output": "s"},
            {**answer("a", "s2"), **marker},
            {**answer("a", source="replay"), **marker},
            {**answer("a"), **marker, "agree": True},
            {"request_id": "a", "student_output": "champion"},
            {"request_id": "x", TABLE_KEY: "not_a_table_yet"},  # kept, for _write to set aside
            {"request_id": "y", TABLE_KEY: "student_answers"},  # no key: kept, Postgres refuses
        ]
    )
    assert len(merged) == 6
    assert merged[0] == {"request_id": "a", "teacher_output": "t", "student_output": "champion"}
    assert merged[1]["student_output"] == "s"
    assert merged[1]["agree"] is True
    assert [(m.get("student"), m.get("source")) for m in merged[2:4]] == [
        ("s2", "live"),
        ("s1", "replay"),
    ]


def test_submit_answer_merges_halves_apart_from_requests_and_copies(tmp_path: Path) -> None:
    log, _ = offline_writer(tmp_path)
    mine = answer("a", student_output="s")
    log.submit_answer(mine)
    log.submit_answer(answer("a", agree=False, student_output=None))
    log.submit_answer(answer("a", "s2"))
    log.submit({"request_id": "a", "created_at": CREATED, "student_output": "champion"})
    assert TABLE_KEY not in mine  # the caller's record is left alone
    assert log.queue_depth == 3
    first, second, request = log._take(10)
    assert first.pop(WAL_KEY) == [1, 1]  # both halves' lines are in WAL segment 1
    assert first == {**answer("a", student_output="s", agree=False), TABLE_KEY: "student_answers"}
    assert second["student"] == "s2"
    assert TABLE_KEY not in request


def test_the_queue_bound_counts_both_tables(tmp_path: Path) -> None:
    log, _ = offline_writer(tmp_path, queue_max=4, memory_max=6)
    log.journal.open()
    for n in range(3):
        log.submit_answer(answer(f"r{n}"))
    assert log.queue_depth == 3
    log.submit({"request_id": "r0", "created_at": CREATED})  # the 4th: the backlog goes to disk
    assert log.queue_depth == 0
    assert log.journal.records == 4
    log.journal.close()


def test_the_memory_bound_counts_both_tables(tmp_path: Path) -> None:
    blocked = tmp_path / "journal"
    blocked.write_text("a file where the journal's directory should be")  # the disk refuses
    log, registry = offline_writer(blocked, queue_max=3, memory_max=4)
    log.journal.open()
    for n in range(3):
        log.submit({"request_id": f"r{n}", "created_at": CREATED})
        log.submit_answer(answer(f"r{n}"))
    log._spill(log._take(6))  # the journal refuses: all six stay in memory, in order
    assert log.queue_depth == 6
    log._shed_overflow()
    assert log.queue_depth == 4
    assert registry.get_sample_value("shadow_gateway_log_records_dropped_total") == 2
    kept = log._take(10)
    assert [(r["request_id"], TABLE_KEY in r) for r in kept] == [
        ("r1", False),
        ("r1", True),
        ("r2", False),
        ("r2", True),
    ]


def test_the_answers_upsert_merges_on_its_primary_key() -> None:
    sql = upsert_statement(student_answers)
    assert sql.startswith("INSERT INTO student_answers (request_id, student, source, created_at")
    assert "ON CONFLICT (request_id, student, source, created_at) DO UPDATE SET " in sql
    assert "agree = COALESCE(EXCLUDED.agree, student_answers.agree)" in sql
    assert "student = COALESCE" not in sql
    assert TABLE_KEY not in sql


def test_answers_are_redacted_like_a_requests_student_columns(tmp_path: Path) -> None:
    log = RedactingWriter(
        "postgresql://unused",
        tmp_path,
        LogWriterConfig(),
        Metrics(CollectorRegistry()),
        redactors={"r": Redactor(emails=True)},
    )
    mail = "write to ann@example.com"
    logprobs = [{"token": "ann@example.com", "logprob": -0.5, "top_logprobs": []}]
    log.submit_answer(
        answer(
            "a",
            student_output=mail,
            student_error=mail,
            agreement_reason=mail,
            student_response={"choices": [{"message": {"content": mail}}]},
            agreement_detail={"student": mail},
            slices={"user": "ann@example.com"},
            student_logprobs=logprobs,
        )
    )
    log.submit_answer({**answer("b", "s1"), "route": "unredacted", "student_output": mail})
    (stored, plain) = log._take(10)
    text = orjson.dumps(stored).decode()
    assert "ann@example.com" not in text
    assert stored["student_output"] == f"write to {EMAIL}"
    # jsonb values are encoded at submit (orjson fragments): read back as JSON
    logprobs_stored = orjson.loads(orjson.dumps(stored["student_logprobs"]))
    assert logprobs_stored == [{"token": None, "logprob": -0.5, "top_logprobs": []}]
    assert stored[TABLE_KEY] == "student_answers"
    assert plain["student_output"] == mail  # a route without redactors is stored as sent


def test_wal_segments_go_once_their_records_are_written_and_stay_for_a_replay(
    tmp_path: Path,
) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=200)
    first = [wal.append({"request_id": f"r{i}", "teacher_output": "x" * 60}) for i in range(3)]
    assert first == [1, 1, 2]  # the third line went past 200 bytes: a new segment
    files = sorted(p.name for p in tmp_path.glob("journal-*-wal*.jsonl"))
    assert len(files) == 2
    journal = Journal(tmp_path)
    assert journal.orphans() == []  # held by this live process, never replayed by another
    wal.done([1, 1])
    assert len(list(tmp_path.glob("journal-*-wal1.jsonl"))) == 0  # written: deleted
    assert len(list(tmp_path.glob("journal-*-wal2.jsonl"))) == 1  # current, one pending
    wal.close()  # a clean stop with a record unwritten: kept, unlocked, for the next start
    [kept] = journal.orphans()
    assert [r["request_id"] for r in journal.read(kept)] == ["r2"]


def test_a_submitted_record_is_in_the_wal_before_submit_returns(tmp_path: Path) -> None:
    log, _ = offline_writer(tmp_path)
    log.submit({"request_id": "a", "created_at": CREATED, "teacher_output": "hi"})
    [segment] = list(tmp_path.rglob("journal-*-wal*.jsonl"))
    assert b'"teacher_output":"hi"' in segment.read_bytes()


def test_a_sealed_journal_is_replayed_apart_while_new_records_go_to_a_new_file(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append([{"request_id": "old"}])
    sealed = journal.seal()
    assert sealed is not None
    path, handle = sealed
    journal.append([{"request_id": "new"}])  # while the sealed one is being replayed
    assert [r["request_id"] for r in journal.read(path)] == ["old"]
    assert [r["request_id"] for r in journal.read_own()] == ["new"]
    assert journal.orphans() == []  # still held: no other process replays it too
    handle.close()  # given up (say Postgres went away): an orphan for the next replay
    assert journal.orphans() == [path]
    again = journal.seal()  # the new file, with "new" in it
    assert again is not None
    again[1].close()
    assert journal.seal() is None  # nothing since
    journal.close()


def test_a_rejected_line_keeps_encoded_json_values_as_json() -> None:
    """jsonb values are orjson fragments from submit on; a record set aside for a value orjson
    cannot encode is written by ``json``, which must keep the fragments' JSON, not their repr."""
    from gateway.db.writer import _rejected_line

    line = _rejected_line(
        {"request_id": "r", "teacher_response": orjson.Fragment(b'{"id":"x"}'), "odd": 2**70}
    )
    assert orjson.loads(line) == {"request_id": "r", "teacher_response": {"id": "x"}, "odd": 2**70}
