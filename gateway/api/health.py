"""``/healthz`` (the process answers), ``/readyz`` (it should get traffic), ``/metrics``."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from gateway.api.state import gateway_state
from gateway.metrics import render

router = APIRouter()
_READY_CACHE_S = 1.0


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={503: {"description": "unavailable"}})
async def readyz(request: Request) -> JSONResponse:
    """Whether this replica should get traffic: it answers and keeps every log record.

    ``ready`` (200): Postgres answers and the journal is writable. ``degraded`` (200): one of
    the two is down, but records still land somewhere durable, so the replica keeps serving —
    a Postgres outage shared by every replica must not take them all out of rotation.
    ``unavailable`` (503): Postgres is unreachable *and* the disk refuses the journal, so new
    records could only be held in memory. Postgres is checked at most once a second.
    """
    state = gateway_state(request)
    cached = state.readiness
    now = time.monotonic()
    if cached is None or now - cached[0] > _READY_CACHE_S:
        database = "ok"
        try:
            async with asyncio.timeout(2):
                async with state.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except Exception as exc:
            database = f"unreachable: {type(exc).__name__}"
        cached = (now, database)
        state.readiness = cached
    database = cached[1]
    journal = state.writer.journal
    journal_state = "ok" if journal.writable else f"unwritable: {journal.error}"
    if database == "ok" and journal.writable:
        status, code = "ready", 200
    elif database == "ok" or journal.writable:
        status, code = "degraded", 200
    else:
        status, code = "unavailable", 503
    body = {
        "status": status,
        "database": database,
        "journal": journal_state,
        "routes": len(state.settings.config.routes),
        "log_queue_depth": state.writer.queue_depth,
        "journal_records": journal.records,
        "shadow_in_flight": state.dispatcher.in_flight,
    }
    return JSONResponse(body, status_code=code)


@router.get("/metrics", tags=["health"])
async def metrics(request: Request) -> Response:
    state = gateway_state(request)
    state.metrics.log_queue_depth.set(state.writer.queue_depth)
    return Response(render(state.metrics), media_type=CONTENT_TYPE_LATEST)
