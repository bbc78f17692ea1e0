"""One route's section of the config file: its teacher, students, comparator, slices,
rollout, export verifier and redaction."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.config.base import Strict
from gateway.core import verify
from gateway.core.routing import Mode, SliceMode


class TeacherConfig(Strict):
    base_url: HttpUrl
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)


SLICE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
DEFAULT_STUDENT = "default"  # the name of a route's one-student form, ``student:``


class StudentConfig(Strict):
    # Names a student in rows, metrics labels, headers and the CLI: lower-case, like slices.
    name: str = Field(default=DEFAULT_STUDENT, pattern=SLICE_NAME)
    base_urls: list[HttpUrl] = Field(min_length=1)  # HttpUrl: http and https only
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    top_logprobs: int = Field(default=5, ge=0, le=20)
    # Circuit breaker: this many failures in a row stop calls for cooldown_s, then one probe.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=10.0, gt=0)
    # The share of the route's requests this student is shadowed on; None: the route's.
    shadow_sample: float | None = Field(default=None, ge=0.0, le=1.0)


Comparator = Literal["exact", "normalized", "json", "label", "numeric", "semantic", "custom"]
ConfidenceMethod = Literal["mean_prob", "min_prob", "first_token", "margin"]


def _check_regex(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
    return pattern


class AgreementConfig(Strict):
    """How teacher and student answers are compared (see gateway.core.agreement)."""

    comparator: Comparator = "normalized"
    # score >= threshold is agreement; default 1.0, or 0.8 for semantic
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    fields: list[str] = Field(default_factory=list)  # json: dotted paths; empty = whole document
    pattern: str | None = None  # label: the regex whose first group (or match) is the label
    ignore_case: bool = True  # label
    abs_tol: float = Field(default=0.0, ge=0.0)  # numeric
    rel_tol: float = Field(default=0.0, ge=0.0)  # numeric
    function: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")  # custom
    model: str | None = None  # semantic: the embedding model (default: the packaged MiniLM)

    _regex = field_validator("pattern")(_check_regex)

    @model_validator(mode="after")
    def _needs(self) -> AgreementConfig:
        if self.comparator == "label" and not self.pattern:
            raise ValueError("comparator label needs a pattern")
        if self.comparator == "custom" and not self.function:
            raise ValueError("comparator custom needs function: 'module:function'")
        return self

    @property
    def effective_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return 0.8 if self.comparator == "semantic" else 1.0


class SliceRule(Strict):
    """Label requests whose last user message matches ``pattern`` with ``dimension=value``."""

    dimension: str = Field(pattern=SLICE_NAME)
    pattern: str
    value: str = Field(min_length=1, max_length=128)

    _regex = field_validator("pattern")(_check_regex)


class LengthBuckets(Strict):
    """Label the last user message's length in characters: bounds [50, 200] → <50, 50-199, ≥200."""

    dimension: str = Field(default="prompt_length", pattern=SLICE_NAME)
    bounds: list[int] = Field(min_length=1)

    @field_validator("bounds")
    @classmethod
    def _ascending(cls, bounds: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(bounds)) or bounds[0] <= 0:
            raise ValueError("bounds must be positive and strictly ascending")
        return bounds


class CriticalSlice(Strict):
    """A slice with a bar: the rollout gate and automatic rollback judge routes by these."""

    dimension: str = Field(pattern=SLICE_NAME)
    value: str = Field(min_length=1, max_length=128)
    min_agreement: float = Field(ge=0.0, le=1.0)
    min_samples: int = Field(default=30, ge=1)
    window_s: float = Field(default=3600.0, gt=0)


class SlicesConfig(Strict):
    rules: list[SliceRule] = Field(default_factory=list)
    length_buckets: LengthBuckets | None = None
    defaults: dict[str, str] = Field(default_factory=dict)  # dimension → label when none set
    critical: list[CriticalSlice] = Field(default_factory=list)


class SliceServing(Strict):
    """A slice's own serving knobs, seeding ``route_slice_overrides`` (None: the route's)."""

    dimension: str = Field(pattern=SLICE_NAME)
    value: str = Field(min_length=1)
    mode: SliceMode | None = None  # teacher: never served by the student; rollout: served
    percent: float | None = Field(default=None, ge=0.0, le=100.0)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sets_something(self) -> SliceServing:
        if self.mode is None and self.percent is None and self.threshold is None:
            raise ValueError(
                f"slice {self.dimension}={self.value} sets nothing: give mode, percent or threshold"
            )
        return self


