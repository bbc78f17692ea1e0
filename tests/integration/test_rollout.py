"""Rollout end to end: sticky users get the student first, with every fallback on the teacher.

The real gateway, loopback teacher and student servers, and the real Postgres. The student's
logprobs are those of :mod:`tests.support.upstream`: token i has probability 0.9 - 0.1*(i % 3),
so a one-token answer has mean_prob 0.9 and a three-token one about 0.796; thresholds between
those force a serve or a ``low_confidence`` fallback.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from gateway.core.confidence import mean_prob
from gateway.core.routing import bucket
from gateway.core.sampling import unit_hash
from tests.integration.conftest import ROUTE, closed_port_url, rows
from tests.support.db import execute, wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.upstream import FakeOpenAI

FALLBACKS = "shadow_gateway_fallbacks_total"
REQUESTS = "shadow_gateway_requests_total"
REASONS = ("low_confidence", "student_error", "student_timeout", "student_unavailable")
ANSWER = "the answer is 42"  # four tokens: mean_prob about 0.81


def rollout_route(
    teacher: FakeOpenAI,
    student_urls: list[str],
    *,
    name: str = ROUTE,
    student: dict[str, Any] | None = None,
    **rollout: Any,
) -> dict[str, Any]:
    """A route in rollout mode; by default everyone is chosen and any confidence is served."""
    spec = route(name, teacher.base_url, student_urls, mode="rollout")
    spec["rollout"] = {"percent": 100, "threshold": 0.0, "audit_sample": 0.0, **rollout}
    spec["student"].update(student or {})
    return spec


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=16)) as client:
        yield client


def chat(
    http: httpx.Client,
    gateway: GatewayServer,
    key: str,
    text: str = "hello",
    *,
    headers: dict[str, str] | None = None,
    model: str = ROUTE,
    **fields: Any,
) -> httpx.Response:
    response = http.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}], **fields},
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
    )
    assert response.status_code == 200, response.text
    return response


def content(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def settled(url: str, request_id: str, *columns: str) -> dict[str, Any]:
    """The row once it says who served it, how the student fared, and ``columns`` are set."""
    found: list[dict[str, Any]] = []
    needed = ("served_by", "student_status", *columns)

    def ready() -> bool:
        found[:] = rows(url, f"request_id = '{request_id}'")
        return bool(found) and all(found[0][column] is not None for column in needed)

    wait_for(ready, what=f"{', '.join(needed)} on the row of {request_id}")
    return found[0]


def confidence_of(text: str) -> float:
    """The mean_prob the gateway computes for the fake student's answer ``text``."""
    tokens = text.split(" ")
    return mean_prob([{"logprob": math.log(0.9 - 0.1 * (i % 3))} for i in range(len(tokens))])


def sse_data(raw: str) -> list[str]:
    return [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]


def chat_stream_text(events: list[str]) -> str:
    pieces = []
    for event in events:
        if event == "[DONE]":
            continue
        for choice in orjson.loads(event)["choices"]:
            pieces.append(choice["delta"].get("content") or "")
    return "".join(pieces)


def fallback_counts(gateway: GatewayServer, name: str = ROUTE) -> dict[str, float]:
    return {
        reason: gateway.metric(FALLBACKS, route=name, student="default", reason=reason)
        for reason in REASONS
    }


# -- who gets the student -----------------------------------------------------------------------


