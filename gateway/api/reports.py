"""``/admin/reports``: slices, disagreements, thresholds, drift, candidates, quality (scope sre
or analyst).

Thin handlers: parse the query (times, slices, ranges; a 400 naming the parameter when one is
wrong), call :class:`~gateway.services.reports.Reports`, answer its JSON, checked against its
model in :mod:`gateway.protocol.report_views`. ``POST /drift`` takes a reference dataset as a
JSONL body, read line by line as it arrives; ``GET /drift`` takes a registered one as
``reference_dataset``.

Every report takes the route and a window (:class:`ReportQuery`); most take ``dimension``
(:data:`Dimension`), and slices, disagreements, thresholds and candidates ``teacher_version``
(:data:`TeacherVersion`): the rows whose teacher reported that system fingerprint or model.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from gateway.api.errors import documented_errors
from gateway.api.security import ReaderKey
from gateway.api.state import gateway_state
from gateway.core.paired import MIN_PAIRS
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.protocol.report_views import (
    CandidatesReportView,
    DisagreementsView,
    DriftReportView,
    QualityReportView,
    SliceReportView,
    ThresholdsReportView,
)
from gateway.protocol.reports import (
    DAY,
    MAX_TEACHER_VERSION,
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
TIME = (
    "ISO 8601 (`2024-05-01`, `2024-05-01T12:00:00Z`; no offset means UTC), `now`, or an age "
    "before now: `90m`, `24h`, `7d`, `2w`"
)
# Every report: bad input is a 400; no such route, dimension or teacher version, or no rows
# in the window, a 404 (its code says which).
ERRORS = documented_errors(
    400,
    401,
    403,
    404,
    not_found="No such route (`model_not_found`), slice dimension (`dimension_not_found`) or "
    "teacher version (`teacher_version_not_found`), or no rows in the window (`no_data`).",
)


_Since = Annotated[
    str | None, Query(description=f"Start, included: {TIME}. Default: the report's span")
]
_Until = Annotated[str | None, Query(description=f"End, excluded: {TIME}. Default: now")]


class ReportQuery:
    """What every report takes: the route, and a window ``[since, until)`` whose default
    length is the report's (:meth:`window`)."""

    def __init__(
        self,
        route: Annotated[str, Query(description="The route's name")],
        since: _Since = None,
        until: _Until = None,
    ) -> None:
        self.route = route
        self.since = since
        self.until = until

    def window(self, default_span: timedelta) -> Window:
        """The window; a 400 naming ``since`` or ``until`` for a time that is not one."""
        return window(self.since, self.until, default_span)


Report = Annotated[ReportQuery, Depends()]


def _dimension(
    dimension: Annotated[
        str | None, Query(description="Only this slice dimension (e.g. `tier`)")
    ] = None,
) -> str | None:
    return check_dimension(dimension) if dimension is not None else None


Dimension = Annotated[str | None, Depends(_dimension)]


def _teacher_version(
    teacher_version: Annotated[
        str | None,
        Query(
            max_length=MAX_TEACHER_VERSION,
            description="Only rows whose teacher reported this system_fingerprint or model "
            "(`GET /admin/routes/{name}/teacher-versions` lists them)",
        ),
    ] = None,
) -> str | None:
    return check_teacher_version(teacher_version) if teacher_version is not None else None


TeacherVersion = Annotated[str | None, Depends(_teacher_version)]


def _reports(request: Request) -> Reports:
    state = gateway_state(request)
    return Reports(state.engine, state.settings.config)


@router.get("/slices", responses=ERRORS)
async def slices(
    request: Request,
    _key: ReaderKey,
    query: Report,
    dimension: Dimension,
    teacher_version: TeacherVersion,
) -> SliceReportView:
    """Per slice, agreement with its 95% interval against the slice's bar, worst first; the
    aggregate last; per teacher version. Default window: the last day."""
    found = await _reports(request).slices(
        query.route, query.window(DAY), dimension, teacher_version
    )
    return SliceReportView.model_validate(found)


@router.get("/candidates", responses=ERRORS)
async def candidates(
    request: Request,
    _key: ReaderKey,
    query: Report,
    teacher_version: TeacherVersion,
    baseline: Annotated[
        str | None,
        Query(max_length=200, description="Compare with this student (default: the champion)"),
    ] = None,
    min_pairs: Annotated[
        int, Query(ge=1, description="Fewest paired comparisons a verdict needs")
    ] = MIN_PAIRS,
) -> CandidatesReportView:
    """Each student against the baseline per slice, on the same requests: agreement, the
    paired difference with its interval and a verdict. Default window: the last 7 days."""
    found = await _reports(request).candidates(
        query.route, query.window(WEEK), baseline, min_pairs, teacher_version
    )
    return CandidatesReportView.model_validate(found)


@router.get("/quality", responses=ERRORS, response_model_exclude_unset=True)
async def quality(
    request: Request, _key: ReaderKey, query: Report, dimension: Dimension
) -> QualityReportView:
    """Per slice, how often the teacher and each student were judged wrong (reviews and
    feedback). Default window: the last 30 days."""
    found = await _reports(request).quality(query.route, query.window(QUALITY_SPAN), dimension)
    return QualityReportView.model_validate(found)


