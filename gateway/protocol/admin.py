"""Admin API bodies: what an SRE may change on a route, and why."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.config import ConfidenceMethod
from gateway.core.routing import Mode, SliceMode
from gateway.core.statistics import MIN_SERVED

Verdict = Literal["teacher_correct", "student_correct", "both_correct", "both_wrong"]


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


class SliceChange(_Body):
    """A slice's own knobs (any subset; the ones not given are kept), and why."""

    mode: SliceMode | None = None
    rollout_percent: float | None = Field(default=None, ge=0, le=100)
    confidence_threshold: float | None = Field(default=None, ge=0, le=1)
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")


class CalibrationApply(_Body):
    """Apply a per-slice calibration: its parameters (as ``GET …/calibration``), and why."""

    target_agreement: float = Field(default=0.9, gt=0, le=1)
    conservative: bool = False
    since: str | None = Field(default=None, max_length=100)
    until: str | None = Field(default=None, max_length=100)
    dimension: str | None = Field(default=None, max_length=63)
    min_served: int = Field(default=MIN_SERVED, ge=1)
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")


class Rollback(_Body):
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")


class StudentKnobs(_Body):
    """What may be set on a student (the model is fixed: a new model is a new student)."""

    base_urls: list[str] | None = Field(default=None, min_length=1, max_length=64)
    api_key_env: str | None = Field(default=None, min_length=1, max_length=200)
    shadow_sample: float | None = Field(default=None, ge=0, le=1)
    timeout_s: float | None = Field(default=None, gt=0)
    connect_timeout_s: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    breaker_failures: int | None = Field(default=None, ge=1)
    breaker_cooldown_s: float | None = Field(default=None, gt=0)
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")


class StudentAdd(StudentKnobs):
    """A new candidate: its name, model and replicas, and why."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    model: str = Field(min_length=1)
    base_urls: list[str] = Field(min_length=1, max_length=64)


class StudentAction(_Body):
    """A promotion or a retirement, and why."""

    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")


class RampPlan(_Body):
    """A staged ramp: percentages applied in order, each held ``hold_s`` while bars hold."""

    steps: list[float] = Field(min_length=1, max_length=50)
    hold_s: float = Field(gt=0)
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")


class ReviewVerdict(_Body):
    """A verdict on a review task; ``group`` gives every open task of its group the same."""

    verdict: Verdict
    corrected_output: str | None = Field(default=None, min_length=1)
    group: bool = False


class ReviewSample(_Body):
    """Draw review tasks: up to ``per_slice`` per slice of the route, from a window."""

    route: str = Field(min_length=1, max_length=200)
    per_slice: int = Field(default=20, ge=1, le=10_000)
    disagreements_only: bool = False
    student: str | None = Field(default=None, min_length=1, max_length=200)
    dimension: str | None = Field(default=None, max_length=63)
    since: str | None = Field(default=None, max_length=100)
    until: str | None = Field(default=None, max_length=100)
