"""Who may call the admin API: a FastAPI dependency that checks the key's scopes.

The handlers receive the authenticated :class:`ApiKey`; its name is the actor the audit log
records. Failures are raised as gateway errors (401/403), which the app's handler turns into
OpenAI-shaped JSON like every other error.

A request without an ``Authorization`` header may instead carry the console's session cookie
(:mod:`gateway.services.sessions`): the page at ``/console`` calls these same endpoints with
it. Such a request that changes something must also send the session's CSRF token.

:data:`bearer` declares the scheme in the OpenAPI document (``Authorization: Bearer KEY``); it
checks nothing itself, so a request without the header still reaches the session cookie and
every failure keeps its OpenAI-shaped 401 or 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.state import gateway_state
from gateway.config import ApiKey
from gateway.services.sessions import (
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    Sessions,
    check_scopes,
)

bearer = HTTPBearer(
    scheme_name="bearer",
    description="An API key with the endpoint's scope: `Authorization: Bearer KEY`. The console "
    "sends its session cookie instead (and, on a change, its CSRF token).",
    auto_error=False,  # documents the scheme only: the key is checked below, as always
)
Declared = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_scopes(*scopes: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency admitting a key that has at least one of ``scopes``."""
    if not scopes:
        raise ValueError("require_scopes needs at least one scope")

    async def authenticated_key(request: Request, _declared: Declared) -> ApiKey:
        # async: FastAPI runs a sync dependency in a thread pool, a needless hop for a key
        # checked in memory (a console session awaits a look-up of its key in Postgres).
        authorization = request.headers.get("authorization")
        session = request.cookies.get(SESSION_COOKIE)
        if authorization is None and session:
            return await session_key(request, session, scopes)
        return gateway_state(request).keys.authenticate(authorization, scopes)

    return authenticated_key


def console_sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.console_sessions
    return sessions


async def session_key(request: Request, token: str, scopes: tuple[str, ...]) -> ApiKey:
    """The key behind a console session cookie: 401 if the session is bad, 403 without the
    CSRF token on a change or without the scopes."""
    sessions = console_sessions(request)
    session = await sessions.resolve(token, gateway_state(request).engine)
    if request.method not in SAFE_METHODS:
        sessions.check_csrf(token, request.headers.get(CSRF_HEADER))
    return check_scopes(session.key, scopes)


SreKey = Annotated[ApiKey, Depends(require_scopes("sre"))]
"""A key with the ``sre`` scope: for every write under ``/admin``."""

ReaderKey = Annotated[ApiKey, Depends(require_scopes("sre", "analyst"))]
"""A key with ``sre`` or ``analyst``: for reads under ``/admin``."""

ReviewReaderKey = Annotated[ApiKey, Depends(require_scopes("reviewer", "sre", "analyst"))]
"""A key that may read review tasks: ``reviewer``, ``sre`` or ``analyst``."""

ReviewerKey = Annotated[ApiKey, Depends(require_scopes("reviewer", "sre"))]
"""A key that may judge review tasks and draw them: ``reviewer`` or ``sre``."""
