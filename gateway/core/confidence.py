"""The student's confidence in its answer, from its token logprobs.

Tokens are the normalised shape of :func:`gateway.core.completions.token_logprobs`. Methods:

- ``mean_prob``: exp(mean token logprob), the geometric-mean token probability;
- ``min_prob``: the least likely sampled token's probability (one doubtful token is enough);
- ``first_token``: the first token's probability (classification-style answers, where the
  first token is the label);
- ``margin``: the mean over tokens of p(top-1) - p(top-2), how decisively each token won
  (needs ``top_logprobs`` ≥ 2; a token with one alternative counts as margin p(top-1)).

No tokens, or no usable logprobs, gives None: the caller treats that as "unknown", never as
confident.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Tokens = Sequence[Mapping[str, Any]]


def _logprobs(tokens: Tokens) -> list[float]:
    values = []
    for token in tokens:
        value = token.get("logprob")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            values.append(min(float(value), 0.0))
    return values


def mean_prob(tokens: Tokens) -> float | None:
    values = _logprobs(tokens)
    return math.exp(sum(values) / len(values)) if values else None


def min_prob(tokens: Tokens) -> float | None:
    values = _logprobs(tokens)
    return math.exp(min(values)) if values else None


def first_token(tokens: Tokens) -> float | None:
    values = _logprobs(tokens[:1])
    return math.exp(values[0]) if values else None


def margin(tokens: Tokens) -> float | None:
    margins = []
    for token in tokens:
        top = sorted(_logprobs(token.get("top_logprobs") or ()), reverse=True)
        if not top:
            continue
        second = math.exp(top[1]) if len(top) > 1 else 0.0
        margins.append(max(math.exp(top[0]) - second, 0.0))
    return sum(margins) / len(margins) if margins else None


METHODS: dict[str, Callable[[Tokens], float | None]] = {
    "mean_prob": mean_prob,
    "min_prob": min_prob,
    "first_token": first_token,
    "margin": margin,
}


def confidence(method: str, tokens: Tokens | None) -> float | None:
    if not tokens:
        return None
    return METHODS[method](tokens)
