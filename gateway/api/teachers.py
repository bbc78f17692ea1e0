"""``GET /admin/routes/{name}/teacher-versions``: the versions a route's teacher answered with
(scope sre or analyst), oldest first, with when each was first and last seen and on how many
requests (:mod:`gateway.services.teachers`)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.api.errors import documented_errors
from gateway.api.security import ReaderKey
from gateway.api.state import gateway_state
from gateway.protocol.control_views import TeacherVersions
from gateway.services.teachers import route_versions

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get(
    "/routes/{name}/teacher-versions",
    responses=documented_errors(401, 403, 404, not_found="No such route (`model_not_found`)."),
)
async def teacher_versions(name: str, request: Request, _key: ReaderKey) -> TeacherVersions:
    """The route's teacher versions; 404 for a route the config does not have."""
    state = gateway_state(request)
    return TeacherVersions.model_validate(
        await route_versions(state.engine, state.settings.config, name)
    )
