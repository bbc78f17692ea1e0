"""``export --format dpo``: preference pairs from reviewed answers, in the format TRL's
``DPOTrainer`` reads.

Each review task with a verdict (one request's teacher answer beside one student's) gives:

- ``teacher_correct``: chosen the teacher's answer, rejected the student's;
- ``student_correct``: chosen the student's, rejected the teacher's;
- ``both_wrong``: chosen the request's correction (:func:`judgements.teacher_correction`),
  rejected the teacher's; and a second pair rejecting the student's answer when it differs
  from the teacher's. Without a correction there is nothing to prefer: skipped;
- ``both_correct``: no pair (skipped, counted).

A line is TRL's conversational preference form, ``{"prompt": [messages], "chosen":
[{"role": "assistant", "content": …}], "rejected": [...]}``; a file of ``/v1/completions``
rows only uses the standard form, ``{"prompt": str, "chosen": str, "rejected": str}`` (one
column cannot hold both a string and a list, so a file mixing both endpoints is all
conversational, a completion's prompt as one user message, as ``--format openai`` does).

Every task the filters match ends in exactly one place: ``reviews.used`` (one or two pairs)
or ``skipped`` by the first reason that applies, in this order: ``both_correct``,
``no_prompt``, ``excluded_dataset`` (the prompt is in a dataset named by ``exclude_datasets``),
``superseded`` (a later verdict on the same request, on another student's
task, judged the teacher's answer the other way: the shared rule,
:func:`judgements.teacher_judged_wrong`, decides), ``tool_calls`` (an answer a pair needs
called tools; a ``both_wrong`` task whose student alone did keeps its teacher pair),
``no_teacher_answer``, ``no_student_answer`` (no text from that student in
``student_answers``, live preferred, else replayed), ``no_correction``, ``same_answer``
(chosen and rejected are the same text), ``verifier`` (the chosen answer fails the route's
verifier), ``duplicate_pair`` (the same prompt, chosen and rejected already written).

The file is registered as a dataset (kind ``train``) like any export: its items are the
requests the pairs came from, each once (``frequency`` 1: pairs are not deduplicated by
prompt, so there is no live frequency to keep).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, case, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway import __version__
from gateway.config import VerifierConfig
from gateway.core import verify
from gateway.core.examples import chat_tools, prompt_digest, prompt_messages, short_key
from gateway.db.tables import requests, reviews, student_answers
from gateway.services import judgements
from gateway.services.export.model import (
    ExportError,
    ExportRequest,
    Provenance,
    absolute_window,
)
from gateway.services.export.output import AtomicFile, check_output
from gateway.services.export.parts import Part, Spool, SpooledItem
from gateway.services.export.publish import excluded_keys, write_and_publish
from gateway.services.export.queries import matching, window_text

_STREAM_BATCH = 2_000
PREFERRING = ("teacher_correct", "student_correct", "both_wrong")  # verdicts that give pairs
SKIPS = (
    "both_correct",
    "no_prompt",
    "excluded_dataset",
    "superseded",
    "tool_calls",
    "no_teacher_answer",
    "no_student_answer",
    "no_correction",
    "same_answer",
    "verifier",
    "duplicate_pair",
)

_task = reviews.alias("task")  # the judgement rules read ``reviews`` in their own subqueries


def _student_answer() -> Any:
    """The task's student's answer to the request: the live one, else the replayed one."""
    answers = student_answers.c
    return (
        select(answers.student_output, answers.student_tool_calls, answers.student_refusal)
        .where(
            answers.request_id == _task.c.request_id,
            answers.created_at == _task.c.request_created_at,
            answers.student == _task.c.student,
        )
        .order_by(case((answers.source == "live", 0), else_=1))
        .limit(1)
        .lateral("student_answer")
    )


def _tasks(request: ExportRequest) -> Any:
    """The route's review tasks joined to their requests, with the filters applied."""
    of_request = and_(
        requests.c.request_id == _task.c.request_id,
        requests.c.created_at == _task.c.request_created_at,
    )
    return _task.join(requests, of_request), [_task.c.route == request.route, *matching(request)]


