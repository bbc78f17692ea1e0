"""``/admin/routes``: read and change a route's live knobs (the control plane).

Reads need the ``sre`` or ``analyst`` scope, changes ``sre``; the key's name is recorded as
the actor of every change, and a reason is required. Each answer is checked against its model
in :mod:`gateway.protocol.control_views`, which ``/openapi.json`` documents.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from gateway.api.errors import documented_errors
from gateway.api.reports import TIME, Dimension
from gateway.api.security import ReaderKey, SreKey
from gateway.api.state import GatewayState, gateway_state
from gateway.protocol.admin import (
    CalibrationApply,
    RampPlan,
    Rollback,
    RouteChange,
    SliceChange,
    StudentAction,
    StudentAdd,
    StudentKnobs,
)
from gateway.protocol.control_views import (
    Calibration,
    CalibrationApplied,
    RampCancelled,
    RampStarted,
    RouteChanged,
    RouteDetail,
    RouteEvents,
    RouteList,
    SliceChanged,
    SliceCleared,
    SliceOverrides,
    StudentAdded,
    StudentChanged,
    StudentMoved,
    Students,
)
from gateway.protocol.reports import WEEK, check_dimension, window
from gateway.services.control import slice_view, state_view
from gateway.services.reports import Reports, calibrated_overrides
from gateway.services.reports.thresholds import DEFAULT_MIN_SERVED

router = APIRouter(prefix="/admin", tags=["admin"])

_ROUTE = "No such route (`model_not_found`)."
READ = documented_errors(401, 403)
READ_ROUTE = documented_errors(401, 403, 404, not_found=_ROUTE)
CHANGE = documented_errors(
    400,
    401,
    403,
    404,
    not_found="No such route (`model_not_found`), or it has no state yet.",
)


def route_view(state: GatewayState, name: str) -> dict[str, Any]:
    route = state.control.route(name)
    live = state_view(state.control.state(name))
    champion = state.students.champion(name)
    return {
        "name": name,
        **live,
        "teacher_model": route.teacher.model,
        "student_model": champion.config.model if champion else None,
        "champion": champion.name if champion else None,
        "students": [student.view() for student in state.students.all(name)],
        "critical_slices": [critical.model_dump() for critical in route.slices.critical],
    }


@router.get("/routes", responses=READ)
async def list_routes(request: Request, _key: ReaderKey) -> RouteList:
    """Every route of the config: its live knobs, students, critical slices and ramp."""
    state = gateway_state(request)
    plans = await state.control.plans()
    return RouteList.model_validate(
        {
            "routes": [
                {**route_view(state, route.name), "ramp": plans.get(route.name)}
                for route in state.settings.config.routes
            ]
        }
    )


@router.get("/routes/{name}", responses=READ_ROUTE)
async def get_route(name: str, request: Request, _key: ReaderKey) -> RouteDetail:
    state = gateway_state(request)
    view = route_view(state, name)
    return RouteDetail.model_validate({**view, "ramp": (await state.control.plans(name)).get(name)})


@router.patch("/routes/{name}", responses=CHANGE)
async def change_route(
    name: str, change: RouteChange, request: Request, key: SreKey
) -> RouteChanged:
    """Set any of the route's knobs (audited; every replica follows within about a second)."""
    state = gateway_state(request)
    knobs = change.model_dump(exclude={"reason"}, exclude_none=True)
    _, changed = await state.control.change(name, knobs, actor=key.name, reason=change.reason)
    return RouteChanged.model_validate({"route": route_view(state, name), "changed": changed})


@router.post("/routes/{name}/rollback", responses=CHANGE)
async def rollback_route(
    name: str, rollback: Rollback, request: Request, key: SreKey
) -> RouteChanged:
    """Put the route back in shadow mode: the teacher answers everyone."""
    state = gateway_state(request)
    _, changed = await state.control.change(
        name, {"mode": "shadow"}, actor=key.name, reason=rollback.reason, action="rollback"
    )
    return RouteChanged.model_validate({"route": route_view(state, name), "changed": changed})


@router.get("/routes/{name}/slices", responses=READ_ROUTE)
async def list_slices(name: str, request: Request, _key: ReaderKey) -> SliceOverrides:
    """The route's slice overrides, with who set each, when and why."""
    found = await gateway_state(request).control.slice_overrides(name)
    return SliceOverrides.model_validate({"route": name, "slices": found})


