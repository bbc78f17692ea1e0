from __future__ import annotations

import math
import re

import pytest

from gateway.core.confidence import confidence, first_token, margin, mean_prob, min_prob
from gateway.core.slices import (
    RouteSliceRules,
    exported_slices,
    last_user_text,
    length_bucket,
)


def test_last_user_text_from_chat_parts_and_prompts() -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "my"},
                    {"type": "image"},
                    {"type": "text", "text": "invoice"},
                ],
            },
            {"role": "tool", "content": "ignored"},
        ]
    }
    assert last_user_text(chat) == "my invoice"
    assert last_user_text({"messages": [{"role": "system", "content": "x"}]}) == ""
    assert last_user_text({"prompt": "2+2="}) == "2+2="
    assert last_user_text({"prompt": ["a", "b"]}) == "a"
    assert last_user_text({"prompt": [1, 2]}) == ""


@pytest.mark.parametrize(
    ("length", "bucket"),
    [(0, "<50"), (49, "<50"), (50, "50-199"), (199, "50-199"), (200, ">=200"), (10**6, ">=200")],
)
def test_length_buckets(length: int, bucket: str) -> None:
    assert length_bucket(length, (50, 200)) == bucket


def test_route_rules_precedence() -> None:
    rules = RouteSliceRules(
        rules=(
            ("category", re.compile(r"(?i)invoice|refund"), "billing"),
            ("category", re.compile(r"(?i)password"), "account"),
            ("language", re.compile(r"[äöüß]"), "de"),
        ),
        length_dimension="prompt_length",
        length_bounds=(10,),
        defaults=(("category", "general"), ("tier", "free")),
    )
    assert rules.apply({}, "Refund my INVOICE and password") == {
        "category": "billing",  # first matching rule per dimension
        "prompt_length": ">=10",
        "tier": "free",
    }
    # what the app sent wins over rules and defaults
    assert rules.apply({"category": "sales", "tier": "pro"}, "grüß dich") == {
        "category": "sales",
        "tier": "pro",
        "language": "de",
        "prompt_length": "<10",
    }
    assert rules.apply({}, "hello there") == {
        "category": "general",
        "prompt_length": ">=10",
        "tier": "free",
    }


def test_exported_slices_are_bounded_by_the_allow_list() -> None:
    allowed = {"tier": frozenset({"free", "enterprise"}), "category": frozenset({"billing"})}
    assert exported_slices({"tier": "enterprise", "category": "x", "noise": "y"}, allowed) == [
        ("all", "all"),
        ("tier", "enterprise"),
        ("category", "other"),
    ]
    assert exported_slices({}, {}) == [("all", "all")]


def tokens(*logprobs: float, tops: tuple[tuple[float, ...], ...] = ()) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i, value in enumerate(logprobs):
        top = tops[i] if i < len(tops) else ()
        out.append(
            {
                "token": f"t{i}",
                "logprob": value,
                "top_logprobs": [{"token": "x", "logprob": v} for v in top],
            }
        )
    return out


def test_confidence_methods() -> None:
    answer = tokens(
        math.log(0.9),
        math.log(0.5),
        math.log(0.8),
        tops=((math.log(0.9), math.log(0.05)), (math.log(0.5), math.log(0.4)), ()),
    )
    assert mean_prob(answer) == pytest.approx((0.9 * 0.5 * 0.8) ** (1 / 3))
    assert min_prob(answer) == pytest.approx(0.5)
    assert first_token(answer) == pytest.approx(0.9)
    assert margin(answer) == pytest.approx(((0.9 - 0.05) + (0.5 - 0.4)) / 2)
    assert margin(tokens(math.log(0.7), tops=((math.log(0.7),),))) == pytest.approx(0.7)


def test_confidence_without_usable_logprobs_is_unknown() -> None:
    assert confidence("mean_prob", None) is None
    assert confidence("mean_prob", []) is None
    weird = [
        {"token": "a", "logprob": None},
        {"token": "b", "logprob": float("nan")},
        {"token": "c", "logprob": True},
    ]
    for method in ("mean_prob", "min_prob", "first_token", "margin"):
        assert confidence(method, weird) is None
    # a positive logprob (never valid) is clamped to probability 1, not above
    assert confidence("min_prob", tokens(0.3)) == 1.0
