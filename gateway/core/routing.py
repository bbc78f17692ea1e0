"""Who gets the student: sticky buckets and the per-request decision.

A request's bucket is a stable hash of the route's salt and a sticky key (the request's
``user``, else a configured header, else the request id), scaled to [0, 100). A route in
rollout serves the student to buckets below its ``rollout_percent``: the same user lands in
the same bucket on every replica and after restarts, and raising the percentage only adds
buckets, so users who had the student keep it. Changing the salt reshuffles everyone, which
is what a fresh experiment wants.

A route's knobs may differ per slice (:class:`SliceOverride`): a request's labels pick the
overrides that apply to it, and :func:`serving` folds them into what serves it. When several
apply, the most conservative wins: a ``teacher`` override beats everything, then ``rollout``
beats the route's mode; the highest threshold and the lowest percent among the overrides that
set one. A slice kept on the teacher is still shadowed, so its agreement keeps being measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from gateway.core.sampling import unit_hash

Mode = Literal["teacher", "shadow", "rollout"]
MODES: tuple[Mode, ...] = get_args(Mode)
Decision = Literal["teacher_only", "shadow", "student_first"]
FallbackReason = Literal[
    "low_confidence",
    "student_error",
    "student_timeout",
    "student_unavailable",
    "teacher_error",
    "server_state",
    "slice_teacher_only",
    "out_of_scope",
]
SliceMode = Literal["teacher", "rollout"]
SLICE_MODES: tuple[SliceMode, ...] = get_args(SliceMode)
# Responses API fields that name state kept on the teacher's server (an earlier response, a
# conversation, a stored prompt) or ask it to keep the answer for later (background mode).
SERVER_STATE_FIELDS = ("previous_response_id", "conversation", "prompt", "background")


@dataclass(frozen=True)
class SliceOverride:
    """The route's knobs for the requests labelled ``dimension=value``; None: the route's."""

    dimension: str
    value: str
    mode: SliceMode | None = None
    rollout_percent: float | None = None
    confidence_threshold: float | None = None

    @property
    def name(self) -> str:
        return f"{self.dimension}={self.value}"


@dataclass(frozen=True)
class RouteState:
    """A route's live knobs, as stored in ``route_state``, and its slice overrides."""

    mode: Mode
    rollout_percent: float
    confidence_threshold: float
    confidence_method: str
    audit_sample: float
    salt: str
    version: int = 1
    slices: Mapping[tuple[str, str], SliceOverride] = field(default_factory=dict)

    def changed(self, **changes: object) -> RouteState:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Serving:
    """What serves one request: its route's knobs as its slices' overrides change them."""

    mode: Mode
    rollout_percent: float
    confidence_threshold: float
    kept_by: str | None = None  # the teacher-only slice that keeps it from the student


def serving(state: RouteState, labels: Mapping[str, str]) -> Serving:
    """The knobs for a request with these slice labels (the most conservative overrides)."""
    route = Serving(state.mode, state.rollout_percent, state.confidence_threshold)
    if state.mode == "teacher" or not state.slices or not labels:
        return route
    matched = [found for key in labels.items() if (found := state.slices.get(key)) is not None]
    if not matched:
        return route
    kept = sorted(o.name for o in matched if o.mode == "teacher")
    rollout = any(o.mode == "rollout" for o in matched)
    return Serving(
        mode="rollout" if rollout else state.mode,
        rollout_percent=min(
            (o.rollout_percent for o in matched if o.rollout_percent is not None),
            default=state.rollout_percent,
        ),
        confidence_threshold=max(
            (o.confidence_threshold for o in matched if o.confidence_threshold is not None),
            default=state.confidence_threshold,
        ),
        kept_by=kept[0] if kept else None,
    )


def sticky_key(user: object, header_value: str | None, request_id: str) -> str:
    if isinstance(user, str) and user:
        return f"user:{user}"
    if header_value:
        return f"header:{header_value}"
    return f"request:{request_id}"


def bucket(salt: str, key: str) -> float:
    """The key's place in [0, 100) for this salt."""
    return unit_hash(f"{salt}\x00{key}") * 100.0


def decide(knobs: RouteState | Serving, sticky_bucket: float) -> Decision:
    """Teacher only, shadow, or the student first; a request a teacher-only slice keeps is
    ``student_first`` still (the caller says why the teacher answers: ``kept_by``)."""
    if knobs.mode == "teacher":
        return "teacher_only"
    if knobs.mode == "rollout" and sticky_bucket < knobs.rollout_percent:
        return "student_first"
    return "shadow"


def fallback_reason(
    outcome: str, confidence: float | None, threshold: float
) -> FallbackReason | None:
    """Why the teacher must answer in place of the student; None when the student may."""
    if outcome == "timeout":
        return "student_timeout"
    if outcome == "unreachable":
        return "student_unavailable"
    if outcome != "ok":
        return "student_error"
    if confidence is None or confidence < threshold:
        return "low_confidence"
    return None


def server_state(endpoint: str, body: Mapping[str, object]) -> str | None:
    """The field by which a Responses API request leans on the teacher's server state; None
    when it does not. The student cannot see that state, so such a request is not shadowed."""
    if endpoint != "responses":
        return None
    return next((f for f in SERVER_STATE_FIELDS if body.get(f) not in (None, False, "")), None)


def student_may_answer(endpoint: str, body: Mapping[str, object]) -> bool:
    """Whether the app may get the student's answer for this request.

    A Responses API answer is stored by the teacher unless the app says ``store: false``, and
    an app continues it later by its id (``previous_response_id``), which only the teacher
    knows: so the student answers only requests that neither use nor create server state.
    """
    if endpoint != "responses":
        return True
    return body.get("store") is False and server_state(endpoint, body) is None


def teacher_failure_rescuable(teacher_status: int | None) -> bool:
    """Whether the student may stand in for a failed teacher (``on_teacher_error: student``).

    ``teacher_status`` is None when no answer came (unreachable, timed out). A 4xx other than
    429 is the request's own fault, which the student's answer would only hide.
    """
    return teacher_status is None or teacher_status >= 500 or teacher_status == 429


SliceVerdict = Literal["pass", "fail", "not_enough_data"]


def judge_slice(samples: int, agreed: int, min_agreement: float, min_samples: int) -> SliceVerdict:
    """A slice against its bar: judged only once it has ``min_samples`` comparisons."""
    if samples < min_samples:
        return "not_enough_data"
    return "pass" if agreed / samples >= min_agreement else "fail"
