"""``/console``: the built-in page for analysts, SREs and reviewers (docs/console.md).

The page is static HTML, CSS and JavaScript shipped in ``gateway/console/`` (no build step, no
CDN). It logs in with a key (``POST /console/login``: a signed session cookie, see
:mod:`gateway.services.sessions`) and then calls the admin API with that cookie: the routes,
their events, the reports, the writes (SREs only, with the CSRF token), and the read endpoints
here that the reports lack: agreement per slice over time, the slice table in the console's
order, and one logged row. A key with only the ``reviewer`` scope gets the review page alone
(``/admin/reviews``).

The read endpoints answer typed models (so ``/openapi.json`` documents them). Each allows
fields it does not name, so a figure a service adds is never dropped on the way out; a test
checks that every field the JSON carries is documented.

The page keeps its state (route, window, filters, the view) in its query string; a link with
one that lands on the login form comes back to the same state once logged in (``next``).
"""

from __future__ import annotations

import functools
import html
import string
from importlib import resources
from typing import Any, Literal
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import Field
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from gateway.api.errors import documented_errors
from gateway.api.security import ReaderKey, console_sessions
from gateway.api.state import gateway_state
from gateway.config import Settings
from gateway.core.routing import SliceVerdict
from gateway.errors import GatewayError
from gateway.protocol.reports import DAY, check_dimension, window
from gateway.protocol.responses import Number, Timestamp, View
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
MAX_NEXT = 2000  # the page state carried through the login form
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


def login_page(message: str | None = None, status: int = 200, state: str = "") -> HTMLResponse:
    """The login form; ``state``: the page state (a query string) to come back to."""
    error = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return _page(_template("login.html").substitute(error=error, next=html.escape(state)), status)


def console_url(state: str) -> str:
    """``/console`` with a page state's query string, rebuilt from its pairs: the login only
    ever sends the browser back to this page, never elsewhere."""
    pairs = parse_qsl(state[:MAX_NEXT])
    return f"/console?{urlencode(pairs)}" if pairs else "/console"


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
    state = request.url.query
    if session is None:
        response = login_page(state=state)
        return _forget(response, request) if SESSION_COOKIE in request.cookies else response
    try:
        check_scopes(session.key, READER_SCOPES)
    except GatewayError as exc:
        return _forget(login_page(exc.message, 403, state), request)
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
    form = await _form(request)
    key, state = form.get("key", "").strip(), form.get("next", "")
    if not key:
        return login_page("Enter an API key with the analyst, sre or reviewer scope.", 401, state)
    try:
        found = gateway_state(request).keys.authenticate(f"Bearer {key}", READER_SCOPES)
    except GatewayError as exc:
        return login_page(exc.message, exc.http_status, state)
    sessions = console_sessions(request)
    session = sessions.issue(found)
    response = RedirectResponse(console_url(state), status_code=303)
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


# -- what the read endpoints answer ----------------------------------------------------------
# As every admin answer (gateway.protocol.responses): the models describe the service's dicts
# and never change them. Extra keys pass (View), no field has a default, a number stays as the
# service wrote it (Number), times are its ISO 8601 strings (Timestamp).


class TrendPoint(View):
    """One bucket of one slice: only buckets with requests are listed."""

    at: Timestamp = Field(description="the bucket's start, UTC")
    requests: int
    samples: int = Field(description="comparisons with the teacher")
    agreed: int
    agreement: Number | None = Field(description="agreed / samples; null without comparisons")
    ci_low: Number | None = Field(description="95% Wilson interval, low end")
    ci_high: Number | None = Field(description="95% Wilson interval, high end")
    below_bar: bool | None = Field(
        description="agreement under the slice's bar in this bucket (critical slices only)"
    )


class SliceFigures(View):
    """A slice (or ``all``/``all``, the route) over the whole window."""

    dimension: str
    value: str
    critical: bool = Field(description="the route's config gives this slice a bar")
    bar: Number | None = Field(description="the critical slice's minimum agreement")
    min_samples: int | None = Field(description="comparisons before the bar judges the slice")
    verdict: SliceVerdict | None = Field(description="the critical slice against its bar")
    requests: int
    samples: int = Field(description="comparisons with the teacher")
    agreed: int
    agreement: Number | None
    ci_low: Number | None = Field(description="95% Wilson interval, low end")
    ci_high: Number | None = Field(description="95% Wilson interval, high end")
    samples_needed: int = Field(
        description="comparisons before the slice's agreement ranks it: min_samples, else "
        "the route's gate_min_samples"
    )
    enough_samples: bool = Field(
        description="samples >= samples_needed; a slice without enough is listed last"
    )


class TrendSeries(SliceFigures):
    points: list[TrendPoint] = Field(description="the buckets with requests, oldest first")