def test_percent_is_respected_over_two_thousand_users(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    percent, salt, users = 30.0, "experiment-1", [f"user-{i}" for i in range(2000)]
    gateway = make_gateway(
        [
            rollout_route(
                teacher,
                [student.base_url],
                percent=percent,
                salt=salt,
                student={"max_concurrency": 512},
            )
        ]
    )
    expected = {user for user in users if bucket(salt, f"user:{user}") < percent}
    # The hash itself is near the percent: 4 standard deviations of a binomial share.
    assert abs(len(expected) / len(users) - 0.30) < 4 * math.sqrt(0.3 * 0.7 / len(users))

    def side(user: str) -> tuple[str, str]:
        response = chat(http, gateway, app_key, f"hi from {user}", user=user)
        served_by = "student" if content(response).startswith("student:") else "teacher"
        return user, served_by

    with ThreadPoolExecutor(max_workers=8) as pool:
        sides = dict(pool.map(side, users))
    assert {user for user, served in sides.items() if served == "student"} == expected

    def all_settled() -> bool:
        found = rows(clean_db, "served_by IS NOT NULL AND student_status IS NOT NULL")
        return len(found) == len(users)

    wait_for(all_settled, timeout_s=60, what="2000 settled rows")
    logged = {orjson.loads(row["request_payload"])["user"]: row for row in rows(clean_db)}
    assert {user for user, row in logged.items() if row["served_by"] == "student"} == expected
    assert all(row["fallback_reason"] is None for row in logged.values())
    assert all(row["mode"] == "rollout" for row in logged.values())
    # Users outside the rollout are shadowed as usual: the student still sees their requests.
    assert all(row["student_status"] == "ok" for row in logged.values())
    wait_for(
        lambda: (
            gateway.metric(REQUESTS, route=ROUTE, served_by="student", status="200")
            == len(expected)
        ),
        what="the student-served count",
    )
    assert gateway.metric(REQUESTS, route=ROUTE, served_by="teacher", status="200") == len(
        users
    ) - len(expected)
    assert fallback_counts(gateway) == dict.fromkeys(REASONS, 0.0)


def test_users_keep_their_side_and_raising_the_percent_only_adds_users(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    users = [f"sticky-{i}" for i in range(60)]

    def sides(gateway: GatewayServer) -> dict[str, str]:
        seen: dict[str, str] = {}
        for _ in range(3):
            for user in users:
                response = chat(http, gateway, app_key, f"again {user}", user=user)
                side = content(response).split(":")[0]
                assert seen.setdefault(user, side) == side, f"{user} changed side"
        return seen

    first = make_gateway([rollout_route(teacher, [student.base_url], percent=40)])
    at_40 = {user for user, side in sides(first).items() if side == "student"}
    assert at_40 == {user for user in users if bucket(ROUTE, f"user:{user}") < 40}
    assert 0 < len(at_40) < len(users)

    # A restart (same salt, same stored state) keeps everyone where they were.
    first.stop()
    restarted = make_gateway([rollout_route(teacher, [student.base_url], percent=40)])
    assert {user for user, side in sides(restarted).items() if side == "student"} == at_40

    # A fresh seed at 70%: everybody who had the student keeps it, and more join.
    restarted.stop()
    execute(clean_db, "TRUNCATE route_state, route_events")
    raised = make_gateway([rollout_route(teacher, [student.base_url], percent=70)])
    at_70 = {user for user, side in sides(raised).items() if side == "student"}
    assert at_40 < at_70
    assert at_70 - at_40 == {user for user in users if 40 <= bucket(ROUTE, f"user:{user}") < 70}


def test_sticky_header_picks_the_side_when_there_is_no_user(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway(
        [rollout_route(teacher, [student.base_url], percent=50, sticky_header="x-user-id")]
    )
    ids = [f"h{i}" for i in range(40)]
    expected = {i for i in ids if bucket(ROUTE, f"header:{i}") < 50}
    assert 0 < len(expected) < len(ids)
    for _ in range(2):
        served = {
            i
            for i in ids
            if content(chat(http, gateway, app_key, headers={"X-User-Id": i})).startswith(
                "student:"
            )
        }
        assert served == expected
    # The request's `user` wins over the header.
    outside = next(i for i in ids if i not in expected)
    user = next(f"u{n}" for n in range(1000) if bucket(ROUTE, f"user:u{n}") < 50)
    response = chat(http, gateway, app_key, user=user, headers={"X-User-Id": outside})
    assert content(response).startswith("student:")


# -- the student serves -------------------------------------------------------------------------


def test_served_by_student_chat(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url], threshold=0.8)])
    student.reset_behavior(answer=lambda _text: ANSWER)
    response = chat(http, gateway, app_key, "what is it?", user="alice")

    assert response.headers["x-served-by"] == "student"
    assert "x-fallback-reason" not in response.headers
    body = response.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ANSWER}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "logprobs" not in body["choices"][0]  # the app did not ask for them
    assert body["usage"]["completion_tokens"] == 4
    assert teacher.received == []  # audit_sample 0: the teacher is never asked
    assert student.received[-1].body["logprobs"] is True  # the gateway asked, for confidence

    row = settled(clean_db, response.headers["x-request-id"])
    assert row["served_by"] == "student"
    assert row["fallback_reason"] is None
    assert row["status_code"] == 200
    assert row["mode"] == "rollout"
    assert row["student_status"] == "ok"
    assert row["student_output"] == ANSWER
    assert row["student_model"] == "student-model"
    assert row["student_confidence"] == pytest.approx(confidence_of(ANSWER))
    assert row["student_latency_ms"] > 0
    assert '"top_logprobs"' in row["student_logprobs"]
    assert orjson.loads(row["request_payload"])["user"] == "alice"
    assert row["teacher_output"] is None
    assert row["teacher_model"] is None
    assert row["agree"] is None
    wait_for(
        lambda: gateway.metric(REQUESTS, route=ROUTE, served_by="student", status="200") == 1,
        what="the served request in the metrics",
    )


