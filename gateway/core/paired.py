"""Paired comparison of two students on the same requests: is the candidate better? Pure, no I/O.

Each request both students answered gives a pair of booleans, (candidate agreed with the
teacher, baseline agreed with the teacher). Four counts summarise them (:class:`PairedCounts`);
:func:`paired_difference` turns them into the difference in agreement rate, candidate minus
baseline, with a 95 % interval, a p-value and a verdict.

The pairing matters: most requests are easy or hard for both students, so the two rates are
strongly correlated and their difference is far more precise than two independent intervals
suggest. Only the discordant pairs (one student agreed, the other did not) carry information
about which is better.

- Interval: Newcombe's hybrid score ("square-and-add") interval for the difference of paired
  proportions, method 10 of R. G. Newcombe, "Improved confidence intervals for the difference
  between binomial proportions based on paired data", Statistics in Medicine 17 (1998)
  2635-2650. It combines the Wilson interval of each marginal rate with Newcombe's estimate of
  their correlation, phi (see :func:`_newcombe_phi`). It matches the paper's Table III to four
  decimals, stays well behaved with empty cells, and is clamped to [-1, 1].
- p-value: McNemar's exact test, the two-sided binomial test of ``candidate_only`` against
  ``baseline_only`` with p = 1/2 (1 when there are no discordant pairs). Exact integer
  arithmetic up to :data:`EXACT_DISCORDANT_LIMIT` discordant pairs; above, the normal
  approximation with continuity correction, off by less than 1e-5 there.
- Verdict: ``not_enough_data`` below ``min_pairs`` pairs, else ``better`` when the whole
  interval is above 0, ``worse`` when it is below 0, ``inconclusive`` otherwise. It follows the
  interval, not the p-value: the two are different methods and can disagree at the margin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.core.statistics import Z_95, wilson_interval

Verdict = Literal["better", "worse", "inconclusive", "not_enough_data"]

MIN_PAIRS = 30
# Up to here the binomial tail is summed exactly in integers (about 10 ms at the limit); beyond
# it the continuity-corrected normal approximation is off by less than 1e-5 (checked by scipy).
EXACT_DISCORDANT_LIMIT = 10_000


@dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of paired outcomes: who agreed with the teacher on each shared request."""

    both: int
    candidate_only: int
    baseline_only: int
    neither: int

    def __post_init__(self) -> None:
        if min(self.both, self.candidate_only, self.baseline_only, self.neither) < 0:
            raise ValueError(f"paired counts cannot be negative: {self}")

    @property
    def n(self) -> int:
        return self.both + self.candidate_only + self.baseline_only + self.neither


@dataclass(frozen=True)
class PairedComparison:
    """Candidate minus baseline on ``n`` shared requests; ``None`` where there are none."""

    n: int
    candidate_rate: float | None
    baseline_rate: float | None
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    verdict: Verdict


def paired_json(counts: PairedCounts, comparison: PairedComparison) -> dict[str, Any]:
    """The table and its comparison as the reports give them (``paired`` in their JSON)."""
    return {
        "pairs": counts.n,
        "both": counts.both,
        "candidate_only": counts.candidate_only,
        "baseline_only": counts.baseline_only,
        "neither": counts.neither,
        "difference": comparison.difference,
        "ci_low": comparison.low,
        "ci_high": comparison.high,
        "p_value": comparison.p_value,
    }


def paired_counts(pairs: Iterable[tuple[bool, bool]]) -> PairedCounts:
    """Count ``(candidate agreed, baseline agreed)`` pairs into a :class:`PairedCounts`."""
    cells = [0, 0, 0, 0]  # both, candidate only, baseline only, neither
    for candidate, baseline in pairs:
        if candidate and baseline:
            cells[0] += 1
        elif candidate:
            cells[1] += 1
        elif baseline:
            cells[2] += 1
        else:
            cells[3] += 1
    return PairedCounts(*cells)


