"""API-key authentication: keys are held only as SHA-256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from gateway.config import ApiKey
from gateway.errors import AuthenticationFailed


class KeyRing:
    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = keys

    def authenticate(self, authorization: str | None, scope: str = "app") -> ApiKey:
        """The key named by an ``Authorization: Bearer <key>`` header, if it has ``scope``."""
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
            if hmac.compare_digest(digest, key.sha256):
                found = key
        if found is None or scope not in found.scopes:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found
