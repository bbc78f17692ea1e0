"""``shadow-gateway export`` with what people and apps judged: reviews and feedback.

The 400 synthetic rows of ``test_export`` are the traffic; reviews, feedback and students'
answers are inserted on chosen rows, each standing for one rule, so the test can say which
examples and which preference pairs must come out.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.db.engine import plain_dsn
from tests.integration.test_export import (
    ROUTE,
    START,
    SYSTEM,
    Cli,
    assert_fails,
    expected,
    export,
    index_of,
    insert,
    make_cli,
    question,
    synthetic,
    tier,
    write_routes,
)

STUDENT = "student-a"
OTHER = "student-b"


def at(i: int) -> datetime:
    """Row i's created_at (its key, with its request id)."""
    return START + timedelta(minutes=15 * i)


def teacher_answer(i: int) -> str:
    answer = synthetic(i)["teacher_output"]
    assert isinstance(answer, str)
    return answer


def insert_into(url: str, table: str, rows: list[dict[str, Any]]) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(plain_dsn(url), timeout=5)
        try:
            for row in rows:
                columns = list(row)
                values = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
                sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"
                await connection.execute(sql, *row.values())
        finally:
            await connection.close()

    asyncio.run(run())


def review(
    i: int,
    verdict: str | None,
    corrected: str | None = None,
    student: str = STUDENT,
    minutes: int = 0,
) -> dict[str, Any]:
    """A review task on row i; judged ``minutes`` after the row when it has a verdict."""
    judged = verdict is not None
    return {
        "route": ROUTE,
        "request_id": f"{ROUTE}-{i:05d}",
        "request_created_at": at(i),
        "student": student,
        "group_key": f"group-{i}-{student}",
        "batch": "batch-1",
        "created_by": "test",
        "verdict": verdict,
        "corrected_output": corrected,
        "reviewer": "ada" if judged else None,
        "judged_at": at(i) + timedelta(minutes=minutes) if judged else None,
    }


def feedback(
    i: int, minutes: int = 0, answered_by: str = "teacher", **judged: Any
) -> dict[str, Any]:
    return {
        "request_id": f"{ROUTE}-{i:05d}",
        "request_created_at": at(i),
        "route": ROUTE,
        "created_at": at(i) + timedelta(minutes=minutes),
        "key_name": "app",
        "answered_by": answered_by,
        **judged,
    }


def student_answer(
    i: int,
    output: str | None,
    student: str = STUDENT,
    source: str = "live",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    row = synthetic(i)
    return {
        "request_id": row["request_id"],
        "student": student,
        "source": source,
        "created_at": at(i),
        "route": ROUTE,
        "endpoint": row["endpoint"],
        "student_status": "ok",
        "student_output": output,
        "student_tool_calls": None if tool_calls is None else orjson.dumps(tool_calls).decode(),
    }


@pytest.fixture
def url(clean_db: str) -> str:
    insert(clean_db, [synthetic(i) for i in range(400)])
    return clean_db


@pytest.fixture
def cli(url: str, tmp_path: Path) -> Cli:
    return make_cli(url, write_routes(tmp_path / "gateway.yaml"))


def exported_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "gateway.yaml")


# --- --format openai: judged-wrong answers are dropped, or corrected -----------------------------

FIXED = '{"label": "no", "fixed": true}'
# Row → what was said of it (the rows are all ones the plain export keeps).
WRONG_BY_REVIEW = {0: None, 2: FIXED, 16: "not JSON at all"}  # row → the review's correction
WRONG_BY_FEEDBACK = {4: None, 1: FIXED}  # row 1 is a /v1/completions row
RIGHT = (6, 10, 12, 14)