@pytest.mark.parametrize("logprobs", [None, False])
def test_served_body_has_no_logprobs_unless_asked(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
    logprobs: bool | None,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url])])
    fields = {} if logprobs is None else {"logprobs": logprobs}
    response = chat(http, gateway, app_key, **fields)
    assert response.headers["x-served-by"] == "student"
    assert "logprobs" not in response.json()["choices"][0]


def test_served_body_keeps_logprobs_the_app_asked_for(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url])])
    student.reset_behavior(answer=lambda _text: ANSWER)
    response = chat(http, gateway, app_key, logprobs=True)
    assert response.headers["x-served-by"] == "student"
    tokens = response.json()["choices"][0]["logprobs"]["content"]
    assert "".join(token["token"] for token in tokens) == ANSWER
    assert tokens[0]["logprob"] == pytest.approx(math.log(0.9))
    # The student was asked for 5 alternatives (for the margin method); the app asked for none.
    assert student.received[-1].body["top_logprobs"] == 5
    assert all(token["top_logprobs"] == [] for token in tokens)
    two = chat(http, gateway, app_key, logprobs=True, top_logprobs=2)
    tops = [token["top_logprobs"] for token in two.json()["choices"][0]["logprobs"]["content"]]
    assert [len(top) for top in tops] == [2, 2, 2, 2]
    assert [top[0]["token"] for top in tops] == ["the", " answer", " is", " 42"]


def test_served_text_completion(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url])])
    auth = {"Authorization": f"Bearer {app_key}"}
    plain = http.post(
        f"{gateway.url}/v1/completions", json={"model": ROUTE, "prompt": "once"}, headers=auth
    )
    assert plain.status_code == 200, plain.text
    assert plain.headers["x-served-by"] == "student"
    assert plain.json()["choices"][0]["text"] == "student: once"
    assert "logprobs" not in plain.json()["choices"][0]
    asked = http.post(
        f"{gateway.url}/v1/completions",
        json={"model": ROUTE, "prompt": "once", "logprobs": 1},
        headers=auth,
    )
    assert asked.json()["choices"][0]["logprobs"]["tokens"] == ["student:", " once"]
    row = settled(clean_db, plain.headers["x-request-id"])
    assert (row["endpoint"], row["served_by"], row["student_output"]) == (
        "text",
        "student",
        "student: once",
    )
    assert teacher.received == []


