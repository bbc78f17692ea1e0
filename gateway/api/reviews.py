"""``/admin/reviews``: the review queue for scripts and the console.

Reading tasks needs ``reviewer``, ``sre`` or ``analyst``; drawing tasks and judging them
``reviewer`` or ``sre`` (a reviewer judges answers but cannot change a rollout). The key's
name is recorded as the reviewer. Bodies are read under ``server.max_body_bytes`` (a corrected
answer over it is a 413), like ``/v1``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request

from gateway.api.openai import read_json_body
from gateway.api.security import ReviewerKey, ReviewReaderKey
from gateway.api.state import gateway_state
from gateway.protocol.admin import ReviewSample, ReviewVerdict
from gateway.protocol.openai import validate_model
from gateway.protocol.reports import QUALITY_SPAN, check_dimension, window

router = APIRouter(prefix="/admin/reviews", tags=["reviews"])
ReviewId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The task's id")]


async def _body(request: Request) -> dict[str, Any]:
    return await read_json_body(
        request, gateway_state(request).settings.config.server.max_body_bytes
    )


@router.get("")
async def list_reviews(
    request: Request,
    _key: ReviewReaderKey,
    route: str | None = Query(default=None, max_length=200),
    status: Literal["open", "judged", "all"] = "open",
    student: str | None = Query(default=None, max_length=200),
    batch: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=500),
    after_id: int | None = Query(default=None, ge=0, le=2**63 - 1),
) -> dict[str, Any]:
    """A page of review tasks, oldest first; ``next_after_id`` continues it."""
    return await gateway_state(request).reviews.tasks(
        route=route, status=status, student=student, batch=batch, limit=limit, after_id=after_id
    )


@router.get("/routes")
async def review_routes(request: Request, _key: ReviewReaderKey) -> dict[str, Any]:
    """Every route with its students and their open and judged tasks (what a reviewer's
    console offers to choose from: a reviewer key cannot read ``/admin/routes``)."""
    return await gateway_state(request).reviews.routes()


@router.post("/sample", status_code=201)
async def sample_reviews(request: Request, key: ReviewerKey) -> dict[str, Any]:
    """Draw review tasks (``review sample`` on the command line)."""
    body = validate_model(ReviewSample, await _body(request))
    return await gateway_state(request).reviews.sample(
        body.route,
        window(body.since, body.until, QUALITY_SPAN),
        per_slice=body.per_slice,
        actor=key.name,
        student=body.student,
        dimension=check_dimension(body.dimension) if body.dimension is not None else None,
        disagreements_only=body.disagreements_only,
    )


@router.get("/{review_id}")
async def get_review(
    request: Request, _key: ReviewReaderKey, review_id: ReviewId
) -> dict[str, Any]:
    """One task in full: the request, every student's answer, every verdict given."""
    return await gateway_state(request).reviews.task(review_id)


@router.post("/{review_id}")
async def judge_review(request: Request, key: ReviewerKey, review_id: ReviewId) -> dict[str, Any]:
    """Give the task a verdict (a later one replaces it; both stay in its history)."""
    body = validate_model(ReviewVerdict, await _body(request))
    return await gateway_state(request).reviews.judge(
        review_id,
        body.verdict,
        key.name,
        corrected_output=body.corrected_output,
        group=body.group,
    )
