"""The per-slice serving metrics: requests counted under bounded slice labels, and the
overrides gauge following the control plane's state (removed, or NaN with several workers)."""

from __future__ import annotations

import logging
import math

import pytest
from prometheus_client import CollectorRegistry

from gateway.core.routing import SliceOverride
from gateway.metrics import MAX_EXPORTED_OVERRIDES, MULTIPROC_ENV, OVERRIDE_KNOBS, Metrics

ROUTE = "support-bot"
OVERRIDE = "shadow_gateway_slice_override"


def overrides(metrics: Metrics, route: str = ROUTE) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["dimension"], s.labels["slice"], s.labels["knob"]): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == OVERRIDE and s.labels["route"] == route
    }


def test_requests_count_under_the_allow_list_other_and_all() -> None:
    metrics = Metrics(CollectorRegistry())
    allowed = {"tier": frozenset({"free"}), "lang": frozenset({"de"})}
    labels = {"tier": "free", "lang": "xx", "user": "u-123"}  # user: not exported at all
    metrics.count_slices(ROUTE, labels, allowed, "teacher", "slice_teacher_only")
    metrics.count_slices(ROUTE, {}, allowed, "student", None)
    counted = {
        tuple(s.labels[k] for k in ("dimension", "slice", "served_by", "reason")): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "shadow_gateway_slice_requests_total"
    }
    assert counted == {
        ("all", "all", "teacher", "slice_teacher_only"): 1,
        ("tier", "free", "teacher", "slice_teacher_only"): 1,
        ("lang", "other", "teacher", "slice_teacher_only"): 1,
        ("all", "all", "student", ""): 1,
        ("tier", "other", "student", ""): 1,
        ("lang", "other", "student", ""): 1,
    }


def test_the_gauge_follows_the_overrides_and_removes_what_went() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.describe_slice_overrides(
        ROUTE,
        [
            SliceOverride("tier", "free", mode="teacher"),
            SliceOverride("tier", "pro", rollout_percent=10, confidence_threshold=0.95),
        ],
    )
    metrics.describe_slice_overrides("other-route", [SliceOverride("lang", "de", mode="rollout")])
    assert overrides(metrics) == {
        ("tier", "free", "teacher_only"): 1,
        ("tier", "free", "rollout"): 0,
        ("tier", "pro", "teacher_only"): 0,
        ("tier", "pro", "rollout"): 0,
        ("tier", "pro", "percent"): 10,
        ("tier", "pro", "threshold"): 0.95,
    }
    assert {knob for (_, _, knob) in overrides(metrics)} == set(OVERRIDE_KNOBS)
    # free cleared; pro cleared and set again with a threshold only (its percent goes)
    metrics.describe_slice_overrides(
        ROUTE, [SliceOverride("tier", "pro", confidence_threshold=0.9)]
    )
    assert overrides(metrics) == {
        ("tier", "pro", "teacher_only"): 0,
        ("tier", "pro", "rollout"): 0,
        ("tier", "pro", "threshold"): 0.9,
    }
    assert overrides(metrics, "other-route") == {
        ("lang", "de", "teacher_only"): 0,
        ("lang", "de", "rollout"): 1,
    }


def test_with_several_workers_a_cleared_override_reads_nan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prometheus_client cannot remove a series from the workers' files; NaN is no value, and
    # `>= 0` (the dashboard's) drops it, where 0 would read as a mode off or a 0 % rollout.
    metrics = Metrics(CollectorRegistry())
    metrics.describe_slice_overrides(ROUTE, [SliceOverride("tier", "free", rollout_percent=0)])
    monkeypatch.setenv(MULTIPROC_ENV, "/nonexistent")
    metrics.describe_slice_overrides(ROUTE, [])
    found = overrides(metrics)
    assert found.keys() == {
        ("tier", "free", "teacher_only"),
        ("tier", "free", "rollout"),
        ("tier", "free", "percent"),
    }
    assert all(math.isnan(value) for value in found.values())


def test_overrides_past_the_cap_are_left_out_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(CollectorRegistry())
    many = [SliceOverride("user", f"u{i:03}", mode="teacher") for i in range(105)]
    with caplog.at_level(logging.WARNING, logger="shadow_gateway.metrics"):
        metrics.describe_slice_overrides(ROUTE, many)
        metrics.describe_slice_overrides(ROUTE, many)  # a refresh: said already
    exported = {value for (_, value, _) in overrides(metrics)}
    assert len(exported) == MAX_EXPORTED_OVERRIDES
    assert "u000" in exported
    assert "u104" not in exported
    assert len(caplog.records) == 1
    assert "105 slice overrides" in caplog.text
