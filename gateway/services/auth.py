"""API-key authentication: keys are held only as SHA-256 digests, compared in constant time.

Two sources feed the ring: the config file's keys, fixed for the life of the process (they
bootstrap a fresh install and cannot be revoked from the database), and the database's live
keys, replaced wholesale by :meth:`KeyRing.refresh` on a ``shadow_gateway_keys`` notification
and on every poll. Checking a request touches only memory; a revoked key stops working on a
replica as soon as that replica has refreshed.

A header naming no live key is a 401; a live key without any of the scopes the endpoint
accepts is a 403, so a caller can tell "wrong key" from "right key, wrong job".

The ring also holds each key's rate limit (``rate_limits`` in the config; a token bucket per
key name, per process): :meth:`KeyRing.throttle` raises a 429 when a key is over it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Collection, Iterable

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import ApiKey, RateLimit, RateLimitsConfig
from gateway.core.ratelimit import Limit, RateLimiter
from gateway.db.keys import active_keys
from gateway.errors import AuthenticationFailed, PermissionDenied, RateLimited

APP: tuple[str, ...] = ("app",)


class KeyRing:
    def __init__(
        self, config_keys: tuple[ApiKey, ...], rate_limits: RateLimitsConfig | None = None
    ) -> None:
        self._config_keys = config_keys
        self._keys = config_keys  # the config file's first: they win a (freak) digest clash
        limits = rate_limits or RateLimitsConfig()
        limiter = RateLimiter(
            _limit(limits.default),
            {name: Limit(v.requests_per_s, v.burst) for name, v in limits.keys.items()},
        )
        self._limiter = limiter if limiter.active else None

    def throttle(self, key: ApiKey) -> None:
        """Raise :class:`RateLimited` (429, ``retry-after``) when ``key`` is over its limit."""
        if self._limiter is None:
            return
        wait = self._limiter.check(key.name, time.monotonic())
        if wait > 0.0:
            raise RateLimited(
                f"Rate limit reached for API key '{key.name}'. Please try again in {wait:.2f}s.",
                wait,
                key=key.name,
            )

    def set_database_keys(self, keys: Iterable[ApiKey]) -> None:
        """Replace the database keys (one assignment: a request sees the old set or the new)."""
        self._keys = self._config_keys + tuple(keys)

    async def refresh(self, engine: AsyncEngine) -> None:
        """Reload the database keys; on failure the current ones stay (the caller logs it)."""
        self.set_database_keys(await active_keys(engine))

    def authenticate(self, authorization: str | None, scopes: Collection[str] = APP) -> ApiKey:
        """The key named by an ``Authorization: Bearer <key>`` header, if it has one of ``scopes``.

        Raises :class:`AuthenticationFailed` (401) when the header is missing or malformed or
        names no live key, and :class:`PermissionDenied` (403) when the key has none of
        ``scopes``.
        """
        accepted = (scopes,) if isinstance(scopes, str) else tuple(scopes)
        if not authorization:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AuthenticationFailed("Malformed Authorization header: expected 'Bearer <key>'.")
        digest = hashlib.sha256(presented.strip().encode()).digest()
        found = None
        for key in self._keys:  # no early exit: the time taken does not depend on which key
            if hmac.compare_digest(digest, key.sha256) and found is None:
                found = key
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if found.scopes.isdisjoint(accepted):
            needed = " or ".join(f"'{scope}'" for scope in accepted)
            raise PermissionDenied(
                f"The API key '{found.name}' lacks the scope this endpoint needs: {needed}."
            )
        return found


def _limit(config: RateLimit | None) -> Limit | None:
    return Limit(config.requests_per_s, config.burst) if config is not None else None
