from __future__ import annotations

import pytest

from gateway.core.breaker import CircuitBreaker, counts_as_failure


def test_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10)
    for t in (0, 1):
        assert breaker.allow(t)
        breaker.record(False, t)
    assert breaker.state == "closed"
    assert breaker.allow(2)
    breaker.record(True, 2)  # a success resets the count
    for t in (3, 4, 5):
        breaker.record(False, t)
    assert breaker.state == "open"
    assert not breaker.allow(14.9)
    assert breaker.allow(15)  # cooldown over: one probe
    assert breaker.state == "half_open"
    assert not breaker.allow(15.1)  # only one probe at a time
    breaker.record(False, 16)  # the probe failed: open again, a fresh cooldown
    assert breaker.state == "open"
    assert not breaker.allow(25)
    assert breaker.allow(26)
    breaker.record(True, 26.5)
    assert breaker.state == "closed"
    assert breaker.allow(27)
    assert not breaker.is_open


@pytest.mark.parametrize(
    ("outcome", "status", "failure"),
    [
        ("ok", 200, False),
        ("timeout", None, True),
        ("unreachable", None, True),
        ("invalid_response", 200, True),
        ("http_error", 500, True),
        ("http_error", 503, True),
        ("http_error", 429, True),
        ("http_error", 400, False),
        ("http_error", 404, False),
    ],
)
def test_what_counts_as_the_students_failure(
    outcome: str, status: int | None, failure: bool
) -> None:
    assert counts_as_failure(outcome, status) is failure