def test_threshold_boundary_end_to_end(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    """Confidence exactly at the threshold is served; one float below it falls back."""
    exact = confidence_of(ANSWER)
    student.reset_behavior(answer=lambda _text: ANSWER)
    gateway = make_gateway(
        [
            rollout_route(teacher, [student.base_url], name="at", threshold=exact),
            rollout_route(
                teacher, [student.base_url], name="above", threshold=math.nextafter(exact, 1.0)
            ),
        ]
    )
    at = chat(http, gateway, app_key, model="at")
    assert content(at) == ANSWER
    assert at.headers["x-served-by"] == "student"
    above = chat(http, gateway, app_key, model="above")
    assert content(above) == "teacher: hello"
    assert above.headers["x-fallback-reason"] == "low_confidence"
    row = settled(clean_db, above.headers["x-request-id"])
    assert row["student_confidence"] == exact


# -- the teacher answers in the student's place -------------------------------------------------


def test_low_confidence_falls_back_and_compares(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url], threshold=0.95)])
    teacher.reset_behavior(answer=lambda _text: "The answer is 42.")
    student.reset_behavior(answer=lambda _text: ANSWER)
    response = chat(http, gateway, app_key)

    assert content(response) == "The answer is 42."
    assert response.headers["x-served-by"] == "teacher"
    assert response.headers["x-fallback-reason"] == "low_confidence"
    assert response.content == teacher.sent[-1]  # the teacher's bytes, as in shadow mode

    row = settled(clean_db, response.headers["x-request-id"], "agree", "teacher_output")
    assert row["served_by"] == "teacher"
    assert row["fallback_reason"] == "low_confidence"
    assert row["student_status"] == "ok"
    assert row["student_output"] == ANSWER
    assert row["student_confidence"] == pytest.approx(confidence_of(ANSWER))
    assert row["teacher_output"] == "The answer is 42."
    assert row["agree"] is True  # the student's withheld answer is still measured
    assert row["agreement_score"] == 1.0
    assert len(student.received) == 1  # judged from the first call, not asked twice
    assert fallback_counts(gateway) == {**dict.fromkeys(REASONS, 0.0), "low_confidence": 1.0}


@pytest.mark.parametrize(
    ("behavior", "outcome"),
    [({"status": 500}, "http_error"), ({"garbage": True}, "invalid_response")],
)
def test_student_error_falls_back(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
    behavior: dict[str, Any],
    outcome: str,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url])])
    student.reset_behavior(**behavior)
    response = chat(http, gateway, app_key)
    assert content(response) == "teacher: hello"
    assert response.headers["x-fallback-reason"] == "student_error"
    row = settled(clean_db, response.headers["x-request-id"], "teacher_output")
    assert row["served_by"] == "teacher"
    assert row["fallback_reason"] == "student_error"
    assert row["student_status"] == outcome
    assert row["student_error"]
    assert row["student_output"] is None
    assert row["agree"] is None
    assert fallback_counts(gateway)["student_error"] == 1


def test_student_timeout_falls_back_within_the_budget(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    budget_s, teacher_s = 0.3, 0.1
    gateway = make_gateway(
        [
            rollout_route(
                teacher,
                [student.base_url],
                student_budget_s=budget_s,
                # the budget, not the student's timeout, applies; and five timeouts in a row
                # must not open the circuit breaker before the comparison below
                student={"timeout_s": 5, "breaker_failures": 100},
            )
        ]
    )
    teacher.reset_behavior(latency_s=teacher_s)
    student.reset_behavior(hang=True)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        response = chat(http, gateway, app_key)
        timings.append(time.perf_counter() - started)
        assert content(response) == "teacher: hello"
        assert response.headers["x-served-by"] == "teacher"
        assert response.headers["x-fallback-reason"] == "student_timeout"
    row = settled(clean_db, response.headers["x-request-id"], "teacher_output")
    assert row["fallback_reason"] == "student_timeout"
    assert row["student_status"] == "timeout"
    assert row["student_error"] == f"no answer within {budget_s:g} s"
    assert row["teacher_latency_ms"] >= teacher_s * 1000
    assert fallback_counts(gateway)["student_timeout"] == 5
    student.release_hangs()

    # For comparison, on the same gateway: a student that answers, and the teacher alone.
    student.reset_behavior()
    served = []
    for _ in range(5):
        started = time.perf_counter()
        assert chat(http, gateway, app_key).headers["x-served-by"] == "student"
        served.append(time.perf_counter() - started)
    print(
        f"\nrollout worst case (student hangs; budget {budget_s} s, teacher {teacher_s} s): "
        f"min {min(timings) * 1000:.1f} ms, median {statistics.median(timings) * 1000:.1f} ms, "
        f"max {max(timings) * 1000:.1f} ms; expected about {(budget_s + teacher_s) * 1000:.0f} ms"
        f"\nstudent served (fast student): median {statistics.median(served) * 1000:.1f} ms"
    )


def test_student_budget_defaults_to_the_student_timeout(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url], student={"timeout_s": 0.4})])
    student.reset_behavior(hang=True)
    response = chat(http, gateway, app_key)
    assert response.headers["x-fallback-reason"] == "student_timeout"
    row = settled(clean_db, response.headers["x-request-id"])
    assert row["student_error"] == "no answer within 0.4 s"
    student.release_hangs()


