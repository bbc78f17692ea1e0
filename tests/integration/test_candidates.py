"""Several students per route: every candidate shadowed on the same requests, each answer a row
of ``student_answers``; students as live state, changed on one replica and seen by another.

Real gateways, real Postgres, loopback teacher and students that answer differently.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.config import GatewayConfig
from gateway.db.engine import create_engine
from gateway.services.students import StudentRegistry
from tests.integration.conftest import ROUTE, rows
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.process import BIN, run_command
from tests.support.upstream import FakeOpenAI

ASK = [{"role": "user", "content": "hello"}]


def two_students(
    teacher: FakeOpenAI, student: FakeOpenAI, rival: FakeOpenAI, **rival_knobs: Any
) -> dict[str, Any]:
    spec = route(ROUTE, teacher.base_url, None)
    spec["students"] = [
        {"name": "small", "base_urls": [student.base_url], "model": "small-model", "timeout_s": 1},
        {
            "name": "tiny",
            "base_urls": [rival.base_url],
            "model": "tiny-model",
            "timeout_s": 1,
            **rival_knobs,
        },
    ]
    spec["champion"] = "small"
    return spec


def answers(url: str, where: str = "TRUE") -> list[dict[str, Any]]:
    return fetch(url, f"SELECT * FROM student_answers WHERE {where} ORDER BY created_at, student")


def change(url: str, config: GatewayConfig, method: str, *args: Any, **kwargs: Any) -> Any:
    """A student change made the way the CLI makes it: its own process-side registry and
    engine, no gateway involved; replicas learn of it by NOTIFY."""

    async def run() -> Any:
        engine = create_engine(url, config.database)
        try:
            return await getattr(StudentRegistry(engine, config), method)(*args, **kwargs)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def attempt(url: str, config: GatewayConfig, method: str, *args: Any, **kwargs: Any) -> str:
    """The error a refused change raises (what the API and CLI would show)."""
    try:
        change(url, config, method, *args, **kwargs)
    except Exception as exc:
        return str(exc)
    return "no error"


def test_every_candidate_answers_the_same_requests(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    rival: FakeOpenAI,
    clean_db: str,
) -> None:
    # the champion agrees with the teacher, the candidate never does
    teacher.reset_behavior(answer=lambda text: text.upper())
    student.reset_behavior(answer=lambda text: text.upper())
    gateway = make_gateway([two_students(teacher, student, rival)])
    client = sdk(gateway, app_key)
    ids = [
        client.chat.completions.with_raw_response.create(
            model=ROUTE, messages=[{"role": "user", "content": f"q{i}"}]
        ).headers["x-request-id"]
        for i in range(6)
    ]
    wait_for(lambda: len(answers(clean_db, "agree IS NOT NULL")) == 12, what="12 answers")
    found = answers(clean_db)
    assert {(a["request_id"], a["student"]) for a in found} == {
        (request_id, name) for request_id in ids for name in ("small", "tiny")
    }
    by_student = {name: [a for a in found if a["student"] == name] for name in ("small", "tiny")}
    assert all(a["agree"] for a in by_student["small"])
    assert not any(a["agree"] for a in by_student["tiny"])
    assert {a["student_model"] for a in by_student["tiny"]} == {"tiny-model"}
    assert {a["source"] for a in found} == {"live"}
    # requests describes the champion, answers rows carry the request's time
    logged = {r["request_id"]: r for r in rows(clean_db)}
    for answer in found:
        assert answer["created_at"] == logged[answer["request_id"]]["created_at"]
    assert {r["student_model"] for r in logged.values()} == {"small-model"}
    assert all(r["agree"] for r in logged.values())


def test_a_hanging_candidate_harms_neither_the_app_nor_the_champion(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    rival: FakeOpenAI,
    clean_db: str,
) -> None:
    rival.reset_behavior(hang=True)
    gateway = make_gateway([two_students(teacher, student, rival, max_concurrency=2)])
    client = sdk(gateway, app_key)
    started = time.monotonic()
    for i in range(5):
        client.chat.completions.create(model=ROUTE, messages=[{"role": "user", "content": f"{i}"}])
    assert time.monotonic() - started < 2.5  # five answers, not held by the hanging candidate
    wait_for(lambda: len(answers(clean_db, "student = 'small' AND student_status = 'ok'")) == 5)
    wait_for(
        lambda: len(answers(clean_db, "student = 'tiny' AND student_status = 'dropped'")) == 3,
        what="the candidate's bound dropping the rest",
    )
    wait_for(lambda: len(answers(clean_db, "student = 'tiny' AND student_status = 'timeout'")) == 2)
    rival.release_hangs()
    assert {r["student_status"] for r in rows(clean_db)} == {"ok"}


def test_students_changed_on_one_replica_are_seen_by_another(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    rival: FakeOpenAI,
    clean_db: str,
) -> None:
    spec = route(ROUTE, teacher.base_url, [student.base_url], mode="rollout")
    spec["rollout"] = {"percent": 100, "threshold": 0.0, "audit_sample": 0.0}
    first = make_gateway([spec])
    second = make_gateway([spec])
    config = first.state.settings.config
    change(
        clean_db,
        config,
        "add",
        ROUTE,
        {"name": "tiny", "base_urls": [rival.base_url], "model": "tiny-model"},
        actor="tests",
        reason="a smaller candidate",
    )
    wait_for(
        lambda: [s.name for s in second.state.students.live(ROUTE)] == ["default", "tiny"],
        what="the second replica to see the new candidate",
    )
    raw = sdk(second, app_key).chat.completions.with_raw_response.create(model=ROUTE, messages=ASK)
    assert raw.headers["x-student"] == "default"

    change(clean_db, config, "promote", ROUTE, "tiny", actor="tests", reason="it is better")
    wait_for(lambda: second.state.students.champion(ROUTE).name == "tiny", what="the promotion")
    raw = sdk(second, app_key).chat.completions.with_raw_response.create(model=ROUTE, messages=ASK)
    assert raw.headers["x-student"] == "tiny"
    assert raw.parse().choices[0].message.content == "rival: hello"

    change(clean_db, config, "retire", ROUTE, "default", actor="tests", reason="replaced")
    wait_for(lambda: [s.name for s in second.state.students.live(ROUTE)] == ["tiny"])
    events = fetch(
        clean_db,
        "SELECT action, actor, reason FROM route_events WHERE action LIKE 'student_%' "
        "AND actor = 'tests' ORDER BY id",
    )
    assert [e["action"] for e in events] == ["student_added", "student_promoted", "student_retired"]


def test_bad_student_changes_are_refused_and_change_nothing(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    rival: FakeOpenAI,
    clean_db: str,
) -> None:
    gateway = make_gateway([two_students(teacher, student, rival)])
    config = gateway.state.settings.config

    def run(method: str, *args: Any, **kwargs: Any) -> str:
        return attempt(clean_db, config, method, ROUTE, *args, actor="t", **kwargs)

    before = fetch(clean_db, "SELECT * FROM route_students ORDER BY name")
    spec = {"name": "x", "base_urls": [rival.base_url], "model": "m"}
    assert "already has a student 'tiny'" in run("add", {**spec, "name": "tiny"}, reason="r")
    assert "shadow_sample" in run("add", {**spec, "shadow_sample": 2}, reason="r")
    assert "URL" in run("add", {**spec, "base_urls": ["ftp://x/v1"]}, reason="r")
    assert "reason is required" in run("add", spec, reason=" ")
    assert "no student 'nope'" in run("promote", "nope", reason="r")
    assert "is the champion" in run("retire", "small", reason="r")
    assert "cannot be changed" in run("change", "tiny", {"model": "other"}, reason="r")
    assert run("retire", "tiny", reason="r") == "no error"
    assert "is retired" in run("promote", "tiny", reason="r")
    after = fetch(clean_db, "SELECT * FROM route_students ORDER BY name")
    assert [r["status"] for r in after] == ["champion", "retired"]
    assert [r["version"] for r in after] == [r["version"] for r in before[:1]] + [2]


# --- the admin API and the CLI ----------------------------------------------------------------

SRE, ANALYST = "sre-secret", "analyst-secret"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "oncall", "key_env": "SGW_TEST_SRE_KEY", "scopes": ["sre"]},
    {"name": "analyst", "key_env": "SGW_TEST_ANALYST_KEY", "scopes": ["analyst"]},
]


def call(gateway: GatewayServer, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{gateway.url}/admin/routes/{ROUTE}{path}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
        **kwargs,
    )


def test_students_through_the_admin_api(
    make_gateway: Callable[..., GatewayServer],
    monkeypatch: pytest.MonkeyPatch,
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    rival: FakeOpenAI,
    clean_db: str,
) -> None:
    monkeypatch.setenv("SGW_TEST_SRE_KEY", SRE)
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)
    gateway = make_gateway(
        [route(ROUTE, teacher.base_url, [student.base_url])], auth={"keys": KEYS}
    )
    listed = call(gateway, "GET", "/students", ANALYST).json()
    assert listed["champion"] == "default"
    assert [s["name"] for s in listed["students"]] == ["default"]

    new = {"name": "tiny", "model": "tiny-model", "base_urls": [rival.base_url], "reason": "try"}
    assert call(gateway, "POST", "/students", ANALYST, json=new).status_code == 403
    added = call(gateway, "POST", "/students", SRE, json={**new, "shadow_sample": 0.5})
    assert added.status_code == 201, added.text
    assert added.json()["student"]["status"] == "candidate"
    assert added.json()["student"]["shadow_sample"] == 0.5

    changed = call(
        gateway, "PATCH", "/students/tiny", SRE, json={"shadow_sample": 1.0, "reason": "all"}
    )
    assert changed.json()["changed"] is True
    assert changed.json()["student"]["version"] == 2
    promoted = call(gateway, "POST", "/students/tiny/promote", SRE, json={"reason": "better"})
    assert promoted.json()["champion"] == "tiny"
    raw = sdk(gateway, app_key).chat.completions.with_raw_response.create(model=ROUTE, messages=ASK)
    wait_for(lambda: len(answers(clean_db, f"request_id = '{raw.headers['x-request-id']}'")) == 2)
    assert rows(clean_db)[0]["student_model"] == "tiny-model"  # requests follows the champion

    for method, path, body, status, code in (
        ("POST", "/students/nope/promote", {"reason": "x"}, 404, "student_not_found"),
        ("POST", "/students/tiny/retire", {"reason": "x"}, 400, "invalid_value"),
        ("POST", "/students", {**new, "name": "Bad Name"}, 400, "invalid_value"),
        ("POST", "/students", {**new, "reason": " "}, 400, "invalid_value"),
        ("PATCH", "/students/tiny", {"model": "other", "reason": "x"}, 400, "invalid_value"),
    ):
        refused = call(gateway, method, path, SRE, json=body)
        assert refused.status_code == status, (path, refused.text)
        assert refused.json()["error"]["code"] == code
    events = fetch(clean_db, "SELECT action FROM route_events WHERE actor = 'oncall' ORDER BY id")
    assert [e["action"] for e in events] == [
        "student_added",
        "student_changed",
        "student_promoted",
    ]


def test_students_from_the_command_line(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    rival: FakeOpenAI,
    clean_db: str,
) -> None:
    gateway = make_gateway([route(ROUTE, teacher.base_url, [student.base_url])])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": "x"}
        return subprocess.run(
            [str(BIN / "shadow-gateway"), "students", *args, "--config", str(gateway.config_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    added = cli(
        "add", ROUTE, "tiny", "--model", "tiny-model", "--base-url", rival.base_url,
        "--shadow-sample", "0.25", "--reason", "a smaller one", "--actor", "ana",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added tiny: candidate, model tiny-model" in added.stdout
    listed = cli("list", ROUTE, "--json")
    assert [(s["name"], s["status"]) for s in json.loads(listed.stdout)] == [
        ("default", "champion"),
        ("tiny", "candidate"),
    ]
    wait_for(lambda: [s.name for s in gateway.state.students.live(ROUTE)] == ["default", "tiny"])
    assert cli("promote", ROUTE, "tiny", "--reason", "better").returncode == 0
    assert cli("retire", ROUTE, "default", "--reason", "replaced").returncode == 0
    wait_for(lambda: [s.name for s in gateway.state.students.live(ROUTE)] == ["tiny"])

    for args, code, message in (
        (["promote", ROUTE, "nope", "--reason", "x"], 1, "has no student 'nope'"),
        (["retire", ROUTE, "tiny", "--reason", "x"], 1, "is the champion"),
        (["set", ROUTE, "tiny", "--reason", "x"], 1, "nothing to set"),
        (["set", ROUTE, "tiny", "--shadow-sample", "2", "--reason", "x"], 2, "from 0 to 1"),
        (["add", ROUTE, "x", "--model", "m", "--reason", "x"], 2, "--base-url"),
        (["promote", "nope", "tiny", "--reason", "x"], 1, "Unknown route 'nope'"),
    ):
        done = cli(*args)
        assert done.returncode == code, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_a_route_without_students_can_shadow_one_added_later(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    rival: FakeOpenAI,
    clean_db: str,
) -> None:
    gateway = make_gateway([route(ROUTE, teacher.base_url, None, mode="teacher")])
    config = gateway.config_path
    refused = run_command(
        config, clean_db, "rollout", "set", ROUTE, "--mode", "shadow", "--reason", "x"
    )
    assert refused.returncode == 1
    assert "has no student: add one first" in refused.stderr
    added = run_command(
        config, clean_db, "students", "add", ROUTE, "first", "--model", "first-model",
        "--base-url", rival.base_url, "--reason", "a student at last",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added first: champion" in added.stdout
    shadowed = run_command(
        config, clean_db, "rollout", "set", ROUTE, "--mode", "shadow", "--reason", "go"
    )
    assert shadowed.returncode == 0, shadowed.stderr
    wait_for(lambda: gateway.state.control.state(ROUTE).mode == "shadow", what="shadow mode")
    client = sdk(gateway, app_key)
    request_id = client.chat.completions.with_raw_response.create(
        model=ROUTE, messages=ASK
    ).headers["x-request-id"]
    wait_for(
        lambda: rows(clean_db, f"request_id = '{request_id}' AND student_status = 'ok'") != [],
        what="the new student's answer",
    )
    assert [a["student"] for a in answers(clean_db)] == ["first"]
