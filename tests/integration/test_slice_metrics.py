"""Per-slice serving in the metrics: requests per slice by who served and why, and the live
slice overrides as a gauge, on a real gateway (two replicas on one database for the gauge).

The student's confidence is about 0.85 on the fake's answers; the rollout serves any.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROUTE
from tests.support.db import wait_for
from tests.support.gateway import GatewayServer, route
from tests.support.upstream import FakeOpenAI

SRE = "sre-secret"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "oncall", "key_env": "SGW_TEST_SRE_KEY", "scopes": ["sre"]},
]
RESCUED = "rescued"
SLICE_REQUESTS = "shadow_gateway_slice_requests_total"
OVERRIDE = "shadow_gateway_slice_override"
Gauges = dict[tuple[str, ...], float]


def spec(teacher: FakeOpenAI, student: FakeOpenAI, **rollout: Any) -> Any:
    """Everyone chosen, any confidence served, unless a slice says otherwise."""
    found = route(ROUTE, teacher.base_url, [student.base_url], mode="rollout")
    found["rollout"] = {"percent": 100, "threshold": 0.0, "audit_sample": 0.0, **rollout}
    return found


def post(gateway: GatewayServer, key: str, model: str = ROUTE, **slices: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    headers.update({f"X-Slice-{dimension}": value for dimension, value in slices.items()})
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "how long?"}]},
        headers=headers,
        timeout=10,
    )


def series(gateway: GatewayServer, name: str, **labels: str) -> Gauges:
    """The samples of ``name`` matching ``labels``, keyed by their other label values."""
    found: Gauges = {}
    for family in gateway.metrics.registry.collect():
        for sample in family.samples:
            if sample.name != name or any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            rest = tuple(v for k, v in sample.labels.items() if k not in labels)
            found[rest] = sample.value
    return found


def total(gateway: GatewayServer, name: str, **labels: str) -> float:
    return sum(series(gateway, name, **labels).values())


@pytest.fixture
def sre_env(monkeypatch: pytest.MonkeyPatch, app_key: str) -> None:
    monkeypatch.setenv("SGW_TEST_SRE_KEY", SRE)


def test_requests_count_per_slice_by_who_served_and_why(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
) -> None:
    slices = [{"dimension": "tier", "value": "free", "mode": "teacher"}]
    gateway = make_gateway(
        [
            spec(teacher, student, slices=slices),
            route(RESCUED, teacher.base_url, [student.base_url], on_teacher_error="student"),
        ],
        metrics={"slice_values": {"tier": ["free", "pro"]}},
    )
    kept = post(gateway, app_key, tier="free")
    assert (kept.headers["x-served-by"], kept.headers["x-fallback-reason"]) == (
        "teacher",
        "slice_teacher_only",
    )
    for tier in ("pro", "gold"):  # gold: outside the allow-list
        assert post(gateway, app_key, tier=tier).headers["x-served-by"] == "student"
    assert post(gateway, app_key).headers["x-served-by"] == "student"  # no tier at all

    # counted once the answer is out: every request once per dimension, once under all
    wait_for(lambda: total(gateway, SLICE_REQUESTS, route=ROUTE, dimension="all") == 4)
    assert series(gateway, SLICE_REQUESTS, route=ROUTE) == {
        ("tier", "free", "teacher", "slice_teacher_only"): 1,
        ("all", "all", "teacher", "slice_teacher_only"): 1,
        ("tier", "pro", "student", ""): 1,
        ("tier", "other", "student", ""): 2,
        ("all", "all", "student", ""): 3,
    }
    assert total(gateway, "shadow_gateway_requests_total", route=ROUTE) == 4

    # The teacher fails. On the teacher-only slice the app gets the error, counted as the
    # teacher's with its reason; where the student stands in, the request counts once, as the
    # student's (teacher_error), though shadow_gateway_requests_total has the teacher's error
    # and the student's answer.
    teacher.reset_behavior(status=503)
    assert post(gateway, app_key, tier="free").status_code == 503
    rescued = post(gateway, app_key, RESCUED, tier="pro")
    assert rescued.status_code == 200
    assert rescued.headers["x-fallback-reason"] == "teacher_error"
    wait_for(lambda: total(gateway, SLICE_REQUESTS, route=RESCUED, dimension="all") == 1)
    assert series(gateway, SLICE_REQUESTS, route=RESCUED) == {
        ("tier", "pro", "student", "teacher_error"): 1,
        ("all", "all", "student", "teacher_error"): 1,
    }
    assert total(gateway, "shadow_gateway_requests_total", route=RESCUED) == 2
    kept_errors = series(gateway, SLICE_REQUESTS, route=ROUTE, served_by="teacher")
    assert kept_errors[("tier", "free", "slice_teacher_only")] == 2
    assert kept_errors[("all", "all", "slice_teacher_only")] == 2


def test_the_override_gauge_follows_sets_and_clears_on_every_replica(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    sre_env: None,
) -> None:
    slices = [{"dimension": "tier", "value": "free", "mode": "teacher"}]
    first = make_gateway([spec(teacher, student, slices=slices)], auth={"keys": KEYS})
    second = make_gateway([spec(teacher, student, slices=slices)], auth={"keys": KEYS})
    sre = {"Authorization": f"Bearer {SRE}"}

    def overrides(gateway: GatewayServer) -> Gauges:
        return series(gateway, OVERRIDE, route=ROUTE)

    def shows(gateway: GatewayServer, expected: Gauges) -> bool:
        return overrides(gateway) == expected

    def everywhere(expected: Gauges) -> None:
        # waited for on the replica that changed it too: a refresh in flight may land after it
        for gateway in (first, second):
            wait_for(partial(shows, gateway, expected), timeout_s=5, what=str(expected))

    # seeded from the config: a mode knob per override, no percent or threshold of its own
    seeded: Gauges = {("tier", "free", "teacher_only"): 1, ("tier", "free", "rollout"): 0}
    assert overrides(first) == seeded
    assert overrides(second) == seeded

    changed = httpx.patch(
        f"{first.url}/admin/routes/{ROUTE}/slices/tier/pro",
        json={
            "confidence_threshold": 0.95,
            "rollout_percent": 20,
            "reason": "pro needs surer answers",
        },
        headers=sre,
        timeout=10,
    )
    assert changed.status_code == 200, changed.text
    both: Gauges = {
        **seeded,
        ("tier", "pro", "teacher_only"): 0,
        ("tier", "pro", "rollout"): 0,
        ("tier", "pro", "percent"): 20,
        ("tier", "pro", "threshold"): 0.95,
    }
    everywhere(both)

    cleared = httpx.post(
        f"{first.url}/admin/routes/{ROUTE}/slices/tier/free/clear",
        json={"reason": "free users are fine now"},
        headers=sre,
        timeout=10,
    )
    assert cleared.status_code == 200, cleared.text
    everywhere({k: v for k, v in both.items() if k[:2] != ("tier", "free")})
