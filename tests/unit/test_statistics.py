"""The reports' statistics: Wilson intervals, calibration, PSI, length bins (pure)."""

from __future__ import annotations

import math

import pytest

from gateway.core import statistics as stats
from gateway.core.statistics import Bar, CurvePoint


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (9, 10, 0.5958, 0.9821),  # textbook values (Wilson 1927; Newcombe 1998 method 3)
        (81, 263, 0.2553, 0.3662),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval_matches_published_values(
    successes: int, trials: int, low: float, high: float
) -> None:
    found = stats.wilson_interval(successes, trials)
    assert found == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_edges_stay_inside_zero_and_one() -> None:
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    low, high = stats.wilson_interval(0, 20)
    assert low == 0.0
    assert 0.15 < high < 0.17
    low, high = stats.wilson_interval(20, 20)
    assert high == 1.0
    assert 0.83 < low < 0.85
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(3, 2)
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(-1, 2)


def test_wilson_interval_narrows_with_more_trials() -> None:
    widths = [
        (lambda lh: lh[1] - lh[0])(stats.wilson_interval(n * 9 // 10, n)) for n in (10, 100, 1000)
    ]
    assert widths == sorted(widths, reverse=True)
    assert stats.Proportion(9, 10).share == 0.9
    assert stats.Proportion(0, 0).share is None


def test_candidate_thresholds_are_round_and_include_both_ends() -> None:
    grid = stats.candidate_thresholds()
    assert len(grid) == 21
    assert grid[0] == 0.0
    assert grid[-1] == 1.0
    assert grid[3] == 0.15
    assert stats.candidate_thresholds(0.3) == (0.0, 0.3, 0.6, 0.9, 1.0)
    with pytest.raises(ValueError, match="step"):
        stats.candidate_thresholds(0)
    assert stats.check_thresholds([0.9, 0.5, 0.5]) == (0.5, 0.9)
    with pytest.raises(ValueError, match="from 0 to 1"):
        stats.check_thresholds([1.5])
    with pytest.raises(ValueError, match="at least one"):
        stats.check_thresholds([])


def test_bin_index_is_postgres_width_bucket() -> None:
    edges = [0.5, 0.7, 0.9]
    assert [stats.bin_index(v, edges) for v in (0.1, 0.5, 0.69, 0.7, 0.95, 1.0)] == [
        0,
        1,
        1,
        2,
        3,
        3,
    ]


def test_calibration_curve_adds_buckets_from_the_top() -> None:
    thresholds = (0.0, 0.5, 0.8)
    # bucket 1: [0, 0.5): 10 comparisons, 4 agreed; 2: [0.5, 0.8): 20/15; 3: >= 0.8: 30/29
    curve = stats.calibration_curve(thresholds, {1: (10, 4), 2: (20, 15), 3: (30, 29)})
    assert [(p.threshold, p.served, p.agreed, p.total) for p in curve] == [
        (0.0, 60, 48, 60),
        (0.5, 50, 44, 60),
        (0.8, 30, 29, 60),
    ]
    assert curve[1].share == pytest.approx(50 / 60)
    assert curve[2].agreement.share == pytest.approx(29 / 30)
    empty = stats.calibration_curve(thresholds, {})
    assert [p.served for p in empty] == [0, 0, 0]
    assert empty[0].share is None


def _curve(points: list[tuple[float, int, int]], total: int = 100) -> list[CurvePoint]:
    return [CurvePoint(t, served, agreed, total) for t, served, agreed in points]


def test_recommendation_is_the_lowest_threshold_where_every_bar_holds() -> None:
    curves = {
        ("all", "all"): _curve([(0.0, 100, 80), (0.5, 60, 57), (0.8, 30, 30)]),
        ("tier", "enterprise"): _curve([(0.0, 50, 40), (0.5, 25, 23), (0.8, 12, 12)]),
        ("tier", "free"): _curve([(0.0, 50, 40), (0.5, 35, 34), (0.8, 18, 18)]),
    }
    enterprise = Bar("tier", "enterprise", 0.9, 20)
    free = Bar("tier", "free", 0.95, 20)
    found = stats.recommend_threshold(curves, [enterprise, free])
    assert found.threshold == 0.5  # 23/25 = 92% and 34/35 = 97%; at 0.0 both fail
    # the lower end of the interval is stricter: 23/25 has a lower bound far below 90%
    strict = stats.recommend_threshold(curves, [enterprise, free], conservative=True)
    assert strict.threshold is None
    assert "tier=enterprise" in strict.reason


def test_no_threshold_works_says_why_per_bar() -> None:
    curves = {
        ("all", "all"): _curve([(0.0, 100, 80), (0.5, 60, 50)]),
        ("tier", "enterprise"): _curve([(0.0, 40, 30), (0.5, 25, 20)]),
    }
    found = stats.recommend_threshold(
        curves, [Bar("tier", "enterprise", 0.9, 20), Bar("tier", "gold", 0.9, 5)]
    )
    assert found.threshold is None
    assert "tier=enterprise reaches at most 80.0% (at 0.5, 25 served), below its bar 90.0%" in (
        found.reason
    )
    assert "tier=gold never has 5 comparisons served (at most 0" in found.reason
    too_few = stats.recommend_threshold(curves, [Bar("tier", "enterprise", 0.5, 100)])
    assert "never has 100 comparisons served (at most 40" in too_few.reason
    with pytest.raises(ValueError, match="bar"):
        stats.recommend_threshold(curves, [])


def test_psi_of_identical_distributions_is_zero_and_shift_is_positive() -> None:
    same = stats.psi({"a": 50, "b": 50}, {"a": 500, "b": 500})
    assert same.value == pytest.approx(0.0, abs=1e-9)
    moved = stats.psi({"a": 500, "b": 500}, {"a": 900, "b": 100})
    p, q = (500.5 / 1001, 500.5 / 1001), (900.5 / 1001, 100.5 / 1001)
    expected = sum((qi - pi) * math.log(qi / pi) for pi, qi in zip(p, q, strict=True))
    assert moved.value == pytest.approx(expected)
    assert moved.value > 0.2
    assert [b.label for b in moved.bins] == ["a", "b"]
    assert moved.bins[0].current_share == 0.9


def test_psi_smooths_empty_bins_to_a_finite_value() -> None:
    found = stats.psi({"a": 1000}, {"a": 900, "new": 100})
    assert math.isfinite(found.value)
    assert found.value > 0.2  # a value the reference never had, at 10%, is a real shift
    new = next(b for b in found.bins if b.label == "new")
    assert (new.reference, new.current, new.reference_share) == (0, 100, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        stats.psi({}, {"a": 1})
    with pytest.raises(ValueError, match="smoothing"):
        stats.psi({"a": 1}, {"a": 1}, smoothing=0)


def test_missing_labels_and_long_tails() -> None:
    assert stats.with_missing({"x": 3}, 5) == {"x": 3, stats.MISSING: 2}
    assert stats.with_missing({"x": 5}, 5) == {"x": 5}
    with pytest.raises(ValueError, match="labels"):
        stats.with_missing({"x": 6}, 5)
    reference = {f"v{i}": 10 for i in range(40)}
    current = {"v0": 100, "new": 5}
    kept_ref, kept_cur = stats.collapse_tail(reference, current, keep=3)
    assert set(kept_ref) == {"v0", "v1", "v10", stats.OTHER}
    assert sum(kept_ref.values()) == 400
    assert kept_cur == {"v0": 100, stats.OTHER: 5}


def test_length_bins_from_reference_deciles() -> None:
    lengths = dict.fromkeys(range(1, 101), 1)
    deciles = stats.percentiles(lengths)
    assert deciles == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    edges = stats.length_edges(deciles)
    labels = stats.bin_labels(edges)
    assert labels[:2] == ["<10", "10-19"]
    assert labels[-1] == ">=90"
    counts = stats.histogram(lengths, edges)
    assert counts["<10"] == 9
    assert counts[">=90"] == 11
    assert sum(counts.values()) == 100
    # ties collapse edges; zero-length prompts give no edge at 0
    assert stats.length_edges([0, 0, 5, 5, 5.2]) == (5, 6)
    assert stats.bin_labels(()) == ["all"]
    assert stats.histogram({3: 1, 4: 2}, ()) == {"all": 3}
    assert stats.percentiles({}) == []
    # weighted: 90 prompts of 5 characters and 10 of 500
    assert stats.percentiles({5: 90, 500: 10}, (0.5, 0.9, 0.91)) == [5, 5, 500]
