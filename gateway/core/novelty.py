"""How far a prompt is from everything in a reference set: the scope gate's novelty check.

A student distilled on one kind of work should not answer another. The gate compares each
prompt chosen for the student with the prompts it was trained on (a reference set) and sends
those farther than ``max_distance`` from all of them to the teacher.

The representation is cheap on purpose (it runs on the request path): the prompt's character
n-grams (lower-cased, whitespace collapsed), hashed into :data:`DIMENSIONS` buckets, counted,
square-rooted (so a repeated phrase does not dominate) and scaled to unit length. The
distance is ``1 - cosine similarity`` to the **nearest** reference prompt: 0 for a prompt the
set holds, close to 1 for one sharing almost no n-grams with any of it. Nearest neighbour
rather than a centroid, because training sets are mixtures: a prompt near one cluster is in
scope even if it is far from their average.

Cost: hashing is vectorised (numpy over the text's bytes), and the search is one
matrix-vector product, ``references x DIMENSIONS`` float32 (10,000 prompts: 10 MB). Measured in
``bench/novelty_bench.py`` (docs/benchmarks.md). It catches *different kinds of text* (another
language, another domain's vocabulary, code instead of prose), not a different question in
the same words; pair it with ``scope.allow`` for what the labels already say.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

DIMENSIONS = 256
NGRAM = 3
MAX_CHARS = 4000  # a prompt's first characters are enough to tell what kind of text it is
_SPACES = re.compile(r"\s+")
# Knuth's multiplicative hash: spreads the packed n-gram bits over the high bits.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _normalise(text: str) -> bytes:
    return _SPACES.sub(" ", text[:MAX_CHARS].lower()).strip().encode("utf-8", "replace")


def vector(text: str) -> npt.NDArray[np.float32]:
    """The prompt's unit-length hashed n-gram profile (all zeros for text shorter than an
    n-gram)."""
    data = np.frombuffer(_normalise(text), dtype=np.uint8).astype(np.uint64)
    profile = np.zeros(DIMENSIONS, dtype=np.float32)
    if len(data) < NGRAM:
        return profile
    packed = data[: len(data) - NGRAM + 1].copy()
    for offset in range(1, NGRAM):
        packed = (packed << np.uint64(8)) | data[offset : len(data) - NGRAM + 1 + offset]
    buckets = ((packed * _GOLDEN) >> np.uint64(56)) % np.uint64(DIMENSIONS)
    counts = np.bincount(buckets.astype(np.int64), minlength=DIMENSIONS).astype(np.float32)
    profile = np.sqrt(counts)
    norm = float(np.linalg.norm(profile))
    return profile / norm if norm else profile


class NoveltyIndex:
    """The reference prompts' profiles, searched for the nearest to a new prompt."""

    def __init__(self, prompts: Iterable[str]) -> None:
        rows = [vector(text) for text in prompts]
        rows = [row for row in rows if row.any()]
        if not rows:
            raise ValueError("the reference set holds no prompt with text to compare")
        self._matrix = np.vstack(rows)

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    def distance(self, text: str) -> float:
        """``1 - cosine similarity`` to the nearest reference prompt, in [0, 1]; 1 for a
        prompt with no n-gram at all."""
        profile = vector(text)
        if not profile.any():
            return 1.0
        nearest = float(np.max(self._matrix @ profile))
        return min(1.0, max(0.0, 1.0 - nearest))

    def distances(self, texts: Iterable[str]) -> npt.NDArray[np.float32]:
        """:meth:`distance` of each text, in one matrix product (drift measures hundreds)."""
        rows = [vector(text) for text in texts]
        if not rows:
            return np.zeros(0, dtype=np.float32)
        profiles = np.vstack(rows)
        nearest = np.max(profiles @ self._matrix.T, axis=1)
        found: npt.NDArray[np.float32] = np.clip(1.0 - nearest, 0.0, 1.0).astype(np.float32)
        found[~profiles.any(axis=1)] = 1.0  # no n-gram at all: as far as can be
        return found
