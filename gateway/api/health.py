"""``/healthz`` (the process answers), ``/readyz`` (it should get traffic), ``/metrics``."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from gateway.api.state import GatewayState, gateway_state
from gateway.metrics import render

router = APIRouter()
_READY_CACHE_S = 1.0
# /readyz answers at once: Postgres is probed in the background, one probe at a time, and a
# probe still unanswered after this long means Postgres is not answering (a frozen server
# accepts the connection and never replies; a probe stuck in its clean-up must not keep an
# old "ok" alive, nor hold the readiness probe past its own timeout).
_PROBE_TIMEOUT_S = 1.0


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _probe(state: GatewayState) -> str:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            async with state.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


async def _database(state: GatewayState) -> str:
    """Postgres as /readyz reports it, known within about ``_PROBE_TIMEOUT_S`` at worst."""
    probe = state.readiness_probe
    if probe is not None and probe[1].done():  # a finished probe's answer is the news
        state.readiness, state.readiness_probe, probe = (probe[0], probe[1].result()), None, None
    cached = state.readiness
    if probe is None and (cached is None or time.monotonic() - cached[0] > _READY_CACHE_S):
        task = asyncio.create_task(_probe(state))
        probe = state.readiness_probe = (time.monotonic(), task)
        done, _ = await asyncio.wait({task}, timeout=_PROBE_TIMEOUT_S)  # usually 1 ms
        if done:
            state.readiness, state.readiness_probe, probe = (probe[0], task.result()), None, None
            cached = state.readiness
    if probe is not None and time.monotonic() - probe[0] >= _PROBE_TIMEOUT_S:
        return f"unreachable: no answer within {_PROBE_TIMEOUT_S:g} s"
    if cached is None:
        return "unknown"
    if cached[1] == "ok" and not state.writer.database_up:
        return "unreachable: the log writer cannot write to it"
    return cached[1]


@router.get("/readyz", tags=["health"], responses={503: {"description": "unavailable"}})
async def readyz(request: Request) -> JSONResponse:
    """Whether this replica should get traffic: it answers and keeps every log record.

    ``ready`` (200): Postgres answers and the journal is writable. ``degraded`` (200): one of
    the two is down, but records still land somewhere durable, so the replica keeps serving —
    a Postgres outage shared by every replica must not take them all out of rotation.
    ``unavailable`` (503): Postgres is unreachable *and* the disk refuses the journal, so new
    records could only be held in memory. Postgres is checked at most once a second, in the
    background: the answer never waits long on a Postgres that does not reply.
    """
    state = gateway_state(request)
    database = await _database(state)
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
