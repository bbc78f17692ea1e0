"""``/console``: the built-in page for analysts, SREs and reviewers (docs/console.md).

The page is static HTML, CSS and JavaScript shipped in ``gateway/console/`` (no build step, no
CDN). It logs in with a key (``POST /console/login``: a signed session cookie, see
:mod:`gateway.services.sessions`) and then calls the admin API with that cookie: the routes,
their events, the reports, the writes (SREs only, with the CSRF token), and the two read
endpoints here that the reports lack: agreement per slice over time, and one raw row. A key
with only the ``reviewer`` scope gets the review page alone (``/admin/reviews``).
"""

from __future__ import annotations

import functools
import html
import string
from importlib import resources
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, FastAPI, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from gateway.api.security import ReaderKey, console_sessions
from gateway.api.state import gateway_state
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.protocol.reports import DAY, check_dimension, window
from gateway.services.console import ConsoleData
from gateway.services.sessions import (
    SESSION_COOKIE,
    Session,
    Sessions,
    check_scopes,
    session_secret,
)

router = APIRouter(tags=["console"])
ASSETS = resources.files("gateway") / "console"
READER_SCOPES = ("sre", "analyst", "reviewer")
MAX_FORM_BYTES = 8192
# The page loads only its own files; nothing inline, nothing from elsewhere, never framed.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def install(app: FastAPI, settings: Settings) -> None:
    """Add the console to the app: its routes, its static files and its session signer."""
    app.state.console_sessions = Sessions(
        session_secret(settings), settings.config.console.session_ttl_s, settings.api_keys
    )
    app.include_router(router)
    app.mount(
        "/console/static",
        StaticFiles(directory=str(ASSETS / "static")),
        name="console-static",
    )


@functools.cache
def _template(name: str) -> string.Template:
    return string.Template((ASSETS / "templates" / name).read_text(encoding="utf-8"))


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def login_page(message: str | None = None, status: int = 200) -> HTMLResponse:
    error = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return _page(_template("login.html").substitute(error=error), status)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _forget(response: Response, request: Request) -> Response:
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=_secure(request), httponly=True, samesite="strict"
    )
    return response


async def _current(request: Request) -> Session | None:
    """The request's console session, or None (no cookie, or a bad or expired one)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return await console_sessions(request).resolve(token, gateway_state(request).engine)
    except GatewayError:
        return None


def _same_origin(request: Request) -> bool:
    """False when a browser says the form came from another site (Origin names another host)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.headers.get("host", request.url.netloc)


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form (the login and logout forms)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


@router.get("/console", include_in_schema=False)
async def console_page(request: Request) -> Response:
    session = await _current(request)
    if session is None:
        response = login_page()
        return _forget(response, request) if SESSION_COOKIE in request.cookies else response
    try:
        check_scopes(session.key, READER_SCOPES)
    except GatewayError as exc:
        return _forget(login_page(exc.message, 403), request)
    sessions = console_sessions(request)
    return _page(
        _template("console.html").substitute(
            name=html.escape(session.key.name),
            scopes=html.escape(" ".join(sorted(session.key.scopes))),
            csrf=html.escape(sessions.csrf_token(session.token)),
            expires=session.expires_at,
        )
    )


@router.post("/console/login", include_in_schema=False)
async def login(request: Request) -> Response:
    if not _same_origin(request):
        return login_page("The login form was sent from another site.", 403)
    key = (await _form(request)).get("key", "").strip()
    if not key:
        return login_page("Enter an API key with the analyst, sre or reviewer scope.", 401)
    try:
        found = gateway_state(request).keys.authenticate(f"Bearer {key}", READER_SCOPES)
    except GatewayError as exc:
        return login_page(exc.message, exc.http_status)
    sessions = console_sessions(request)
    session = sessions.issue(found)
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=int(sessions.ttl_s),
        path="/",
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/console/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        try:
            console_sessions(request).check_csrf(token, (await _form(request)).get("csrf"))
        except GatewayError as exc:
            return _page(f"<p>{html.escape(exc.message)}</p>", exc.http_status)
    return _forget(RedirectResponse("/console", status_code=303), request)


@router.get("/console/api/trend")
async def agreement_trend(
    request: Request,
    _key: ReaderKey,
    route: str,
    since: str | None = None,
    until: str | None = None,
    step: Literal["hour", "day"] | None = None,
    dimension: str | None = None,
    max_slices: int = Query(default=24, ge=1, le=200),
) -> dict[str, Any]:
    """Agreement per slice per hour or day (default: hours for two days or less)."""
    state = gateway_state(request)
    return await ConsoleData(state.engine, state.settings.config).agreement_trend(
        route,
        window(since, until, DAY),
        step,
        check_dimension(dimension) if dimension is not None else None,
        max_slices,
    )


@router.get("/console/api/requests/{request_id}")
async def request_row(request_id: str, request: Request, _key: ReaderKey) -> dict[str, Any]:
    """One logged row, every column as stored (the disagreement browser's "raw row" link)."""
    state = gateway_state(request)
    return await ConsoleData(state.engine, state.settings.config).request_row(request_id)