def test_student_unavailable_when_down(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [closed_port_url()])])
    response = chat(http, gateway, app_key)
    assert content(response) == "teacher: hello"
    assert response.headers["x-fallback-reason"] == "student_unavailable"
    row = settled(clean_db, response.headers["x-request-id"], "teacher_output")
    assert row["fallback_reason"] == "student_unavailable"
    assert row["student_status"] == "unreachable"
    assert fallback_counts(gateway)["student_unavailable"] == 1


def test_student_unavailable_when_its_concurrency_is_used_up(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway(
        [
            rollout_route(
                teacher,
                [student.base_url],
                student_budget_s=10,
                student={"max_concurrency": 1, "timeout_s": 10},
            )
        ]
    )
    student.reset_behavior(hang=True)
    first: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: first.append(chat(http, gateway, app_key, "first")))
    holder.start()
    try:
        wait_for(lambda: student.in_progress == 1, what="the first call to hold the only slot")
        second = chat(http, gateway, app_key, "second")
        assert content(second) == "teacher: second"
        assert second.headers["x-fallback-reason"] == "student_unavailable"
        row = settled(clean_db, second.headers["x-request-id"])
        assert row["fallback_reason"] == "student_unavailable"
        assert row["student_status"] == "dropped"
        dropped = gateway.metric(
            "shadow_gateway_shadow_dropped_total", route=ROUTE, student="default"
        )
        assert dropped == 1
    finally:
        student.release_hangs()
        holder.join(timeout=15)
    # The call that held the slot still gets its (student) answer once the student replies.
    assert content(first[0]) == "student: first"
    assert first[0].headers["x-served-by"] == "student"
    assert fallback_counts(gateway)["student_unavailable"] == 1


# -- audit sampling -----------------------------------------------------------------------------


def test_audit_sample_one_measures_every_served_answer(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url], audit_sample=1.0)])
    teacher.reset_behavior(answer=lambda text: f"The answer to {text}.")
    student.reset_behavior(
        answer=lambda text: "no idea" if "hard" in text else f"the answer to {text}"
    )
    easy = [chat(http, gateway, app_key, f"easy {i}", stream=i == 0) for i in range(3)]
    hard = chat(http, gateway, app_key, "hard one")
    assert all(r.headers["x-served-by"] == "student" for r in [*easy, hard])

    for response in easy:
        row = settled(clean_db, response.headers["x-request-id"], "agree", "teacher_output")
        assert row["served_by"] == "student"  # the audit does not change who served
        assert row["fallback_reason"] is None
        assert row["teacher_model"] == "teacher-model"
        assert row["teacher_status"] == 200
        assert row["teacher_output"].startswith("The answer to easy")
        assert row["agree"] is True
        assert row["agreement_score"] == 1.0
        assert row["student_confidence"] > 0
    row = settled(clean_db, hard.headers["x-request-id"], "agree")
    assert (row["served_by"], row["agree"], row["teacher_output"]) == (
        "student",
        False,
        "The answer to hard one.",
    )
    audits = [received.body for received in teacher.received]
    assert len(audits) == 4
    assert all(body["model"] == "teacher-model" and body["stream"] is False for body in audits)
    assert all("stream_options" not in body for body in audits)
    agreement = "shadow_gateway_agreement_total"
    labels = {"route": ROUTE, "student": "default", "dimension": "all", "slice": "all"}
    assert gateway.metric(agreement, verdict="agree", **labels) == 3
    assert gateway.metric(agreement, verdict="disagree", **labels) == 1