def paired_difference(
    counts: PairedCounts, *, min_pairs: int = MIN_PAIRS, z: float = Z_95
) -> PairedComparison:
    """The paired difference in agreement rate (candidate minus baseline) and its verdict.

    With ``a, b, c, d = both, candidate_only, baseline_only, neither`` and ``n`` their sum, the
    rates are ``p1 = (a + b) / n`` and ``p2 = (a + c) / n`` and the difference is
    ``(b - c) / n``. Newcombe's method 10 takes the Wilson intervals ``(l1, u1)`` and
    ``(l2, u2)`` of the two rates and gives::

        low  = difference - sqrt((p1 - l1)**2 - 2*phi*(p1 - l1)*(u2 - p2) + (u2 - p2)**2)
        high = difference + sqrt((u1 - p1)**2 - 2*phi*(u1 - p1)*(p2 - l2) + (p2 - l2)**2)

    clamped to [-1, 1]. With ``phi = 0`` this is Newcombe's interval for independent samples.
    ``z`` sets the level of the interval (the default is 95 %); the p-value does not use it.
    """
    n = counts.n
    if n == 0:
        return PairedComparison(0, None, None, None, None, None, None, "not_enough_data")
    candidate_agreed = counts.both + counts.candidate_only
    baseline_agreed = counts.both + counts.baseline_only
    p1, p2 = candidate_agreed / n, baseline_agreed / n
    l1, u1 = wilson_interval(candidate_agreed, n, z)
    l2, u2 = wilson_interval(baseline_agreed, n, z)
    phi = _newcombe_phi(counts)
    difference = (counts.candidate_only - counts.baseline_only) / n
    low = difference - _combine(p1 - l1, u2 - p2, phi)
    high = difference + _combine(u1 - p1, p2 - l2, phi)
    low, high = max(-1.0, low), min(1.0, high)
    if n < min_pairs:
        verdict: Verdict = "not_enough_data"
    elif low > 0:
        verdict = "better"
    elif high < 0:
        verdict = "worse"
    else:
        verdict = "inconclusive"
    p_value = mcnemar_exact(counts.candidate_only, counts.baseline_only)
    return PairedComparison(n, p1, p2, difference, low, high, p_value, verdict)


def _newcombe_phi(counts: PairedCounts) -> float:
    """Newcombe's estimate of the correlation between the two rates, in [-1, 1].

    The phi coefficient ``(ad - bc) / sqrt((a+b)(c+d)(a+c)(b+d))``, with Newcombe's continuity
    adjustment when it is positive: ``ad - bc`` becomes ``max(ad - bc - n/2, 0)``. Without it,
    a table with no discordant pairs (27, 0, 0, 27) would give phi = 1 and an interval of zero
    width; with it, the interval is -0.035 to 0.035 as in the paper. 0 when a margin is empty
    (the denominator is 0): one rate is then 0 or 1 and its Wilson interval carries the
    uncertainty alone.
    """
    a, b, c, d = counts.both, counts.candidate_only, counts.baseline_only, counts.neither
    margins = (a + b, c + d, a + c, b + d)
    if 0 in margins:
        return 0.0
    cross = a * d - b * c
    adjusted = max(cross - counts.n / 2, 0.0) if cross > 0 else float(cross)
    # Each square root apart: the product of four margins overflows a float for huge counts.
    denominator = math.prod(math.sqrt(margin) for margin in margins)
    return max(-1.0, min(1.0, adjusted / denominator))


def _combine(first: float, second: float, phi: float) -> float:
    """``sqrt(x² - 2·phi·x·y + y²)``; rounding can push the Wilson offsets or the sum below 0."""
    x, y = max(first, 0.0), max(second, 0.0)
    return math.sqrt(max(x * x - 2 * phi * x * y + y * y, 0.0))


def mcnemar_exact(candidate_only: int, baseline_only: int) -> float:
    """Two-sided exact McNemar p-value: ``2·P(X <= min)`` for X ~ Binomial(discordant, 1/2).

    1 when there are no discordant pairs. Exact up to :data:`EXACT_DISCORDANT_LIMIT` discordant
    pairs; above, the normal approximation with continuity correction.
    """
    if candidate_only < 0 or baseline_only < 0:
        raise ValueError("discordant counts cannot be negative")
    discordant = candidate_only + baseline_only
    fewer = min(candidate_only, baseline_only)
    if discordant == 0 or 2 * fewer == discordant:
        return 1.0
    if discordant <= EXACT_DISCORDANT_LIMIT:
        tail = 0
        term = 1  # C(discordant, k), kept exact in integers
        for k in range(fewer + 1):
            tail += term
            term = term * (discordant - k) // (k + 1)
        return min(1.0, 2 * tail / (1 << discordant))
    z = (discordant - 2 * fewer - 1) / math.sqrt(discordant)
    return min(1.0, math.erfc(z / math.sqrt(2)))
