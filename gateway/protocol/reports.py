"""What the report API and CLI accept: time windows, slice filters, cursors, reference datasets.

Every parser raises :class:`~gateway.errors.InvalidRequest` naming the parameter, so the API
answers 400 in OpenAI's error shape and the CLI exits 2 with the same sentence.

Times are ISO 8601 (``2024-05-01``, ``2024-05-01T12:00``, ``2024-05-01T12:00:00+02:00``; no
offset means UTC), ``now``, or an age: ``90m``, ``24h``, ``7d``, ``2w`` ago. A window is
``[since, until)``.

A reference dataset is JSONL, one prompt per line (docs/reports.md): a chat body
``{"messages": [...]}`` (an OpenAI fine-tuning line works as is; its last user message is the
prompt) or ``{"prompt": "..."}``, optionally with ``"slices": {"tier": "enterprise"}``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from gateway.core import statistics as stats
from gateway.core.routing import judge_slice
from gateway.core.slices import RouteSliceRules, last_user_text, slice_labels
from gateway.errors import InvalidRequest

if TYPE_CHECKING:  # only a type here; gateway.core.content imports numpy (CLI start-up)
    from gateway.core.content import ContentShift

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SLICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
QUALITY_SPAN = timedelta(days=30)  # reviews and feedback are sparse: a month by default
LENGTH_DIMENSION = "_prompt_length"  # no slice dimension can take it (no leading _)
CONTENT_DIMENSION = "_prompt_content"  # drift against a registered dataset: novelty distance
CHAMPION_DATASET = "champion"  # reference_dataset=champion: the champion's training set
DEFAULT_PSI_THRESHOLD = 0.2  # drift: a dimension at or above this PSI is flagged
DEFAULT_MIN_ROWS = 50  # drift: fewest rows on each side


def parse_duration(text: str, param: str) -> timedelta:
    """A length of time: a number and a unit (``s``, ``m``, ``h``, ``d``, ``w``), like
    ``30m`` or ``7d``: what an age (``--since 7d``) and a hold (``--hold 30m``) take."""
    found = _AGE.match(text.strip().lower())
    try:
        if found:
            return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])
    except OverflowError:
        pass
    raise InvalidRequest(
        f"'{text[:100]}' is not a duration for {param}: use a number and a unit "
        "(s, m, h, d or w), like 90m, 24h, 7d or 2w.",
        param=param,
        code="invalid_value",
    )


def parse_time(text: str, param: str, now: datetime | None = None) -> datetime:
    """An absolute time from ISO 8601, ``now``, or an age like ``24h`` (before ``now``)."""
    now = now or datetime.now(UTC)
    cleaned = text.strip()
    age = _AGE.match(cleaned.lower())
    try:
        if cleaned.lower() == "now":
            return now
        if age:
            return now - parse_duration(cleaned, param)
        parsed = datetime.fromisoformat(cleaned)
    except (ValueError, OverflowError, InvalidRequest):
        pass
    else:
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise InvalidRequest(
        f"'{text[:100]}' is not a time for {param}: use ISO 8601 like 2024-05-01 or "
        "2024-05-01T12:00:00Z, or an age like 90m, 24h or 7d.",
        param=param,
        code="invalid_value",
    )


@dataclass(frozen=True)
class Window:
    """``[since, until)``."""

    since: datetime
    until: datetime

    def describe(self) -> str:
        return f"{iso_time(self.since)} to {iso_time(self.until)}"

    def as_json(self) -> dict[str, str]:
        return {"since": iso_time(self.since), "until": iso_time(self.until)}


def iso_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def window(
    since: str | None,
    until: str | None,
    default_span: timedelta,
    *,
    params: tuple[str, str] = ("since", "until"),
    default_until: datetime | None = None,
    now: datetime | None = None,
) -> Window:
    """A window from optional texts: ``until`` defaults to ``default_until`` (else now),
    ``since`` to ``until - default_span``. Ages (``24h``) count back from now."""
    now = now or datetime.now(UTC)
    end = parse_time(until, params[1], now) if until is not None else (default_until or now)
    if since is not None:
        start = parse_time(since, params[0], now)
    else:
        try:
            start = end - default_span
        except OverflowError:
            start = datetime.min.replace(tzinfo=UTC)
    if start >= end:
        raise InvalidRequest(
            f"{params[0]} ({iso_time(start)}) must be before {params[1]} ({iso_time(end)}).",
            param=params[0],
            code="invalid_value",
        )
    return Window(start, end)


def parse_slice(text: str, param: str = "slice") -> tuple[str, str]:
    """``tier=enterprise`` → ("tier", "enterprise")."""
    dimension, sep, value = text.partition("=")
    dimension = dimension.strip()
    if not sep or not value.strip() or not _SLICE_NAME.match(dimension):
        raise InvalidRequest(
            f"'{text[:100]}' is not a slice: use dimension=value, like tier=enterprise "
            "(dimension names are lower-case letters, digits, _ . -).",
            param=param,
            code="invalid_value",
        )
    return dimension, value.strip()


def check_dimension(text: str, param: str = "dimension") -> str:
    if not _SLICE_NAME.match(text):
        raise InvalidRequest(
            f"'{text[:100]}' is not a slice dimension name (lower-case letters, digits, _ . -).",
            param=param,
            code="invalid_value",
        )
    return text


MAX_TEACHER_VERSION = 200


def check_teacher_version(text: str, param: str = "teacher_version") -> str:
    """A teacher version to filter on: a ``system_fingerprint`` or a model name the teacher
    reported (a row matches when its ``teacher_fingerprint`` or its ``teacher_model_reported``
    is exactly this)."""
    version = text.strip()
    if not version or len(version) > MAX_TEACHER_VERSION:
        raise InvalidRequest(
            f"{param} must be a system fingerprint or a model name the teacher reported "
            f"(1 to {MAX_TEACHER_VERSION} characters); the route's teacher versions lists them.",
            param=param,
            code="invalid_value",
        )
    return version


def parse_reference_dataset(text: str, param: str = "reference_dataset") -> int | str:
    """A registered dataset's id, or ``champion`` (the route champion's training set)."""
    cleaned = text.strip().lower()
    if cleaned == CHAMPION_DATASET:
        return CHAMPION_DATASET
    if cleaned.isascii() and cleaned.isdigit() and 0 < int(cleaned) < 2**63:
        return int(cleaned)
    raise InvalidRequest(
        f"'{text[:100]}' is not a dataset for {param}: give a dataset id (datasets list shows "
        f"them) or '{CHAMPION_DATASET}' for the training set of the route's champion.",
        param=param,
        code="invalid_value",
    )


def version_name(model: str | None, fingerprint: str | None) -> str | None:
    """What ``teacher_version`` takes to pick one version: its fingerprint, else its model
    (a model name picks every fingerprint of that model)."""
    return fingerprint if fingerprint is not None else model


def check_range(
    low: float | None, high: float | None, params: tuple[str, str]
) -> tuple[float | None, float | None]:
    for value, param in ((low, params[0]), (high, params[1])):
        if value is not None and not 0.0 <= value <= 1.0:
            raise InvalidRequest(
                f"{param} must be from 0 to 1, not {value:g}.", param=param, code="invalid_value"
            )
    if low is not None and high is not None and low > high:
        raise InvalidRequest(
            f"{params[0]} ({low:g}) must not be above {params[1]} ({high:g}).",
            param=params[0],
            code="invalid_value",
        )
    return low, high


def parse_thresholds(text: str, param: str = "thresholds") -> tuple[float, ...]:
    """``0.5,0.7,0.9`` → sorted distinct thresholds in [0, 1]."""
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = []
    if not values or any(not 0.0 <= value <= 1.0 for value in values):
        raise InvalidRequest(
            f"'{text[:100]}' is not a list of thresholds: use numbers from 0 to 1 separated "
            "by commas, like 0.5,0.7,0.9.",
            param=param,
            code="invalid_value",
        )
    return tuple(values)


# -- cursors --------------------------------------------------------------------------------


def encode_cursor(created_at: datetime, request_id: str) -> str:
    raw = orjson.dumps([created_at.astimezone(UTC).isoformat(), request_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, param: str = "cursor") -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, request_id = orjson.loads(raw)
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None or not isinstance(request_id, str):
            raise ValueError("incomplete cursor")
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidRequest(
            "The cursor is not one this API returned; pass next_cursor from the previous "
            "page as is, or leave it out for the first page.",
            param=param,
            code="invalid_value",
        ) from None
    return moment, request_id


# -- reference datasets ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReferencePrompt:
    text: str
    labels: dict[str, str]


def reference_line(raw: bytes | str, line_number: int, source: str) -> ReferencePrompt | None:
    """One line of a reference dataset; None for a blank line."""
    if not raw.strip():
        return None

    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(
            f"{source} line {line_number}: {why} (each line is a JSON object with "
            '"messages" or "prompt", and optionally "slices"; see docs/reports.md).',
            param="reference",
            code="invalid_value",
        )

    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise bad("not a JSON object")
    if not isinstance(body.get("messages"), list) and not isinstance(
        body.get("prompt"), str | list
    ):
        raise bad('no "messages" list or "prompt"')
    labels = body.get("slices", {})
    if not isinstance(labels, dict):
        raise bad('"slices" is not an object')
    return ReferencePrompt(last_user_text(body), slice_labels(labels, ()))


class ReferenceDataset:
    """A reference population from JSONL prompts, counted line by line as it streams in.

    Labels are the line's own ``slices`` plus the route's rules (regex rules, length buckets,
    defaults), so rule-made dimensions compare like for like with live traffic. Only counts
    are kept (labels, and prompts per length), not the text.
    """

    def __init__(self, rules: RouteSliceRules, source: str) -> None:
        self.source = source
        self.rows = 0
        self._rules = rules
        self._lines = 0
        self._labels: dict[str, dict[str, int]] = {}
        self.lengths: dict[int, int] = {}  # prompt length → how many

    def add_lines(self, lines: Iterable[bytes | str]) -> None:
        for raw in lines:
            self._lines += 1
            prompt = reference_line(raw, self._lines, self.source)
            if prompt is None:
                continue
            self.rows += 1
            self.lengths[len(prompt.text)] = self.lengths.get(len(prompt.text), 0) + 1
            for dimension, value in self._rules.apply(dict(prompt.labels), prompt.text).items():
                values = self._labels.setdefault(dimension, {})
                values[value] = values.get(value, 0) + 1

    def labels(self, dimension: str | None = None) -> dict[str, dict[str, int]]:
        return {
            name: dict(values)
            for name, values in self._labels.items()
            if dimension is None or name == dimension
        }


# -- report shapes (the JSON the API answers and the CLI prints with --json) ---------------


def proportion_json(successes: int, trials: int) -> dict[str, Any]:
    share = stats.Proportion(successes, trials)
    low, high = share.interval
    return {
        "agreement": share.share,
        "ci_low": low if trials else None,
        "ci_high": high if trials else None,
    }


def slice_json(
    dimension: str,
    value: str,
    counts: tuple[int, ...],
    bar: stats.Bar | None,
) -> dict[str, Any]:
    """``counts``: requests, comparisons, agreed, fallbacks, served by the student, and the
    requests chosen for the student that its scope gate and a teacher-only slice kept."""
    rows, samples, agreed, fallbacks, student_served, out_of_scope, slice_kept = counts
    return {
        "dimension": dimension,
        "value": value,
        "requests": rows,
        "samples": samples,
        "agreed": agreed,
        **proportion_json(agreed, samples),
        "critical": bar is not None,
        "bar": bar.min_agreement if bar else None,
        "min_samples": bar.min_samples if bar else None,
        "verdict": (
            judge_slice(samples, agreed, bar.min_agreement, bar.min_samples) if bar else None
        ),
        "fallbacks": fallbacks,
        "fallback_rate": fallbacks / rows if rows else None,
        "student_served": student_served,
        "student_share": student_served / rows if rows else None,
        "out_of_scope": out_of_scope,
        "slice_teacher_only": slice_kept,
    }


def teacher_version_json(
    model: str | None,
    fingerprint: str | None,
    counts: tuple[int, int, int],
    seen: tuple[datetime, datetime],
) -> dict[str, Any]:
    """One teacher version's line in the slice report: ``counts`` are requests, comparisons
    and agreed; ``seen`` the first and last request in the window."""
    rows, samples, agreed = counts
    return {
        "version": version_name(model, fingerprint),
        "model_reported": model,
        "fingerprint": fingerprint,
        "requests": rows,
        "samples": samples,
        "agreed": agreed,
        **proportion_json(agreed, samples),
        "first_seen": iso_time(seen[0]),
        "last_seen": iso_time(seen[1]),
    }


def point_json(point: stats.CurvePoint) -> dict[str, Any]:
    return {
        "threshold": point.threshold,
        "served": point.served,
        "total": point.total,
        "share": point.share,
        "agreed": point.agreed,
        **proportion_json(point.agreed, point.served),
    }


def curve_json(
    key: tuple[str, str],
    points: Sequence[stats.CurvePoint],
    bar: stats.Bar | None,
    conservative: bool,
) -> dict[str, Any]:
    return {
        "dimension": key[0],
        "value": key[1],
        "bar": bar.min_agreement if bar else None,
        "min_samples": bar.min_samples if bar else None,
        "total": points[0].total if points else 0,
        "points": [
            {**point_json(p), "meets_bar": stats.meets(p, bar, conservative) if bar else None}
            for p in points
        ],
    }


def content_json(shift: ContentShift, threshold: float, source: str) -> dict[str, Any]:
    """The prompt-content figure: PSI of the within/beyond split, held-out reference against
    the current window; flagged only for a move away from the reference."""
    found = psi_json(CONTENT_DIMENSION, shift.psi, threshold)
    found["flagged"] = found["flagged"] and shift.away
    return {
        **found,
        "max_distance": shift.max_distance,
        "max_distance_from": source,
        "reference_prompts": shift.reference_prompts,
        "held_out": shift.held_out.as_json(),
        "current": shift.current.as_json(),
    }


def psi_json(dimension: str, result: stats.PsiResult, threshold: float) -> dict[str, Any]:
    bins = list(result.bins)
    if dimension != LENGTH_DIMENSION:  # values: biggest movers first; lengths: in order
        bins.sort(key=lambda b: -b.contribution)
    return {
        "dimension": dimension,
        "psi": result.value,
        "flagged": result.value >= threshold,
        "bins": [
            {
                "value": b.label,
                "reference": b.reference,
                "current": b.current,
                "reference_share": b.reference_share,
                "current_share": b.current_share,
                "contribution": b.contribution,
            }
            for b in bins
        ],
    }
