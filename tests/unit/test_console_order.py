"""The one slice order (:func:`gateway.services.reports.common.rank_slices`), and the console's
response models against what they describe."""

from __future__ import annotations

from typing import Any

from gateway.api.console import RequestRow
from gateway.config import RouteConfig
from gateway.core.statistics import wilson_interval
from gateway.db.tables import requests
from gateway.services.reports.common import rank_slices, worst_first


def _route(gate_min_samples: int = 30) -> RouteConfig:
    return RouteConfig.model_validate(
        {
            "name": "r",
            "teacher": {"base_url": "http://127.0.0.1:1/v1", "model": "t"},
            "rollout": {"gate_min_samples": gate_min_samples},
        }
    )


def line(
    value: str, agreed: int, samples: int, bar: tuple[float, int] | None = None
) -> dict[str, Any]:
    """A slice line as the reports make it (``bar``: min agreement, min samples)."""
    low, high = wilson_interval(agreed, samples) if samples else (None, None)
    verdict = None
    if bar is not None:
        verdict = (
            "not_enough_data"
            if samples < bar[1]
            else ("pass" if agreed / samples >= bar[0] else "fail")
        )
    return {
        "dimension": "tier",
        "value": value,
        "samples": samples,
        "agreed": agreed,
        "ci_low": low,
        "ci_high": high,
        "critical": bar is not None,
        "bar": bar[0] if bar else None,
        "min_samples": bar[1] if bar else None,
        "verdict": verdict,
    }


def test_failing_critical_slices_first_then_by_the_low_end_and_thin_slices_last() -> None:
    lines = [
        line("one-bad-sample", 0, 1),  # the lowest interval of all, but one comparison
        line("none", 0, 0),
        line("good", 95, 100),
        line("so-so", 60, 100),  # lower than the failing slice's interval, not critical
        line("failing", 85, 100, bar=(0.9, 50)),
        line("passing-critical", 99, 100, bar=(0.9, 50)),
        line("new-critical", 5, 10, bar=(0.9, 20)),  # not judged yet: thin
    ]
    ranked = rank_slices(lines, _route())
    assert [s["value"] for s in ranked] == [
        "failing",
        "so-so",
        "good",
        "passing-critical",
        "one-bad-sample",  # the thin ones after every other, by their interval too
        "new-critical",
        "none",  # and no comparison at all at the very end
    ]
    marks = {s["value"]: (s["samples_needed"], s["enough_samples"]) for s in ranked}
    assert marks["new-critical"] == (20, False)  # a critical slice: its own min_samples
    assert marks["one-bad-sample"] == (30, False)  # else the route's gate_min_samples
    assert marks["so-so"] == (30, True)
    assert "samples_needed" not in lines[0]  # the input is left as it was


def test_the_route_gate_decides_how_many_comparisons_a_plain_slice_needs() -> None:
    ranked = rank_slices([line("a", 2, 5), line("b", 9, 10)], _route(gate_min_samples=5))
    assert [(s["value"], s["enough_samples"]) for s in ranked] == [("a", True), ("b", True)]
    ranked = rank_slices([line("a", 2, 5), line("b", 9, 10)], _route(gate_min_samples=10))
    assert [(s["value"], s["enough_samples"]) for s in ranked] == [("b", True), ("a", False)]


def test_ties_fall_back_to_the_name_so_the_order_is_stable() -> None:
    same = [line(v, 40, 50) for v in ("c", "a", "b")]
    ranked = rank_slices(same, _route())
    assert [s["value"] for s in ranked] == ["a", "b", "c"]
    assert worst_first(ranked[0]) < worst_first(ranked[1])


def test_the_row_model_names_every_column_of_requests() -> None:
    """The raw row's response model documents each column; one added by a migration still
    passes through (extra fields are allowed) but this test asks for its documentation."""
    assert set(RequestRow.model_fields) == {column.name for column in requests.columns}
