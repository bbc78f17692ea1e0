"""``/admin/reviews``: the review queue for scripts and the console.

Reading tasks needs ``reviewer``, ``sre`` or ``analyst``; drawing tasks and judging them
``reviewer`` or ``sre`` (a reviewer judges answers but cannot change a rollout). The key's
name is recorded as the reviewer. Bodies are read under ``server.max_body_bytes`` (a corrected
answer over it is a 413), like ``/v1``, so the document describes them from their models
(:func:`_body_documented`). Answers are checked against :mod:`gateway.protocol.review_views`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel

from gateway.api.errors import documented_errors
from gateway.api.openai import read_json_body
from gateway.api.security import ReviewerKey, ReviewReaderKey
from gateway.api.state import gateway_state
from gateway.protocol.admin import ReviewSample, ReviewVerdict
from gateway.protocol.openai import validate_model
from gateway.protocol.reports import QUALITY_SPAN, check_dimension, window
from gateway.protocol.review_views import (
    ReviewJudged,
    ReviewRoutes,
    ReviewsDrawn,
    ReviewTaskDetail,
    ReviewTasks,
)

router = APIRouter(prefix="/admin/reviews", tags=["reviews"])
ReviewId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The task's id")]
_TASK = "No review task has this id (`review_not_found`)."
_BODY_ERRORS = (400, 401, 403, 404, 413, 415)


async def _body(request: Request) -> dict[str, Any]:
    return await read_json_body(
        request, gateway_state(request).settings.config.server.max_body_bytes
    )


def _body_documented(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a body read by hand: the model's schema as the request body."""
    schema = model.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


@router.get("", responses=documented_errors(400, 401, 403, 404, not_found="No such route."))
async def list_reviews(
    request: Request,
    _key: ReviewReaderKey,
    route: Annotated[str | None, Query(max_length=200)] = None,
    status: Literal["open", "judged", "all"] = "open",
    student: Annotated[str | None, Query(max_length=200)] = None,
    batch: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after_id: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
) -> ReviewTasks:
    """A page of review tasks, oldest first; ``next_after_id`` continues it."""
    found = await gateway_state(request).reviews.tasks(
        route=route, status=status, student=student, batch=batch, limit=limit, after_id=after_id
    )
    return ReviewTasks.model_validate(found)


@router.get("/routes", responses=documented_errors(401, 403))
async def review_routes(request: Request, _key: ReviewReaderKey) -> ReviewRoutes:
    """Every route with its students and their open and judged tasks (what a reviewer's
    console offers to choose from: a reviewer key cannot read ``/admin/routes``)."""
    return ReviewRoutes.model_validate(await gateway_state(request).reviews.routes())


@router.post(
    "/sample",
    status_code=201,
    responses=documented_errors(
        *_BODY_ERRORS,
        not_found="No such route (`model_not_found`), student (`student_not_found`) or slice "
        "dimension (`dimension_not_found`).",
    ),
    openapi_extra=_body_documented(ReviewSample),
)
async def sample_reviews(request: Request, key: ReviewerKey) -> ReviewsDrawn:
    """Draw review tasks (``review sample`` on the command line)."""
    body = validate_model(ReviewSample, await _body(request))
    drawn = await gateway_state(request).reviews.sample(
        body.route,
        window(body.since, body.until, QUALITY_SPAN),
        per_slice=body.per_slice,
        actor=key.name,
        student=body.student,
        dimension=check_dimension(body.dimension) if body.dimension is not None else None,
        disagreements_only=body.disagreements_only,
    )
    return ReviewsDrawn.model_validate(drawn)


@router.get("/{review_id}", responses=documented_errors(400, 401, 403, 404, not_found=_TASK))
async def get_review(
    request: Request, _key: ReviewReaderKey, review_id: ReviewId
) -> ReviewTaskDetail:
    """One task in full: the request, every student's answer, every verdict given."""
    return ReviewTaskDetail.model_validate(await gateway_state(request).reviews.task(review_id))


@router.post(
    "/{review_id}",
    responses=documented_errors(*_BODY_ERRORS, not_found=_TASK),
    openapi_extra=_body_documented(ReviewVerdict),
)
async def judge_review(request: Request, key: ReviewerKey, review_id: ReviewId) -> ReviewJudged:
    """Give the task a verdict (a later one replaces it; both stay in its history)."""
    body = validate_model(ReviewVerdict, await _body(request))
    judged = await gateway_state(request).reviews.judge(
        review_id,
        body.verdict,
        key.name,
        corrected_output=body.corrected_output,
        group=body.group,
    )
    return ReviewJudged.model_validate(judged)