@dataclass
class PreferenceResult:
    request: ExportRequest
    verifier: dict[str, Any] | None = None
    form: str = "conversational"
    tasks: Counter[str] = field(default_factory=Counter)  # matched tasks by verdict ("open")
    used: int = 0
    pairs: Counter[str] = field(default_factory=Counter)  # by verdict
    rejecting: Counter[str] = field(default_factory=Counter)  # "teacher" or "student"
    skipped: Counter[str] = field(default_factory=Counter)
    first_pair: datetime | None = None
    last_pair: datetime | None = None
    first_row: datetime | None = None  # the earliest and latest matched tasks' requests
    last_row: datetime | None = None
    window_until: datetime | None = None  # the snapshot's time
    parts: list[Part] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def sha256(self) -> str:
        return self.parts[0].sha256 if self.parts else ""

    @property
    def judged(self) -> int:
        return sum(n for verdict, n in self.tasks.items() if verdict != "open")

    @property
    def examples(self) -> int:
        return sum(self.pairs.values())

    def manifest(self, part: Part | None = None) -> dict[str, Any]:
        part = part or self.parts[0]
        request, provenance = self.request, self.provenance
        manifest = {
            "file": request.output.name,
            "format": "trl-preference-jsonl",
            "form": self.form,
            "kind": "train",
            "dataset_id": part.dataset_id,
            "pairs": self.examples,
            "requests": part.examples,
            "sha256": part.sha256,
            "created_at": datetime.now(UTC).isoformat(),
            "created_by": provenance.created_by,
            "gateway_version": __version__,
            "config_sha256": provenance.config_sha256,
            "filters": request.filters(),
            "window": absolute_window(request, self.first_row, self.last_row, self.window_until),
            "verifier": self.verifier,
            "time_range": {
                "first_pair": self.first_pair.isoformat() if self.first_pair else None,
                "last_pair": self.last_pair.isoformat() if self.last_pair else None,
            },
            "reviews": {
                "judged": self.judged,
                "open": self.tasks["open"],
                "used": self.used,
                "by_verdict": {
                    verdict: self.tasks[verdict] for verdict in (*PREFERRING, "both_correct")
                },
            },
            "pairs_by_verdict": {verdict: self.pairs[verdict] for verdict in PREFERRING},
            "pairs_rejecting": {side: self.rejecting[side] for side in ("teacher", "student")},
            "skipped": {reason: self.skipped[reason] for reason in SKIPS},
            "teacher_versions": part.teacher_versions(),
        }
        if provenance.reproduces is not None:
            manifest["reproduces"] = provenance.reproduces
        return manifest


