"""Truth beyond agreement, through HTTP and the CLI: app feedback, the review queue, the
quality report.

Live traffic through the real gateway (a loopback teacher, one loopback student, the official
SDK), labelled by tier; the student is wrong on every even ``pro`` prompt, so the
disagreements are known. Feedback goes to ``POST /v1/feedback``, tasks are drawn with
``review sample``, judged through ``/admin/reviews``; the quality report is checked against
counts the test computes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROUTE
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.process import run_command
from tests.support.upstream import FakeOpenAI

REVIEWER, SRE, ANALYST = "reviewer-secret", "sre-secret", "analyst-secret"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "alice", "key_env": "SGW_TEST_REVIEWER_KEY", "scopes": ["reviewer"]},
    {"name": "ops", "key_env": "SGW_TEST_SRE_KEY", "scopes": ["sre"]},
    {"name": "ana", "key_env": "SGW_TEST_ANALYST_KEY", "scopes": ["analyst"]},
]
PER_TIER = {"free": 6, "pro": 6}
MAX_BODY = 4096


def student_answer(text: str) -> str:
    tier, number = text.split()
    return "wrong" if tier == "pro" and int(number) % 2 == 0 else text.upper()


@pytest.fixture
def served(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[GatewayServer, dict[str, str]]:
    """A gateway that answered every tier's prompts; the request id of each prompt."""
    for env, value in (
        ("SGW_TEST_REVIEWER_KEY", REVIEWER),
        ("SGW_TEST_SRE_KEY", SRE),
        ("SGW_TEST_ANALYST_KEY", ANALYST),
    ):
        monkeypatch.setenv(env, value)
    teacher.reset_behavior(answer=lambda text: text.upper())
    student.reset_behavior(answer=student_answer)
    spec = route(ROUTE, teacher.base_url, [student.base_url], redaction={"emails": True})
    gateway = make_gateway(
        [spec],
        auth={"keys": KEYS},
        server={"max_body_bytes": MAX_BODY},
        rate_limits={"keys": {"tests": {"requests_per_s": 1000, "burst": 1000}}},
    )
    client = sdk(gateway, app_key)
    ids = {}
    for tier, count in PER_TIER.items():
        for i in range(count):
            raw = client.chat.completions.with_raw_response.create(
                model=ROUTE,
                messages=[{"role": "user", "content": f"{tier} {i}"}],
                extra_headers={"X-Slice-Tier": tier},
            )
            ids[f"{tier} {i}"] = raw.headers["x-request-id"]
    total = sum(PER_TIER.values())
    wait_for(
        lambda: fetch(clean_db, "SELECT count(agree) AS n FROM requests")[0]["n"] == total,
        what=f"{total} compared rows",
    )
    return gateway, ids


def post(gateway: GatewayServer, path: str, key: str, body: Any, **options: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}{path}",
        content=body if isinstance(body, bytes) else json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
        **options,
    )


