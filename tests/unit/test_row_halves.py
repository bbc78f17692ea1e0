"""Every half of a row names only columns its table has.

A row is built in halves by the functions of :mod:`gateway.shadow.records` (and a verdict's
columns, and an answer row from a student half), and the writer lays each batch out by the
table's columns: a key that is not a column would be dropped without a word. So every
builder is run here, with every optional part present, and its keys checked against the
table definitions.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from gateway.clients.upstream import StudentReply
from gateway.core.agreement import Agreement
from gateway.db.tables import requests, student_answers
from gateway.shadow.analysis import Verdict
from gateway.shadow.answers import answer_row
from gateway.shadow.records import (
    CLIENT_GONE,
    RowIdentity,
    read_answer,
    student_half,
    student_served,
    student_skipped,
    teacher_audit,
    teacher_half,
)

REQUESTS = {column.name for column in requests.columns}
ANSWERS = {column.name for column in student_answers.columns}
NOW = datetime(2026, 12, 7, tzinfo=UTC)
IDENTITY = RowIdentity("req_1", "r", "chat", NOW, "rollout", {"tier": "free"}, 12.5, "app-1")
ANSWER = orjson.dumps(
    {
        "model": "m",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "hi",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                "logprobs": {"content": [{"token": "hi", "logprob": -0.1, "top_logprobs": []}]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)


def test_every_half_of_a_requests_row_names_only_its_columns() -> None:
    answer = read_answer("chat", ANSWER)
    teacher = teacher_half(
        IDENTITY,
        payload={"messages": []},
        teacher_model="t",
        stream=True,
        status_code=200,
        teacher_status=200,
        answer=answer,
        teacher_latency_s=0.1,
        overhead_s=0.001,
        completed_at=NOW,
        error_type="stream_error",
        error_message="cut",
        fallback_reason="low_confidence",
        stream_error={"error": "x"},
    )
    student, output = student_half(
        IDENTITY,
        student_model="s",
        student_url="http://s/v1",
        reply=StudentReply("ok", 200, ANSWER, 0.05),
        confidence=lambda _logprobs: 0.9,
    )
    assert output is not None
    verdict = Verdict(0.9, Agreement(0.4, False, "tool_arguments_mismatch", {"k": 1})).columns()
    halves = {
        "teacher_half": teacher,
        "student_half": {**student, **verdict},
        "student_skipped": student_skipped(IDENTITY, "dropped", "full"),
        "student_served": student_served(
            IDENTITY, "default", payload={}, stream=False, completed_at=NOW, overhead_s=0.001
        ),
        "teacher_audit": teacher_audit(
            IDENTITY, teacher_model="t", status=200, answer=answer, latency_s=0.1, error=None
        ),
        "CLIENT_GONE": CLIENT_GONE,
    }
    for name, half in halves.items():
        assert set(half) <= REQUESTS, (name, set(half) - REQUESTS)
    # together they fill every column but the ones only the database sets
    filled = set().union(*halves.values())
    assert REQUESTS - filled == set()


def test_an_answer_row_names_only_student_answers_columns() -> None:
    student, _ = student_half(
        IDENTITY,
        student_model="s",
        student_url="http://s/v1",
        reply=StudentReply("ok", 200, ANSWER, 0.05),
        confidence=lambda _logprobs: 0.9,
    )
    verdict = Verdict(0.9, Agreement(1.0, True)).columns()
    row = answer_row({**student, **verdict}, "small", "replay")
    assert set(row) <= ANSWERS
    assert ANSWERS - set(row) == set()  # every column of an answer is known to the gateway
    assert (row["student"], row["source"]) == ("small", "replay")
