"""The control plane's answers (``/admin/routes…``): a route's live knobs, its slice
overrides, students, ramp, audit log, calibration and teacher versions, as
:mod:`gateway.services.control`, :mod:`gateway.services.students` and
:mod:`gateway.services.teachers` write them (the CLI prints the same with ``--json``).

The rules that keep these models faithful are :mod:`gateway.protocol.responses`'.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.config import ConfidenceMethod
from gateway.core.routing import Mode, SliceMode
from gateway.protocol.report_views import CurvePoint
from gateway.protocol.responses import JsonObject, Number, Timestamp, View


class SliceOverrideView(View):
    """A slice's own knobs; ``None``: the route's applies."""

    slice: str = Field(description="dimension=value")
    dimension: str
    value: str
    mode: SliceMode | None
    rollout_percent: Number | None
    confidence_threshold: Number | None


class StoredSliceOverride(SliceOverrideView):
    """An override as stored: its knobs, and who set them, when and why."""

    version: int
    updated_at: Timestamp
    updated_by: str
    reason: str


class StudentView(View):
    """A student's knobs (never a secret: ``api_key_env`` names a variable)."""

    name: str
    status: Literal["champion", "candidate", "retired"]
    version: int
    base_urls: list[str]
    model: str
    api_key_env: str | None
    timeout_s: Number
    connect_timeout_s: Number
    max_concurrency: int
    top_logprobs: int
    breaker_failures: int
    breaker_cooldown_s: Number
    shadow_sample: Number | None


class CriticalSliceView(View):
    dimension: str
    value: str
    min_agreement: Number
    min_samples: int
    window_s: Number


class RampEvent(View):
    at: Timestamp
    actor: str
    action: str
    reason: str


class RampView(View):
    """A staged ramp: its steps, where it is, when it is next judged."""

    steps: list[Number]
    hold_s: Number
    step: int = Field(description="1-based: the step the route is at")
    percent: Number
    status: str = Field(description="active, completed, stopped or cancelled")
    next_at: Timestamp
    created_by: str
    reason: str
    last_event: RampEvent | None = Field(description="What the guardian last said of it")


class RouteView(View):
    """A route's live knobs (shared by every replica), its students and critical slices."""

    name: str
    mode: Mode
    rollout_percent: Number
    confidence_threshold: Number
    confidence_method: ConfidenceMethod
    audit_sample: Number
    salt: str
    version: int
    slices: list[SliceOverrideView]
    teacher_model: str
    student_model: str | None = Field(description="The champion's model")
    champion: str | None
    students: list[StudentView]
    critical_slices: list[CriticalSliceView]


class RouteDetail(RouteView):
    ramp: RampView | None


class RouteList(View):
    routes: list[RouteDetail]


class RouteChanged(View):
    route: RouteView
    changed: bool = Field(description="False when the route already had these values")


class SliceOverrides(View):
    route: str
    slices: list[StoredSliceOverride]


class SliceChanged(View):
    slice: SliceOverrideView
    changed: bool
    warnings: list[str] = Field(description="e.g. a dimension no request has carried yet")
    route: RouteView


class SliceCleared(View):
    cleared: SliceOverrideView
    route: RouteView


class RouteEvent(View):
    """One entry of the audit log (automatic changes included)."""

    id: int
    route: str
    at: Timestamp
    actor: str
    action: str
    old: JsonObject | None
    new: JsonObject | None
    reason: str
    detail: JsonObject | None


class RouteEvents(View):
    events: list[RouteEvent] = Field(description="Newest first")


class RampStarted(View):
    route: RouteView
    plan: RampView | None


class RampCancelled(View):
    route: RouteView
    ramp: RampView


# -- calibration -----------------------------------------------------------------------------


class SliceCalibration(View):
    dimension: str
    value: str
    comparisons: int
    status: Literal["ok", "not_enough_data", "unreachable"]
    threshold: Number | None = Field(description="The lowest threshold reaching the target")
    at_threshold: CurvePoint | None


class CalibrationChange(View):
    """What applying the calibration would set on a slice: a threshold, or the teacher."""

    slice: str
    dimension: str
    value: str
    confidence_threshold: Number | None = Field(default=None, description="status ok")
    mode: Literal["teacher"] | None = Field(default=None, description="status unreachable")


class Calibration(View):
    route: str
    since: Timestamp
    until: Timestamp
    target_agreement: Number
    conservative: bool
    min_served: int
    slices: list[SliceCalibration]
    changes: list[CalibrationChange]


class CalibrationApplied(View):
    """The calibration as computed, what it set, and the route after it."""

    route: RouteView
    since: Timestamp
    until: Timestamp
    target_agreement: Number
    conservative: bool
    min_served: int
    slices: list[SliceCalibration]
    applied: list[SliceOverrideView]


# -- students --------------------------------------------------------------------------------


class Students(View):
    route: str
    champion: str | None
    students: list[StudentView]


class StudentAdded(View):
    student: StudentView
    route: str
    champion: str | None
    students: list[StudentView]


class StudentChanged(View):
    student: StudentView
    changed: bool


class StudentMoved(View):
    """A promotion or a retirement, and the route's students after it."""

    student: StudentView
    changed: bool
    route: str
    champion: str | None
    students: list[StudentView]


# -- teacher versions ------------------------------------------------------------------------


class TeacherVersion(View):
    version: str | None = Field(description="What reports' teacher_version takes")
    model_reported: str | None = Field(description="The model the teacher's answers named")
    fingerprint: str | None = Field(description="The answers' system_fingerprint")
    first_seen: Timestamp
    last_seen: Timestamp
    first_request_id: str | None
    requests: int
    latest: bool = Field(description="The version seen last")


class TeacherVersions(View):
    route: str
    versions: list[TeacherVersion] = Field(description="Oldest first")
