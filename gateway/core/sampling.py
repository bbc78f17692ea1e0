"""Which requests are shadowed: a deterministic function of the request id."""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def unit_hash(key: str) -> float:
    """Map ``key`` to a number in [0, 1), uniformly and the same on every machine."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def shadow_sampled(request_id: str, fraction: float) -> bool:
    """True for about ``fraction`` of request ids; 0 never, 1 always."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    return unit_hash(request_id) < fraction
