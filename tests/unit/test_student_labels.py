"""The ``student`` label's values follow the registry: info series per live student and status,
a retired student's series removed (zeroed where prometheus_client cannot remove them)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import MULTIPROC_ENV, Metrics

ROUTE = "support-bot"


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"route": ROUTE, **labels})


def students(metrics: Metrics) -> set[str]:
    return {
        sample.labels["student"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if "student" in sample.labels
    }


def used(metrics: Metrics, name: str) -> None:
    """Some series of every kind for one student, as its calls would leave them."""
    metrics.shadow_calls.labels(ROUTE, name, "ok").inc()
    metrics.student_latency.labels(ROUTE, name).observe(0.1)
    metrics.circuit_open.labels(ROUTE, name).set(1)
    metrics.shadow_in_flight.labels(ROUTE, name).inc()
    metrics.agreement.labels(ROUTE, name, "all", "all", "agree").inc()
    metrics.agreement_score.labels(ROUTE, name, "all", "all").observe(1.0)
    metrics.confidence.labels(ROUTE, name, "agree").observe(0.9)
    metrics.fallbacks.labels(ROUTE, name, "low_confidence").inc()


def test_a_promotion_moves_the_info_series_and_a_retirement_removes_everything() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.describe_students(ROUTE, {"small": "champion", "tiny": "candidate"})
    used(metrics, "small")
    used(metrics, "tiny")
    assert value(metrics, "shadow_gateway_student_info", student="small", status="champion") == 1
    assert value(metrics, "shadow_gateway_student_info", student="tiny", status="candidate") == 1

    metrics.describe_students(ROUTE, {"tiny": "champion", "small": "candidate"})
    assert value(metrics, "shadow_gateway_student_info", student="tiny", status="champion") == 1
    assert value(metrics, "shadow_gateway_student_info", student="small", status="champion") is None
    assert value(metrics, "shadow_gateway_student_info", student="tiny", status="candidate") is None
    assert value(metrics, "shadow_gateway_shadow_calls_total", student="small", outcome="ok") == 1

    metrics.describe_students(ROUTE, {"tiny": "champion"})
    assert students(metrics) == {"tiny"}
    assert value(metrics, "shadow_gateway_shadow_calls_total", student="tiny", outcome="ok") == 1
    metrics.describe_students("other-route", {})  # another route's change touches nothing
    assert students(metrics) == {"tiny"}


def test_with_several_workers_a_retired_students_gauges_read_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prometheus_client cannot remove a series from the workers' files: gauges are zeroed
    # (the info metric is joined with `== 1`), counters stay as they were.
    metrics = Metrics(CollectorRegistry())
    metrics.describe_students(ROUTE, {"small": "champion", "tiny": "candidate"})
    used(metrics, "tiny")
    monkeypatch.setenv(MULTIPROC_ENV, "/nonexistent")
    metrics.describe_students(ROUTE, {"small": "champion"})
    assert value(metrics, "shadow_gateway_student_info", student="tiny", status="candidate") == 0
    assert value(metrics, "shadow_gateway_student_circuit_open", student="tiny") == 0
    assert value(metrics, "shadow_gateway_shadow_in_flight", student="tiny") == 0
    assert value(metrics, "shadow_gateway_shadow_calls_total", student="tiny", outcome="ok") == 1
    assert value(metrics, "shadow_gateway_student_info", student="small", status="champion") == 1