class Trend(View):
    """``GET /console/api/trend``."""

    route: str
    since: Timestamp
    until: Timestamp
    step: Literal["hour", "day"]
    buckets: list[Timestamp] = Field(description="every bucket's start in the window, UTC")
    dimension: str | None
    slices: list[TrendSeries] = Field(description="in the console's order, at most max_slices")
    omitted_slices: int = Field(description="slices past max_slices, left out")
    aggregate: TrendSeries = Field(description="the route as a whole, beside the slices")


class SliceLine(SliceFigures):
    fallbacks: int = Field(description="requests the teacher answered in the student's place")
    fallback_rate: Number | None
    student_served: int
    student_share: Number | None
    out_of_scope: int = Field(description="chosen for the student, kept by the scope gate")
    slice_teacher_only: int = Field(description="chosen for the student, kept by an override")


class SliceTable(View):
    """``GET /console/api/slices``."""

    route: str
    since: Timestamp
    until: Timestamp
    dimension: str | None
    slices: list[SliceLine] = Field(description="in the console's order")
    aggregate: SliceLine


class TopLogprob(View):
    token: str | None = Field(description="null when the answer's text was redacted")
    logprob: Number | None


class TokenLogprob(View):
    """One token of the student's answer, as logged (every endpoint's shape normalised)."""

    token: str | None = Field(description="null when the answer's text was redacted")
    logprob: Number | None
    top_logprobs: list[TopLogprob]


class RequestRow(View):
    """``GET /console/api/requests/{request_id}``: one ``requests`` row, every column as
    stored (docs/architecture.md, the data model); JSON columns as they were logged."""

    request_id: str
    route: str
    endpoint: str = Field(description="chat, completions or responses")
    created_at: Timestamp
    completed_at: Timestamp | None
    mode: str = Field(description="the route's mode for this request: teacher, shadow, rollout")
    sticky_bucket: Number | None
    served_by: str | None = Field(description="teacher or student")
    fallback_reason: str | None
    stream: bool | None
    status_code: int | None
    error_type: str | None
    error_message: str | None
    slices: Any = Field(description="the request's labels, dimension → value")
    request_payload: Any = Field(description="the request body (redacted)")
    teacher_model: str | None
    teacher_status: int | None
    teacher_output: str | None
    teacher_response: Any
    teacher_finish_reason: str | None
    teacher_latency_ms: Number | None
    teacher_prompt_tokens: int | None
    teacher_completion_tokens: int | None
    teacher_error: str | None
    student_model: str | None
    student_url: str | None
    student_status: str | None
    student_http_status: int | None
    student_error: str | None
    student_output: str | None
    student_tool_calls: Any
    student_refusal: str | None
    student_response: Any = Field(description="without its logprobs")
    student_logprobs: list[TokenLogprob] | None
    student_finish_reason: str | None
    student_latency_ms: Number | None
    student_prompt_tokens: int | None
    student_completion_tokens: int | None
    student_confidence: Number | None
    agreement_score: Number | None
    agree: bool | None = Field(description="null: not compared")
    agreement_reason: str | None
    agreement_detail: Any
    gateway_overhead_ms: Number | None
    client_request_id: str | None
    teacher_tool_calls: Any
    teacher_refusal: str | None
    teacher_model_reported: str | None
    teacher_fingerprint: str | None
    served_student: str | None


_NO_SLICES = (
    "No such route (`model_not_found`), no such dimension (`dimension_not_found`), or no "
    "request with a slice label in the window (`no_data`)."
)
READ_SLICES = documented_errors(400, 401, 403, 404, not_found=_NO_SLICES)


@router.get("/console/api/trend", response_model=Trend, responses=READ_SLICES)
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
    """Agreement per slice per hour or day (default: hours for two days or less), slices in
    the console's order (failing critical slices first, then by the interval's low end; too
    few comparisons last), the aggregate beside them."""
    state = gateway_state(request)
    return await ConsoleData(state.engine, state.settings.config).agreement_trend(
        route,
        window(since, until, DAY),
        step,
        check_dimension(dimension) if dimension is not None else None,
        max_slices,
    )


@router.get("/console/api/slices", response_model=SliceTable, responses=READ_SLICES)
async def slice_table(
    request: Request,
    _key: ReaderKey,
    route: str,
    since: str | None = None,
    until: str | None = None,
    dimension: str | None = None,
) -> dict[str, Any]:
    """The slices report (``/admin/reports/slices``) in the console's order, every slice
    marked with the comparisons it needs; the aggregate last."""
    state = gateway_state(request)
    return await ConsoleData(state.engine, state.settings.config).slice_table(
        route,
        window(since, until, DAY),
        check_dimension(dimension) if dimension is not None else None,
    )


@router.get(
    "/console/api/requests/{request_id}",
    response_model=RequestRow,
    responses=documented_errors(
        401, 403, 404, not_found="No request with this id is logged (`no_data`)."
    ),
)
async def request_row(request_id: str, request: Request, _key: ReaderKey) -> dict[str, Any]:
    """One logged row, every column as stored (the console's row view reads it)."""
    state = gateway_state(request)
    return await ConsoleData(state.engine, state.settings.config).request_row(request_id)
