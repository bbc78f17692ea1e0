"""``/healthz`` (the process answers), ``/readyz`` (it can do its job), ``/metrics``."""

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


@router.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when the config is loaded and Postgres answers (checked at most once a second)."""
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
    body = {
        "status": "ready" if database == "ok" else "degraded",
        "database": database,
        "routes": len(state.settings.config.routes),
        "log_queue_depth": state.writer.queue_depth,
        "journal_records": state.writer.journal.records,
        "shadow_in_flight": state.dispatcher.in_flight,
    }
    return JSONResponse(body, status_code=200 if database == "ok" else 503)


@router.get("/metrics", tags=["health"])
async def metrics(request: Request) -> Response:
    state = gateway_state(request)
    state.metrics.log_queue_depth.set(state.writer.queue_depth)
    return Response(render(state.metrics), media_type=CONTENT_TYPE_LATEST)