def test_a_failed_audit_is_recorded_and_changes_nothing_for_the_app(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url], audit_sample=1.0)])
    teacher.reset_behavior(status=500)
    response = chat(http, gateway, app_key)
    assert content(response) == "student: hello"
    row = settled(clean_db, response.headers["x-request-id"], "teacher_status")
    assert row["served_by"] == "student"
    assert row["status_code"] == 200
    assert row["teacher_status"] == 500
    assert row["teacher_error"]
    assert row["agree"] is None


def test_audit_sample_is_a_fraction_of_served_requests(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url], audit_sample=0.25)])
    ids = [chat(http, gateway, app_key, f"q{i}").headers["x-request-id"] for i in range(200)]
    # Which ones are audited is a function of the request id, like shadow sampling.
    audited = {request_id for request_id in ids if unit_hash(f"{request_id}:audit") < 0.25}
    assert abs(len(audited) / len(ids) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(ids))
    wait_for(lambda: len(teacher.received) == len(audited), what="the audit calls")

    def judged() -> bool:
        return len(rows(clean_db, "agree IS NOT NULL")) == len(audited)

    wait_for(judged, what="the audited rows")
    found = {row["request_id"] for row in rows(clean_db, "teacher_output IS NOT NULL")}
    assert found == audited
    assert {row["served_by"] for row in rows(clean_db)} == {"student"}


def test_audit_sample_zero_never_calls_the_teacher(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url], audit_sample=0.0)])
    ids = [chat(http, gateway, app_key, f"q{i}").headers["x-request-id"] for i in range(5)]
    wait_for(
        lambda: gateway.metric(REQUESTS, route=ROUTE, served_by="student", status="200") == 5,
        what="five served requests",
    )
    for request_id in ids:
        row = settled(clean_db, request_id)
        assert row["served_by"] == "student"
        assert row["teacher_output"] is None
        assert row["teacher_model"] is None
        assert row["agree"] is None
    assert teacher.received == []


# -- streaming ----------------------------------------------------------------------------------


def test_streamed_request_served_by_the_student(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url])])
    student.reset_behavior(answer=lambda _text: ANSWER)
    response = chat(
        http, gateway, app_key, stream=True, stream_options={"include_usage": True}, logprobs=True
    )
    assert response.headers["x-served-by"] == "student"
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    assert chat_stream_text(events) == ANSWER
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    # The student was asked once, without streaming, so its whole answer could be judged.
    assert student.received[-1].body["stream"] is False
    assert "stream_options" not in student.received[-1].body

    row = settled(clean_db, response.headers["x-request-id"])
    assert (row["served_by"], row["stream"], row["student_output"]) == ("student", True, ANSWER)
    wait_for(
        lambda: gateway.metric(REQUESTS, route=ROUTE, served_by="student", status="200") == 1,
        what="the served stream in the metrics",
    )
    assert teacher.received == []


