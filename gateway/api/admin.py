"""``/admin/routes``: read and change a route's live knobs (the control plane).

Reads need the ``sre`` or ``analyst`` scope, changes ``sre``; the key's name is recorded as
the actor of every change, and a reason is required.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

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
from gateway.protocol.reports import WEEK, check_dimension, window
from gateway.services.control import slice_view, state_view
from gateway.services.reports import Reports, calibrated_overrides
from gateway.services.reports.thresholds import DEFAULT_MIN_SERVED

router = APIRouter(prefix="/admin", tags=["admin"])


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


@router.get("/routes")
async def list_routes(request: Request, _key: ReaderKey) -> dict[str, Any]:
    state = gateway_state(request)
    plans = await state.control.plans()
    return {
        "routes": [
            {**route_view(state, route.name), "ramp": plans.get(route.name)}
            for route in state.settings.config.routes
        ]
    }


@router.get("/routes/{name}")
async def get_route(name: str, request: Request, _key: ReaderKey) -> dict[str, Any]:
    state = gateway_state(request)
    view = route_view(state, name)
    return {**view, "ramp": (await state.control.plans(name)).get(name)}


@router.patch("/routes/{name}")
async def change_route(
    name: str, change: RouteChange, request: Request, key: SreKey
) -> dict[str, Any]:
    state = gateway_state(request)
    knobs = change.model_dump(exclude={"reason"}, exclude_none=True)
    _, changed = await state.control.change(name, knobs, actor=key.name, reason=change.reason)
    return {"route": route_view(state, name), "changed": changed}


@router.post("/routes/{name}/rollback")
async def rollback_route(
    name: str, rollback: Rollback, request: Request, key: SreKey
) -> dict[str, Any]:
    state = gateway_state(request)
    _, changed = await state.control.change(
        name, {"mode": "shadow"}, actor=key.name, reason=rollback.reason, action="rollback"
    )
    return {"route": route_view(state, name), "changed": changed}


@router.get("/routes/{name}/slices")
async def list_slices(name: str, request: Request, _key: ReaderKey) -> dict[str, Any]:
    """The route's slice overrides, with who set each, when and why."""
    return {"route": name, "slices": await gateway_state(request).control.slice_overrides(name)}


@router.patch("/routes/{name}/slices/{dimension}/{value:path}")
async def change_slice(
    name: str, dimension: str, value: str, body: SliceChange, request: Request, key: SreKey
) -> dict[str, Any]:
    state = gateway_state(request)
    knobs = body.model_dump(exclude={"reason"}, exclude_none=True)
    override, changed, warnings = await state.control.change_slice(
        name, dimension, value, knobs, actor=key.name, reason=body.reason
    )
    return {
        "slice": slice_view(override),
        "changed": changed,
        "warnings": warnings,
        "route": route_view(state, name),
    }


@router.post("/routes/{name}/slices/{dimension}/{value:path}/clear")
async def clear_slice(
    name: str, dimension: str, value: str, body: Rollback, request: Request, key: SreKey
) -> dict[str, Any]:
    state = gateway_state(request)
    cleared = await state.control.clear_slice(
        name, dimension, value, actor=key.name, reason=body.reason
    )
    return {"cleared": slice_view(cleared), "route": route_view(state, name)}