@pytest.fixture
def judged(url: str) -> str:
    insert_into(
        url,
        "reviews",
        [
            review(0, "student_correct"),
            review(2, "both_wrong", corrected=WRONG_BY_REVIEW[2]),
            review(16, "both_wrong", corrected=WRONG_BY_REVIEW[16]),
            review(6, "teacher_correct", minutes=1),  # outranks the later feedback below
            review(12, "both_correct", corrected='{"label": "no"}'),  # right: never used
            review(14, None),  # an open task judges nothing
        ],
    )
    insert_into(
        url,
        "feedback",
        [
            feedback(4, correct=False),
            feedback(1, score=0.1, corrected_output=WRONG_BY_FEEDBACK[1]),
            feedback(6, minutes=5, correct=False),
            feedback(10, answered_by=STUDENT, correct=False),  # the student's answer, not ours
            feedback(10, minutes=1, label="billing", comment="fine"),  # judges nothing
        ],
    )
    return url


def test_judged_wrong_teacher_answers_are_dropped_and_counted(
    judged: str, cli: Cli, tmp_path: Path
) -> None:
    examples, manifest = export(cli, tmp_path / "train.jsonl")
    wrong = {*WRONG_BY_REVIEW, *WRONG_BY_FEEDBACK}
    kept, dropped = expected(range(400))
    assert [index_of(e) for e in examples] == [i for i in kept if i not in wrong]
    for i in RIGHT:  # the teacher's own answer, a review outranking a contrary feedback
        (example,) = [e for e in examples if index_of(e) == i]
        assert example["messages"][-1] == {"role": "assistant", "content": teacher_answer(i)}

    assert manifest["dropped"]["judged_wrong"] == 5
    assert manifest["judged_wrong"] == {"review": 3, "feedback": 2}
    assert manifest["corrected"] == 0
    assert manifest["examples"] + sum(manifest["dropped"].values()) == 400
    assert (
        manifest["dropped"]["verifier"]
        == dropped["invalid_json"] + dropped["schema:properties.label.enum"]
    )
    by_tier = Counter(tier(i) for i in wrong)
    for value, counts in manifest["slices"]["tier"].items():
        assert counts["judged_wrong"] == by_tier[value]
    assert manifest["filters"]["use_corrections"] is False


def test_judged_wrong_rows_are_dropped_before_sampling_and_counted_per_stratum(
    judged: str, cli: Cli, tmp_path: Path
) -> None:
    examples, manifest = export(cli, tmp_path / "sample.jsonl", "--limit", "300")
    assert manifest["sampling"] == "stratified_by_live_traffic"
    assert not {index_of(e) for e in examples} & {*WRONG_BY_REVIEW, *WRONG_BY_FEEDBACK}
    assert sum(s["judged_wrong"] for s in manifest["strata"]) == 5
    (free_billing,) = [
        s for s in manifest["strata"] if s["slices"] == {"tier": "free", "category": "billing"}
    ]
    assert free_billing["judged_wrong"] == 3  # rows 0, 2 and 4
    assert manifest["dropped"]["judged_wrong"] == 5
    assert manifest["examples"] + sum(manifest["dropped"].values()) == 400


def test_use_corrections_exports_the_corrected_answer(
    judged: str, cli: Cli, tmp_path: Path
) -> None:
    examples, manifest = export(cli, tmp_path / "fixed.jsonl", "--use-corrections")
    by_row = {index_of(e): e for e in examples}
    assert by_row[2]["messages"] == [
        SYSTEM,
        {"role": "user", "content": question(2)},
        {"role": "assistant", "content": FIXED},
    ]
    assert by_row[1]["messages"] == [  # a completions row, corrected by the app's feedback
        {"role": "user", "content": question(1)},
        {"role": "assistant", "content": FIXED},
    ]
    assert by_row[12]["messages"][-1]["content"] == teacher_answer(12)  # judged right
    assert not {0, 4} & set(by_row)  # wrong, and nobody said what is right
    assert 16 not in by_row  # its correction is not JSON: the route's verifier drops it
    assert manifest["corrected"] == 2
    assert manifest["judged_wrong"] == {"review": 1, "feedback": 1}
    assert manifest["dropped"]["judged_wrong"] == 2
    quoted = manifest["failed_checks_quoted"]["invalid_json"]
    assert f"{ROUTE}-00016" in [failure["request_id"] for failure in quoted]
    assert manifest["examples"] + sum(manifest["dropped"].values()) == 400
    assert manifest["filters"]["use_corrections"] is True