def get(gateway: GatewayServer, path: str, key: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def cli(gateway: GatewayServer, *args: str) -> Any:
    """The CLI on the gateway's config and database (make_gateway set DATABASE_URL)."""
    return run_command(gateway.config_path, os.environ["DATABASE_URL"], *args)


# -- feedback -------------------------------------------------------------------------------


def test_feedback_is_stored_redacted_and_several_per_request(
    served: tuple[GatewayServer, dict[str, str]], app_key: str, clean_db: str
) -> None:
    gateway, ids = served
    request_id = ids["free 1"]
    first = post(
        gateway,
        "/v1/feedback",
        app_key,
        {"request_id": request_id, "correct": False, "source": "thumbs"},
    )
    assert first.status_code == 201, first.text
    assert first.json()["object"] == "feedback"
    assert first.json()["answered_by"] == "teacher"
    second = post(
        gateway,
        "/v1/feedback",
        app_key,
        {
            "request_id": request_id,
            "score": 0.25,
            "label": "tone",
            "comment": "mail me at someone@example.com",
            "corrected_output": "FREE ONE (ask someone@example.com)",
            "source": "grader",
        },
    )
    assert second.status_code == 201, second.text
    rows = fetch(
        clean_db,
        "SELECT * FROM feedback WHERE request_id = $1 ORDER BY id",
        request_id,
    )
    assert [row["source"] for row in rows] == ["thumbs", "grader"]
    assert rows[0]["correct"] is False
    assert rows[0]["key_name"] == "tests"
    assert rows[1]["score"] == 0.25
    assert rows[1]["label"] == "tone"
    assert "someone@example.com" not in rows[1]["comment"]
    assert "someone@example.com" not in rows[1]["corrected_output"]
    assert rows[1]["route"] == ROUTE
    request = fetch(clean_db, "SELECT created_at FROM requests WHERE request_id = $1", request_id)
    assert rows[0]["request_created_at"] == request[0]["created_at"]
    counted = gateway.metrics.feedback.labels(ROUTE, "teacher")._value.get()
    assert counted == 2


def test_feedback_bad_input_gets_openai_errors_and_writes_nothing(
    served: tuple[GatewayServer, dict[str, str]], app_key: str, clean_db: str
) -> None:
    gateway, ids = served
    request_id = ids["free 0"]
    unknown = post(gateway, "/v1/feedback", app_key, {"request_id": "nope", "correct": True})
    assert_openai_error(unknown, 404, "request_id")
    ours_but_unknown = post(
        gateway, "/v1/feedback", app_key, {"request_id": "req_" + "0" * 32, "correct": True}
    )
    assert_openai_error(ours_but_unknown, 404, "request_id")
    for body, param in (
        ({"request_id": request_id, "score": 1.5}, "score"),
        ({"request_id": request_id, "correct": "yes"}, "correct"),
        ({"request_id": request_id, "verdict": "good"}, "verdict"),
        ({"correct": True}, "request_id"),
        ({"request_id": request_id}, None),
    ):
        assert_openai_error(post(gateway, "/v1/feedback", app_key, body), 400, param)
    assert_openai_error(post(gateway, "/v1/feedback", app_key, b"{not json"), 400)
    too_big = {"request_id": request_id, "corrected_output": "x" * (MAX_BODY + 1)}
    assert_openai_error(post(gateway, "/v1/feedback", app_key, too_big), 413)
    no_key = httpx.post(f"{gateway.url}/v1/feedback", json={"request_id": request_id})
    assert_openai_error(no_key, 401)
    # a key without the app scope
    assert_openai_error(
        post(gateway, "/v1/feedback", REVIEWER, {"request_id": request_id, "correct": True}), 403
    )
    assert fetch(clean_db, "SELECT count(*) AS n FROM feedback")[0]["n"] == 0


def test_feedback_is_rate_limited_like_the_rest_of_v1(
    make_gateway: Callable[..., GatewayServer], app_key: str, teacher: FakeOpenAI
) -> None:
    gateway = make_gateway(
        [route(ROUTE, teacher.base_url, None, mode="teacher")],
        rate_limits={"keys": {"tests": {"requests_per_s": 0.01, "burst": 2}}},
    )
    statuses = [
        post(gateway, "/v1/feedback", app_key, {"request_id": "x", "correct": True}).status_code
        for _ in range(3)
    ]
    assert statuses == [404, 404, 429]


# -- the review queue ------------------------------------------------------------------------


def test_review_sample_is_stratified_per_slice_and_never_draws_a_request_twice(
    served: tuple[GatewayServer, dict[str, str]], clean_db: str
) -> None:
    gateway, _ = served
    drawn = cli(gateway, "review", "sample", ROUTE, "--per-slice", "2", "--dimension", "tier")
    assert drawn.returncode == 0, drawn.stderr
    assert "drew 4 teacher answers" in drawn.stdout
    tasks = fetch(clean_db, "SELECT slices ->> 'tier' AS tier, student FROM reviews")
    assert sorted(task["tier"] for task in tasks) == ["free", "free", "pro", "pro"]
    assert {task["student"] for task in tasks} == {"default"}
    # only disagreements: the three even pro prompts the student got wrong, less those drawn
    again = cli(
        gateway, "review", "sample", ROUTE, "--per-slice", "10", "--disagreements-only", "--json"
    )
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    already = fetch(
        clean_db,
        "SELECT count(*) AS n FROM reviews WHERE disagreement AND batch <> $1",
        result["batch"],
    )[0]["n"]
    assert result["created"] == 3 - already
    rows = fetch(clean_db, "SELECT request_id, disagreement FROM reviews")
    assert len({row["request_id"] for row in rows}) == len(rows)  # never twice
    assert fetch(clean_db, "SELECT count(*) AS n FROM reviews WHERE disagreement")[0]["n"] == 3


def test_review_sample_bad_arguments(served: tuple[GatewayServer, dict[str, str]]) -> None:
    gateway, _ = served
    for args, code, words in (
        (("--per-slice", "0"), 2, "at least 1"),
        (("--student", "ghost"), 1, "no student 'ghost'"),
        (("--dimension", "colour"), 1, "no slice dimension 'colour'"),
        (("--since", "yesterday-ish"), 2, "not a time for since"),
    ):
        result = cli(gateway, "review", "sample", ROUTE, *args)
        assert result.returncode == code, (args, result.stderr)
        assert words in result.stderr
    unknown = cli(gateway, "review", "sample", "no-such-route")
    assert unknown.returncode == 1
    assert "no-such-route" in unknown.stderr


def test_verdicts_through_the_api_groups_history_and_scopes(
    served: tuple[GatewayServer, dict[str, str]], clean_db: str
) -> None:
    gateway, _ = served
    drawn = post(
        gateway,
        "/admin/reviews/sample",
        REVIEWER,
        {"route": ROUTE, "per_slice": 10, "disagreements_only": True},
    )
    assert drawn.status_code == 201, drawn.text
    assert drawn.json()["created"] == 3
    listing = get(gateway, "/admin/reviews", REVIEWER, route=ROUTE)
    assert listing.status_code == 200, listing.text
    tasks = listing.json()["tasks"]
    assert listing.json()["counts"] == {"open": 3, "judged": 0}
    # the student answered "wrong" to all three: one answer pair? no, the teacher's differ
    assert all(task["students"][0]["answer"] == "wrong" for task in tasks)
    assert all(task["group_open"] == 1 for task in tasks)
    first = tasks[0]
    assert first["prompt"].startswith("pro ")
    assert first["teacher_answer"] == first["prompt"].upper()

    judged = post(gateway, f"/admin/reviews/{first['id']}", REVIEWER, {"verdict": "both_wrong"})
    assert judged.status_code == 200, judged.text
    again = post(
        gateway,
        f"/admin/reviews/{first['id']}",
        SRE,
        {"verdict": "teacher_correct", "corrected_output": "PRO ZERO"},
    )
    assert again.status_code == 200, again.text
    detail = get(gateway, f"/admin/reviews/{first['id']}", ANALYST).json()
    assert detail["verdict"] == "teacher_correct"  # the later verdict wins
    assert detail["reviewer"] == "ops"
    assert [h["verdict"] for h in detail["history"]] == ["both_wrong", "teacher_correct"]
    assert [h["reviewer"] for h in detail["history"]] == ["alice", "ops"]
    assert detail["request_payload"]["messages"][0]["content"] == first["prompt"]

    for body, status in (
        ({"verdict": "maybe"}, 400),
        ({"verdict": "both_wrong", "extra": 1}, 400),
        ({"verdict": "both_wrong", "corrected_output": "x" * (MAX_BODY + 1)}, 413),
    ):
        assert_openai_error(post(gateway, f"/admin/reviews/{first['id']}", REVIEWER, body), status)
    assert_openai_error(
        post(gateway, "/admin/reviews/999999", REVIEWER, {"verdict": "both_wrong"}), 404
    )
    # an analyst reads but does not judge; a reviewer judges but does not change rollouts
    assert_openai_error(
        post(gateway, f"/admin/reviews/{first['id']}", ANALYST, {"verdict": "both_wrong"}), 403
    )
    assert_openai_error(
        post(gateway, f"/admin/routes/{ROUTE}/rollback", REVIEWER, {"reason": "no"}), 403
    )
    assert_openai_error(get(gateway, "/admin/reviews", "test-app-key"), 403)
    history = fetch(clean_db, "SELECT count(*) AS n FROM review_verdicts")[0]["n"]
    assert history == 2


def test_one_verdict_covers_a_group_of_the_same_answer_pair(
    served: tuple[GatewayServer, dict[str, str]],
    clean_db: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
) -> None:
    gateway, _ = served
    client = sdk(gateway, "test-app-key")
    # the same pair each time, up to case and spaces: "Same  Answer" against "other answer"
    teacher.reset_behavior(answer=lambda text: "Same  Answer")
    student.reset_behavior(
        answer=lambda text: "Other answer " if text.endswith("0") else "other  ANSWER"
    )
    for i in range(3):
        client.chat.completions.create(
            model=ROUTE,
            messages=[{"role": "user", "content": f"free {100 + i}"}],
            extra_headers={"X-Slice-Tier": "free"},
        )
    wait_for(
        lambda: (
            fetch(
                clean_db,
                "SELECT count(agree) AS n FROM requests WHERE teacher_output = 'Same  Answer'",
            )[0]["n"]
            == 3
        ),
        what="three compared rows",
    )
    drawn = cli(gateway, "review", "sample", ROUTE, "--per-slice", "100", "--json")
    assert drawn.returncode == 0, drawn.stderr
    tasks = fetch(
        clean_db,
        "SELECT v.id, v.group_key FROM reviews AS v JOIN requests AS r "
        "ON r.request_id = v.request_id WHERE r.teacher_output = 'Same  Answer' ORDER BY v.id",
    )
    assert len(tasks) == 3
    assert len({task["group_key"] for task in tasks}) == 1
    grouped = post(
        gateway,
        f"/admin/reviews/{tasks[0]['id']}",
        REVIEWER,
        {"verdict": "both_wrong", "group": True},
    )
    assert grouped.json()["judged"] == 3
    rows = fetch(
        clean_db,
        "SELECT review_id, via_review FROM review_verdicts ORDER BY review_id",
    )
    assert [row["via_review"] for row in rows] == [None, tasks[0]["id"], tasks[0]["id"]]
    listed = cli(gateway, "review", "list", ROUTE, "--status", "judged")
    assert listed.returncode == 0, listed.stderr
    assert "both_wrong" in listed.stdout


# -- the quality report ----------------------------------------------------------------------


def test_quality_report_counts_reviews_and_feedback_per_slice(
    served: tuple[GatewayServer, dict[str, str]], app_key: str, clean_db: str
) -> None:
    gateway, ids = served
    drawn = cli(gateway, "review", "sample", ROUTE, "--per-slice", "100", "--json")
    assert drawn.returncode == 0, drawn.stderr
    tasks = {
        row["prompt"]: row["id"]
        for row in fetch(
            clean_db,
            "SELECT v.id, r.request_payload -> 'messages' -> 0 ->> 'content' AS prompt "
            "FROM reviews AS v JOIN requests AS r ON r.request_id = v.request_id",
        )
    }
    # pro: the even ones (student said "wrong"): teacher right on 0 and 2, both wrong on 4;
    # two odd ones: both right
    verdicts = {
        "pro 0": "teacher_correct",
        "pro 2": "teacher_correct",
        "pro 4": "both_wrong",
        "pro 1": "both_correct",
        "pro 3": "both_correct",
        # free: the student agreed; a reviewer says both wrong once
        "free 0": "both_wrong",
        "free 1": "both_correct",
    }
    for prompt, verdict in verdicts.items():
        answer = post(gateway, f"/admin/reviews/{tasks[prompt]}", REVIEWER, {"verdict": verdict})
        assert answer.status_code == 200, answer.text
    # feedback: on free 2 and free 3 (unreviewed) the app says wrong and right; on free 1 it
    # says wrong, but the review (both correct) outranks it for the teacher
    for prompt, body in (
        ("free 2", {"correct": False}),
        ("free 3", {"score": 0.9}),
        ("free 1", {"corrected_output": "better"}),
        ("free 5", {"label": "funny"}),  # judges nothing
    ):
        answer = post(gateway, "/v1/feedback", app_key, {"request_id": ids[prompt], **body})
        assert answer.status_code == 201, answer.text

    result = cli(gateway, "report", "quality", ROUTE, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    api = get(gateway, "/admin/reports/quality", ANALYST, route=ROUTE)
    assert api.status_code == 200, api.text
    assert api.json()["overall"] == report["overall"]
    slices = {(line["dimension"], line["value"]): line["subjects"] for line in report["slices"]}

    pro_teacher = slices[("tier", "pro")]["teacher"]
    assert (pro_teacher["judged"], pro_teacher["wrong"]) == (5, 1)
    pro_student = slices[("tier", "pro")]["default"]
    assert (pro_student["judged"], pro_student["wrong"]) == (5, 3)
    assert pro_student["reviewed_disagreements"] == 3
    assert pro_student["student_right_in_disagreements"]["rate"] == 0.0
    free_teacher = slices[("tier", "free")]["teacher"]
    # reviews: free 0 wrong, free 1 right; feedback: free 2 wrong, free 3 right
    assert (free_teacher["judged"], free_teacher["wrong"]) == (4, 2)
    assert (free_teacher["from_reviews"], free_teacher["from_feedback"]) == (2, 2)
    overall = report["overall"]["teacher"]
    assert (overall["judged"], overall["wrong"]) == (9, 3)
    low, high = overall["error"]["ci_low"], overall["error"]["ci_high"]
    assert low < 3 / 9 < high
    table = cli(gateway, "report", "quality", ROUTE)
    assert table.returncode == 0
    assert "tier=pro" in table.stdout


def test_quality_report_with_nothing_judged_says_so(
    served: tuple[GatewayServer, dict[str, str]],
) -> None:
    gateway, _ = served
    result = cli(gateway, "report", "quality", ROUTE)
    assert result.returncode == 1
    assert "review sample" in result.stderr
    assert_openai_error(get(gateway, "/admin/reports/quality", ANALYST, route=ROUTE), 404)


def test_feedback_on_a_student_served_answer_concerns_that_student(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    spec = route(ROUTE, teacher.base_url, [student.base_url], mode="rollout")
    spec["rollout"] = {"percent": 100, "threshold": 0.0, "audit_sample": 0.0}
    gateway = make_gateway([spec])
    raw = sdk(gateway, app_key).chat.completions.with_raw_response.create(
        model=ROUTE, messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.headers["x-served-by"] == "student"
    request_id = raw.headers["x-request-id"]
    # sent at once: the row may not be written yet, and the gateway waits for it
    answer = post(gateway, "/v1/feedback", app_key, {"request_id": request_id, "correct": False})
    assert answer.status_code == 201, answer.text
    assert answer.json()["answered_by"] == "default"
    row = fetch(clean_db, "SELECT served_student FROM requests WHERE request_id = $1", request_id)
    assert row[0]["served_student"] == "default"
