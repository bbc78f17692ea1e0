"""The rollups' bins: thresholds mapped from the 0.01 grid, latency percentiles from 2% bins."""

from __future__ import annotations

import math
import random

import pytest

from gateway.core import statistics as stats
from gateway.services.reports.rollup import (
    GRID,
    LATENCY_RATIO,
    grid_buckets,
    latency_percentile,
    regrid,
)


def test_default_thresholds_are_on_the_grid_and_others_are_not() -> None:
    assert grid_buckets(stats.candidate_thresholds()) is not None
    assert grid_buckets([0.8, 0.85, 0.9]) is not None
    assert grid_buckets([0.333]) is None


@pytest.mark.parametrize("thresholds", [stats.candidate_thresholds(), (0.0, 0.29, 0.8, 1.0)])
def test_a_grid_bin_maps_to_the_reports_own_width_bucket(thresholds: tuple[float, ...]) -> None:
    places = grid_buckets(thresholds)
    assert places is not None
    values = [i / 1000 for i in range(-5, 1006)] + [0.29, 0.15, 0.8, 1.0]
    for value in values:
        grid_bin = stats.bin_index(value, GRID)  # what width_bucket over GRID gives
        assert regrid(grid_bin, places) == stats.bin_index(value, thresholds), value


def bin_of(ms: float) -> int:
    return 0 if ms < 1 else 1 + math.floor(math.log(ms) / math.log(LATENCY_RATIO))


def exact_percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.mark.parametrize("fraction", [0.5, 0.95, 0.0, 1.0])
def test_latency_percentiles_from_bins_are_within_one_percent(fraction: float) -> None:
    rng = random.Random(7)
    for size in (1, 2, 7, 1000):
        values = [rng.lognormvariate(5, 0.8) + 1 for _ in range(size)]
        bins: dict[int, int] = {}
        for value in values:
            bins[bin_of(value)] = bins.get(bin_of(value), 0) + 1
        found = latency_percentile(bins, fraction)
        assert found is not None
        assert math.isclose(found, exact_percentile(values, fraction), rel_tol=0.0101)
    assert latency_percentile({}, 0.5) is None
