"""The report API's answers (``/admin/reports/*``), as :mod:`gateway.services.reports` writes
them (and the CLI prints with ``--json``); the shared pieces come from
:mod:`gateway.protocol.reports` (``slice_json``, ``point_json``, ``psi_json`` …).

The rules that keep these models faithful are :mod:`gateway.protocol.responses`'.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gateway.core.paired import Verdict as PairedVerdict
from gateway.core.routing import SliceVerdict
from gateway.protocol.responses import Day, JsonObject, Number, Timestamp, View


class WindowView(View):
    since: Timestamp = Field(description="Start of the window, included")
    until: Timestamp = Field(description="End of the window, excluded")


class Agreement(View):
    """Agreed out of compared, with its 95% Wilson interval (``None`` without comparisons)."""

    agreement: Number | None
    ci_low: Number | None
    ci_high: Number | None


# -- slices ----------------------------------------------------------------------------------


class SliceAgreement(View):
    """One slice (or ``all``/``all``, the aggregate) of the slice report."""

    dimension: str
    value: str
    requests: int
    samples: int = Field(description="Requests whose answers were compared")
    agreed: int
    agreement: Number | None
    ci_low: Number | None
    ci_high: Number | None
    critical: bool = Field(description="Whether the slice has a bar in the route's config")
    bar: Number | None = Field(description="The critical slice's min_agreement")
    min_samples: int | None
    verdict: SliceVerdict | None = Field(description="The critical slice against its bar")
    fallbacks: int
    fallback_rate: Number | None
    student_served: int
    student_share: Number | None
    out_of_scope: int = Field(description="Chosen for the student, kept by the scope gate")
    slice_teacher_only: int = Field(description="Chosen for the student, kept by a slice")
    samples_needed: int = Field(
        description="Comparisons needed before the slice's agreement counts in the order: its "
        "min_samples, else the route's rollout.gate_min_samples"
    )
    enough_samples: bool = Field(description="False: ranked last, whatever its agreement")


class TeacherVersionLine(View):
    version: str | None = Field(description="What teacher_version takes to pick it")
    model_reported: str | None
    fingerprint: str | None
    requests: int
    samples: int
    agreed: int
    agreement: Number | None
    ci_low: Number | None
    ci_high: Number | None
    first_seen: Timestamp
    last_seen: Timestamp


class SliceReportView(View):
    """Per slice, worst first; the aggregate last and apart; per teacher version."""

    route: str
    since: Timestamp
    until: Timestamp
    dimension: str | None
    teacher_version: str | None
    slices: list[SliceAgreement]
    aggregate: SliceAgreement
    teacher_versions: list[TeacherVersionLine]


# -- candidates ------------------------------------------------------------------------------


class PairedView(View):
    """The candidate minus the baseline on the requests both answered (Newcombe, McNemar)."""

    pairs: int
    both: int
    candidate_only: int
    baseline_only: int
    neither: int
    difference: Number | None
    ci_low: Number | None
    ci_high: Number | None
    p_value: Number | None


class CandidateEntry(View):
    student: str
    baseline: bool
    answers: int
    compared: int
    agreed: int
    agreement: Number | None
    ci_low: Number | None
    ci_high: Number | None
    paired: PairedView | None = Field(description="None for the baseline itself")
    verdict: Literal["baseline"] | PairedVerdict
    latency_p50_ms: Number | None
    latency_p95_ms: Number | None
    mean_confidence: Number | None


class CandidateSlice(View):
    dimension: str
    value: str
    candidates: list[CandidateEntry]


class CandidateSource(View):
    source: Literal["live", "replay"]
    overall: CandidateSlice
    slices: list[CandidateSlice]


class StudentStatus(View):
    name: str
    status: str = Field(description="champion, candidate, retired, or unregistered")


class CandidatesReportView(View):
    route: str
    since: Timestamp
    until: Timestamp
    baseline: str
    min_pairs: int
    teacher_version: str | None
    students: list[StudentStatus]
    sources: list[CandidateSource]


# -- quality ---------------------------------------------------------------------------------


class Rate(View):
    rate: Number | None
    ci_low: Number | None
    ci_high: Number | None


class SubjectQuality(View):
    """The teacher's or one student's judged answers; the last two keys are students' only."""

    judged: int
    wrong: int
    from_reviews: int
    from_feedback: int
    error: Rate
    reviewed_disagreements: int | None = Field(default=None, description="Students only")
    student_right_in_disagreements: Rate | None = Field(default=None, description="Students only")


class QualitySlice(View):
    dimension: str
    value: str
    subjects: dict[str, SubjectQuality] = Field(description="teacher first, then each student")


