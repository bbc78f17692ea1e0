"""Sticky buckets and the rollout decision: stable, uniform, monotonic, and exact at the edges."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

from gateway.core.routing import (
    RouteState,
    Serving,
    SliceOverride,
    bucket,
    decide,
    fallback_reason,
    serving,
    sticky_key,
)

KEYS = [f"user:u{i}" for i in range(20_000)]


def state(mode: str = "rollout", percent: float = 25.0, **changes: object) -> RouteState:
    base = RouteState(
        mode="shadow",
        rollout_percent=percent,
        confidence_threshold=0.8,
        confidence_method="mean_prob",
        audit_sample=0.05,
        salt="support-bot",
    )
    return base.changed(mode=mode, **changes)


def chosen(salt: str, percent: float, keys: list[str] = KEYS) -> set[str]:
    rollout = state(percent=percent, salt=salt)
    return {key for key in keys if decide(rollout, bucket(salt, key)) == "student_first"}


# -- stickiness ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("salt", "key", "expected"),
    [
        ("support-bot", "user:alice", 9.831010731258434),
        ("support-bot", "user:bob", 71.84985304160514),
        ("support-bot", "header:42", 5.066511155687309),
        ("other-salt", "user:alice", 96.20283757805575),
        ("", "request:req_0", 44.55677580100755),
    ],
)
def test_bucket_is_a_fixed_function_of_salt_and_key(salt: str, key: str, expected: float) -> None:
    # Fixed vectors: a change of hash (or of how salt and key are joined) would move every
    # user to another side of a running rollout, so it must be a deliberate, visible change.
    assert bucket(salt, key) == expected


def test_same_key_same_bucket() -> None:
    first = [bucket("support-bot", key) for key in KEYS[:500]]
    again = [bucket("support-bot", key) for key in KEYS[:500]]
    assert first == again


def test_buckets_lie_in_zero_to_one_hundred() -> None:
    values = [bucket("support-bot", key) for key in KEYS]
    assert all(0.0 <= value < 100.0 for value in values)


# -- uniformity ---------------------------------------------------------------------------------


def chi_square(counts: Counter[int], cells: int, total: int) -> float:
    expected = total / cells
    return sum((counts.get(cell, 0) - expected) ** 2 / expected for cell in range(cells))


def test_deciles_are_uniform() -> None:
    deciles = Counter(int(bucket("support-bot", key) // 10) for key in KEYS)
    expected = len(KEYS) / 10
    sigma = math.sqrt(len(KEYS) * 0.1 * 0.9)  # binomial: about 42 for 20,000 keys
    for decile in range(10):
        assert abs(deciles[decile] - expected) < 4 * sigma, (decile, deciles[decile])
    # chi-square, 9 degrees of freedom: 27.88 is its 0.999 quantile
    assert chi_square(deciles, 10, len(KEYS)) < 27.88


def test_percentiles_are_uniform() -> None:
    # Rollouts start at 1%: the low percentiles must be as full as the rest.
    percentiles = Counter(int(bucket("support-bot", key)) for key in KEYS)
    # chi-square, 99 degrees of freedom: 148.2 is its 0.999 quantile
    assert chi_square(percentiles, 100, len(KEYS)) < 148.2
    assert abs(percentiles[0] - 200) < 4 * math.sqrt(20_000 * 0.01 * 0.99)


def test_similar_keys_are_not_correlated() -> None:
    # Consecutive ids must not land in neighbouring buckets (a weak hash would).
    values = [bucket("support-bot", key) for key in KEYS]
    close = sum(abs(a - b) < 1.0 for a, b in itertools.pairwise(values))
    assert close < 0.03 * len(values)  # about 2% expected at random


@pytest.mark.parametrize("percent", [1.0, 5.0, 10.0, 25.0, 50.0, 90.0])
def test_chosen_share_matches_the_percent(percent: float) -> None:
    share = len(chosen("support-bot", percent)) / len(KEYS)
    sigma = math.sqrt(percent / 100 * (1 - percent / 100) / len(KEYS))
    assert abs(share - percent / 100) < 4 * sigma


# -- monotonic rollout and salt -----------------------------------------------------------------


def test_raising_the_percent_only_adds_users() -> None:
    ladder = [0.0, 0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 99.5, 100.0]
    sets = [chosen("support-bot", percent) for percent in ladder]
    for lower, higher in itertools.pairwise(sets):
        assert lower <= higher
    assert sets[0] == set()
    assert sets[-1] == set(KEYS)
    at_10, at_25 = chosen("support-bot", 10.0), chosen("support-bot", 25.0)
    assert at_10 < at_25  # a strict subset: the new 15% are added, nobody leaves


def test_a_new_salt_reshuffles_users() -> None:
    before, after = chosen("support-bot", 50.0), chosen("support-bot:v2", 50.0)
    overlap = len(before & after) / len(before)
    # Independent draws: about half of the chosen stay chosen, not (nearly) all of them.
    assert 0.45 < overlap < 0.55
    moved = sum(
        abs(bucket("support-bot", key) - bucket("support-bot:v2", key)) > 1.0 for key in KEYS
    )
    assert moved > 0.95 * len(KEYS)


def test_salt_and_key_are_kept_apart() -> None:
    # "ab" + "c" and "a" + "bc" must not collide: a separator joins them.
    assert bucket("ab", "c") != bucket("a", "bc")


# -- sticky_key ---------------------------------------------------------------------------------


def test_user_wins_over_header_and_request_id() -> None:
    assert sticky_key("alice", "h-1", "req_1") == "user:alice"
    assert sticky_key("alice", None, "req_1") == "user:alice"


def test_header_when_there_is_no_usable_user() -> None:
    assert sticky_key(None, "h-1", "req_1") == "header:h-1"
    assert sticky_key("", "h-1", "req_1") == "header:h-1"
    # `user` is the app's free-form field: a non-string is ignored, not stringified
    assert sticky_key(42, "h-1", "req_1") == "header:h-1"
    assert sticky_key({"id": 1}, "h-1", "req_1") == "header:h-1"


def test_request_id_when_there_is_nothing_else() -> None:
    assert sticky_key(None, None, "req_1") == "request:req_1"
    assert sticky_key("", "", "req_1") == "request:req_1"


def test_user_and_header_values_do_not_share_a_namespace() -> None:
    assert sticky_key("42", None, "r") != sticky_key(None, "42", "r")
    assert bucket("s", sticky_key("42", None, "r")) != bucket("s", sticky_key(None, "42", "r"))


def test_with_a_user_the_bucket_ignores_the_request_id() -> None:
    buckets = {bucket("s", sticky_key("alice", None, f"req_{i}")) for i in range(50)}
    assert len(buckets) == 1
    anonymous = {bucket("s", sticky_key(None, None, f"req_{i}")) for i in range(50)}
    assert len(anonymous) == 50


# -- decide -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sticky", [0.0, 10.0, 99.999])
def test_teacher_mode_is_a_kill_switch(sticky: float) -> None:
    assert decide(state("teacher", percent=100.0), sticky) == "teacher_only"


@pytest.mark.parametrize("sticky", [0.0, 10.0, 99.999])
def test_shadow_mode_ignores_the_percent(sticky: float) -> None:
    assert decide(state("shadow", percent=100.0), sticky) == "shadow"


@pytest.mark.parametrize(
    ("percent", "sticky", "expected"),
    [
        (0.0, 0.0, "shadow"),  # 0% chooses nobody, not even bucket 0
        (0.0, 50.0, "shadow"),
        (100.0, 0.0, "student_first"),
        (100.0, math.nextafter(100.0, 0.0), "student_first"),  # 100% chooses everybody
        (25.0, 24.999999, "student_first"),
        (25.0, 25.0, "shadow"),  # the bucket at the percent is outside
        (25.0, 25.000001, "shadow"),
        (0.5, 0.0, "student_first"),  # fractional percents
        (0.5, 0.4999, "student_first"),
        (0.5, 0.5, "shadow"),
        (0.01, 0.009, "student_first"),
        (0.01, 0.011, "shadow"),
    ],
)
def test_rollout_chooses_buckets_below_the_percent(
    percent: float, sticky: float, expected: str
) -> None:
    assert decide(state("rollout", percent=percent), sticky) == expected


def test_a_fractional_percent_chooses_its_share() -> None:
    share = len(chosen("support-bot", 2.5)) / len(KEYS)
    assert abs(share - 0.025) < 4 * math.sqrt(0.025 * 0.975 / len(KEYS))


# -- fallback_reason ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("timeout", "student_timeout"),
        ("unreachable", "student_unavailable"),
        ("http_error", "student_error"),
        ("invalid_response", "student_error"),
        ("something_new", "student_error"),  # an unknown failure is still a failure
    ],
)
def test_a_failed_student_falls_back_whatever_its_confidence(outcome: str, reason: str) -> None:
    assert fallback_reason(outcome, 1.0, 0.5) == reason
    assert fallback_reason(outcome, None, 0.0) == reason


@pytest.mark.parametrize(
    ("confidence", "threshold", "reason"),
    [
        (0.8, 0.8, None),  # equal to the threshold: served
        (math.nextafter(0.8, 0.0), 0.8, "low_confidence"),  # just below
        (math.nextafter(0.8, 1.0), 0.8, None),
        (0.99, 0.8, None),
        (0.1, 0.8, "low_confidence"),
        (1.0, 1.0, None),  # a threshold of 1 still serves a certain student
        (0.0, 0.0, None),  # a threshold of 0 serves any known confidence
        (None, 0.0, "low_confidence"),  # unknown confidence is never "confident"
        (None, 0.8, "low_confidence"),
    ],
)
def test_ok_student_is_served_at_or_above_the_threshold(
    confidence: float | None, threshold: float, reason: str | None
) -> None:
    assert fallback_reason("ok", confidence, threshold) == reason


# -- RouteState ---------------------------------------------------------------------------------


def test_route_state_changes_make_a_new_value() -> None:
    before = state("shadow", percent=10.0)
    after = before.changed(mode="rollout", rollout_percent=20.0)
    assert (before.mode, before.rollout_percent) == ("shadow", 10.0)
    assert (after.mode, after.rollout_percent, after.salt) == ("rollout", 20.0, "support-bot")
    assert before.changed() == before


# -- slice overrides -----------------------------------------------------------------------


def _state(mode: str = "rollout", *overrides: SliceOverride) -> RouteState:
    return RouteState(
        mode=mode,  # type: ignore[arg-type]
        rollout_percent=10.0,
        confidence_threshold=0.5,
        confidence_method="mean_prob",
        audit_sample=0.0,
        salt="s",
        slices={(o.dimension, o.value): o for o in overrides},
    )


FREE_TEACHER = SliceOverride("tier", "free", mode="teacher")
PRO_WIDE = SliceOverride("tier", "pro", rollout_percent=80.0, confidence_threshold=0.3)
DE_STRICT = SliceOverride("lang", "de", rollout_percent=50.0, confidence_threshold=0.9)
GOLD_ON = SliceOverride("tier", "gold", mode="rollout", rollout_percent=5.0)


def test_no_matching_override_serves_with_the_routes_knobs() -> None:
    state = _state("rollout", FREE_TEACHER)
    assert serving(state, {}) == Serving("rollout", 10.0, 0.5)
    assert serving(state, {"tier": "pro"}) == Serving("rollout", 10.0, 0.5)


def test_one_override_replaces_the_knobs_it_sets() -> None:
    state = _state("rollout", PRO_WIDE)
    assert serving(state, {"tier": "pro"}) == Serving("rollout", 80.0, 0.3)
    assert serving(_state("rollout", FREE_TEACHER), {"tier": "free"}).kept_by == "tier=free"


def test_overlapping_overrides_take_the_most_conservative_knob_of_each() -> None:
    state = _state("rollout", PRO_WIDE, DE_STRICT, FREE_TEACHER)
    # the lower percent, the higher threshold
    assert serving(state, {"tier": "pro", "lang": "de"}) == Serving("rollout", 50.0, 0.9)
    # teacher beats rollout
    both = serving(state, {"tier": "free", "lang": "de"})
    assert both.kept_by == "tier=free"
    assert decide(both, 1.0) == "student_first"  # the caller keeps it on the teacher


def test_a_rollout_override_serves_a_slice_of_a_shadow_route() -> None:
    state = _state("shadow", GOLD_ON)
    gold = serving(state, {"tier": "gold"})
    assert gold == Serving("rollout", 5.0, 0.5)
    assert decide(gold, 4.9) == "student_first"
    assert decide(gold, 5.0) == "shadow"
    assert decide(serving(state, {"tier": "pro"}), 1.0) == "shadow"


def test_a_teacher_route_ignores_its_overrides() -> None:
    state = _state("teacher", GOLD_ON)
    assert decide(serving(state, {"tier": "gold"}), 0.0) == "teacher_only"
