"""A circuit breaker for the student: stop calling a student that keeps failing, probe it back.

Closed: calls go through; ``failure_threshold`` failures in a row open it. Open: calls are
skipped (shadow calls recorded as ``circuit_open``, chosen rollout users fall back as
``student_unavailable``) for ``cooldown_s``. Then half-open: one probe call is let through; its
success closes the breaker, its failure opens it for another cooldown. Time is passed in, so
the state machine is pure and testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    cooldown_s: float = 10.0
    state: State = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False

    def allow(self, now: float) -> bool:
        """May a call go to the student now? (In half-open, only one probe at a time.)"""
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.cooldown_s:
            self.state = "half_open"
        if self.state == "half_open" and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.state, self.failures, self.probe_in_flight = "closed", 0, False
            return
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self.state, self.opened_at, self.probe_in_flight = "open", now, False

    @property
    def is_open(self) -> bool:
        return self.state != "closed"


def counts_as_failure(outcome: str, http_status: int | None) -> bool:
    """The student's own failures; a 4xx is the request's fault, not the student's."""
    if outcome == "http_error":
        return http_status is None or http_status >= 500 or http_status == 429
    return outcome in ("timeout", "unreachable", "invalid_response")
