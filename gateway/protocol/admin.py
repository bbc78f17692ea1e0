"""Admin API bodies: what an SRE may change on a route, and why."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gateway.config import ConfidenceMethod
from gateway.core.routing import Mode


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteChange(_Body):
    """Any subset of a route's knobs, and a required reason (it goes into route_events)."""

    mode: Mode | None = None
    rollout_percent: float | None = Field(default=None, ge=0, le=100)
    confidence_threshold: float | None = Field(default=None, ge=0, le=1)
    confidence_method: ConfidenceMethod | None = None
    audit_sample: float | None = Field(default=None, ge=0, le=1)
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")


class Rollback(_Body):
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")


class RampPlan(_Body):
    """A staged ramp: percentages applied in order, each held ``hold_s`` while bars hold."""

    steps: list[float] = Field(min_length=1, max_length=50)
    hold_s: float = Field(gt=0)
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")
