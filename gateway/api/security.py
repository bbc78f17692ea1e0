"""Who may call the admin API: a FastAPI dependency that checks the key's scopes.

The handlers receive the authenticated :class:`ApiKey`; its name is the actor the audit log
records. Failures are raised as gateway errors (401/403), which the app's handler turns into
OpenAI-shaped JSON like every other error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from gateway.api.state import gateway_state
from gateway.config import ApiKey


def require_scopes(*scopes: str) -> Callable[[Request], Awaitable[ApiKey]]:
    """A dependency admitting a key that has at least one of ``scopes``."""
    if not scopes:
        raise ValueError("require_scopes needs at least one scope")

    async def authenticated_key(request: Request) -> ApiKey:
        # async though it awaits nothing: FastAPI runs a sync dependency in a thread pool, a
        # needless hop for a check made in memory.
        return gateway_state(request).keys.authenticate(
            request.headers.get("authorization"), scopes
        )

    return authenticated_key


SreKey = Annotated[ApiKey, Depends(require_scopes("sre"))]
"""A key with the ``sre`` scope: for every write under ``/admin``."""

ReaderKey = Annotated[ApiKey, Depends(require_scopes("sre", "analyst"))]
"""A key with ``sre`` or ``analyst``: for reads under ``/admin``."""
