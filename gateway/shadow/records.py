"""Rows of the ``requests`` table, built in halves.

A request's row is written by two parties that finish at different times: the request path
writes the *teacher half* (what the app was sent) and the shadow pipeline writes the *student
half*. Each half carries the row's identity columns plus only its own columns, and the writer
merges halves (``COALESCE`` on conflict), so the row ends up complete whichever half lands
first, and replaying either half from the journal changes nothing.

Every half reaches storage through :meth:`LogWriter.submit`; :class:`RedactingWriter` redacts
the route's PII there (:func:`redact_record`), after the request path and the shadow pipeline
have used the real text (agreement is judged on what the models said) and before anything is
queued, journaled on disk or written to Postgres.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.clients.upstream import StudentReply
from gateway.config import GatewayConfig, LogWriterConfig, RedactionConfig
from gateway.core.completions import finish_reason, strip_logprobs, token_logprobs, usage
from gateway.core.outputs import Endpoint, Output, answer_output, as_dict, as_str
from gateway.core.redact import CustomPattern, Redactor
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics

Record = dict[str, Any]

# student_status values
STUDENT_OK = "ok"
STUDENT_NOT_SAMPLED = "not_sampled"
STUDENT_DROPPED = "dropped"
STUDENT_CIRCUIT_OPEN = "circuit_open"
STUDENT_NO_STUDENT = "no_student"
STUDENT_INVALID = "invalid_response"
STUDENT_SHUTDOWN = "shutdown"
STUDENT_SERVER_STATE = "server_state"  # the request needs state only the teacher holds

# A complete (non-stream) answer the client no longer waited for: it closed the connection
# before the answer was sent (a stream that loses its client says so mid-stream).
CLIENT_GONE: dict[str, Any] = {
    "error_type": "client_disconnected",
    "error_message": "the client closed the connection before the answer was sent",
}


@dataclass(frozen=True)
class RowIdentity:
    request_id: str
    route: str
    endpoint: Endpoint
    created_at: datetime
    mode: str
    slices: dict[str, str]
    sticky_bucket: float | None = None
    client_request_id: str | None = None

    def columns(self) -> Record:
        return {
            "request_id": self.request_id,
            "route": self.route,
            "endpoint": self.endpoint,
            "created_at": self.created_at,
            "mode": self.mode,
            "slices": self.slices,
            "sticky_bucket": self.sticky_bucket,
            "client_request_id": self.client_request_id,
        }


@dataclass(frozen=True)
class Reading:
    """An upstream's answer read once: its parsed body and what it said (None: not an answer
    of the request's endpoint)."""

    body: Any
    output: Output | None

    @classmethod
    def of(cls, endpoint: Endpoint, body: Any) -> Reading:
        return cls(body, answer_output(endpoint, body))


def read_answer(endpoint: Endpoint, raw: bytes) -> Reading:
    """A complete (non-stream) body; one that is not JSON is kept, cut short, as ``unparsed``."""
    parsed = _parse(raw)
    if parsed is None and raw:
        parsed = {"unparsed": raw[:4096].decode("utf-8", "replace")}
    return Reading.of(endpoint, parsed)


