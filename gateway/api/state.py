"""What the lifespan builds and the handlers use, as one typed object."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from gateway.config import Settings
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics
from gateway.services.auth import KeyRing
from gateway.services.control import ControlPlane
from gateway.services.feedback import FeedbackStore
from gateway.services.proxy import ProxyService
from gateway.services.reviews import ReviewQueue
from gateway.services.students import StudentRegistry
from gateway.shadow.dispatcher import ShadowDispatcher


@dataclass
class GatewayState:
    settings: Settings
    metrics: Metrics
    keys: KeyRing
    proxy: ProxyService
    control: ControlPlane
    students: StudentRegistry
    dispatcher: ShadowDispatcher
    writer: LogWriter
    engine: AsyncEngine
    feedback: FeedbackStore
    reviews: ReviewQueue
    started_at: int
    readiness: tuple[float, str] | None = None  # (checked at, database status), cached 1 s
    # the one Postgres probe of /readyz in flight, and when it started (api/health.py)
    readiness_probe: tuple[float, asyncio.Task[str]] | None = None


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state