class RolloutConfig(Strict):
    """The rollout knobs' starting values; live values are in ``route_state`` (admin API/CLI)."""

    percent: float = Field(default=0.0, ge=0.0, le=100.0)
    threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    confidence: ConfidenceMethod = "mean_prob"  # how the student's logprobs become confidence
    audit_sample: float = Field(default=0.05, ge=0.0, le=1.0)
    salt: str | None = None  # default: the route's name
    sticky_header: str | None = None  # e.g. x-user-id, used when a request has no `user`
    # How long a chosen student may take before the teacher answers instead; default: the
    # student's timeout_s. Worst case for the app: this plus the teacher's answer time.
    student_budget_s: float | None = Field(default=None, gt=0)
    # The route's own bar: route-level agreement over gate_window_s (over the hold in a
    # ramp). Below it the guardian puts the whole route back in shadow, critical slices or
    # not; a ramp without critical slices is gated on it.
    gate_min_agreement: float = Field(default=0.9, ge=0.0, le=1.0)
    gate_min_samples: int = Field(default=30, ge=1)
    gate_window_s: float = Field(default=3600.0, gt=0)
    # Per-slice knobs, seeded into route_slice_overrides on first sight (then live state).
    slices: list[SliceServing] = Field(default_factory=list)

    @field_validator("slices")
    @classmethod
    def _one_entry_per_slice(cls, slices: list[SliceServing]) -> list[SliceServing]:
        seen: set[tuple[str, str]] = set()
        for entry in slices:
            key = (entry.dimension, entry.value)
            if key in seen:
                raise ValueError(f"slice {entry.dimension}={entry.value} is listed twice")
            seen.add(key)
        return slices


class JsonSchemaVerifier(Strict):
    """The teacher's answer is JSON valid against ``schema`` (see gateway.core.verify)."""

    kind: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        verify.check_schema(schema)
        return schema


class RegexVerifier(Strict):
    """The teacher's answer contains a match of ``pattern`` (anchor it for the whole answer)."""

    kind: Literal["regex"]
    pattern: str

    _regex = field_validator("pattern")(_check_regex)


class FunctionVerifier(Strict):
    """``function(answer, request)`` returns a bool or ``(bool, reason)``."""

    kind: Literal["function"]
    function: str = Field(pattern=r"^[\w.]+:[\w.]+$")


VerifierConfig = Annotated[
    JsonSchemaVerifier | RegexVerifier | FunctionVerifier, Field(discriminator="kind")
]


class ExportConfig(Strict):
    """The training-set export (``shadow-gateway export``): which teacher answers qualify."""

    verifier: VerifierConfig | None = None


class DistillLaunch(Strict):
    """How ``distill`` starts its output on vLLM (the options of ``student_server serve``)."""

    python: str | None = None  # vLLM's environment; default $SHADOW_GATEWAY_STUDENT_PYTHON
    device: Literal["cpu", "cuda"] = "cpu"
    max_model_len: int | None = Field(default=None, ge=1)
    dtype: Literal["auto", "bfloat16", "float16", "float32", "half", "float"] | None = None
    extra_args: list[str] = Field(default_factory=list)
    ready_timeout_s: float = Field(default=600.0, gt=0)


class DistillConfig(Strict):
    """``shadow-gateway distill``: the route's training command and how its output is served."""

    # One command line with {train}, {eval} and {output}; {output} is a folder it fills with a
    # model vLLM can load. None: give --train-command.
    train_command: str | None = Field(default=None, min_length=1)
    launch: DistillLaunch = DistillLaunch()
    holdout: float = Field(default=0.1, gt=0.0, le=0.5)
    since: str = "7d"  # the export's window: an age (24h, 7d) or an ISO date-time
    limit: int | None = Field(default=None, ge=1)
    mix: dict[str, dict[str, float]] | None = None  # {dimension: {value: share}}; needs limit

    @model_validator(mode="after")
    def _mix_needs_limit(self) -> DistillConfig:
        if self.mix is not None:
            if len(self.mix) != 1:
                raise ValueError("mix is over one dimension: {dimension: {value: share}}")
            (shares,) = self.mix.values()
            if abs(sum(shares.values()) - 1) > 0.005 or any(s <= 0 for s in shares.values()):
                raise ValueError("the mix's shares must be above 0 and add up to 1")
            if self.limit is None:
                raise ValueError("mix needs limit: how many examples in all")
        return self


class RedactionPattern(Strict):
    """A custom redactor: every match of ``pattern`` is stored as ``replacement`` (literal text)."""

    pattern: str
    replacement: str = Field(default="[REDACTED]", max_length=200)

    @field_validator("pattern")
    @classmethod
    def _usable(cls, pattern: str) -> str:
        _check_regex(pattern)
        if re.compile(pattern).fullmatch(""):
            raise ValueError("the pattern matches the empty string; it would redact everywhere")
        return pattern


