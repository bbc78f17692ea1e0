"""``/admin/reports``: slices, disagreements, thresholds, drift, candidates, quality (scope sre
or analyst).

Thin handlers: parse the query (times, slices, ranges; a 400 naming the parameter when one is
wrong), call :class:`~gateway.services.reports.Reports`, answer its JSON. ``POST /drift``
takes a reference dataset as a JSONL body, read line by line as it arrives; ``GET /drift``
takes a registered one as ``reference_dataset``.
``teacher_version`` (slices, disagreements, thresholds, candidates) keeps the rows whose
teacher reported that system fingerprint or model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from gateway.api.security import ReaderKey
from gateway.api.state import gateway_state
from gateway.core.paired import MIN_PAIRS
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.protocol.reports import (
    DAY,
    QUALITY_SPAN,
    WEEK,
    Window,
    check_dimension,
    check_range,
    check_teacher_version,
    decode_cursor,
    parse_reference_dataset,
    parse_slice,
    parse_thresholds,
    window,
)
from gateway.services.reports import (
    DEFAULT_MIN_ROWS,
    DEFAULT_PSI_THRESHOLD,
    Reports,
    reference_dataset,
)

router = APIRouter(prefix="/admin/reports", tags=["reports"])
MAX_REFERENCE_BYTES = 256 * 1024 * 1024


def _reports(request: Request) -> Reports:
    state = gateway_state(request)
    return Reports(state.engine, state.settings.config)


def _dimension(dimension: str | None) -> str | None:
    return check_dimension(dimension) if dimension is not None else None


# teacher_version: only rows whose teacher reported this system_fingerprint or model
TeacherVersion = Annotated[str | None, Query(max_length=200)]


def _teacher_version(version: str | None) -> str | None:
    return check_teacher_version(version) if version is not None else None


@router.get("/slices")
async def slices(
    request: Request,
    _key: ReaderKey,
    route: str,
    since: str | None = None,
    until: str | None = None,
    dimension: str | None = None,
    teacher_version: TeacherVersion = None,
) -> dict[str, Any]:
    span = window(since, until, DAY)
    return await _reports(request).slices(
        route, span, _dimension(dimension), _teacher_version(teacher_version)
    )


@router.get("/candidates")
async def candidates(
    request: Request,
    _key: ReaderKey,
    route: str,
    since: str | None = None,
    until: str | None = None,
    baseline: str | None = Query(default=None, max_length=200),
    min_pairs: int = Query(default=MIN_PAIRS, ge=1),
    teacher_version: TeacherVersion = None,
) -> dict[str, Any]:
    span = window(since, until, WEEK)
    return await _reports(request).candidates(
        route, span, baseline, min_pairs, _teacher_version(teacher_version)
    )


@router.get("/quality")
async def quality(
    request: Request,
    _key: ReaderKey,
    route: str,
    since: str | None = None,
    until: str | None = None,
    dimension: str | None = None,
) -> dict[str, Any]:
    span = window(since, until, QUALITY_SPAN)
    return await _reports(request).quality(route, span, _dimension(dimension))


@router.get("/disagreements")
async def disagreements(
    request: Request,
    _key: ReaderKey,
    route: str,
    since: str | None = None,
    until: str | None = None,
    slice_filters: Annotated[list[str] | None, Query(alias="slice")] = None,
    served_by: Literal["teacher", "student"] | None = None,
    min_score: float | None = Query(default=None, ge=0, le=1),
    max_score: float | None = Query(default=None, ge=0, le=1),
    min_confidence: float | None = Query(default=None, ge=0, le=1),
    max_confidence: float | None = Query(default=None, ge=0, le=1),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = None,
    teacher_version: TeacherVersion = None,
) -> dict[str, Any]:
    return await _reports(request).disagreements(
        route,
        window(since, until, DAY),
        slices=[parse_slice(text) for text in slice_filters or ()],
        served_by=served_by,
        score=check_range(min_score, max_score, ("min_score", "max_score")),
        confidence=check_range(
            min_confidence, max_confidence, ("min_confidence", "max_confidence")
        ),
        limit=limit,
        cursor=decode_cursor(cursor) if cursor is not None else None,
        teacher_version=_teacher_version(teacher_version),
    )


@router.get("/thresholds")
async def thresholds(
    request: Request,
    _key: ReaderKey,
    route: str,
    since: str | None = None,
    until: str | None = None,
    candidates: str | None = Query(default=None, alias="thresholds"),
    dimension: str | None = None,
    conservative: bool = False,
    teacher_version: TeacherVersion = None,
) -> dict[str, Any]:
    return await _reports(request).thresholds(
        route,
        window(since, until, WEEK),
        parse_thresholds(candidates) if candidates is not None else None,
        _dimension(dimension),
        conservative,
        _teacher_version(teacher_version),
    )


@router.get("/drift")
async def drift(
    request: Request,
    _key: ReaderKey,
    route: str,
    since: str | None = None,
    until: str | None = None,
    reference_since: str | None = None,
    reference_until: str | None = None,
    reference_dataset: str | None = Query(default=None, max_length=40),
    psi_threshold: float = Query(default=DEFAULT_PSI_THRESHOLD, gt=0),
    min_rows: int = Query(default=DEFAULT_MIN_ROWS, ge=1),
    dimension: str | None = None,
) -> dict[str, Any]:
    """Drift of the current window against a reference window (the week before, by default)
    or a registered dataset (``reference_dataset``: an id, or ``champion`` for the route
    champion's training set)."""
    current = window(since, until, DAY)
    reference: Window | int | str
    if reference_dataset is not None:
        if reference_since is not None or reference_until is not None:
            raise InvalidRequest(
                "Give a reference window or reference_dataset, not both.",
                param="reference_dataset",
                code="invalid_value",
            )
        reference = parse_reference_dataset(reference_dataset)
    else:
        reference = window(
            reference_since,
            reference_until,
            WEEK,
            params=("reference_since", "reference_until"),
            default_until=current.since,
        )
    return await _reports(request).drift(
        route,
        current,
        reference,
        psi_threshold=psi_threshold,
        min_rows=min_rows,
        dimension=_dimension(dimension),
    )


@router.post("/drift")
async def drift_against_dataset(
    request: Request,
    _key: ReaderKey,
    route: str,
    since: str | None = None,
    until: str | None = None,
    name: str = Query(default="uploaded dataset", max_length=200),
    psi_threshold: float = Query(default=DEFAULT_PSI_THRESHOLD, gt=0),
    min_rows: int = Query(default=DEFAULT_MIN_ROWS, ge=1),
    dimension: str | None = None,
) -> dict[str, Any]:
    """Drift of the current window against a JSONL reference dataset (the request body)."""
    reports = _reports(request)
    current = window(since, until, DAY)
    dataset = reference_dataset(reports.route(route), name)
    pending = b""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > MAX_REFERENCE_BYTES:
            raise PayloadTooLarge(
                f"The reference dataset is over the {MAX_REFERENCE_BYTES}-byte limit; "
                "a sample of it is enough for drift."
            )
        *lines, pending = (pending + chunk).split(b"\n")
        dataset.add_lines(lines)
    dataset.add_lines([pending])
    return await reports.drift(
        route,
        current,
        dataset,
        psi_threshold=psi_threshold,
        min_rows=min_rows,
        dimension=_dimension(dimension),
    )