def _answer_columns(side: str, endpoint: Endpoint, reading: Reading) -> Record:
    """``{side}_output``, tool calls, refusal, finish reason and token counts of an answer."""
    output, body = reading.output, reading.body
    counts = usage(endpoint, body)
    return {
        f"{side}_output": output.text if output else None,
        f"{side}_tool_calls": output.tool_calls_column() if output else None,
        f"{side}_refusal": output.refusal if output else None,
        f"{side}_finish_reason": finish_reason(endpoint, body),
        f"{side}_prompt_tokens": counts.prompt_tokens,
        f"{side}_completion_tokens": counts.completion_tokens,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def teacher_half(
    identity: RowIdentity,
    *,
    payload: dict[str, Any] | None,
    teacher_model: str,
    stream: bool,
    status_code: int,
    teacher_status: int | None,
    answer: Reading | None,
    teacher_latency_s: float | None,
    overhead_s: float | None,
    completed_at: datetime,
    error_type: str | None = None,
    error_message: str | None = None,
    fallback_reason: str | None = None,
    stream_error: dict[str, Any] | None = None,
    served: bool = True,
) -> Record:
    """The columns known once the app has the teacher's answer (or its error).

    ``answer`` is the teacher's body read once (a stream's rebuilt into the non-stream shape);
    ``stream_error`` an error event that arrived in-band in a stream. ``served`` is False when
    the teacher failed and the student stood in: then what the app got (``served_by``,
    ``status_code``, its error) comes with the student's served half, and the failure stays in
    the teacher's columns.
    """
    record = identity.columns()
    record.update(
        completed_at=completed_at,
        fallback_reason=fallback_reason,
        stream=stream,
        request_payload=payload,
        teacher_model=teacher_model,
        teacher_status=teacher_status,
        teacher_latency_ms=_ms(teacher_latency_s),
        gateway_overhead_ms=_ms(overhead_s),
        teacher_error=error_message if error_type else None,
    )
    if served:
        record.update(
            served_by="teacher",
            status_code=status_code,
            error_type=error_type,
            error_message=error_message,
        )
    if answer is not None:
        record.update(teacher_columns(identity.endpoint, answer))
    if stream_error is not None and error_type is None:
        record.update(error_type="stream_error", teacher_error=orjson.dumps(stream_error).decode())
    return record


def student_half(
    identity: RowIdentity,
    *,
    student_model: str,
    student_url: str,
    reply: StudentReply,
    confidence: Callable[[list[dict[str, Any]] | None], float | None],
) -> tuple[Record, Output | None]:
    """The columns the student call produced (its confidence from its logprobs, by the route's
    method), and the student's answer when it gave one.

    Any answer of the endpoint's shape is a healthy one, tool calls and refusals included; a
    body that is not one (not JSON, no choices) is ``invalid_response``, a status, not an error.
    """
    record = identity.columns()
    record.update(
        student_model=student_model,
        student_url=student_url,
        student_status=reply.outcome,
        student_http_status=reply.status,
        student_latency_ms=_ms(reply.latency_s),
        student_error=reply.error,
    )
    if reply.outcome != STUDENT_OK:
        return record, None
    reading = Reading.of(identity.endpoint, _parse(reply.body))
    if reading.output is None:
        record.update(
            student_status=STUDENT_INVALID,
            student_error="the student's answer is not a completion: "
            + reply.body[:300].decode("utf-8", "replace"),
        )
        return record, None
    record.update(_answer_columns("student", identity.endpoint, reading))
    logprobs = token_logprobs(identity.endpoint, reading.body)
    record.update(
        student_response=strip_logprobs(identity.endpoint, reading.body),
        student_logprobs=logprobs,
        student_confidence=confidence(logprobs),
    )
    return record, reading.output


def student_skipped(identity: RowIdentity, status: str, error: str | None = None) -> Record:
    """A student half for a call that never happened or was cut short."""
    record = identity.columns()
    record.update(student_status=status, student_error=error)
    return record


def teacher_columns(endpoint: Endpoint, answer: Reading) -> Record:
    """The teacher_* columns of a complete answer (a stream's, rebuilt)."""
    return {
        **_answer_columns("teacher", endpoint, answer),
        "teacher_response": answer.body,
        "teacher_model_reported": as_str(as_dict(answer.body).get("model")),
        "teacher_fingerprint": as_str(as_dict(answer.body).get("system_fingerprint")),
    }


def student_served(
    identity: RowIdentity,
    student: str,
    *,
    payload: dict[str, Any] | None,
    stream: bool,
    completed_at: datetime,
    overhead_s: float,
    fallback_reason: str | None = None,
) -> Record:
    """The columns of a request ``student`` answered (rollout; ``fallback_reason``
    ``teacher_error`` when it stood in for a failed teacher)."""
    record = identity.columns()
    record.update(
        served_by="student",
        served_student=student,
        fallback_reason=fallback_reason,
        status_code=200,
        stream=stream,
        completed_at=completed_at,
        request_payload=payload,
        gateway_overhead_ms=_ms(overhead_s),
    )
    return record


def teacher_audit(
    identity: RowIdentity,
    *,
    teacher_model: str,
    status: int | None,
    answer: Reading | None,
    latency_s: float,
    error: str | None,
) -> Record:
    """The teacher's answer to a student-served request, fetched afterwards to measure it."""
    record = identity.columns()
    record.update(
        teacher_model=teacher_model,
        teacher_status=status,
        teacher_latency_ms=_ms(latency_s),
        teacher_error=error,
    )
    if answer is not None:
        record.update(teacher_columns(identity.endpoint, answer))
    return record


# Columns that can hold what a user or a model wrote; the rest are ids, numbers and our enums.
_TEXT_COLUMNS = (
    "error_message",
    "teacher_output",
    "teacher_refusal",
    "teacher_error",
    "student_output",
    "student_refusal",
    "student_error",
    "agreement_reason",
)
_JSON_COLUMNS = (
    "request_payload",
    "teacher_response",
    "teacher_tool_calls",
    "student_response",
    "student_tool_calls",
    "agreement_detail",
)


def redactor(config: RedactionConfig) -> Redactor:
    return Redactor(
        emails=config.emails,
        phones=config.phones,
        cards=config.cards,
        patterns=[CustomPattern(re.compile(p.pattern), p.replacement) for p in config.patterns],
    )


def route_redactors(config: GatewayConfig) -> dict[str, Redactor]:
    """Each route's active redactor (its own section, else the top-level one); none if off."""
    found = {}
    for route in config.routes:
        chosen = redactor(route.redaction or config.redaction)
        if chosen.active:
            found[route.name] = chosen
    return found


def redact_record(record: Record, redactor: Redactor) -> Record:
    """A copy of ``record`` with its text redacted.

    Token logprobs spell the answer out a token at a time, so a PII string split across tokens
    would survive redacting each token; when an answer's text was redacted, its token strings
    are dropped (the numbers stay: confidence only needs those).
    """
    out = dict(record)
    cache: dict[str, str] = {}  # the answer's text is in *_output and again in *_response
    for column in _TEXT_COLUMNS:
        value = out.get(column)
        if isinstance(value, str):
            out[column] = redactor.text(value, cache)
    for column in _JSON_COLUMNS:
        if out.get(column) is not None:
            out[column] = redactor.value(out[column], cache)
    if out.get("slices"):
        out["slices"] = redactor.value(out["slices"], cache)
    if out.get("student_logprobs") is not None:
        if _answer_redacted("student", record, out):
            out["student_logprobs"] = _tokenless(out["student_logprobs"])
        else:
            out["student_logprobs"] = redactor.value(out["student_logprobs"], cache)
    if _answer_redacted("teacher", record, out) and isinstance(out.get("teacher_response"), dict):
        endpoint = record.get("endpoint", "chat")  # every half carries it (RowIdentity)
        out["teacher_response"] = strip_logprobs(endpoint, out["teacher_response"])
    return out


def _answer_redacted(side: str, before: Record, after: Record) -> bool:
    """Did redaction change what ``side`` said (its text, tool calls or refusal)?"""
    return any(
        after.get(f"{side}_{part}") != before.get(f"{side}_{part}")
        for part in ("output", "tool_calls", "refusal")
    )


def _tokenless(logprobs: Any) -> Any:
    if not isinstance(logprobs, list):
        return None
    return [
        {
            "token": None,
            "logprob": item.get("logprob"),
            "top_logprobs": [
                {"token": None, "logprob": top.get("logprob")}
                for top in item.get("top_logprobs") or []
                if isinstance(top, dict)
            ],
        }
        for item in logprobs
        if isinstance(item, dict)
    ]


class RedactingWriter(LogWriter):
    """The log writer, redacting each record of a route that has redactors before queueing it.

    ``submit`` (``requests``) and ``submit_answer`` (``student_answers``) are the only doors to
    storage (queue, journal, Postgres, rejected rows), so nothing unredacted is ever written
    anywhere. An answer is redacted as a request's student columns are: the same columns by
    name, its token strings dropped when its text changed.
    """

    def __init__(
        self,
        dsn: str,
        journal_dir: Path,
        config: LogWriterConfig,
        metrics: Metrics,
        *,
        redactors: Mapping[str, Redactor],
        connect_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(dsn, journal_dir, config, metrics, connect_timeout_s=connect_timeout_s)
        self._redactors = dict(redactors)

    def submit(self, record: Record) -> None:
        redactor = self._redactors.get(record["route"]) if self._redactors else None
        super().submit(record if redactor is None else redact_record(record, redactor))

    def submit_answer(self, record: Record) -> None:
        redactor = self._redactors.get(record["route"]) if self._redactors else None
        super().submit_answer(record if redactor is None else redact_record(record, redactor))
