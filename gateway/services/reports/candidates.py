"""The candidates report: each student against a baseline, per slice, on the same requests.

Per source (``live`` answers shadowed as requests came, ``replay`` answers sent later by
``shadow-gateway replay``; never mixed), per slice and for the route as a whole, per student:
its agreement with the teacher (95 % Wilson interval), and the **paired** difference to the
baseline (the champion unless named) on the requests both answered and both were compared on,
with Newcombe's interval, McNemar's p-value and a verdict (:mod:`gateway.core.paired`); its
latency p50/p95 on successful calls and its mean confidence.

A replayed answer is paired with the baseline's answer to the same request from the same
source if there is one, else with its live answer: a candidate replayed over last week's
traffic is compared with what the champion answered then.

Two ``GROUP BY`` scans of ``student_answers`` (one per student's own figures, one over the
pairs); slices come from each answer's copy of the request's labels.
"""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import statistics as stats
from gateway.core.paired import MIN_PAIRS, PairedCounts, paired_difference, paired_json
from gateway.errors import InvalidRequest, NoData, StudentNotFound
from gateway.protocol.reports import Window
from gateway.services.reports.common import (
    ANSWER_TEACHER_VERSION,
    IN_WINDOW,
    LABELS,
    TEACHER_VERSION,
    ReportsBase,
    of_version,
    window_params,
    window_params_of,
)
from gateway.services.reports.rollup import (
    IN_HOURS,
    LATENCY_BIN,
    Coverage,
    latency_percentile,
)

SOURCES = ("live", "replay")
_JUDGED = ("better", "worse", "inconclusive")

_FIGURES = text(
    "SELECT r.source, r.student, s.dim, s.val, "
    "count(*) FILTER (WHERE r.student_status = 'ok') AS answers, "
    "count(r.agree) AS compared, count(*) FILTER (WHERE r.agree) AS agreed, "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY r.student_latency_ms) "
    "FILTER (WHERE r.student_status = 'ok') AS p50, "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY r.student_latency_ms) "
    "FILTER (WHERE r.student_status = 'ok') AS p95, "
    "avg(r.student_confidence) AS confidence "
    f"FROM student_answers AS r {LABELS} WHERE {IN_WINDOW} AND {ANSWER_TEACHER_VERSION} "
    "GROUP BY 1, 2, 3, 4"
)
# Each compared answer of a student other than the baseline, with the baseline's verdict on
# the same request: from the same source if it has one, else its live answer.
_PAIRS = text(
    "SELECT r.source, r.student, s.dim, s.val, "
    "count(*) FILTER (WHERE r.agree AND b.agree) AS both_agreed, "
    "count(*) FILTER (WHERE r.agree AND NOT b.agree) AS candidate_only, "
    "count(*) FILTER (WHERE NOT r.agree AND b.agree) AS baseline_only, "
    "count(*) FILTER (WHERE NOT r.agree AND NOT b.agree) AS neither "
    "FROM student_answers AS r "
    "CROSS JOIN LATERAL (SELECT b.agree FROM student_answers AS b "
    "WHERE b.request_id = r.request_id AND b.created_at = r.created_at "
    "AND b.student = :baseline AND b.agree IS NOT NULL AND b.source IN (r.source, 'live') "
    "ORDER BY b.source = r.source DESC LIMIT 1) AS b "
    f"{LABELS} WHERE {IN_WINDOW} AND r.student <> :baseline AND r.agree IS NOT NULL "
    f"AND {ANSWER_TEACHER_VERSION} GROUP BY 1, 2, 3, 4"
)
# Decomposable figures, so rollup hours and raw parts add up: confidence as a sum and a count,
# latency as bins (:data:`~.rollup.LATENCY_BIN`).
_RAW_FIGURES = text(
    "SELECT r.source, r.student, s.dim, s.val, "
    "count(*) FILTER (WHERE r.student_status = 'ok') AS answers, "
    "count(r.agree) AS compared, count(*) FILTER (WHERE r.agree) AS agreed, "
    "coalesce(sum(r.student_confidence), 0) AS confidence_sum, "
    "count(r.student_confidence) AS confidences "
    f"FROM student_answers AS r {LABELS} WHERE {IN_WINDOW} AND {ANSWER_TEACHER_VERSION} "
    "GROUP BY 1, 2, 3, 4"
)
_RAW_LATENCY = text(
    f"SELECT r.source, r.student, s.dim, s.val, {LATENCY_BIN} AS bin, count(*) AS n "
    f"FROM student_answers AS r {LABELS} WHERE {IN_WINDOW} AND r.student_status = 'ok' "
    f"AND r.student_latency_ms IS NOT NULL AND {ANSWER_TEACHER_VERSION} GROUP BY 1, 2, 3, 4, 5"
)
_ROLLUP_FIGURES = text(
    "SELECT r.source, r.student, r.dimension AS dim, r.value AS val, "
    "sum(r.answers)::bigint AS answers, sum(r.compared)::bigint AS compared, "
    "sum(r.agreed)::bigint AS agreed, sum(r.confidence_sum) AS confidence_sum, "
    "sum(r.confidences)::bigint AS confidences FROM rollup_answers AS r "
    f"WHERE {IN_HOURS} AND {TEACHER_VERSION} GROUP BY 1, 2, 3, 4"
)
# A row per hour, teacher version and slice, its bins and counts as arrays: Python adds them
# up (in SQL they would be unnested back into one row per bin, what cost the time).
_ROLLUP_LATENCY = text(
    "SELECT r.source, r.student, r.dimension AS dim, r.value AS val, r.bins, r.answers "
    f"FROM rollup_answer_latency AS r WHERE {IN_HOURS} AND {TEACHER_VERSION}"
)
_ROLLUP_PAIRS = text(
    "SELECT r.source, r.student, r.dimension AS dim, r.value AS val, "
    "sum(r.both_agreed)::bigint AS both_agreed, sum(r.candidate_only)::bigint AS candidate_only, "
    "sum(r.baseline_only)::bigint AS baseline_only, sum(r.neither)::bigint AS neither "
    f"FROM rollup_answer_pairs AS r WHERE {IN_HOURS} AND r.baseline = :baseline "
    f"AND {TEACHER_VERSION} GROUP BY 1, 2, 3, 4"
)
_REGISTERED = text("SELECT name, status FROM route_students WHERE route = :route ORDER BY name")


