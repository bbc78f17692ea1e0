"""The control plane from the outside: admin API, scopes, audit trail, CLI, two replicas."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROUTE
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, write_config
from tests.support.process import BIN, GatewayProcess
from tests.support.upstream import FakeOpenAI

SRE, ANALYST = "sre-secret", "analyst-secret"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "oncall", "key_env": "SGW_TEST_SRE_KEY", "scopes": ["sre"]},
    {"name": "analyst", "key_env": "SGW_TEST_ANALYST_KEY", "scopes": ["analyst"]},
]


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("SGW_TEST_SRE_KEY", SRE)
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)
    return {"SGW_TEST_SRE_KEY": SRE, "SGW_TEST_ANALYST_KEY": ANALYST}


def routes(teacher: FakeOpenAI, student: FakeOpenAI) -> list[dict[str, Any]]:
    return [
        route(ROUTE, teacher.base_url, [student.base_url]),
        route("teacher-only", teacher.base_url, None, mode="teacher"),
    ]


@pytest.fixture
def gateway(
    make_gateway: Callable[..., GatewayServer],
    admin_env: dict[str, str],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
) -> GatewayServer:
    return make_gateway(routes(teacher, student), auth={"keys": KEYS})


def call(
    gateway: GatewayServer, method: str, path: str, key: str | None, **kwargs: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{gateway.url}{path}", headers=headers, timeout=10, **kwargs)


def test_reads_need_sre_or_analyst_and_writes_need_sre(
    gateway: GatewayServer, app_key: str
) -> None:
    path = f"/admin/routes/{ROUTE}"
    change = {"rollout_percent": 5, "reason": "try"}
    assert call(gateway, "GET", "/admin/routes", None).status_code == 401
    assert call(gateway, "GET", "/admin/routes", "wrong").status_code == 401
    denied = call(gateway, "GET", "/admin/routes", app_key)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "insufficient_scope"
    assert call(gateway, "GET", path, ANALYST).status_code == 200
    assert call(gateway, "GET", path, SRE).status_code == 200
    assert call(gateway, "PATCH", path, ANALYST, json=change).status_code == 403
    assert (
        call(gateway, "POST", f"{path}/rollback", app_key, json={"reason": "x"}).status_code == 403
    )
    assert call(gateway, "PATCH", path, None, json=change).status_code == 401
    assert call(gateway, "PATCH", path, SRE, json=change).status_code == 200


def test_change_is_audited_and_takes_effect(
    gateway: GatewayServer, app_key: str, student: FakeOpenAI, clean_db: str
) -> None:
    before = call(gateway, "GET", f"/admin/routes/{ROUTE}", SRE).json()
    assert before["mode"] == "shadow"
    assert before["version"] == 1
    response = call(
        gateway,
        "PATCH",
        f"/admin/routes/{ROUTE}",
        SRE,
        json={
            "mode": "rollout",
            "rollout_percent": 100,
            "confidence_threshold": 0,
            "reason": "ramp to everyone",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["changed"] is True
    assert response.json()["route"]["version"] == 2
    assert gateway.metric("shadow_gateway_rollout_percent", route=ROUTE) == 100
    assert gateway.metric("shadow_gateway_route_mode", route=ROUTE, mode="rollout") == 1

    served = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {app_key}"},
    )
    assert served.headers["x-served-by"] == "student", served.headers.get("x-fallback-reason")
    assert served.json()["choices"][0]["message"]["content"] == "student: hi"

    rollback = call(
        gateway,
        "POST",
        f"/admin/routes/{ROUTE}/rollback",
        SRE,
        json={"reason": "bad answers on billing"},
    )
    assert rollback.json()["route"]["mode"] == "shadow"
    events = call(gateway, "GET", f"/admin/routes/{ROUTE}/events", ANALYST).json()["events"]
    # the route's knobs and its (config-seeded) student are both in its audit log
    assert [e["action"] for e in events] == ["rollback", "set", "student_seed", "seed"]
    assert events[1]["actor"] == "oncall"
    assert events[1]["reason"] == "ramp to everyone"
    assert events[1]["old"] == {
        "mode": "shadow",
        "rollout_percent": 0.0,
        "confidence_threshold": 0.8,
        "version": 1,
    }
    assert events[1]["new"]["mode"] == "rollout"
    stored = fetch(clean_db, "SELECT count(*) AS n FROM route_events WHERE route = $1", ROUTE)
    assert stored[0]["n"] == 4


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rollout_percent": 150, "reason": "x"}, "rollout_percent"),
        ({"rollout_percent": -1, "reason": "x"}, "rollout_percent"),
        ({"confidence_threshold": 2, "reason": "x"}, "confidence_threshold"),
        ({"mode": "yolo", "reason": "x"}, "mode"),
        ({"rollout_percent": 5}, "reason"),
        ({"rollout_percent": 5, "reason": "   "}, "reason"),
        ({"rollout_percent": 5, "reason": "x", "salt": "new"}, "salt"),
    ],
)
def test_bad_changes_are_refused_with_the_field_named(
    gateway: GatewayServer, body: dict[str, Any], param: str
) -> None:
    response = call(gateway, "PATCH", f"/admin/routes/{ROUTE}", SRE, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_unknown_route_and_route_without_student(gateway: GatewayServer) -> None:
    missing = call(
        gateway, "PATCH", "/admin/routes/nope", SRE, json={"mode": "shadow", "reason": "x"}
    )
    assert missing.status_code == 404
    assert ROUTE in missing.json()["error"]["message"]
    no_student = call(
        gateway, "PATCH", "/admin/routes/teacher-only", SRE, json={"mode": "rollout", "reason": "x"}
    )
    assert no_student.status_code == 400
    assert "no student" in no_student.json()["error"]["message"]


def cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "shadow-gateway"), *args, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_two_replicas_see_a_cli_change(
    tmp_path: Path,
    clean_db: str,
    app_key: str,
    admin_env: dict[str, str],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
) -> None:
    import os

    config = write_config(tmp_path / "gateway.yaml", routes(teacher, student), auth={"keys": KEYS})
    env = {**os.environ, "DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": app_key, **admin_env}
    replicas = [GatewayProcess(config, env, tmp_path / f"gw{i}.log") for i in range(2)]
    try:
        for replica in replicas:
            replica.wait_ready()
        sent = [
            httpx.post(
                f"{replicas[i % 2].url}/v1/chat/completions",
                json={"model": ROUTE, "messages": [{"role": "user", "content": f"q{i}"}]},
                headers={"Authorization": f"Bearer {app_key}"},
            ).headers["x-request-id"]
            for i in range(20)
        ]
        done = cli(
            config,
            env,
            "rollout",
            "set",
            ROUTE,
            "--mode",
            "rollout",
            "--percent",
            "12.5",
            "--reason",
            "first step",
            "--actor",
            "alice",
        )
        assert done.returncode == 0, done.stderr
        assert "percent=12.5" in done.stdout

        def seen_everywhere() -> bool:
            return all(
                httpx.get(
                    f"{r.url}/admin/routes/{ROUTE}", headers={"Authorization": f"Bearer {SRE}"}
                ).json()["rollout_percent"]
                == 12.5
                for r in replicas
            )

        wait_for(seen_everywhere, timeout_s=10, what="both replicas to see the change")
        status = cli(config, env, "rollout", "status", "--json")
        assert '"rollout_percent": 12.5' in status.stdout
        back = cli(config, env, "rollout", "rollback", ROUTE, "--reason", "regression")
        assert back.returncode == 0, back.stderr
        wait_for(
            lambda: all(
                httpx.get(
                    f"{r.url}/admin/routes/{ROUTE}", headers={"Authorization": f"Bearer {SRE}"}
                ).json()["mode"]
                == "shadow"
                for r in replicas
            ),
            timeout_s=10,
            what="both replicas rolled back",
        )
        for replica in replicas:
            replica.terminate()  # SIGTERM drains the log queue
    finally:
        for replica in replicas:
            replica.kill()
    logged = fetch(clean_db, "SELECT request_id FROM requests WHERE student_status IS NOT NULL")
    assert sorted(row["request_id"] for row in logged) == sorted(sent)  # each row exactly once
    actors = fetch(clean_db, "SELECT actor, action FROM route_events ORDER BY id")
    assert ("alice", "set") in {(a["actor"], a["action"]) for a in actors}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["rollout", "set", "nope", "--percent", "5", "--reason", "x"], 1, "Unknown route 'nope'"),
        (["rollout", "set", ROUTE, "--percent", "150", "--reason", "x"], 2, "from 0 to 100"),
        (["rollout", "set", ROUTE, "--percent", "lots", "--reason", "x"], 2, "must be a number"),
        (["rollout", "set", ROUTE, "--percent", "5"], 2, "--reason"),
        (["rollout", "set", ROUTE, "--percent", "5", "--reason", " "], 2, "must not be empty"),
        (["rollout", "set", ROUTE, "--reason", "x"], 1, "nothing to set"),
        (["rollout", "set", "teacher-only", "--mode", "rollout", "--reason", "x"], 1, "no student"),
        (["rollout", "rollback", ROUTE], 2, "--reason"),
    ],
)
def test_cli_errors(
    tmp_path: Path,
    clean_db: str,
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    args: list[str],
    code: int,
    message: str,
) -> None:
    import os

    config = write_config(tmp_path / "gateway.yaml", routes(teacher, student))
    env = {**os.environ, "DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": app_key}
    result = cli(config, env, *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
