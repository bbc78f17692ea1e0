"""Real answers of every ``/admin`` operation against the schema ``/openapi.json`` gives them.

A gateway serves real traffic (two students, two tiers, some disagreements, a review, app
feedback); then each operation is called, successes and the errors it documents, and each
body is validated against the document's schema for that status with every model made strict
(``additionalProperties: false`` where the model lists its properties). So a key a service
answers that its model does not declare fails here, as does a type or a missing key, and a
status an operation answers without documenting it. Every FastAPI operation under ``/admin``
must have been seen succeeding.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from gateway.db.engine import create_engine
from gateway.protocol.reports import Window, iso_time
from gateway.services.reports import Reports
from gateway.services.reviews import ReviewQueue
from tests.integration.conftest import ROUTE
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.upstream import FakeOpenAI

ADMIN, APP = "openapi-admin-key", "test-app-key"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "ops", "key_env": "SGW_OPENAPI_ADMIN", "scopes": ["sre", "analyst", "reviewer"]},
]
PER_TIER = 8


def strict(node: Any) -> Any:
    """A copy of a schema in which no model allows keys it does not list."""
    if isinstance(node, dict):
        found = {key: strict(value) for key, value in node.items()}
        if "properties" in found and found.get("additionalProperties", True) is True:
            found["additionalProperties"] = False
        return found
    if isinstance(node, list):
        return [strict(item) for item in node]
    return node


class Checker:
    """Calls the gateway and validates each answer against the operation's schema."""

    def __init__(self, gateway: GatewayServer) -> None:
        self.gateway = gateway
        self.spec = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()
        self.components = strict(copy.deepcopy(self.spec["components"]))
        self.succeeded: set[tuple[str, str]] = set()

    def call(
        self,
        method: str,
        template: str,
        expected: int,
        *,
        key: str | None = ADMIN,
        path: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        url = self.gateway.url + template.format(**(path or {"name": ROUTE}))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(options.pop("headers", {}))
        response = httpx.request(method, url, headers=headers, timeout=30, **options)
        assert response.status_code == expected, (method, template, response.text[:2000])
        operation = self.spec["paths"][template][method.lower()]
        documented = operation["responses"].get(str(expected))
        assert documented is not None, f"{method} {template} answers {expected} undocumented"
        schema = documented["content"]["application/json"]["schema"]
        body = response.json()
        validator = Draft202012Validator({**schema, "components": self.components})
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{method} {template} {expected}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:5]
        )
        if 200 <= expected < 300:
            self.succeeded.add((method.lower(), template))
        return body

    def admin_operations(self) -> set[tuple[str, str]]:
        return {
            (method, path)
            for path, operations in self.spec["paths"].items()
            if path.startswith("/admin")
            for method in operations
        }


def teacher_answer(text: str) -> str:
    return text.upper()


def student_answer(text: str) -> str:
    tier, number = text.split()
    return "wrong" if tier == "pro" and int(number) % 2 == 0 else text.upper()