class CandidateReport(ReportsBase):
    async def candidates(
        self,
        name: str,
        window: Window,
        baseline: str | None = None,
        min_pairs: int = MIN_PAIRS,
        teacher_version: str | None = None,
    ) -> dict[str, Any]:
        """Every student of the route against ``baseline`` (default: the champion).
        ``teacher_version``: only requests whose teacher reported that fingerprint or model."""
        route = self.route(name)
        if min_pairs < 1:
            raise InvalidRequest(
                "min_pairs must be at least 1", param="min_pairs", code="invalid_value"
            )
        params = window_params(route, window, dimension=None, teacher_version=teacher_version)
        async with self._snapshot() as connection:
            registered = {
                row.name: row.status
                for row in (await connection.execute(_REGISTERED, {"route": name})).all()
            }
            cover = await self._coverage(connection, route, window)
            figures: Sequence[Any]
            if cover.hours:  # latency from bins (within 1%): they add up across parts
                figures = await _figures(connection, cover, params)
            else:  # all raw: exact percentiles
                figures = (await connection.execute(_FIGURES, params)).all()
            if not figures:
                await self._check_teacher_version(connection, route, teacher_version)
            chosen = _baseline(name, registered, {row.student for row in figures}, baseline)
            pairs = await _pairs(connection, cover, {**params, "baseline": chosen})
        if not figures:
            raise NoData(
                f"Route '{name}' has no student answers from {window.describe()}"
                f"{of_version(teacher_version)}: no student was shadowed in that window (check "
                "the students' shadow_sample) or replayed."
            )
        answered = {row.student for row in figures}
        students = sorted(registered.keys() | answered, key=lambda s: (s != chosen, s))
        counts = {
            (row.source, row.student, row.dim, row.val): PairedCounts(
                row.both_agreed, row.candidate_only, row.baseline_only, row.neither
            )
            for row in pairs
        }
        by_key = {(row.source, row.student, row.dim, row.val): row for row in figures}
        sources = []
        for source in SOURCES:
            keys = {(dim, val) for (src, _s, dim, val) in by_key if src == source}
            if not keys:
                continue

            def entries(dim: str | None, val: str | None, source: str = source) -> list[Any]:
                return [
                    _entry(
                        student,
                        student == chosen,
                        by_key.get((source, student, dim, val)),
                        counts.get((source, student, dim, val)),
                        min_pairs,
                    )
                    for student in students
                    if (source, student, dim, val) in by_key or student == chosen
                ]

            slices = [
                {"dimension": dim, "value": val, "candidates": entries(dim, val)}
                for dim, val in keys
                if dim is not None
            ]
            slices.sort(key=_worst_first)
            overall = {"dimension": "all", "value": "all", "candidates": entries(None, None)}
            sources.append({"source": source, "overall": overall, "slices": slices})
        return {
            "route": name,
            **window.as_json(),
            "baseline": chosen,
            "min_pairs": min_pairs,
            "teacher_version": teacher_version,
            "students": [
                {"name": student, "status": registered.get(student, "unregistered")}
                for student in students
            ],
            "sources": sources,
        }


@dataclass
class _Figures:
    """One (source, student, dimension, value)'s figures, as :data:`_FIGURES` has them."""

    source: str
    student: str
    dim: str | None
    val: str | None
    answers: int = 0
    compared: int = 0
    agreed: int = 0
    confidence_sum: float = 0.0
    confidences: int = 0
    latency: dict[int, int] = field(default_factory=dict)

    @property
    def p50(self) -> float | None:
        return latency_percentile(self.latency, 0.5)

    @property
    def p95(self) -> float | None:
        return latency_percentile(self.latency, 0.95)

    @property
    def confidence(self) -> float | None:
        return self.confidence_sum / self.confidences if self.confidences else None