@router.patch("/routes/{name}/slices/{dimension}/{value:path}", responses=CHANGE)
async def change_slice(
    name: str, dimension: str, value: str, body: SliceChange, request: Request, key: SreKey
) -> SliceChanged:
    """Set one slice's own knobs (creating its override); those not given are kept."""
    state = gateway_state(request)
    knobs = body.model_dump(exclude={"reason"}, exclude_none=True)
    override, changed, warnings = await state.control.change_slice(
        name, dimension, value, knobs, actor=key.name, reason=body.reason
    )
    return SliceChanged.model_validate(
        {
            "slice": slice_view(override),
            "changed": changed,
            "warnings": warnings,
            "route": route_view(state, name),
        }
    )


@router.post(
    "/routes/{name}/slices/{dimension}/{value:path}/clear",
    responses=documented_errors(
        400,
        401,
        403,
        404,
        not_found="No such route (`model_not_found`), or no override for the slice "
        "(`slice_not_found`).",
    ),
)
async def clear_slice(
    name: str, dimension: str, value: str, body: Rollback, request: Request, key: SreKey
) -> SliceCleared:
    """Remove a slice's override: the slice follows the route's knobs again."""
    state = gateway_state(request)
    cleared = await state.control.clear_slice(
        name, dimension, value, actor=key.name, reason=body.reason
    )
    return SliceCleared.model_validate(
        {"cleared": slice_view(cleared), "route": route_view(state, name)}
    )