Unit = Annotated[float | None, Query(ge=0, le=1)]


@router.get("/disagreements", responses=ERRORS)
async def disagreements(
    request: Request,
    _key: ReaderKey,
    query: Report,
    teacher_version: TeacherVersion,
    slice_filters: Annotated[
        list[str] | None,
        Query(alias="slice", description="`dimension=value`; repeat it: every one must hold"),
    ] = None,
    served_by: Literal["teacher", "student"] | None = None,
    min_score: Unit = None,
    max_score: Unit = None,
    min_confidence: Unit = None,
    max_confidence: Unit = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor from the previous page")] = None,
) -> DisagreementsView:
    """One page of comparisons that disagreed, newest first, with both answers. Default
    window: the last day."""
    found = await _reports(request).disagreements(
        query.route,
        query.window(DAY),
        slices=[parse_slice(text) for text in slice_filters or ()],
        served_by=served_by,
        score=check_range(min_score, max_score, ("min_score", "max_score")),
        confidence=check_range(
            min_confidence, max_confidence, ("min_confidence", "max_confidence")
        ),
        limit=limit,
        cursor=decode_cursor(cursor) if cursor is not None else None,
        teacher_version=teacher_version,
    )
    return DisagreementsView.model_validate(found)


@router.get("/thresholds", responses=ERRORS)
async def thresholds(
    request: Request,
    _key: ReaderKey,
    query: Report,
    dimension: Dimension,
    teacher_version: TeacherVersion,
    candidates: Annotated[
        str | None,
        Query(alias="thresholds", description="Candidates, e.g. `0.5,0.7,0.9` (default: 0 to 1)"),
    ] = None,
    conservative: Annotated[
        bool, Query(description="Judge bars by the low end of the 95% interval")
    ] = False,
) -> ThresholdsReportView:
    """Served share and agreement per confidence threshold, per critical slice, and the
    lowest threshold that keeps every bar. Default window: the last 7 days."""
    found = await _reports(request).thresholds(
        query.route,
        query.window(WEEK),
        parse_thresholds(candidates) if candidates is not None else None,
        dimension,
        conservative,
        teacher_version,
    )
    return ThresholdsReportView.model_validate(found)


DRIFT_ERRORS = documented_errors(
    400,
    401,
    403,
    404,
    not_found="No such route (`model_not_found`), slice dimension (`dimension_not_found`) or "
    "dataset (`dataset_not_found`), or no rows in a window (`no_data`).",
)
PsiThreshold = Annotated[float, Query(gt=0, description="Flag a dimension at or above this PSI")]
MinRows = Annotated[int, Query(ge=1, description="Fewest rows on each side")]


@router.get("/drift", responses=DRIFT_ERRORS)
async def drift(
    request: Request,
    _key: ReaderKey,
    query: Report,
    dimension: Dimension,
    reference_since: Annotated[
        str | None, Query(description=f"Reference window start: {TIME}")
    ] = None,
    reference_until: Annotated[
        str | None, Query(description="Reference window end (default: since)")
    ] = None,
    reference_dataset: Annotated[
        str | None,
        Query(max_length=40, description="A registered dataset's id, or `champion`"),
    ] = None,
    psi_threshold: PsiThreshold = DEFAULT_PSI_THRESHOLD,
    min_rows: MinRows = DEFAULT_MIN_ROWS,
) -> DriftReportView:
    """Drift of the current window (default: the last day) against a reference window (the
    week before, by default) or a registered dataset (``reference_dataset``: an id, or
    ``champion`` for the route champion's training set)."""
    current = query.window(DAY)
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
    found = await _reports(request).drift(
        query.route,
        current,
        reference,
        psi_threshold=psi_threshold,
        min_rows=min_rows,
        dimension=dimension,
    )
    return DriftReportView.model_validate(found)


# The body is read as a stream (JSONL, line by line), so FastAPI does not describe it.
_JSONL_BODY = {
    "requestBody": {
        "required": True,
        "description": "The reference prompts, one JSON object a line: "
        '`{"messages": [...]}` or `{"prompt": "..."}`, optionally with `"slices"` '
        "(docs/reports.md).",
        "content": {"application/jsonl": {"schema": {"type": "string"}}},
    }
}


@router.post(
    "/drift",
    responses={
        **DRIFT_ERRORS,
        **documented_errors(413),
    },
    openapi_extra=_JSONL_BODY,
)
async def drift_against_dataset(
    request: Request,
    _key: ReaderKey,
    query: Report,
    dimension: Dimension,
    name: Annotated[
        str, Query(max_length=200, description="What the reference is called in the answer")
    ] = "uploaded dataset",
    psi_threshold: PsiThreshold = DEFAULT_PSI_THRESHOLD,
    min_rows: MinRows = DEFAULT_MIN_ROWS,
) -> DriftReportView:
    """Drift of the current window (default: the last day) against a JSONL reference
    dataset (the request body)."""
    reports = _reports(request)
    current = query.window(DAY)
    dataset = reference_dataset(reports.route(query.route), name)
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
    found = await reports.drift(
        query.route,
        current,
        dataset,
        psi_threshold=psi_threshold,
        min_rows=min_rows,
        dimension=dimension,
    )
    return DriftReportView.model_validate(found)
