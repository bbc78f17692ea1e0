"""Paired candidate-vs-baseline statistics: Newcombe's interval, McNemar's test, verdicts (pure).

Reference values: Newcombe (1998, Stat Med 17:2635) Table III, method 10; Fagerland, Lydersen
& Laake's ``contingencytables`` (Cavo et al. 2012 table); scipy for the Wilson intervals and the
exact binomial test.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest  # type: ignore[import-untyped]

from gateway.core.paired import (
    EXACT_DISCORDANT_LIMIT,
    PairedComparison,
    PairedCounts,
    mcnemar_exact,
    paired_counts,
    paired_difference,
)


def _interval(result: PairedComparison) -> tuple[float, float]:
    assert result.low is not None
    assert result.high is not None
    return result.low, result.high


# (both, candidate only, baseline only, neither, low, high): Newcombe's 18 example tables,
# the difference being (candidate only - baseline only) / n.
NEWCOMBE_1998_TABLE_III = [
    (36, 12, 2, 0, 0.0569, 0.3404),
    (20, 12, 2, 16, 0.0562, 0.3292),
    (18, 12, 2, 18, 0.0562, 0.3290),
    (36, 14, 0, 0, 0.1528, 0.4167),
    (35, 14, 0, 1, 0.1461, 0.4175),
    (18, 14, 0, 18, 0.1441, 0.3963),
    (2, 97, 1, 0, 0.8721, 0.9854),
    (1, 97, 1, 1, 0.8736, 0.9850),
    (0, 29, 1, 0, 0.6666, 0.9882),
    (2, 98, 0, 0, 0.9178, 0.9945),
    (1, 98, 0, 1, 0.9171, 0.9916),
    (0, 30, 0, 0, 0.8395, 1.0),
    (54, 0, 0, 0, -0.0664, 0.0664),
    (53, 0, 0, 1, -0.0729, 0.0729),
    (30, 0, 0, 24, -0.0358, 0.0358),
    (29, 0, 0, 25, -0.0354, 0.0354),
    (28, 0, 0, 26, -0.0352, 0.0352),
    (27, 0, 0, 27, -0.0351, 0.0351),
]


@pytest.mark.parametrize(("a", "b", "c", "d", "low", "high"), NEWCOMBE_1998_TABLE_III)
def test_interval_matches_newcombe_1998_table_iii(
    a: int, b: int, c: int, d: int, low: float, high: float
) -> None:
    result = paired_difference(PairedCounts(a, b, c, d))
    assert result.difference == pytest.approx((b - c) / (a + b + c + d))
    # The paper prints four decimals; one of its limits (0.8736 for 0.87367) is truncated.
    assert _interval(result) == pytest.approx((low, high), abs=1e-4)


def test_interval_matches_contingencytables_cavo_example() -> None:
    # contingencytables' test-ch8.R: estimate -0.0621 (95% CI -0.1186 to -0.0046).
    result = paired_difference(PairedCounts(59, 6, 16, 80))
    assert result.difference == pytest.approx(-0.0621, abs=1e-4)
    assert _interval(result) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    assert result.verdict == "worse"


def _scipy_wilson(successes: int, trials: int) -> tuple[float, float]:
    found = binomtest(successes, trials).proportion_ci(method="wilson")
    return float(found.low), float(found.high)


@pytest.mark.parametrize(
    "counts", [(6, 6, 6, 6), (8, 6, 5, 4), (9, 7, 3, 3), (100, 41, 29, 12), (0, 4, 0, 7)]
)
def test_interval_is_the_unpaired_newcombe_interval_when_phi_is_zero(
    counts: tuple[int, int, int, int],
) -> None:
    # In each table ad - bc is from 0 to n/2 (or a margin is empty), so Newcombe's adjusted phi
    # is 0 and the interval must be the square-and-add of scipy's marginal Wilson intervals.
    a, b, c, d = counts
    n = a + b + c + d
    assert 0 <= a * d - b * c <= n / 2
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _scipy_wilson(a + b, n)
    l2, u2 = _scipy_wilson(a + c, n)
    low = (p1 - p2) - math.hypot(p1 - l1, u2 - p2)
    high = (p1 - p2) + math.hypot(u1 - p1, p2 - l2)
    result = paired_difference(PairedCounts(*counts))
    assert (result.candidate_rate, result.baseline_rate) == pytest.approx((p1, p2))
    assert _interval(result) == pytest.approx((low, high), abs=1e-12)


def test_positive_correlation_narrows_the_interval() -> None:
    # Same marginal rates (0.6 and 0.5 of 100), different overlap: the more the students agree
    # on the same requests, the more precise the difference.
    independent = paired_difference(PairedCounts(30, 30, 20, 20))
    correlated = paired_difference(PairedCounts(50, 10, 0, 40))
    assert independent.difference == correlated.difference == pytest.approx(0.1)
    low_i, high_i = _interval(independent)
    low_c, high_c = _interval(correlated)
    assert high_c - low_c < high_i - low_i
    assert correlated.verdict == "better"
    assert independent.verdict == "inconclusive"


def test_interval_narrows_with_more_pairs() -> None:
    widths = []
    for scale in (1, 10, 100, 1000):
        low, high = _interval(paired_difference(PairedCounts(*(scale * x for x in (40, 9, 4, 47)))))
        assert low <= 0.05 <= high
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True)


@pytest.mark.parametrize(
    ("b", "c"),
    [(0, 1), (1, 0), (3, 3), (5, 0), (12, 2), (2, 12), (40, 60), (700, 650), (4900, 5100)],
)
def test_mcnemar_matches_scipy_exact_binomial_test(b: int, c: int) -> None:
    assert b + c <= EXACT_DISCORDANT_LIMIT
    expected = binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("b", "c"), [(5001, 5000), (4950, 5100), (30_000, 30_700), (10**6, 0)])
def test_mcnemar_normal_approximation_above_the_exact_limit(b: int, c: int) -> None:
    assert b + c > EXACT_DISCORDANT_LIMIT
    assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, abs=1e-5)


def test_mcnemar_edges() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="negative"):
        mcnemar_exact(-1, 3)


def test_all_pairs_agreeing_is_inconclusive_around_zero() -> None:
    result = paired_difference(PairedCounts(50, 0, 0, 0))
    assert result.difference == 0.0
    low, high = _interval(result)
    assert -0.08 < low < 0 < high < 0.08
    assert result.p_value == 1.0
    assert result.verdict == "inconclusive"
    assert paired_difference(PairedCounts(0, 0, 0, 50)).verdict == "inconclusive"


def test_one_sided_discordance_gives_better_or_worse() -> None:
    better = paired_difference(PairedCounts(0, 50, 0, 0))
    assert (better.candidate_rate, better.baseline_rate, better.difference) == (1.0, 0.0, 1.0)
    low, high = _interval(better)
    assert low > 0.89
    assert high == 1.0
    assert better.verdict == "better"
    assert better.p_value == pytest.approx(2 / 2**50)
    worse = paired_difference(PairedCounts(0, 0, 50, 0))
    assert _interval(worse) == pytest.approx((-1.0, -low))
    assert worse.verdict == "worse"


def test_too_few_pairs() -> None:
    empty = paired_difference(PairedCounts(0, 0, 0, 0))
    assert empty == PairedComparison(0, None, None, None, None, None, None, "not_enough_data")
    few = paired_difference(PairedCounts(0, 29, 0, 0))
    assert few.verdict == "not_enough_data"
    assert few.low is not None
    assert few.low > 0  # everything is computed; only the verdict waits for min_pairs
    assert paired_difference(PairedCounts(0, 29, 0, 0), min_pairs=10).verdict == "better"


def test_huge_counts_do_not_overflow() -> None:
    for counts in (
        PairedCounts(10**15, 10**12, 10**12 - 10**9, 10**15),
        PairedCounts(10**40, 10**38, 0, 10**40),  # margins whose product is past a float
    ):
        result = paired_difference(counts)
        low, high = _interval(result)
        assert result.difference is not None
        assert math.isfinite(low)
        assert math.isfinite(high)
        assert low <= result.difference <= high
        assert result.p_value is not None
        assert 0 <= result.p_value <= 1
    assert result.verdict == "better"


def test_paired_counts_and_validation() -> None:
    pairs = [(True, True)] * 3 + [(True, False)] * 2 + [(False, True)] + [(False, False)] * 4
    counts = paired_counts(pairs)
    assert counts == PairedCounts(both=3, candidate_only=2, baseline_only=1, neither=4)
    assert counts.n == 10
    assert paired_counts([]).n == 0
    with pytest.raises(ValueError, match="negative"):
        PairedCounts(1, -1, 0, 0)


COUNT = st.integers(min_value=0, max_value=10**6) | st.integers(min_value=0, max_value=12)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(COUNT, COUNT, COUNT, COUNT, st.integers(min_value=0, max_value=100))
def test_interval_properties(a: int, b: int, c: int, d: int, min_pairs: int) -> None:
    counts = PairedCounts(a, b, c, d)
    result = paired_difference(counts, min_pairs=min_pairs)
    if counts.n == 0:
        assert result.verdict == "not_enough_data"
        return
    low, high = _interval(result)
    assert result.difference is not None
    assert result.p_value is not None
    assert -1.0 <= low <= result.difference <= high <= 1.0
    assert 0.0 <= result.p_value <= 1.0
    expected = (
        "not_enough_data"
        if counts.n < min_pairs
        else "better"
        if low > 0
        else "worse"
        if high < 0
        else "inconclusive"
    )
    assert result.verdict == expected
    # Swapping the two students mirrors everything.
    mirrored = paired_difference(PairedCounts(a, c, b, d), min_pairs=min_pairs)
    assert _interval(mirrored) == pytest.approx((-high, -low), abs=1e-12)
    assert mirrored.p_value == pytest.approx(result.p_value)
