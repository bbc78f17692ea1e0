"""The review queue's answers (``/admin/reviews…``), as :mod:`gateway.services.reviews` writes
them (the CLI prints the same with ``--json``).

The rules that keep these models faithful are :mod:`gateway.protocol.responses`'.
"""

from __future__ import annotations

from pydantic import Field

from gateway.protocol.report_views import StoredToolCall
from gateway.protocol.responses import JsonObject, Number, Timestamp, View


class StudentAnswer(View):
    """One student's answer to the task's request (live or replayed). The keys are in the
    order Postgres gives a ``jsonb`` object's (shortest first), as the service passes them."""

    agree: bool | None
    score: Number | None = Field(description="The agreement score")
    output: str | None
    source: str = Field(description="live or replay")
    status: str | None
    refusal: str | None
    student: str
    confidence: Number | None
    tool_calls: list[StoredToolCall] | None
    answer: str = Field(description="One readable line: text, calls, or the refusal")


class TeacherVersionSeen(View):
    model: str | None
    fingerprint: str | None


class ReviewTask(View):
    id: int
    route: str
    request_id: str
    request_created_at: Timestamp
    student: str
    slices: JsonObject
    disagreement: bool | None
    group_key: str = Field(description="Tasks with the same answer pair share it")
    group_open: int = Field(description="Open tasks of the group (this one included)")
    batch: str
    created_at: Timestamp
    verdict: str | None
    corrected_output: str | None
    reviewer: str | None
    judged_at: Timestamp | None
    prompt: str | None
    teacher_answer: str
    teacher_version: TeacherVersionSeen
    served_by: str | None
    served_student: str | None
    students: list[StudentAnswer]


class VerdictGiven(View):
    at: Timestamp
    reviewer: str
    verdict: str
    corrected_output: str | None
    via_review: int | None = Field(description="The task whose group verdict set this one")


class ReviewTaskDetail(ReviewTask):
    request_payload: JsonObject | None = Field(description="The request as stored (redacted)")
    history: list[VerdictGiven] = Field(description="Every verdict given, oldest first")


class TaskCounts(View):
    open: int
    judged: int


class ReviewTasks(View):
    tasks: list[ReviewTask]
    next_after_id: int | None = Field(description="Pass as after_id for the next page")
    counts: TaskCounts


class ReviewStudent(View):
    name: str
    status: str | None = Field(description="None: no longer in the registry")
    open: int
    judged: int


class ReviewRoute(View):
    name: str
    open: int
    judged: int
    students: list[ReviewStudent]


class ReviewRoutes(View):
    routes: list[ReviewRoute]


class ReviewsDrawn(View):
    route: str
    since: Timestamp
    until: Timestamp
    student: str
    batch: str
    per_slice: int
    dimension: str | None
    disagreements_only: bool
    created: int
    slices: dict[str, int] = Field(description="Tasks drawn per slice")


class ReviewJudged(View):
    id: int
    verdict: str
    judged: int = Field(description="Tasks given the verdict (its group's too)")
    ids: list[int]