@router.get("/routes/{name}/events")
async def route_events(
    name: str,
    request: Request,
    _key: ReaderKey,
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    return {"events": await gateway_state(request).control.events(name, limit)}


@router.post("/routes/{name}/plan")
async def plan_ramp(name: str, plan: RampPlan, request: Request, key: SreKey) -> dict[str, Any]:
    state = gateway_state(request)
    await state.control.start_plan(
        name, plan.steps, plan.hold_s, actor=key.name, reason=plan.reason
    )
    plans = await state.control.plans()
    return {"route": route_view(state, name), "plan": plans.get(name)}


@router.post("/routes/{name}/plan/cancel")
async def cancel_ramp(name: str, body: Rollback, request: Request, key: SreKey) -> dict[str, Any]:
    """Stop the route's active ramp where it is: its percent stays; audited."""
    state = gateway_state(request)
    ramp = await state.control.cancel_plan(name, actor=key.name, reason=body.reason)
    return {"route": route_view(state, name), "ramp": ramp}


@router.get("/routes/{name}/calibration")
async def calibration(
    name: str,
    request: Request,
    _key: ReaderKey,
    target_agreement: float = Query(default=0.9, gt=0, le=1),
    conservative: bool = False,
    since: str | None = None,
    until: str | None = None,
    dimension: str | None = None,
    min_served: int = Query(default=DEFAULT_MIN_SERVED, ge=1),
) -> dict[str, Any]:
    """Per slice, the lowest threshold whose served answers reach the target agreement; and
    the overrides applying it would set (``changes``)."""
    state = gateway_state(request)
    result = await Reports(state.engine, state.settings.config).slice_thresholds(
        name,
        window(since, until, WEEK),
        target_agreement,
        conservative=conservative,
        dimension=check_dimension(dimension) if dimension is not None else None,
        min_served=min_served,
    )
    changes = calibrated_overrides(result)
    return {**result, "changes": [_change_view(key, knobs) for key, knobs in changes.items()]}


@router.post("/routes/{name}/calibration")
async def apply_calibration(
    name: str, body: CalibrationApply, request: Request, key: SreKey
) -> dict[str, Any]:
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
    return {
        **result,
        "applied": [slice_view(override) for override in applied],
        "route": route_view(state, name),
    }


def _change_view(key: tuple[str, str], knobs: dict[str, Any]) -> dict[str, Any]:
    return {"slice": f"{key[0]}={key[1]}", "dimension": key[0], "value": key[1], **knobs}


# -- students ---------------------------------------------------------------------------------


def _students_view(state: GatewayState, name: str) -> dict[str, Any]:
    champion = state.students.champion(name)
    return {
        "route": name,
        "champion": champion.name if champion else None,
        "students": [student.view() for student in state.students.all(name)],
    }


@router.get("/routes/{name}/students")
async def list_students(name: str, request: Request, _key: ReaderKey) -> dict[str, Any]:
    return _students_view(gateway_state(request), name)


@router.post("/routes/{name}/students", status_code=201)
async def add_student(name: str, body: StudentAdd, request: Request, key: SreKey) -> dict[str, Any]:
    fields = body.model_dump(exclude={"reason"}, exclude_none=True)
    state = gateway_state(request)
    added = await state.students.add(name, fields, actor=key.name, reason=body.reason)
    return {"student": added.view(), **_students_view(state, name)}


@router.patch("/routes/{name}/students/{student}")
async def change_student(
    name: str, student: str, body: StudentKnobs, request: Request, key: SreKey
) -> dict[str, Any]:
    changes = body.model_dump(exclude={"reason"}, exclude_none=True)
    state = gateway_state(request)
    new, changed = await state.students.change(
        name, student, changes, actor=key.name, reason=body.reason
    )
    return {"student": new.view(), "changed": changed}


@router.post("/routes/{name}/students/{student}/promote")
async def promote_student(
    name: str, student: str, body: StudentAction, request: Request, key: SreKey
) -> dict[str, Any]:
    state = gateway_state(request)
    new, changed = await state.students.promote(name, student, actor=key.name, reason=body.reason)
    return {"student": new.view(), "changed": changed, **_students_view(state, name)}


@router.post("/routes/{name}/students/{student}/retire")
async def retire_student(
    name: str, student: str, body: StudentAction, request: Request, key: SreKey
) -> dict[str, Any]:
    state = gateway_state(request)
    new, changed = await state.students.retire(name, student, actor=key.name, reason=body.reason)
    return {"student": new.view(), "changed": changed, **_students_view(state, name)}