@router.get(
    "/routes/{name}/events", responses=documented_errors(400, 401, 403, 404, not_found=_ROUTE)
)
async def route_events(
    name: str,
    request: Request,
    _key: ReaderKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RouteEvents:
    """The route's audit log, newest first: every change, who made it, when and why."""
    events = await gateway_state(request).control.events(name, limit)
    return RouteEvents.model_validate({"events": events})


@router.post("/routes/{name}/plan", responses=CHANGE)
async def plan_ramp(name: str, plan: RampPlan, request: Request, key: SreKey) -> RampStarted:
    """Start a staged ramp: the first step now, each next one once every bar held."""
    state = gateway_state(request)
    await state.control.start_plan(
        name, plan.steps, plan.hold_s, actor=key.name, reason=plan.reason
    )
    plans = await state.control.plans()
    return RampStarted.model_validate({"route": route_view(state, name), "plan": plans.get(name)})


@router.post(
    "/routes/{name}/plan/cancel",
    responses=documented_errors(
        400,
        401,
        403,
        404,
        not_found="No such route (`model_not_found`), or no active ramp (`plan_not_found`).",
    ),
)
async def cancel_ramp(name: str, body: Rollback, request: Request, key: SreKey) -> RampCancelled:
    """Stop the route's active ramp where it is: its percent stays; audited."""
    state = gateway_state(request)
    ramp = await state.control.cancel_plan(name, actor=key.name, reason=body.reason)
    return RampCancelled.model_validate({"route": route_view(state, name), "ramp": ramp})


CALIBRATION = documented_errors(
    400,
    401,
    403,
    404,
    not_found="No such route (`model_not_found`) or slice dimension (`dimension_not_found`), "
    "or no labelled shadow comparison in the window (`no_data`).",
)


@router.get("/routes/{name}/calibration", responses=CALIBRATION, response_model_exclude_unset=True)
async def calibration(
    name: str,
    request: Request,
    _key: ReaderKey,
    dimension: Dimension,
    target_agreement: Annotated[float, Query(gt=0, le=1)] = 0.9,
    conservative: bool = False,
    since: Annotated[str | None, Query(description=f"{TIME} (default: 7 days back)")] = None,
    until: Annotated[str | None, Query(description=f"{TIME} (default: now)")] = None,
    min_served: Annotated[int, Query(ge=1)] = DEFAULT_MIN_SERVED,
) -> Calibration:
    """Per slice, the lowest threshold whose served answers reach the target agreement; and
    the overrides applying it would set (``changes``)."""
    state = gateway_state(request)
    result = await Reports(state.engine, state.settings.config).slice_thresholds(
        name,
        window(since, until, WEEK),
        target_agreement,
        conservative=conservative,
        dimension=dimension,
        min_served=min_served,
    )
    changes = calibrated_overrides(result)
    return Calibration.model_validate(
        {**result, "changes": [_change_view(key, knobs) for key, knobs in changes.items()]}
    )


@router.post("/routes/{name}/calibration", responses=CALIBRATION)
async def apply_calibration(
    name: str, body: CalibrationApply, request: Request, key: SreKey
) -> CalibrationApplied:
    """Compute the calibration as GET does and set it as slice overrides, in one change."""
    state = gateway_state(request)
    span = window(body.since, body.until, WEEK)
    result = await Reports(state.engine, state.settings.config).slice_thresholds(
        name,
        span,
        body.target_agreement,
        conservative=body.conservative,
        dimension=check_dimension(body.dimension) if body.dimension is not None else None,
        min_served=body.min_served,
    )
    applied = await state.control.apply_slices(
        name,
        calibrated_overrides(result),
        actor=key.name,
        reason=body.reason,
        detail={
            "target_agreement": body.target_agreement,
            "conservative": body.conservative,
            **span.as_json(),
        },
    )
    return CalibrationApplied.model_validate(
        {
            **result,
            "applied": [slice_view(override) for override in applied],
            "route": route_view(state, name),
        }
    )


def _change_view(key: tuple[str, str], knobs: dict[str, Any]) -> dict[str, Any]:
    return {"slice": f"{key[0]}={key[1]}", "dimension": key[0], "value": key[1], **knobs}


# -- students ---------------------------------------------------------------------------------

_STUDENT = "No such route (`model_not_found`) or student (`student_not_found`)."
STUDENT_CHANGE = documented_errors(400, 401, 403, 404, not_found=_STUDENT)


def _students_view(state: GatewayState, name: str) -> dict[str, Any]:
    champion = state.students.champion(name)
    return {
        "route": name,
        "champion": champion.name if champion else None,
        "students": [student.view() for student in state.students.all(name)],
    }


@router.get("/routes/{name}/students", responses=READ_ROUTE)
async def list_students(name: str, request: Request, _key: ReaderKey) -> Students:
    """The route's students (every status) and its champion."""
    return Students.model_validate(_students_view(gateway_state(request), name))


@router.post(
    "/routes/{name}/students",
    status_code=201,
    responses=documented_errors(400, 401, 403, 404, not_found=_ROUTE),
)
async def add_student(name: str, body: StudentAdd, request: Request, key: SreKey) -> StudentAdded:
    """A new candidate (the champion if the route has none); a name is never reused (400)."""
    fields = body.model_dump(exclude={"reason"}, exclude_none=True)
    state = gateway_state(request)
    added = await state.students.add(name, fields, actor=key.name, reason=body.reason)
    return StudentAdded.model_validate({"student": added.view(), **_students_view(state, name)})


@router.patch("/routes/{name}/students/{student}", responses=STUDENT_CHANGE)
async def change_student(
    name: str, student: str, body: StudentKnobs, request: Request, key: SreKey
) -> StudentChanged:
    """Set a student's knobs (its model is fixed: a new model is a new student)."""
    changes = body.model_dump(exclude={"reason"}, exclude_none=True)
    state = gateway_state(request)
    new, changed = await state.students.change(
        name, student, changes, actor=key.name, reason=body.reason
    )
    return StudentChanged.model_validate({"student": new.view(), "changed": changed})


@router.post("/routes/{name}/students/{student}/promote", responses=STUDENT_CHANGE)
async def promote_student(
    name: str, student: str, body: StudentAction, request: Request, key: SreKey
) -> StudentMoved:
    """Make the student the champion; the previous one stays on as a candidate."""
    state = gateway_state(request)
    new, changed = await state.students.promote(name, student, actor=key.name, reason=body.reason)
    return StudentMoved.model_validate(
        {"student": new.view(), "changed": changed, **_students_view(state, name)}
    )


@router.post("/routes/{name}/students/{student}/retire", responses=STUDENT_CHANGE)
async def retire_student(
    name: str, student: str, body: StudentAction, request: Request, key: SreKey
) -> StudentMoved:
    """Stop calling a candidate (a champion must be replaced by a promotion first: 400)."""
    state = gateway_state(request)
    new, changed = await state.students.retire(name, student, actor=key.name, reason=body.reason)
    return StudentMoved.model_validate(
        {"student": new.view(), "changed": changed, **_students_view(state, name)}
    )