@pytest.fixture
def served(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    rival: FakeOpenAI,
    clean_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Checker, datetime, list[str]]:
    """Traffic in two halves (the time between them splits drift's windows); the request
    ids."""
    monkeypatch.setenv("SGW_OPENAPI_ADMIN", ADMIN)
    teacher.reset_behavior(answer=teacher_answer, system_fingerprint="fp_one")
    student.reset_behavior(answer=student_answer)
    rival.reset_behavior(answer=teacher_answer)
    spec = route(ROUTE, teacher.base_url, None)
    spec["students"] = [
        {"name": "small", "base_urls": [student.base_url], "model": "small-model", "timeout_s": 2},
        {"name": "tiny", "base_urls": [rival.base_url], "model": "tiny-model", "timeout_s": 2},
    ]
    spec["champion"] = "small"
    spec["slices"] = {
        "critical": [{"dimension": "tier", "value": "pro", "min_agreement": 0.9, "min_samples": 2}],
        "length_buckets": {"bounds": [6]},
    }
    gateway = make_gateway(
        [spec, route("other", teacher.base_url, None, mode="teacher")],
        auth={"keys": KEYS},
        rate_limits={"keys": {"tests": {"requests_per_s": 1000, "burst": 1000}}},
    )
    client = sdk(gateway, app_key)
    ids: list[str] = []
    middle = datetime.now(UTC)
    for half in (0, 1):
        for tier in ("free", "pro"):
            for i in range(PER_TIER // 2):
                raw = client.chat.completions.with_raw_response.create(
                    model=ROUTE,
                    messages=[{"role": "user", "content": f"{tier} {half * 10 + i}"}],
                    extra_headers={"X-Slice-Tier": tier},
                )
                ids.append(raw.headers["x-request-id"])
        if half == 0:
            time.sleep(0.2)
            middle = datetime.now(UTC)
            time.sleep(0.2)
    total = len(ids)
    wait_for(
        lambda: (
            fetch(clean_db, "SELECT count(*) AS n FROM student_answers WHERE agree IS NOT NULL")[0][
                "n"
            ]
            == 2 * total
        ),
        what=f"{2 * total} compared student answers",
    )
    wait_for(
        lambda: fetch(clean_db, "SELECT count(agree) AS n FROM requests")[0]["n"] == total,
        what=f"{total} compared rows",
    )
    return Checker(gateway), middle, ids


def test_every_admin_answer_matches_its_documented_schema(
    served: tuple[Checker, datetime, list[str]], clean_db: str
) -> None:
    api, middle, ids = served
    reports(api, middle, ids)
    unchanged(api, clean_db)
    control(api.call)
    students(api.call)
    reviews(api.call)
    errors(api.call)
    missing = api.admin_operations() - api.succeeded
    assert not missing, f"never seen succeeding: {sorted(missing)}"


def reports(api: Checker, middle: datetime, ids: list[str]) -> None:
    check = api.call
    window = {"route": ROUTE, "since": "1h"}
    slices = check("GET", "/admin/reports/slices", 200, params=window)
    assert slices["teacher_versions"][0]["fingerprint"] == "fp_one"
    check("GET", "/admin/reports/slices", 200, params={**window, "dimension": "tier"})
    check("GET", "/admin/reports/slices", 200, params={**window, "teacher_version": "fp_one"})
    candidates = check("GET", "/admin/reports/candidates", 200, params=window)
    assert [s["name"] for s in candidates["students"]] == ["small", "tiny"]
    listing = check("GET", "/admin/reports/disagreements", 200, params={**window, "limit": 1})
    assert listing["next_cursor"]
    check("GET", "/admin/reports/thresholds", 200, params=window)
    check(
        "GET",
        "/admin/reports/thresholds",
        200,
        params={**window, "dimension": "tier", "conservative": "true"},
    )
    split = {"route": ROUTE, "since": middle.isoformat(), "min_rows": 1}
    check("GET", "/admin/reports/drift", 200, params={**split, "reference_since": "1h"})
    lines = "\n".join(
        json.dumps({"prompt": f"free {i}", "slices": {"tier": "free"}}) for i in range(10)
    )
    check("POST", "/admin/reports/drift", 200, params=split, content=lines.encode())
    # quality: nothing judged yet, then a review verdict and app feedback
    check("GET", "/admin/reports/quality", 404, params=window)
    feedback = httpx.post(
        f"{api.gateway.url}/v1/feedback",
        json={"request_id": ids[0], "correct": False, "corrected_output": "better"},
        headers={"Authorization": f"Bearer {APP}"},
        timeout=10,
    )
    assert feedback.status_code == 201, feedback.text
    drawn = check("POST", "/admin/reviews/sample", 201, json={"route": ROUTE, "per_slice": 2})
    assert drawn["created"] >= 2
    task = check("GET", "/admin/reviews", 200, params={"route": ROUTE, "limit": 1})["tasks"][0]
    check(
        "POST",
        "/admin/reviews/{review_id}",
        200,
        path={"review_id": task["id"]},
        json={"verdict": "student_correct"},
    )
    quality = check("GET", "/admin/reports/quality", 200, params=window)
    assert list(quality["overall"]) == ["teacher", "small"]
    assert "reviewed_disagreements" not in quality["overall"]["teacher"]  # nothing added
    assert "reviewed_disagreements" in quality["overall"]["small"]


def unchanged(api: Checker, url: str) -> None:
    """The models describe the services' JSON and change nothing of it: the same keys in the
    same order, an int still an int (``json.dumps`` writes ``1`` and ``1.0`` apart)."""
    config = api.gateway.state.settings.config
    now = datetime.now(UTC).replace(microsecond=0)
    span = Window(now - timedelta(hours=1), now + timedelta(minutes=1))
    params = {"route": ROUTE, "since": iso_time(span.since), "until": iso_time(span.until)}

    def service(
        work: Callable[[Any], Awaitable[dict[str, Any]]], kind: type[Any] = Reports
    ) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            engine = create_engine(url, config.database)
            try:
                return await work(kind(engine, config))
            finally:
                await engine.dispose()

        return asyncio.run(go())

    pairs: list[tuple[str, dict[str, Any], Callable[[Any], Awaitable[dict[str, Any]]]]] = [
        ("slices", {}, lambda reports: reports.slices(ROUTE, span)),
        ("candidates", {}, lambda reports: reports.candidates(ROUTE, span)),
        ("thresholds", {}, lambda reports: reports.thresholds(ROUTE, span)),
        ("quality", {}, lambda reports: reports.quality(ROUTE, span)),
        (
            "disagreements",
            {"limit": 3},
            lambda reports: reports.disagreements(ROUTE, span, limit=3),
        ),
    ]
    for name, extra, work in pairs:
        answered = api.call("GET", f"/admin/reports/{name}", 200, params={**params, **extra})
        assert json.dumps(answered) == json.dumps(service(work)), name
    # stored JSON (a task's student answers): Postgres writes an agreement score of 1.0 as 1
    tasks = api.call("GET", "/admin/reviews", 200, params={"status": "all"})["tasks"]
    for task in tasks:
        path = {"review_id": task["id"]}
        answered = api.call("GET", "/admin/reviews/{review_id}", 200, path=path)
        found = service(lambda queue, task_id=task["id"]: queue.task(task_id), ReviewQueue)
        assert json.dumps(answered) == json.dumps(found), task["id"]
    scores = [answer["score"] for task in tasks for answer in task["students"]]
    assert any(isinstance(score, int) for score in scores), scores


def control(check: Callable[..., Any]) -> None:
    listed = check("GET", "/admin/routes", 200)
    assert [r["name"] for r in listed["routes"]] == [ROUTE, "other"]
    check("GET", "/admin/routes/{name}", 200)
    changed = check(
        "PATCH", "/admin/routes/{name}", 200, json={"audit_sample": 0.5, "reason": "schema"}
    )
    assert changed["changed"] is True
    check("POST", "/admin/routes/{name}/rollback", 200, json={"reason": "schema"})
    slice_path = "/admin/routes/{name}/slices/{dimension}/{value}"
    where = {"name": ROUTE, "dimension": "tier", "value": "pro"}
    check("PATCH", slice_path, 200, path=where, json={"mode": "teacher", "reason": "schema"})
    check("GET", "/admin/routes/{name}/slices", 200)
    check("POST", slice_path + "/clear", 200, path=where, json={"reason": "schema"})
    check("POST", slice_path + "/clear", 404, path=where, json={"reason": "schema"})
    calibration = check(
        "GET",
        "/admin/routes/{name}/calibration",
        200,
        params={"target_agreement": 0.5, "min_served": 1},
    )
    assert calibration["changes"]
    check(
        "POST",
        "/admin/routes/{name}/calibration",
        200,
        json={"target_agreement": 0.5, "min_served": 1, "reason": "schema"},
    )
    ramp = check(
        "POST",
        "/admin/routes/{name}/plan",
        200,
        json={"steps": [5, 50], "hold_s": 3600, "reason": "schema"},
    )
    assert ramp["plan"]["step"] == 1
    assert check("GET", "/admin/routes/{name}", 200)["ramp"]["status"] == "active"
    check("POST", "/admin/routes/{name}/plan/cancel", 200, json={"reason": "schema"})
    check("POST", "/admin/routes/{name}/plan/cancel", 404, json={"reason": "schema"})
    events = check("GET", "/admin/routes/{name}/events", 200, params={"limit": 50})["events"]
    assert {"seed", "set", "slice_set", "slice_cleared", "ramp_cancelled"} <= {
        e["action"] for e in events
    }
    versions = check("GET", "/admin/routes/{name}/teacher-versions", 200)["versions"]
    assert versions[0]["fingerprint"] == "fp_one"


def students(check: Callable[..., Any]) -> None:
    check("GET", "/admin/routes/{name}/students", 200)
    added = check(
        "POST",
        "/admin/routes/{name}/students",
        201,
        json={
            "name": "third",
            "model": "third-model",
            "base_urls": ["http://127.0.0.1:9/v1"],
            "shadow_sample": 0,
            "reason": "schema",
        },
    )
    assert added["student"]["status"] == "candidate"
    one = {"name": ROUTE, "student": "third"}
    student_path = "/admin/routes/{name}/students/{student}"
    check("PATCH", student_path, 200, path=one, json={"timeout_s": 3, "reason": "schema"})
    check("POST", student_path + "/retire", 200, path=one, json={"reason": "schema"})
    tiny = {"name": ROUTE, "student": "tiny"}
    check("POST", student_path + "/promote", 200, path=tiny, json={"reason": "schema"})
    check(
        "POST",
        student_path + "/promote",
        404,
        path={**tiny, "student": "nobody"},
        json={"reason": "schema"},
    )


def reviews(check: Callable[..., Any]) -> None:
    routes = check("GET", "/admin/reviews/routes", 200)["routes"]
    assert routes[0]["judged"] == 1
    tasks = check("GET", "/admin/reviews", 200, params={"status": "all"})
    assert tasks["counts"]["judged"] == 1
    task = tasks["tasks"][0]
    detail = check("GET", "/admin/reviews/{review_id}", 200, path={"review_id": task["id"]})
    assert detail["history"][0]["verdict"] == "student_correct"
    check("GET", "/admin/reviews/{review_id}", 404, path={"review_id": 10**9})


def errors(check: Callable[..., Any]) -> None:
    """401, 403, 404 and 400 as the document says, in OpenAI's shape."""
    check("GET", "/admin/routes", 401, key=None)
    check("GET", "/admin/routes", 401, key="wrong")
    check("GET", "/admin/routes", 403, key=APP)
    check("PATCH", "/admin/routes/{name}", 403, key=APP, json={"reason": "x"})
    check("GET", "/admin/routes/{name}", 404, path={"name": "nope"})
    check("GET", "/admin/routes/{name}/teacher-versions", 404, path={"name": "nope"})
    bad = check("PATCH", "/admin/routes/{name}", 400, json={"rollout_percent": 500, "reason": "x"})
    assert bad["error"]["param"] == "rollout_percent"
    check("PATCH", "/admin/routes/{name}", 400, json={"mode": "rollout"})  # no reason
    check("GET", "/admin/routes/{name}/events", 400, params={"limit": 0})
    reports = "/admin/reports/slices"
    check("GET", reports, 400, params={"route": ROUTE, "since": "yesterday-ish"})
    check("GET", reports, 400, params={"route": ROUTE, "dimension": "Bad Name"})
    check("GET", reports, 404, params={"route": ROUTE, "dimension": "never"})
    check("GET", reports, 404, params={"route": "nope"})
    check("GET", reports, 404, params={"route": ROUTE, "teacher_version": "fp_none"})
    check("GET", "/admin/reports/candidates", 400, params={"route": ROUTE, "min_pairs": 0})
    check("GET", "/admin/reports/drift", 400, params={"route": ROUTE, "psi_threshold": -1})
    check("GET", "/admin/reviews/{review_id}", 400, path={"review_id": "zero"})
    check("POST", "/admin/reviews/sample", 400, json={"route": ROUTE, "per_slice": 0})
    check(
        "POST",
        "/admin/reviews/sample",
        415,
        content=b"route=x",
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {ADMIN}"},
    )
