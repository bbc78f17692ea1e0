"""Token buckets and the key ring's throttle: time is passed in, nothing sleeps."""

from __future__ import annotations

import pytest

from gateway.config import ApiKey, RateLimitsConfig
from gateway.core.ratelimit import Limit, RateLimiter, TokenBucket
from gateway.errors import RateLimited
from gateway.services.auth import KeyRing


def test_burst_then_refill_at_rate() -> None:
    bucket = TokenBucket(Limit(rate=2.0, burst=3), now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token takes 1/rate seconds
    assert bucket.take(100.25) == pytest.approx(0.25)  # half a token came back
    assert bucket.take(100.5) == 0.0
    assert bucket.take(100.5) == pytest.approx(0.5)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(Limit(rate=10.0, burst=2), now=0.0)
    assert bucket.take(0.0) == 0.0
    # an hour idle earns at most `burst` tokens
    assert [bucket.take(3600.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take(3600.0) > 0.0


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    bucket = TokenBucket(Limit(rate=1.0, burst=1), now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) > 0.0


def test_steady_rate_is_admitted_exactly() -> None:
    bucket = TokenBucket(Limit(rate=2.0, burst=1), now=0.0)
    admitted = sum(bucket.take(i * 0.125) == 0.0 for i in range(80))  # 8/s for 10 s
    assert admitted == 1 + 19  # the burst at 0 s, then one each 0.5 s up to 9.5 s


def test_limiter_per_key_default_and_unlimited() -> None:
    limiter = RateLimiter(Limit(1.0, 1), {"batch": Limit(1.0, 3)})
    assert [limiter.check("batch", 0.0) for _ in range(4)].count(0.0) == 3
    assert [limiter.check("other", 0.0) for _ in range(4)].count(0.0) == 1
    assert limiter.check("third", 0.0) == 0.0  # keys have separate buckets
    unlimited = RateLimiter(None, {"batch": Limit(1.0, 1)})
    assert all(unlimited.check("anyone", 0.0) == 0.0 for _ in range(100))
    assert not RateLimiter(None, {}).active


def test_key_ring_throttle_raises_429_with_retry_after() -> None:
    key = ApiKey(name="app", scopes=frozenset({"app"}), sha256=b"x" * 32)
    ring = KeyRing(
        (key,),
        RateLimitsConfig.model_validate({"keys": {"app": {"requests_per_s": 0.5, "burst": 1}}}),
    )
    ring.throttle(key)
    with pytest.raises(RateLimited) as caught:
        ring.throttle(key)
    error = caught.value
    assert error.http_status == 429
    assert error.code == "rate_limit_exceeded"
    assert error.headers["retry-after"] == "2"  # ceil of up to 2 s
    assert 1 <= int(error.headers["retry-after-ms"]) <= 2000
    assert error.key == "app"
    assert "app" in error.message
    KeyRing((key,)).throttle(key)  # no rate_limits: never throttled