async def _figures(
    connection: AsyncConnection, cover: Coverage, params: dict[str, Any]
) -> list[_Figures]:
    """Each student's figures over the rollup hours and the raw parts of the window."""
    found: dict[tuple[Any, ...], _Figures] = {}

    def entry(row: Any) -> _Figures:
        key = (row.source, row.student, row.dim, row.val)
        figures = found.get(key)
        if figures is None:
            figures = found[key] = _Figures(*key)
        return figures

    rollup = {**params, **cover.params(params["route"])}
    raw = [window_params_of(params, part) for part in cover.raw]
    for query, part in [(_ROLLUP_FIGURES, rollup), *[(_RAW_FIGURES, p) for p in raw]]:
        for row in (await connection.execute(query, part)).all():
            counts = entry(row)
            counts.answers += int(row.answers)
            counts.compared += int(row.compared)
            counts.agreed += int(row.agreed)
            counts.confidence_sum += float(row.confidence_sum)
            counts.confidences += int(row.confidences)
    for row in (await connection.execute(_ROLLUP_LATENCY, rollup)).all():
        latency = entry(row).latency
        for bin_, answers in zip(row.bins, row.answers, strict=True):
            latency[bin_] = latency.get(bin_, 0) + answers
    for part in raw:
        for row in (await connection.execute(_RAW_LATENCY, part)).all():
            latency = entry(row).latency
            latency[row.bin] = latency.get(row.bin, 0) + int(row.n)
    return list(found.values())


async def _pairs(connection: AsyncConnection, cover: Coverage, params: dict[str, Any]) -> list[Any]:
    """The paired counts against ``params["baseline"]``, rollup hours and raw parts."""
    rows: list[Any] = []
    if cover.hours:
        rollup = {**params, **cover.params(params["route"])}
        rows.extend((await connection.execute(_ROLLUP_PAIRS, rollup)).all())
    for part in cover.raw:
        rows.extend((await connection.execute(_PAIRS, window_params_of(params, part))).all())
    summed: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        key = (row.source, row.student, row.dim, row.val)
        counts = summed.setdefault(key, [0, 0, 0, 0])
        for index, value in enumerate(
            (row.both_agreed, row.candidate_only, row.baseline_only, row.neither)
        ):
            counts[index] += int(value)
    return [_Pairs(*key, *counts) for key, counts in summed.items()]


@dataclass(frozen=True)
class _Pairs:
    source: str
    student: str
    dim: str | None
    val: str | None
    both_agreed: int
    candidate_only: int
    baseline_only: int
    neither: int


def _baseline(route: str, registered: dict[str, str], answered: set[str], asked: str | None) -> str:
    """The student others are compared with: the one asked for, else the champion."""
    if asked is not None:
        if asked not in registered and asked not in answered:
            known = ", ".join(sorted(registered.keys() | answered)) or "none"
            raise StudentNotFound(
                f"route {route!r} has no student {asked!r} (students: {known})", param="baseline"
            )
        return asked
    champion = next((s for s, status in registered.items() if status == "champion"), None)
    if champion is None:
        raise InvalidRequest(
            f"route {route!r} has no champion to compare with: name a baseline student",
            param="baseline",
            code="invalid_value",
        )
    return champion


def _entry(
    student: str, is_baseline: bool, row: Any, counts: PairedCounts | None, min_pairs: int
) -> dict[str, Any]:
    compared, agreed = (row.compared, row.agreed) if row is not None else (0, 0)
    low, high = stats.wilson_interval(agreed, compared) if compared else (None, None)
    entry: dict[str, Any] = {
        "student": student,
        "baseline": is_baseline,
        "answers": row.answers if row is not None else 0,
        "compared": compared,
        "agreed": agreed,
        "agreement": agreed / compared if compared else None,
        "ci_low": low,
        "ci_high": high,
        "paired": None,
        "verdict": "baseline",
        "latency_p50_ms": _number(row.p50) if row is not None else None,
        "latency_p95_ms": _number(row.p95) if row is not None else None,
        "mean_confidence": _number(row.confidence) if row is not None else None,
    }
    if is_baseline:
        return entry
    counts = counts or PairedCounts(0, 0, 0, 0)
    comparison = paired_difference(counts, min_pairs=min_pairs)
    entry["paired"] = paired_json(counts, comparison)
    entry["verdict"] = comparison.verdict
    return entry


def _number(value: Any) -> float | None:
    return None if value is None or math.isnan(float(value)) else float(value)


def _worst_first(line: dict[str, Any]) -> tuple[Any, ...]:
    """Slices where some candidate is judged come first, the one whose paired interval
    reaches lowest leading; then unjudged slices by the lowest agreement bound."""
    entries: Sequence[dict[str, Any]] = line["candidates"]
    judged = [e["paired"]["ci_low"] for e in entries if e["verdict"] in _JUDGED]
    bounds = [e["ci_low"] for e in entries if e["ci_low"] is not None]
    return (
        not judged,
        min(judged, default=0.0),
        min(bounds, default=1.0),
        line["dimension"],
        line["value"],
    )