def test_the_table_summary_says_what_was_judged_wrong(
    judged: str, cli: Cli, tmp_path: Path
) -> None:
    done = cli("--route", ROUTE, "--output", str(tmp_path / "t.jsonl"), "--use-corrections")
    assert done.returncode == 0, done.stderr
    assert "  judged_wrong              2" in done.stdout
    assert "  corrected                 2" in done.stdout
    assert "judged wrong: 1 by feedback, 1 by review" in done.stdout


# --- --format dpo: preference pairs from reviewed answers ----------------------------------------

CORRECTED = '{"label": "no", "why": "fixed"}'
APP_FIX = '{"label": "yes", "why": "the app says"}'


@pytest.fixture
def reviewed(url: str) -> str:
    insert_into(
        url,
        "student_answers",
        [
            student_answer(20, '{"label": "no"}'),
            student_answer(28, '{"label": "no"}'),
            student_answer(28, '{"label": "no", "replayed": true}', source="replay"),
            student_answer(32, '{"label": "yes"}', source="replay"),
            student_answer(36, teacher_answer(36)),
            student_answer(40, '{"label": "no"}'),
            student_answer(17, '{"label": "no"}'),
            student_answer(52, None, tool_calls=[{"id": "c1", "name": "f", "arguments": "{}"}]),
            student_answer(54, '{"label": "yes"}'),
            student_answer(54, '{"label": "maybe"}', student=OTHER),
        ],
    )
    insert_into(
        url,
        "reviews",
        [
            review(20, "teacher_correct"),
            review(28, "student_correct"),
            review(32, "both_wrong", corrected=CORRECTED),
            review(36, "both_wrong"),  # corrected by the app's feedback below
            review(40, "both_wrong"),  # nobody says what is right
            review(44, "both_correct"),
            review(48, None),
            review(50, "teacher_correct"),  # no answer from the student
            review(17, "teacher_correct"),  # a /v1/completions row
            review(52, "student_correct"),  # the student called a tool
            review(54, "teacher_correct", minutes=1),  # superseded by the later verdict
            review(54, "both_wrong", corrected=CORRECTED, student=OTHER, minutes=2),
        ],
    )
    insert_into(url, "feedback", [feedback(36, corrected_output=APP_FIX)])
    return url