def test_streamed_fallback_relays_the_teachers_stream(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url], threshold=0.99)])
    response = chat(http, gateway, app_key, "tell me a story", stream=True)
    assert response.headers["x-served-by"] == "teacher"
    assert response.headers["x-fallback-reason"] == "low_confidence"
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    assert chat_stream_text(events) == "teacher: tell me a story"
    assert teacher.received[-1].body["stream"] is True
    row = settled(clean_db, response.headers["x-request-id"], "teacher_output", "agree")
    assert (row["stream"], row["fallback_reason"]) == (True, "low_confidence")
    assert row["teacher_output"] == "teacher: tell me a story"
    assert row["student_output"] == "student: tell me a story"
    assert row["agree"] is False


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_count_served_and_fallback_traffic(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    # threshold 0.85: a one-token answer (0.9) is served, a three-token one (0.796) is not
    gateway = make_gateway(
        [
            rollout_route(teacher, [student.base_url], threshold=0.85, student_budget_s=0.2),
            rollout_route(teacher, [closed_port_url()], name="down", threshold=0.85),
        ]
    )
    student.reset_behavior(answer=lambda _text: "yes")
    served = [chat(http, gateway, app_key) for _ in range(4)]
    student.reset_behavior(answer=lambda _text: "not so sure")
    low = [chat(http, gateway, app_key) for _ in range(3)]
    student.reset_behavior(status=503)
    errors = [chat(http, gateway, app_key) for _ in range(2)]
    student.reset_behavior(hang=True)
    timeouts = [chat(http, gateway, app_key)]
    student.release_hangs()
    down = [chat(http, gateway, app_key, model="down") for _ in range(2)]

    def reasons(responses: list[httpx.Response]) -> set[str | None]:
        return {response.headers.get("x-fallback-reason") for response in responses}

    assert reasons(served) == {None}
    assert reasons(low) == {"low_confidence"}
    assert reasons(errors) == {"student_error"}
    assert reasons(timeouts) == {"student_timeout"}
    assert reasons(down) == {"student_unavailable"}

    assert fallback_counts(gateway) == {
        "low_confidence": 3.0,
        "student_error": 2.0,
        "student_timeout": 1.0,
        "student_unavailable": 0.0,
    }
    assert fallback_counts(gateway, "down") == {
        **dict.fromkeys(REASONS, 0.0),
        "student_unavailable": 2.0,
    }
    wait_for(
        lambda: gateway.metric(REQUESTS, route=ROUTE, served_by="student", status="200") == 4,
        what="four student-served requests",
    )
    assert gateway.metric(REQUESTS, route=ROUTE, served_by="teacher", status="200") == 6
    assert gateway.metric(REQUESTS, route="down", served_by="teacher", status="200") == 2
    assert gateway.metric("shadow_gateway_rollout_percent", route=ROUTE) == 100

    def counted() -> bool:
        found = rows(clean_db, "served_by IS NOT NULL AND student_status IS NOT NULL")
        return len(found) == 12

    wait_for(counted, what="twelve settled rows")
    tally: dict[tuple[str, str | None], int] = {}
    for row in rows(clean_db):
        key = (row["served_by"], row["fallback_reason"])
        tally[key] = tally.get(key, 0) + 1
    assert tally == {
        ("student", None): 4,
        ("teacher", "low_confidence"): 3,
        ("teacher", "student_error"): 2,
        ("teacher", "student_timeout"): 1,
        ("teacher", "student_unavailable"): 2,
    }


# -- the openai SDK -----------------------------------------------------------------------------


def test_openai_sdk_gets_the_students_answer_and_stream(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [student.base_url])])
    student.reset_behavior(answer=lambda _text: ANSWER)
    client = sdk(gateway, app_key)
    messages: Any = [{"role": "user", "content": "what is it?"}]

    raw = client.chat.completions.with_raw_response.create(
        model=ROUTE, messages=messages, user="alice"
    )
    assert raw.headers["x-served-by"] == "student"
    completion = raw.parse()
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].logprobs is None
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4

    with_logprobs = client.chat.completions.create(
        model=ROUTE, messages=messages, logprobs=True, top_logprobs=2
    )
    assert with_logprobs.choices[0].logprobs is not None
    tokens = with_logprobs.choices[0].logprobs.content or []
    assert "".join(token.token for token in tokens) == ANSWER
    assert all(len(token.top_logprobs) == 2 for token in tokens)

    with client.chat.completions.with_streaming_response.create(
        model=ROUTE, messages=messages, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["x-served-by"] == "student"
        chunks = list(response.parse())
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == ANSWER
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert teacher.received == []


def test_a_teacher_error_after_a_fallback_still_says_why_the_student_did_not_answer(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    clean_db: str,
    http: httpx.Client,
) -> None:
    gateway = make_gateway([rollout_route(teacher, [closed_port_url()])])
    teacher.reset_behavior(status=503)
    response = http.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": ROUTE, "messages": [{"role": "user", "content": "hello"}]},
        headers={"Authorization": f"Bearer {app_key}"},
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "boom"
    assert response.headers["x-fallback-reason"] == "student_unavailable"
    row = settled(clean_db, response.headers["x-request-id"], "teacher_status")
    assert row["fallback_reason"] == "student_unavailable"