class PreferenceExporter:
    """Writes the preference pairs of a route's reviewed requests (the caller checks that the
    route exists)."""

    def __init__(
        self,
        engine: AsyncEngine,
        verifier: verify.Verifier | None = None,
        verifier_config: VerifierConfig | None = None,
        *,
        progress: Callable[[int], object] | None = None,
    ) -> None:
        self._engine = engine
        self._verifier = verifier
        self._verifier_config = verifier_config
        self._progress = progress  # told of each row read (the CLI's progress bar)
        self._seen: set[tuple[int, str, str]] = set()
        self._requests: set[str] = set()  # the requests already among the dataset's items
        self._excluded: set[int] = set()  # short keys of the prompts of exclude_datasets
        self._spool: Spool | None = None

    async def run(
        self, request: ExportRequest, provenance: Provenance | None = None
    ) -> PreferenceResult:
        check_output(request.output)
        self._seen, self._requests, self._excluded = set(), set(), set()
        spool = self._spool = Spool(request.output.parent, request.seed)

        async def produce(connection: AsyncConnection, out: AtomicFile) -> PreferenceResult:
            return await self._export(connection, request, out)

        return await write_and_publish(self._engine, request, provenance, spool, produce, {})

    async def _export(
        self, connection: AsyncConnection, request: ExportRequest, out: AtomicFile
    ) -> PreferenceResult:
        self._excluded = await excluded_keys(connection, request.exclude_datasets)
        result = PreferenceResult(request)
        if self._verifier_config is not None:
            result.verifier = self._verifier_config.model_dump(by_alias=True)
        joined, conditions = _tasks(request)
        survey = (
            select(
                _task.c.verdict,
                func.bool_and(requests.c.endpoint == "text"),
                func.count(),
                func.min(requests.c.created_at),
                func.max(requests.c.created_at),
            )
            .select_from(joined)
            .where(*conditions)
            .group_by(_task.c.verdict)
        )
        only_text = True
        for verdict, text_only, count, first, last in await connection.execute(survey):
            result.tasks[verdict or "open"] += count
            only_text = only_text and (text_only or verdict not in PREFERRING)
            result.first_row = min(result.first_row or first, first)
            result.last_row = max(result.last_row or last, last)
        _explain_nothing_to_pair(result)
        result.form = "standard" if only_text else "conversational"
        result.window_until = (
            await connection.execute(select(func.transaction_timestamp()))
        ).scalar_one()
        await self._write(connection, result, out)
        if result.examples == 0:
            skipped = ", ".join(f"{reason} {n}" for reason, n in result.skipped.items() if n)
            raise ExportError(
                f"no preference pairs: all {result.judged} judged review tasks were "
                f"skipped ({skipped})"
            )
        out.close()
        return result

    async def _write(
        self, connection: AsyncConnection, result: PreferenceResult, out: AtomicFile
    ) -> None:
        joined, conditions = _tasks(result.request)
        answer = _student_answer()
        query = (
            select(
                _task.c.verdict,
                requests.c.request_id,
                requests.c.created_at,
                requests.c.endpoint,
                requests.c.slices,
                requests.c.teacher_model_reported,
                requests.c.teacher_fingerprint,
                requests.c.request_payload,
                requests.c.teacher_output,
                requests.c.teacher_tool_calls,
                requests.c.teacher_refusal,
                judgements.teacher_judged_wrong().label("teacher_wrong"),
                judgements.teacher_correction().label("correction"),
                answer.c.student_output,
                answer.c.student_tool_calls,
                answer.c.student_refusal,
            )
            .select_from(joined.outerjoin(answer, true()))
            .where(*conditions, _task.c.verdict.is_not(None))
            .order_by(requests.c.created_at, requests.c.request_id, _task.c.student)
            .execution_options(yield_per=_STREAM_BATCH)
        )
        rows = await connection.stream(query)
        async for partition in rows.partitions():
            for row in partition:
                reason = self._consider(row, result, out)
                if reason is not None:
                    result.skipped[reason] += 1
            if self._progress is not None:
                self._progress(len(partition))

    def _consider(self, row: Any, result: PreferenceResult, out: AtomicFile) -> str | None:
        """Write the task's pairs; the reason it gave none (counted by the caller)."""
        verdict = row.verdict
        if verdict not in PREFERRING:
            return "both_correct"
        messages = prompt_messages(row.endpoint, row.request_payload)
        if messages is None:
            return "no_prompt"
        digest = prompt_digest(messages, chat_tools(row.endpoint, row.request_payload))
        key = short_key(digest)
        if key in self._excluded:
            return "excluded_dataset"
        if row.teacher_wrong != (verdict in judgements.TEACHER_WRONG):
            return "superseded"
        teacher = row.teacher_output or row.teacher_refusal
        student = row.student_output or row.student_refusal
        student_called = bool(row.student_tool_calls)
        if row.teacher_tool_calls or (student_called and verdict != "both_wrong"):
            return "tool_calls"
        if not teacher:
            return "no_teacher_answer"
        if not student and verdict != "both_wrong":
            return "no_student_answer"
        pairs: list[tuple[str, str, str]] = []  # chosen, rejected, whose answer is rejected
        if verdict == "teacher_correct":
            pairs.append((teacher, student, "student"))
        elif verdict == "student_correct":
            pairs.append((student, teacher, "teacher"))
        elif not row.correction:
            return "no_correction"
        else:
            pairs.append((row.correction, teacher, "teacher"))
            if student and not student_called and student.strip() != teacher.strip():
                pairs.append((row.correction, student, "student"))
        pairs = [pair for pair in pairs if pair[0].strip() != pair[1].strip()]
        if not pairs:
            return "same_answer"
        chosen = pairs[0][0]
        if self._verifier is not None and not self._verifier(chosen, row.request_payload).ok:
            return "verifier"
        fresh = [pair for pair in pairs if (key, pair[0], pair[1]) not in self._seen]
        if not fresh:
            return "duplicate_pair"
        for chosen, rejected, side in fresh:
            self._seen.add((key, chosen, rejected))
            out.write(orjson.dumps(_line(result.form, messages, chosen, rejected)) + b"\n")
            result.pairs[verdict] += 1
            result.rejecting[side] += 1
        result.used += 1
        if row.request_id not in self._requests:  # one item per request, however many pairs
            self._requests.add(row.request_id)
            assert self._spool is not None
            self._spool.add(
                SpooledItem(
                    request_id=row.request_id,
                    created_at=row.created_at,
                    prompt_key=digest.hex(),
                    stratum="",
                    labels=row.slices or {},
                    corrected=False,
                    model=row.teacher_model_reported,
                    fingerprint=row.teacher_fingerprint,
                )
            )
        result.first_pair = min(result.first_pair or row.created_at, row.created_at)
        result.last_pair = max(result.last_pair or row.created_at, row.created_at)
        return None


def _line(form: str, messages: list[Any], chosen: str, rejected: str) -> dict[str, Any]:
    if form == "standard":  # a completions prompt: prompt_messages made it one user message
        return {"prompt": messages[0]["content"], "chosen": chosen, "rejected": rejected}
    return {
        "prompt": messages,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def _explain_nothing_to_pair(result: PreferenceResult) -> None:
    """Stop before writing anything when no task can give a pair, saying why."""
    request = result.request
    where = f"for route {request.route!r} {window_text(request)}"
    how = (
        "preference pairs come from review tasks judged teacher_correct, student_correct or "
        "both_wrong (review sample draws them; the console's Review page judges them)"
    )
    if not result.tasks:
        raise ExportError(f"no reviewed disagreements: no review tasks {where}; {how}")
    if result.judged == 0:
        raise ExportError(
            f"no reviewed disagreements: none of the {result.tasks['open']} review tasks "
            f"{where} has a verdict yet; {how}"
        )
    if not any(result.tasks[verdict] for verdict in PREFERRING):
        raise ExportError(
            f"no reviewed disagreements: all {result.judged} judged review tasks {where} are "
            f"both_correct, which prefers neither answer; {how}"
        )
