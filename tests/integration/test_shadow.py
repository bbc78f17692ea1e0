"""The student never touches the app's answer: down, hanging, erroring, or over its bound."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from tests.integration.conftest import ROUTE, closed_port_url, complete_row, rows
from tests.support.db import wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.upstream import FakeOpenAI

MESSAGES = [{"role": "user", "content": "hello"}]
STUDENT = {"route": ROUTE, "student": "default"}  # the one student of a `student:` route


def test_student_down_changes_nothing_for_the_app(
    make_gateway: Callable[..., GatewayServer], app_key: str, teacher: FakeOpenAI, clean_db: str
) -> None:
    gateway = make_gateway([route(ROUTE, teacher.base_url, [closed_port_url()])])
    raw = sdk(gateway, app_key).chat.completions.with_raw_response.create(
        model=ROUTE, messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content == "teacher: hello"
    row = complete_row(clean_db, raw.headers["x-request-id"])
    assert row["student_status"] == "unreachable"
    assert row["student_error"]
    assert row["teacher_output"] == "teacher: hello"
    assert (
        gateway.metric("shadow_gateway_shadow_calls_total", **STUDENT, outcome="unreachable") == 1
    )


def test_hanging_student_does_not_delay_the_answer(
    gateway: GatewayServer, app_key: str, student: FakeOpenAI, clean_db: str
) -> None:
    student.reset_behavior(hang=True)
    raw = sdk(gateway, app_key).chat.completions.with_raw_response.create(
        model=ROUTE, messages=MESSAGES
    )
    # The app has its answer while the student is still sitting on the shadow call.
    assert raw.parse().choices[0].message.content == "teacher: hello"
    wait_for(lambda: student.in_progress == 1, what="the shadow call to reach the student")
    request_id = raw.headers["x-request-id"]
    wait_for(lambda: bool(rows(clean_db, f"request_id = '{request_id}'")), what="teacher half")
    teacher_half = rows(clean_db, f"request_id = '{request_id}'")
    assert teacher_half[0]["student_status"] is None  # still in flight
    # The route's student timeout_s (1 s) ends the call; the row is completed then.
    row = complete_row(clean_db, request_id)
    assert row["student_status"] == "timeout"
    student.release_hangs()


def test_student_errors_and_garbage_are_recorded(
    gateway: GatewayServer, app_key: str, student: FakeOpenAI, clean_db: str
) -> None:
    client = sdk(gateway, app_key)
    student.reset_behavior(status=500)
    failed = client.chat.completions.with_raw_response.create(model=ROUTE, messages=MESSAGES)
    row = complete_row(clean_db, failed.headers["x-request-id"])
    assert row["student_status"] == "http_error"
    assert row["student_http_status"] == 500
    assert row["teacher_output"] == "teacher: hello"

    student.reset_behavior(garbage=True)
    garbage = client.chat.completions.with_raw_response.create(model=ROUTE, messages=MESSAGES)
    row = complete_row(clean_db, garbage.headers["x-request-id"])
    assert row["student_status"] == "invalid_response"
    assert "not a completion" in row["student_error"]


def test_concurrency_bound_drops_and_counts(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["student"]["max_concurrency"] = 2
    spec["student"]["timeout_s"] = 30
    gateway = make_gateway([spec])
    student.reset_behavior(hang=True)
    client = sdk(gateway, app_key)
    for _ in range(5):
        assert client.chat.completions.create(model=ROUTE, messages=MESSAGES).choices
    wait_for(lambda: student.in_progress == 2, what="two shadow calls at the student")
    assert gateway.metric("shadow_gateway_shadow_dropped_total", **STUDENT) == 3
    wait_for(lambda: len(rows(clean_db, "student_status = 'dropped'")) == 3, what="3 dropped rows")
    student.release_hangs()
    wait_for(lambda: len(rows(clean_db, "student_status = 'ok'")) == 2, what="2 shadowed rows")


def test_sampling_and_teacher_mode(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    gateway = make_gateway(
        [
            route("never", teacher.base_url, [student.base_url], shadow_sample=0.0),
            route("killed", teacher.base_url, [student.base_url], mode="teacher"),
            route("bare", teacher.base_url, None, mode="teacher"),
        ]
    )
    client = sdk(gateway, app_key)
    for name in ("never", "killed", "bare"):
        client.chat.completions.create(model=name, messages=MESSAGES)
    wait_for(lambda: len(rows(clean_db)) == 3, what="three rows")
    statuses = {row["route"]: row["student_status"] for row in rows(clean_db)}
    assert statuses == {"never": "not_sampled", "killed": "disabled", "bare": "disabled"}
    assert student.received == []


def test_round_robin_over_student_urls(
    make_gateway: Callable[..., GatewayServer], app_key: str, teacher: FakeOpenAI, clean_db: str
) -> None:
    first, second = FakeOpenAI("s1").start(), FakeOpenAI("s2").start()
    try:
        gateway = make_gateway([route(ROUTE, teacher.base_url, [first.base_url, second.base_url])])
        client = sdk(gateway, app_key)
        for _ in range(4):
            client.chat.completions.create(model=ROUTE, messages=MESSAGES)
        wait_for(lambda: len(first.received) + len(second.received) == 4, what="4 shadow calls")
        assert len(first.received) == len(second.received) == 2
    finally:
        first.stop()
        second.stop()


def test_circuit_breaker_stops_calling_a_failing_student_and_probes_it_back(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="shadow_gateway.shadow")
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["student"].update(breaker_failures=2, breaker_cooldown_s=0.5)
    gateway = make_gateway([spec])
    client = sdk(gateway, app_key)
    student.reset_behavior(status=503)

    def ask() -> None:
        assert client.chat.completions.create(model=ROUTE, messages=MESSAGES).choices

    for _ in range(2):
        ask()
        wait_for(
            lambda: len(rows(clean_db, "student_status IS NOT NULL")) == len(student.received),
            what="the failed call's row",
        )
    calls = len(student.received)
    for _ in range(3):
        ask()
    wait_for(
        lambda: len(rows(clean_db, "student_status = 'circuit_open'")) == 3,
        what="three skipped calls",
    )
    assert len(student.received) == calls  # the failing student was left alone
    assert gateway.metric("shadow_gateway_student_circuit_open", **STUDENT) == 1
    assert gateway.metric("shadow_gateway_circuit_skipped_total", **STUDENT) == 3

    student.reset_behavior()  # it recovers; after the cooldown one probe closes the breaker
    time.sleep(0.6)
    ask()
    wait_for(lambda: len(student.received) == calls + 1, what="the probe")
    wait_for(
        lambda: gateway.metric("shadow_gateway_student_circuit_open", **STUDENT) == 0,
        what="the breaker to close",
    )
    ask()
    wait_for(lambda: len(student.received) == calls + 2, what="calls flowing again")
    # one line when it opened (with the reason), one when it closed: not one per skipped call
    said = [r.getMessage() for r in caplog.records if r.name == "shadow_gateway.shadow"]
    opened = [line for line in said if "failed 2 calls in a row" in line]
    closed = [line for line in said if "answered a probe" in line]
    assert len(opened) == 1
    assert "http_error" in opened[0]
    assert len(closed) == 1