class QualityReportView(View):
    route: str
    since: Timestamp
    until: Timestamp
    dimension: str | None
    rules: str
    overall: dict[str, SubjectQuality]
    slices: list[QualitySlice]


# -- disagreements ---------------------------------------------------------------------------


class DisagreementFilters(View):
    slices: dict[str, str]
    served_by: str | None
    min_score: Number | None
    max_score: Number | None
    min_confidence: Number | None
    max_confidence: Number | None
    teacher_version: str | None


class StoredToolCall(View):
    id: str | None
    name: str
    arguments: str = Field(description="The raw JSON text the model wrote")


class Disagreement(View):
    request_id: str
    created_at: Timestamp
    served_by: str | None
    slices: JsonObject
    prompt: str | None
    teacher_output: str | None
    student_output: str | None
    teacher_tool_calls: list[StoredToolCall] | None
    student_tool_calls: list[StoredToolCall] | None
    teacher_refusal: str | None
    student_refusal: str | None
    teacher_answer: str = Field(description="One readable line: text, calls, or the refusal")
    student_answer: str
    student_confidence: Number | None
    agreement_score: Number | None
    agreement_reason: str | None


class DisagreementsView(View):
    route: str
    since: Timestamp
    until: Timestamp
    filters: DisagreementFilters
    disagreements: list[Disagreement]
    next_cursor: str | None = Field(description="Pass as cursor for the next page")


# -- thresholds ------------------------------------------------------------------------------


class CurvePoint(View):
    """At a threshold: the comparisons the student would serve, and their agreement."""

    threshold: Number
    served: int
    total: int
    share: Number | None
    agreed: int
    agreement: Number | None
    ci_low: Number | None
    ci_high: Number | None


class JudgedPoint(CurvePoint):
    meets_bar: bool | None


class Curve(View):
    dimension: str
    value: str
    bar: Number | None
    min_samples: int | None
    total: int
    points: list[JudgedPoint]


class BarView(View):
    dimension: str
    value: str
    min_agreement: Number
    min_samples: int
    source: Literal["critical_slice", "route_gate"]


class ServedAt(View):
    """A slice's point at the recommended threshold."""

    dimension: str
    value: str
    threshold: Number
    served: int
    total: int
    share: Number | None
    agreed: int
    agreement: Number | None
    ci_low: Number | None
    ci_high: Number | None


class Recommendation(View):
    threshold: Number | None = Field(description="None: no candidate keeps every bar")
    reason: str
    served: list[ServedAt]


class ThresholdsReportView(View):
    route: str
    since: Timestamp
    until: Timestamp
    comparisons: int
    current_threshold: Number
    conservative: bool
    teacher_version: str | None
    bars: list[BarView]
    curves: list[Curve]
    recommendation: Recommendation


# -- drift -----------------------------------------------------------------------------------


class PsiBin(View):
    value: str
    reference: int
    current: int
    reference_share: Number
    current_share: Number
    contribution: Number


class PsiView(View):
    dimension: str
    psi: Number
    flagged: bool
    bins: list[PsiBin]


class LengthPsi(PsiView):
    edges: list[int] = Field(description="The prompt-length bins' edges, in characters")


class ContentSide(View):
    prompts: int
    beyond: int = Field(description="Prompts farther than max_distance from the reference")
    share: Number
    median_distance: Number


class ContentPsi(PsiView):
    max_distance: Number
    max_distance_from: str
    reference_prompts: int
    held_out: ContentSide
    current: ContentSide


class CurrentWindow(WindowView):
    requests: int


class WindowReference(View):
    kind: Literal["window"]
    since: Timestamp
    until: Timestamp
    requests: int


class RegisteredReference(View):
    kind: Literal["registered"]
    dataset_id: int
    dataset_kind: str
    created_at: Timestamp
    items: int
    requests: int = Field(description="Items whose request is still logged")
    champion: str | None


class UploadedReference(View):
    kind: Literal["dataset"]
    source: str
    prompts: int


Reference = Annotated[
    WindowReference | RegisteredReference | UploadedReference, Field(discriminator="kind")
]


class SkippedDimension(View):
    dimension: str
    why: str


class TrendDay(View):
    day: Day
    requests: int
    samples: int
    agreement: Number | None
    ci_low: Number | None
    ci_high: Number | None


class DriftReportView(View):
    route: str
    current: CurrentWindow
    reference: Reference
    psi_threshold: Number
    flagged: list[str]
    dimensions: list[PsiView]
    skipped_dimensions: list[SkippedDimension]
    prompt_length: LengthPsi | None
    content: ContentPsi | None
    agreement_trend: list[TrendDay]
    reference_agreement: Agreement | None
