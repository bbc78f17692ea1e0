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
from typing import Any

from sqlalchemy import text

from gateway.core import statistics as stats
from gateway.core.paired import MIN_PAIRS, PairedCounts, paired_difference
from gateway.errors import InvalidRequest, NoData, StudentNotFound
from gateway.protocol.reports import Window
from gateway.services.reports.common import (
    ANSWER_TEACHER_VERSION,
    IN_WINDOW,
    LABELS,
    ReportsBase,
    of_version,
    window_params,
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
        async with self._reading() as connection:
            registered = {
                row.name: row.status
                for row in (await connection.execute(_REGISTERED, {"route": name})).all()
            }
            figures = (await connection.execute(_FIGURES, params)).all()
            if not figures:
                await self._check_teacher_version(connection, route, teacher_version)
            chosen = _baseline(name, registered, {row.student for row in figures}, baseline)
            pairs = (await connection.execute(_PAIRS, {**params, "baseline": chosen})).all()
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
    entry["paired"] = {
        "pairs": counts.n,
        "both": counts.both,
        "candidate_only": counts.candidate_only,
        "baseline_only": counts.baseline_only,
        "neither": counts.neither,
        "difference": comparison.difference,
        "ci_low": comparison.low,
        "ci_high": comparison.high,
        "p_value": comparison.p_value,
    }
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
