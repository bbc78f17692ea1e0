"""Prompt-content drift: how much of live traffic is unlike the prompts of a reference set.

The slice and length PSIs see what the labels and the lengths say; a new kind of text under
the same labels goes unseen. This uses the scope gate's novelty distance
(:mod:`gateway.core.novelty`: hashed character 3-gram profiles, nearest reference prompt) to
count the prompts farther than ``max_distance`` from everything in the reference.

That share is never zero, even for traffic like the reference: a new question in other words
lands some way off. So the reference is split: every :data:`HOLDOUT_EVERY`-th prompt is held
out and the index is built from the rest; the held-out prompts, measured against that index,
give the share *expected* of traffic that is like the reference, and the live prompts,
measured against the same index, the share *seen*. The two shares are compared as a
two-bin population (``within`` / ``beyond``) with the same PSI as the other dimensions, so one
threshold reads them all; only a move *away* from the reference (more prompts beyond than the
held-out part has) is flagged, since traffic that repeats training prompts is closer, not
drifted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.core import statistics as stats
from gateway.core.novelty import NoveltyIndex

HOLDOUT_EVERY = 5  # one reference prompt in five is held out
MIN_PROMPTS = 20  # fewer held-out or live prompts than this: no content figure
DEFAULT_MAX_DISTANCE = 0.5  # the scope gate's documented example (docs/benchmarks.md)
WITHIN, BEYOND = "within", "beyond"


@dataclass(frozen=True)
class Side:
    """Prompts measured against the index: how many, how many beyond ``max_distance``."""

    prompts: int
    beyond: int
    median_distance: float

    @property
    def share(self) -> float:
        return self.beyond / self.prompts if self.prompts else 0.0

    def counts(self) -> dict[str, int]:
        return {WITHIN: self.prompts - self.beyond, BEYOND: self.beyond}

    def as_json(self) -> dict[str, float | int]:
        return {
            "prompts": self.prompts,
            "beyond": self.beyond,
            "share": self.share,
            "median_distance": self.median_distance,
        }


@dataclass(frozen=True)
class ContentShift:
    max_distance: float
    reference_prompts: int  # in the index
    held_out: Side
    current: Side
    psi: stats.PsiResult

    @property
    def away(self) -> bool:
        """More live prompts beyond the distance than held-out reference prompts."""
        return self.current.share > self.held_out.share


def _side(distances: npt.NDArray[np.float32], max_distance: float) -> Side:
    return Side(
        int(distances.size),
        int(np.count_nonzero(distances > max_distance)),
        float(np.median(distances)) if distances.size else 0.0,
    )


class ContentReference:
    """A reference set of prompts, split into an index and a held-out part (built once: the
    held-out distances are kept, the prompts are not)."""

    def __init__(self, prompts: Sequence[str], holdout_every: int = HOLDOUT_EVERY) -> None:
        """``prompts`` in a fixed order (the split takes every ``holdout_every``-th); a
        ValueError when none of the indexed prompts has text enough to compare."""
        self.index = NoveltyIndex(p for i, p in enumerate(prompts) if i % holdout_every)
        self.held_out = self.index.distances(prompts[::holdout_every])

    def compare(self, current: Sequence[str], max_distance: float) -> ContentShift | str:
        """The shift of ``current`` against the held-out part, or why there is none."""
        if self.held_out.size < MIN_PROMPTS:
            return (
                f"only {self.held_out.size} held-out reference prompts with text "
                f"(at least {MIN_PROMPTS} are needed)"
            )
        if len(current) < MIN_PROMPTS:
            return f"only {len(current)} current prompts with text (at least {MIN_PROMPTS})"
        held_out = _side(self.held_out, max_distance)
        now = _side(self.index.distances(current), max_distance)
        return ContentShift(
            max_distance,
            len(self.index),
            held_out,
            now,
            stats.psi(held_out.counts(), now.counts()),
        )
