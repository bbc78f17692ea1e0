"""Agreement by slice, end to end: known agree/disagree patterns in, exact counts out."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import ROUTE, complete_row, rows
from tests.support.db import wait_for
from tests.support.gateway import GatewayServer, route
from tests.support.upstream import FakeOpenAI

AGREEMENT = "shadow_gateway_agreement_total"


def sliced_route(teacher: FakeOpenAI, student: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["slices"] = {
        "rules": [{"dimension": "category", "pattern": "(?i)invoice", "value": "billing"}],
        "length_buckets": {"bounds": [20]},
        "defaults": {"category": "general"},
        "critical": [
            {"dimension": "difficulty", "value": "hard", "min_agreement": 0.9, "min_samples": 5}
        ],
    }
    spec.update(extra)
    return spec


def send(gateway: GatewayServer, key: str, text: str, **headers: str) -> str:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": ROUTE, "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def series(gateway: GatewayServer, name: str) -> dict[str, float]:
    """Samples of one metric from /metrics, keyed by their label text."""
    found = {}
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        match = re.match(rf"^{name}(\{{.*\}})? (\S+)$", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def count(gateway: GatewayServer, dimension: str, value: str, verdict: str) -> float:
    return gateway.metric(
        AGREEMENT, route=ROUTE, student="default", dimension=dimension, slice=value, verdict=verdict
    )


@pytest.fixture
def answers(teacher: FakeOpenAI, student: FakeOpenAI) -> None:
    """The student agrees with the teacher (up to case) except on 'hard' questions."""
    teacher.reset_behavior(answer=lambda text: f"The answer to {text}.")
    student.reset_behavior(
        answer=lambda text: "no idea" if "hard" in text else f"the ANSWER to {text}"
    )


def test_agreement_counts_per_slice_in_metrics_and_rows(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    answers: None,
    clean_db: str,
) -> None:
    gateway = make_gateway(
        [sliced_route(teacher, student)],
        metrics={"slice_values": {"difficulty": ["easy", "hard"], "category": ["billing"]}},
    )
    easy = [
        send(gateway, app_key, f"easy invoice {i}", **{"X-Slice-Difficulty": "easy"})
        for i in range(6)
    ]
    hard = [send(gateway, app_key, f"hard {i}", **{"X-Slice-Difficulty": "hard"}) for i in range(4)]
    unlisted = send(gateway, app_key, "easy", **{"X-Slice-Difficulty": "medium"})
    wait_for(lambda: len(rows(clean_db, "agree IS NOT NULL")) == 11, what="11 judged rows")

    assert count(gateway, "difficulty", "easy", "agree") == 6
    assert count(gateway, "difficulty", "easy", "disagree") == 0
    assert count(gateway, "difficulty", "hard", "disagree") == 4
    assert count(gateway, "difficulty", "other", "agree") == 1  # "medium" is not exported
    assert count(gateway, "category", "billing", "agree") == 6
    assert count(gateway, "category", "other", "disagree") == 4  # "general" is not listed
    assert count(gateway, "all", "all", "agree") == 7  # the aggregate, beside the slices
    assert count(gateway, "all", "all", "disagree") == 4
    assert (
        gateway.metric(
            "shadow_gateway_slice_bar", route=ROUTE, dimension="difficulty", slice="hard"
        )
        == 0.9
    )
    assert gateway.metric("shadow_gateway_route_mode", route=ROUTE, mode="shadow") == 1
    assert (
        gateway.metric(
            "shadow_gateway_student_confidence_count",
            route=ROUTE,
            student="default",
            verdict="disagree",
        )
        == 4
    )

    row = complete_row(clean_db, easy[0])
    assert row["agree"] is True
    assert row["agreement_score"] == 1.0
    assert orjson.loads(row["slices"]) == {
        "difficulty": "easy",
        "category": "billing",
        "prompt_length": "<20",
    }
    assert 0 < row["student_confidence"] <= 1
    row = complete_row(clean_db, hard[0])
    assert row["agree"] is False
    assert row["agreement_score"] == 0.0
    assert row["agreement_reason"]
    assert orjson.loads(row["slices"])["category"] == "general"
    assert orjson.loads(complete_row(clean_db, unlisted)["slices"])["difficulty"] == "medium"


def test_a_flood_of_slice_values_does_not_grow_the_metrics(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    answers: None,
    clean_db: str,
) -> None:
    gateway = make_gateway(
        [sliced_route(teacher, student)], metrics={"slice_values": {"tier": ["free", "pro"]}}
    )
    send(gateway, app_key, "warm up", **{"X-Slice-Tier": "free"})
    wait_for(lambda: len(rows(clean_db, "agree IS NOT NULL")) == 1, what="the first row")
    before = len(series(gateway, AGREEMENT)) + len(
        series(gateway, "shadow_gateway_agreement_score_bucket")
    )
    for i in range(60):
        send(gateway, app_key, f"q{i}", **{"X-Slice-Tier": f"tier-{i}", f"X-Slice-Dim{i}": "v"})
    wait_for(lambda: len(rows(clean_db, "agree IS NOT NULL")) == 61, what="61 judged rows")
    after = series(gateway, AGREEMENT)
    grown = len(after) + len(series(gateway, "shadow_gateway_agreement_score_bucket")) - before
    # One new value can appear: tier="other" (one counter and one histogram's buckets);
    # nothing per distinct value, nothing per unlisted dimension name.
    assert grown <= 20
    assert not any(re.search(r"tier-\d|dim\d", labels) for labels in after)
    assert sum(v for k, v in after.items() if 'dimension="tier"' in k) == 61


def test_json_comparator_reports_each_field(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    teacher.reset_behavior(answer=lambda _: '{"name": "Ada", "amount": 12.5, "currency": "EUR"}')
    student.reset_behavior(
        answer=lambda _: '```json\n{"name": "Ada", "amount": 12.50, "currency": "USD"}\n```'
    )
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["agreement"] = {
        "comparator": "json",
        "fields": ["name", "amount", "currency"],
        "threshold": 0.9,
    }
    gateway = make_gateway([spec])
    row = complete_row(clean_db, send(gateway, app_key, "extract"))
    wait_for(
        lambda: complete_row(clean_db, row["request_id"])["agree"] is not None, what="the verdict"
    )
    row = complete_row(clean_db, row["request_id"])
    assert row["agree"] is False
    assert row["agreement_score"] == pytest.approx(2 / 3)
    detail = orjson.loads(row["agreement_detail"])
    assert {name: field["agree"] for name, field in detail["fields"].items()} == {
        "name": True,
        "amount": True,
        "currency": False,
    }


def test_streamed_answers_are_judged_on_the_reassembled_text(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    answers: None,
    clean_db: str,
) -> None:
    gateway = make_gateway([sliced_route(teacher, student)])
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": ROUTE,
            "stream": True,
            "messages": [{"role": "user", "content": "easy one"}],
        },
        headers={"Authorization": f"Bearer {app_key}"},
    )
    request_id = response.headers["x-request-id"]
    wait_for(lambda: complete_row(clean_db, request_id)["agree"] is not None, what="verdict")
    assert complete_row(clean_db, request_id)["agree"] is True


def test_bad_agreement_config_stops_start_up(
    make_gateway: Callable[..., GatewayServer], teacher: FakeOpenAI, student: FakeOpenAI
) -> None:
    from gateway.errors import ConfigError

    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["agreement"] = {"comparator": "custom", "function": "no_such_module:judge"}
    with pytest.raises(ConfigError, match="no_such_module"):
        make_gateway([spec])


def test_custom_comparator_runs_off_the_event_loop(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    teacher.reset_behavior(answer=lambda _: "12345678")
    student.reset_behavior(answer=lambda _: "1234")
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["agreement"] = {
        "comparator": "custom",
        "function": "tests.support.judges:same_length",
        "threshold": 0.4,
    }
    gateway = make_gateway([spec])
    request_id = send(gateway, app_key, "anything")
    wait_for(lambda: complete_row(clean_db, request_id)["agree"] is not None, what="verdict")
    row = complete_row(clean_db, request_id)
    assert row["agreement_score"] == 0.5
    assert row["agree"] is True
    assert row["agreement_reason"] is None  # agreeing: no reason, whatever the function said
