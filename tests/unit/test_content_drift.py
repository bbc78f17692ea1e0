"""Prompt-content drift (gateway.core.content): held-out reference prompts against live ones."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gateway.core.content import MIN_PROMPTS, ContentReference, ContentShift
from gateway.core.novelty import NoveltyIndex

TOPICS = ["invoice", "refund", "password", "shipping address", "card payment", "order status"]


def support(rng: random.Random) -> str:
    return (
        f"Hello, I have a question about my {rng.choice(TOPICS)} for order {rng.randint(1, 9999)}."
    )


def german(i: int) -> str:
    return f"Wie spät ist es in Berlin, wenn es in Tokio {i % 24} Uhr ist? Bitte erklären."


@pytest.fixture
def reference() -> ContentReference:
    rng = random.Random(7)
    return ContentReference([support(rng) for _ in range(500)])


def test_traffic_like_the_reference_shows_no_shift(reference: ContentReference) -> None:
    rng = random.Random(8)
    shift = reference.compare([support(rng) for _ in range(300)], 0.5)
    assert isinstance(shift, ContentShift)
    assert shift.reference_prompts == 400  # four in five indexed
    assert shift.held_out.prompts == 100
    assert shift.held_out.beyond == shift.current.beyond == 0
    assert shift.psi.value < 0.05
    assert not shift.away


def test_another_kind_of_text_is_beyond_the_distance(reference: ContentReference) -> None:
    rng = random.Random(9)
    live = [support(rng) for _ in range(150)] + [german(i) for i in range(150)]
    shift = reference.compare(live, 0.5)
    assert isinstance(shift, ContentShift)
    assert (shift.current.beyond, shift.current.share) == (150, 0.5)
    assert shift.away
    assert shift.psi.value > 0.2
    assert [b.label for b in shift.psi.bins] == ["within", "beyond"]
    # a looser distance counts none of it as unlike
    loose = reference.compare(live, 0.99)
    assert isinstance(loose, ContentShift)
    assert loose.current.beyond == 0


def test_too_few_prompts_say_why(reference: ContentReference) -> None:
    assert reference.compare(["hi there"] * (MIN_PROMPTS - 1), 0.5) == (
        f"only {MIN_PROMPTS - 1} current prompts with text (at least {MIN_PROMPTS})"
    )
    small = ContentReference([f"question number {i} about invoices" for i in range(50)])
    assert "only 10 held-out reference prompts" in str(small.compare(["x"] * 50, 0.5))
    with pytest.raises(ValueError, match="no prompt with text"):
        ContentReference(["", "a"])


def test_batch_distances_match_one_by_one() -> None:
    index = NoveltyIndex(["where is my invoice", "reset my password please"])
    texts = ["where is my invoice?", "Passwort zurücksetzen", "", "x"]
    assert np.allclose(index.distances(texts), [index.distance(t) for t in texts], atol=1e-6)
    assert index.distances([]).shape == (0,)
