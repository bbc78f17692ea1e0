"""The statistics behind the analyst reports: intervals, calibration, drift. Pure, no I/O.

- :func:`wilson_interval`: the 95 % Wilson score interval of a proportion. Unlike the normal
  approximation it stays inside [0, 1] and is honest at small counts (9 agreements out of 10
  is 0.60-0.98, not 0.71-1.09), which is what a per-slice report with small slices needs.
- :func:`calibration_curve` / :func:`recommend_threshold`: for candidate confidence
  thresholds, the share of comparisons the student would have served (confidence at or above
  the threshold) and the agreement on that share; the lowest threshold at which every bar
  holds. The database groups rows into threshold buckets (``width_bucket``); these functions
  only add up a few dozen bucket counts.
- :func:`psi`: the population stability index between two distributions over the same bins,
  ``sum((q - p) * ln(q / p))``. An empty bin would make it infinite, so every bin gets an
  extra half count (additive smoothing) before shares are taken; with thousands of rows that
  moves non-empty shares by a negligible amount. Rule of thumb: below 0.1 stable, 0.1-0.2 a
  moderate shift, above 0.2 a significant one (the default flag).
- :func:`percentiles` / :func:`length_edges` / :func:`histogram`: prompt-length bins from the
  reference's deciles. Lengths come as ``{length: how many}`` (the database groups them), so
  a million prompts are a few thousand numbers here.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Fewest served comparisons a per-slice threshold is judged on (rollout calibrate).
MIN_SERVED = 30
Z_95 = 1.959963984540054
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PSI_SMOOTHING = 0.5
MISSING = "(none)"  # rows without a label in the dimension
OTHER = "(other)"  # values beyond the ones compared one by one


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / trials``; (0, 1) when there are no trials."""
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (share + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z2 / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Proportion:
    """``successes`` out of ``trials``, with its share and 95 % Wilson interval."""

    successes: int
    trials: int

    @property
    def share(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.trials)


# -- threshold calibration ------------------------------------------------------------------


def candidate_thresholds(step: float = 0.05) -> tuple[float, ...]:
    """0, step, 2·step, … up to 1 (rounded, so 3 * 0.05 is 0.15 and not 0.15000000000000002)."""
    if not 0 < step <= 1:
        raise ValueError(f"the step must be above 0 and at most 1, not {step:g}")
    count = math.floor(1 / step + 1e-9)
    values = [round(i * step, 10) for i in range(count + 1)]
    return tuple(values if values[-1] == 1.0 else [*values, 1.0])


def check_thresholds(values: Iterable[float]) -> tuple[float, ...]:
    """Sorted, distinct thresholds in [0, 1]; ValueError otherwise."""
    found = sorted(set(values))
    if not found:
        raise ValueError("give at least one threshold")
    if any(not (0.0 <= value <= 1.0) or math.isnan(value) for value in found):
        raise ValueError("thresholds must be from 0 to 1")
    return tuple(found)


def bin_index(value: float, edges: Sequence[float]) -> int:
    """Postgres' ``width_bucket(value, edges)``: 0 below ``edges[0]``, i from ``edges[i-1]``."""
    return bisect_right(edges, value)


@dataclass(frozen=True)
class CurvePoint:
    """At ``threshold``: the comparisons the student would serve and how many of them agree."""

    threshold: float
    served: int
    agreed: int
    total: int

    @property
    def share(self) -> float | None:
        return self.served / self.total if self.total else None

    @property
    def agreement(self) -> Proportion:
        return Proportion(self.agreed, self.served)


def calibration_curve(
    thresholds: Sequence[float], buckets: Mapping[int, tuple[int, int]]
) -> list[CurvePoint]:
    """One point per threshold from ``{width_bucket: (comparisons, agreed)}`` counts.

    Bucket ``i`` holds confidences in ``[thresholds[i-1], thresholds[i])`` (0: below the
    first), so the share served at ``thresholds[j]`` is every bucket from ``j + 1`` up.
    """
    total = sum(samples for samples, _ in buckets.values())
    points: list[CurvePoint] = []
    served = agreed = 0
    for index in range(len(thresholds), 0, -1):
        samples, agreeing = buckets.get(index, (0, 0))
        served += samples
        agreed += agreeing
        points.append(CurvePoint(thresholds[index - 1], served, agreed, total))
    return points[::-1]


@dataclass(frozen=True)
class Bar:
    """What a slice must keep: agreement of at least ``min_agreement`` over ``min_samples``."""

    dimension: str
    value: str
    min_agreement: float
    min_samples: int

    @property
    def name(self) -> str:
        return f"{self.dimension}={self.value}"


@dataclass(frozen=True)
class Recommendation:
    threshold: float | None  # None: no candidate keeps every bar
    reason: str


def meets(point: CurvePoint, bar: Bar, conservative: bool = False) -> bool:
    """Whether the share served at this point keeps the bar (enough samples, high enough)."""
    if point.served < bar.min_samples or point.served == 0:
        return False
    agreement = point.agreement
    judged = agreement.interval[0] if conservative else (agreement.share or 0.0)
    return judged >= bar.min_agreement


def recommend_threshold(
    curves: Mapping[tuple[str, str], Sequence[CurvePoint]],
    bars: Sequence[Bar],
    conservative: bool = False,
) -> Recommendation:
    """The lowest threshold at which every bar holds on what the student would serve.

    ``curves`` maps (dimension, value) to the slice's points, one per candidate threshold in
    ascending order; a bar whose slice has no curve never holds. ``conservative`` judges the
    Wilson lower bound instead of the observed agreement.
    """
    if not bars:
        raise ValueError("a recommendation needs at least one bar")
    lengths = {len(points) for points in curves.values()}
    if len(lengths) > 1:
        raise ValueError("every curve must have one point per candidate threshold")
    count = lengths.pop() if lengths else 0
    for index in range(count):
        if all(
            (points := curves.get((bar.dimension, bar.value))) is not None
            and meets(points[index], bar, conservative)
            for bar in bars
        ):
            threshold = next(iter(curves.values()))[index].threshold
            basis = "the lower end of its 95% interval" if conservative else "its agreement"
            return Recommendation(
                threshold,
                f"the lowest candidate at which every bar holds ({basis} at or above the bar, "
                "with at least its minimum number of comparisons served)",
            )
    blockers = [
        _why_not(curves.get((bar.dimension, bar.value), ()), bar, conservative) for bar in bars
    ]
    return Recommendation(None, "no candidate threshold keeps every bar: " + "; ".join(blockers))


def _why_not(points: Sequence[CurvePoint], bar: Bar, conservative: bool) -> str:
    enough = [p for p in points if p.served >= bar.min_samples and p.served > 0]
    if not enough:
        most = max((p.served for p in points), default=0)
        return (
            f"{bar.name} never has {bar.min_samples} comparisons served "
            f"(at most {most}; widen the window)"
        )
    if any(meets(p, bar, conservative) for p in enough):
        return f"{bar.name} holds only at thresholds where another bar fails"

    def judged(point: CurvePoint) -> float:
        return point.agreement.interval[0] if conservative else (point.agreement.share or 0.0)

    best = max(enough, key=judged)
    return (
        f"{bar.name} reaches at most {judged(best):.1%} (at {best.threshold:g}, "
        f"{best.served} served), below its bar {bar.min_agreement:.1%}"
    )


# -- drift ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PsiBin:
    label: str
    reference: int
    current: int
    reference_share: float  # unsmoothed shares, for people; the index uses smoothed ones
    current_share: float
    contribution: float


@dataclass(frozen=True)
class PsiResult:
    value: float
    bins: tuple[PsiBin, ...]


def psi(
    reference: Mapping[str, int], current: Mapping[str, int], smoothing: float = PSI_SMOOTHING
) -> PsiResult:
    """Population stability index of ``current`` against ``reference`` (same bin labels).

    Bins are the union of both mappings' keys, reference order first. Each bin gets
    ``smoothing`` extra counts on both sides, so a bin empty on one side gives a large but
    finite contribution.
    """
    labels = list(dict.fromkeys([*reference, *current]))
    reference_total = sum(reference.values())
    current_total = sum(current.values())
    if reference_total <= 0 or current_total <= 0:
        raise ValueError("both distributions need at least one count")
    if smoothing <= 0:
        raise ValueError("smoothing must be positive")
    if any(count < 0 for count in [*reference.values(), *current.values()]):
        raise ValueError("counts cannot be negative")
    k = len(labels)
    bins = []
    for label in labels:
        ref, cur = reference.get(label, 0), current.get(label, 0)
        p = (ref + smoothing) / (reference_total + smoothing * k)
        q = (cur + smoothing) / (current_total + smoothing * k)
        bins.append(
            PsiBin(
                label,
                ref,
                cur,
                ref / reference_total,
                cur / current_total,
                (q - p) * math.log(q / p),
            )
        )
    return PsiResult(sum(b.contribution for b in bins), tuple(bins))


def with_missing(counts: Mapping[str, int], total: int) -> dict[str, int]:
    """A dimension's value counts plus :data:`MISSING` for the rows without a label."""
    labelled = sum(counts.values())
    if labelled > total:
        raise ValueError(f"{labelled} labels but only {total} rows")
    result = dict(counts)
    if total > labelled:
        result[MISSING] = result.get(MISSING, 0) + total - labelled
    return result


def collapse_tail(
    reference: Mapping[str, int], current: Mapping[str, int], keep: int = 30
) -> tuple[dict[str, int], dict[str, int]]:
    """Keep the ``keep`` most frequent values (both sides together); fold the rest into OTHER.

    A dimension with hundreds of values would otherwise add hundreds of smoothed, noisy bins.
    """
    combined: dict[str, int] = {}
    for counts in (reference, current):
        for label, count in counts.items():
            combined[label] = combined.get(label, 0) + count
    if len(combined) <= keep:
        return dict(reference), dict(current)
    kept = {label for label, _ in sorted(combined.items(), key=lambda kv: (-kv[1], kv[0]))[:keep]}

    def fold(counts: Mapping[str, int]) -> dict[str, int]:
        folded = {label: count for label, count in counts.items() if label in kept}
        rest = sum(count for label, count in counts.items() if label not in kept)
        if rest:
            folded[OTHER] = folded.get(OTHER, 0) + rest
        return folded

    return fold(reference), fold(current)


def percentiles(counts: Mapping[int, int], fractions: Sequence[float] = DECILES) -> list[int]:
    """Postgres' ``percentile_disc`` over ``{value: how many}``: for each fraction, the first
    value whose cumulative share reaches it."""
    total = sum(counts.values())
    if total <= 0:
        return []
    found = []
    values = sorted(counts)
    for fraction in fractions:
        position = max(1, math.ceil(fraction * total - 1e-9))
        cumulative = 0
        for value in values:
            cumulative += counts[value]
            if cumulative >= position:
                found.append(value)
                break
    return found


def length_edges(quantiles: Iterable[float]) -> tuple[int, ...]:
    """Histogram edges from the reference's length quantiles: whole, positive, distinct."""
    return tuple(sorted({math.ceil(q) for q in quantiles if q > 0}))


def bin_labels(edges: Sequence[int]) -> list[str]:
    """Labels for the ``len(edges) + 1`` bins: ``<10``, ``10-19``, …, ``>=90``."""
    if not edges:
        return ["all"]
    labels = [f"<{edges[0]}"]
    labels.extend(f"{low}-{high - 1}" for low, high in itertools.pairwise(edges))
    labels.append(f">={edges[-1]}")
    return labels


def histogram(counts: Mapping[int, int], edges: Sequence[int]) -> dict[str, int]:
    """``{value: how many}`` per bin (labels from :func:`bin_labels`, every bin present)."""
    labels = bin_labels(edges)
    binned = dict.fromkeys(labels, 0)
    for value, count in counts.items():
        binned[labels[bin_index(value, edges)]] += count
    return binned