class RedactionConfig(Strict):
    """What is redacted in stored text (the log, the journal, exports), never what is sent."""

    emails: bool = False
    phones: bool = False
    cards: bool = False  # 13-19 digits passing the Luhn check
    patterns: list[RedactionPattern] = Field(default_factory=list)


class NoveltyConfig(Strict):
    """Prompts farther than ``max_distance`` from every prompt of ``reference`` (a JSONL file
    like a drift reference or a fine-tuning file, relative to the config file) are out of
    scope. The distance is 1 - cosine similarity of hashed character 3-gram profiles
    (gateway.core.novelty): 0 for a prompt the file holds, near 1 for unrelated text."""

    reference: Path
    max_distance: float = Field(gt=0.0, le=1.0)


class ScopeConfig(Strict):
    """What the student was trained for. A request chosen for it but outside its scope is
    answered by the teacher (``out_of_scope``); it is still shadowed."""

    # dimension → the values the student may serve; a request without one of them (or
    # without the dimension's label at all) is out of scope
    allow: dict[str, list[str]] = Field(default_factory=dict)
    novelty: NoveltyConfig | None = None

    @field_validator("allow")
    @classmethod
    def _slice_names(cls, allow: dict[str, list[str]]) -> dict[str, list[str]]:
        for dimension, values in allow.items():
            if not re.match(SLICE_NAME, dimension):
                raise ValueError(f"scope.allow: {dimension!r} is not a slice dimension name")
            if not values:
                raise ValueError(f"scope.allow.{dimension}: list at least one value")
        return allow


class RouteConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    teacher: TeacherConfig
    # The route's students: a list (``students``, with the ``champion`` a rollout serves, by
    # default the first) or one (``student``, named "default"). Either way, once validated,
    # ``students`` holds them all and ``student`` is the champion's entry, so code that knows
    # one student per route keeps working. ``student`` is left out of dumps: a dump holds the
    # list form, which validates again as it is.
    student: StudentConfig | None = Field(default=None, exclude=True)
    students: list[StudentConfig] = Field(default_factory=list)
    champion: str | None = None
    mode: Mode = "shadow"
    shadow_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    rollout: RolloutConfig = RolloutConfig()
    agreement: AgreementConfig = AgreementConfig()
    slices: SlicesConfig = SlicesConfig()
    export: ExportConfig = ExportConfig()
    distill: DistillConfig = DistillConfig()
    redaction: RedactionConfig | None = None  # None: the top-level redaction section
    # When the teacher fails (unreachable, timed out, 5xx or 429): "error" passes the error on
    # (OpenAI's shape); "student" answers with the student instead (x-fallback-reason:
    # teacher_error), whatever its confidence. Off by default.
    on_teacher_error: Literal["error", "student"] = "error"
    scope: ScopeConfig = ScopeConfig()

    @model_validator(mode="before")
    @classmethod
    def _one_list_of_students(cls, data: Any) -> Any:
        """Read either form as ``students`` and ``champion``; fill ``student`` with the champion.

        The model is frozen, so the normalised values go into the input here rather than being
        patched in after validation. The entries are validated first, so that ``student`` and
        the champion's place in ``students`` are one object; if one is invalid the input is left
        as written and field validation reports it where the file has it (``student.model``,
        not ``students.0.model``). Names and the champion are checked after, on typed values.
        """
        if not isinstance(data, dict):
            return data
        single, listed = data.get("student"), data.get("students")
        if single is not None and listed is not None:
            raise ValueError("give either student or students")
        entries = [single] if single is not None else listed
        if not isinstance(entries, list):
            return data
        try:
            students = [StudentConfig.model_validate(entry) for entry in entries]
        except ValidationError:
            return data
        champion = data.get("champion")
        if champion is None and students:
            champion = students[0].name
        chosen = next((s for s in students if s.name == champion), None)
        return {**data, "student": chosen, "students": students, "champion": champion}

    @model_validator(mode="after")
    def _champion_among_students(self) -> RouteConfig:
        names = [student.name for student in self.students]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"duplicate student name {name!r}")
        if self.champion is not None and self.champion not in names:
            raise ValueError(
                f"champion {self.champion!r} is not among the route's students: "
                f"{', '.join(names) or '(none)'}"
            )
        return self

    @model_validator(mode="after")
    def _teacher_fallback_needs_a_student(self) -> RouteConfig:
        if self.on_teacher_error == "student" and self.student is None:
            raise ValueError("on_teacher_error: student needs a student for the route")
        return self

    @property
    def champion_student(self) -> StudentConfig | None:
        """The champion's config (the student a rollout serves); None without students."""
        return next((s for s in self.students if s.name == self.champion), None)

    def sample_share(self, student: StudentConfig) -> float:
        """The share of requests ``student`` is shadowed on: its own, else the route's."""
        return self.shadow_sample if student.shadow_sample is None else student.shadow_sample