def chat(i: int, chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "prompt": [SYSTEM, {"role": "user", "content": question(i)}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def test_dpo_writes_a_pair_per_reviewed_disagreement(
    reviewed: str, cli: Cli, tmp_path: Path
) -> None:
    output = tmp_path / "pairs.jsonl"
    pairs, manifest = export(cli, output, "--format", "dpo")
    assert pairs == [
        {  # a completions row, in a file with chat rows: conversational too
            "prompt": [{"role": "user", "content": question(17)}],
            "chosen": [{"role": "assistant", "content": teacher_answer(17)}],
            "rejected": [{"role": "assistant", "content": '{"label": "no"}'}],
        },
        chat(20, teacher_answer(20), '{"label": "no"}'),
        chat(28, '{"label": "no"}', teacher_answer(28)),  # the live answer, not the replayed
        chat(32, CORRECTED, teacher_answer(32)),
        chat(32, CORRECTED, '{"label": "yes"}'),  # the (replayed) student's answer differs
        chat(36, APP_FIX, teacher_answer(36)),  # the student said the same: one pair
        chat(54, CORRECTED, teacher_answer(54)),
        chat(54, CORRECTED, '{"label": "maybe"}'),
    ]
    assert manifest["format"] == "trl-preference-jsonl"
    assert manifest["form"] == "conversational"
    assert manifest["pairs"] == 8
    assert manifest["pairs_by_verdict"] == {
        "teacher_correct": 2,
        "student_correct": 1,
        "both_wrong": 5,
    }
    assert manifest["pairs_rejecting"] == {"teacher": 4, "student": 4}
    assert manifest["reviews"] == {
        "judged": 11,
        "open": 1,
        "used": 6,
        "by_verdict": {
            "teacher_correct": 4,
            "student_correct": 2,
            "both_wrong": 4,
            "both_correct": 1,
        },
    }
    assert {reason: n for reason, n in manifest["skipped"].items() if n} == {
        "both_correct": 1,
        "superseded": 1,
        "tool_calls": 1,
        "no_student_answer": 1,
        "no_correction": 1,
    }
    assert manifest["reviews"]["used"] + sum(manifest["skipped"].values()) == 11
    assert_trl_preference(output, conversational=True)


def test_dpo_on_completions_rows_only_is_the_standard_form(
    reviewed: str, cli: Cli, tmp_path: Path
) -> None:
    output = tmp_path / "text.jsonl"
    window = ["--since", at(17).isoformat(), "--until", at(18).isoformat()]
    pairs, manifest = export(cli, output, "--format", "dpo", *window)
    assert pairs == [
        {"prompt": question(17), "chosen": teacher_answer(17), "rejected": '{"label": "no"}'}
    ]
    assert manifest["form"] == "standard"
    done = cli("--route", ROUTE, "--output", str(output), "--format", "dpo", *window)
    assert done.stdout.splitlines()[0] == f"wrote 1 preference pairs (standard) to {output}"
    assert "  teacher_correct           1" in done.stdout
    assert_trl_preference(output, conversational=False)


def assert_trl_preference(path: Path, conversational: bool) -> None:
    """The shape TRL's DPOTrainer reads; loaded with ``datasets`` too when it is installed."""
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for line in lines:
        assert set(line) == {"prompt", "chosen", "rejected"}
        if not conversational:
            assert all(isinstance(line[column], str) for column in line)
            continue
        assert all(set(m) >= {"role", "content"} for m in line["prompt"])
        for column in ("chosen", "rejected"):
            (message,) = line[column]
            assert message["role"] == "assistant"
            assert isinstance(message["content"], str)
    try:
        import datasets
    except ImportError:
        return
    loaded = datasets.load_dataset("json", data_files=str(path), split="train")
    assert loaded.column_names == ["prompt", "chosen", "rejected"]
    assert len(loaded) == len(lines)


# --- unhappy paths: a sentence, an exit status, no file ------------------------------------------


@pytest.mark.parametrize(
    ("reviews", "message"),
    [
        ([], "no reviewed disagreements: no review tasks for route 'support-bot'"),
        ([review(20, None)], "none of the 1 review tasks for route 'support-bot'"),
        ([review(20, "both_correct")], "all 1 judged review tasks for route 'support-bot'"),
        (
            [review(40, "both_wrong")],
            "no preference pairs: all 1 judged review tasks were skipped (no_correction 1)",
        ),
    ],
)
def test_dpo_without_reviewed_disagreements_is_an_error_and_no_file(
    url: str, cli: Cli, tmp_path: Path, reviews: list[dict[str, Any]], message: str
) -> None:
    if reviews:
        insert_into(url, "reviews", reviews)
    done = cli("--route", ROUTE, "--output", str(tmp_path / "x.jsonl"), "--format", "dpo")
    assert_fails(done, 1, message)
    assert exported_files(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--format", "csv"], 2, "unknown format 'csv': openai or dpo"),
        (["--format", "json"], 2, "(the summary as JSON is --json)"),
        (["--format", "dpo", "--limit", "5"], 1, "--limit is for --format openai"),
        (["--format", "dpo", "--use-corrections"], 1, "--use-corrections is for --format openai"),
    ],
)
def test_bad_format_options(
    cli: Cli, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    done = cli("--route", ROUTE, "--output", str(tmp_path / "x.jsonl"), *args)
    assert_fails(done, code, message)
    assert exported_files(tmp_path) == []
