"""Token buckets: per-key request rate limits, with the time passed in (no clock here).

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second; a request takes one.
Checking is O(1) and allocates nothing past the key's first request. Buckets live in one
process: with N workers or replicas behind a balancer, a key can get up to N times its limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens (requests) per second, > 0
    burst: int  # bucket size, >= 1


class TokenBucket:
    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, limit: Limit, now: float) -> None:
        self._rate = limit.rate
        self._burst = float(limit.burst)
        self._tokens = self._burst
        self._updated = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until one will be there."""
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class RateLimiter:
    """One bucket per key name, with its own limit or the default; unlimited when neither."""

    def __init__(self, default: Limit | None, per_key: Mapping[str, Limit]) -> None:
        self._default = default
        self._per_key = dict(per_key)
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def active(self) -> bool:
        return self._default is not None or bool(self._per_key)

    def check(self, key: str, now: float) -> float:
        """0.0 if ``key`` may make a request at ``now``, else the seconds it should wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            limit = self._per_key.get(key, self._default)
            if limit is None:
                return 0.0
            bucket = self._buckets[key] = TokenBucket(limit, now)
        return bucket.take(now)
