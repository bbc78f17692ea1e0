"""The slice report: per slice, agreement with its 95% interval against the slice's bar; and
per teacher version, so a teacher upgrade shows (:mod:`gateway.services.teachers`)."""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import statistics as stats
from gateway.errors import NoData
from gateway.protocol.reports import Window, slice_json, teacher_version_json
from gateway.services.reports.common import (
    IN_WINDOW,
    LABELS,
    TEACHER_VERSION,
    ReportsBase,
    mark_samples,
    of_version,
    rank_slices,
    window_params,
    window_params_of,
)
from gateway.services.reports.rollup import IN_HOURS, Coverage

_SLICES = text(
    "SELECT s.dim, s.val, count(*) AS requests, count(r.agree) AS samples, "
    "count(*) FILTER (WHERE r.agree) AS agreed, count(r.fallback_reason) AS fallbacks, "
    "count(*) FILTER (WHERE r.served_by = 'student') AS student_served, "
    "count(*) FILTER (WHERE r.fallback_reason = 'out_of_scope') AS out_of_scope, "
    "count(*) FILTER (WHERE r.fallback_reason = 'slice_teacher_only') AS slice_teacher_only "
    f"FROM requests AS r {LABELS} WHERE {IN_WINDOW} AND {TEACHER_VERSION} GROUP BY 1, 2"
)
# Per teacher version, oldest first; rows whose teacher reported nothing have none.
_VERSIONS = text(
    "SELECT r.teacher_model_reported AS model, r.teacher_fingerprint AS fingerprint, "
    "count(*) AS requests, count(r.agree) AS samples, count(*) FILTER (WHERE r.agree) AS agreed, "
    "min(r.created_at) AS first_seen, max(r.created_at) AS last_seen "
    f"FROM requests AS r WHERE {IN_WINDOW} AND {TEACHER_VERSION} "
    "AND (r.teacher_model_reported IS NOT NULL OR r.teacher_fingerprint IS NOT NULL) "
    "GROUP BY 1, 2 ORDER BY min(r.created_at), 1, 2"
)


_COUNTS = (
    "requests",
    "samples",
    "agreed",
    "fallbacks",
    "student_served",
    "out_of_scope",
    "slice_teacher_only",
)
# The same from the rollups (migration 0015), for the window's clean hours.
_ROLLUP_SLICES = text(
    "SELECT r.dimension AS dim, r.value AS val, sum(r.requests)::bigint AS requests, "
    "sum(r.compared)::bigint AS samples, sum(r.agreed)::bigint AS agreed, "
    "sum(r.fallbacks)::bigint AS fallbacks, sum(r.student_served)::bigint AS student_served, "
    "sum(r.out_of_scope)::bigint AS out_of_scope, "
    "sum(r.slice_teacher_only)::bigint AS slice_teacher_only "
    f"FROM rollup_requests AS r WHERE {IN_HOURS} AND (CAST(:dimension AS text) IS NULL "
    f"OR r.dimension IS NULL OR r.dimension = CAST(:dimension AS text)) AND {TEACHER_VERSION} "
    "GROUP BY 1, 2"
)
_ROLLUP_VERSIONS = text(
    "SELECT r.teacher_model_reported AS model, r.teacher_fingerprint AS fingerprint, "
    "sum(r.requests)::bigint AS requests, sum(r.compared)::bigint AS samples, "
    "sum(r.agreed)::bigint AS agreed, min(r.first_seen) AS first_seen, "
    f"max(r.last_seen) AS last_seen FROM rollup_requests AS r WHERE {IN_HOURS} "
    f"AND r.dimension IS NULL AND {TEACHER_VERSION} "
    "AND (r.teacher_model_reported IS NOT NULL OR r.teacher_fingerprint IS NOT NULL) "
    "GROUP BY 1, 2"
)


@dataclass
class _Version:
    model: str | None
    fingerprint: str | None
    requests: int
    samples: int
    agreed: int
    first_seen: datetime
    last_seen: datetime


class SliceReport(ReportsBase):
    async def _slice_counts(
        self,
        connection: AsyncConnection,
        cover: Coverage,
        params: dict[str, Any],
        versions: bool,
    ) -> tuple[dict[tuple[Any, Any], tuple[int, ...]], list[_Version]]:
        """Per (dimension, value) the counts of :data:`_COUNTS` (the NULL key: all), and per
        teacher version its figures (when ``versions``), over the rollup hours and raw parts."""
        counts: dict[tuple[Any, Any], tuple[int, ...]] = {}
        found: dict[tuple[Any, Any], _Version] = {}
        parts: list[tuple[dict[str, Any], bool]] = []  # (parameters, from the rollups)
        if cover.hours:
            rollup = {**params, **cover.params(params["route"])}
            parts.append((rollup, True))
        parts.extend((window_params_of(params, part), False) for part in cover.raw)
        for part_params, from_rollup in parts:
            query = _ROLLUP_SLICES if from_rollup else _SLICES
            for row in (await connection.execute(query, part_params)).all():
                add = tuple(int(getattr(row, name)) for name in _COUNTS)
                before = counts.get((row.dim, row.val))
                if before is not None:
                    add = tuple(a + b for a, b in zip(before, add, strict=True))
                counts[(row.dim, row.val)] = add
        if versions and counts:
            for part_params, from_rollup in parts:
                query = _ROLLUP_VERSIONS if from_rollup else _VERSIONS
                for row in (await connection.execute(query, part_params)).all():
                    key = (row.model, row.fingerprint)
                    seen = found.get(key)
                    if seen is None:
                        found[key] = _Version(
                            row.model,
                            row.fingerprint,
                            int(row.requests),
                            int(row.samples),
                            int(row.agreed),
                            row.first_seen,
                            row.last_seen,
                        )
                        continue
                    seen.requests += int(row.requests)
                    seen.samples += int(row.samples)
                    seen.agreed += int(row.agreed)
                    seen.first_seen = min(seen.first_seen, row.first_seen)
                    seen.last_seen = max(seen.last_seen, row.last_seen)
        ordered = sorted(
            found.values(),
            key=lambda v: (
                v.first_seen,
                v.model is None,
                v.model or "",
                v.fingerprint is None,
                v.fingerprint or "",
            ),
        )
        return counts, ordered

    async def slices(
        self,
        name: str,
        window: Window,
        dimension: str | None = None,
        teacher_version: str | None = None,
    ) -> dict[str, Any]:
        """Per slice: comparisons, agreement (95% interval), bar, fallbacks, student share;
        per teacher version: comparisons and agreement. ``teacher_version``: only the rows
        whose teacher reported that fingerprint or model."""
        route = self.route(name)
        params = window_params(route, window, dimension=dimension, teacher_version=teacher_version)
        async with self._snapshot() as connection:
            cover = await self._coverage(connection, route, window)
            counts, versions = await self._slice_counts(connection, cover, params, True)
            if dimension is not None:
                await self._check_dimension(connection, route, dimension)
            if not counts:
                await self._check_teacher_version(connection, route, teacher_version)
        total = counts.pop((None, None), None)
        if total is None:
            raise NoData(
                f"Route '{name}' has no requests from {window.describe()}"
                f"{of_version(teacher_version)}."
            )
        bars = {
            (c.dimension, c.value): stats.Bar(c.dimension, c.value, c.min_agreement, c.min_samples)
            for c in route.slices.critical
            if dimension is None or c.dimension == dimension
        }
        lines = [
            slice_json(dim, val, _figures(counts.get((dim, val))), bars.get((dim, val)))
            for dim, val in sorted(counts.keys() | bars.keys())
        ]
        if not lines:
            within = f" in dimension '{dimension}'" if dimension else ""
            raise NoData(
                f"No request of route '{name}' from {window.describe()} has a slice "
                f"label{within}. The aggregate alone is not reported: it hides bad slices. "
                "Label requests with metadata, X-Slice-* headers or the route's slice rules."
            )
        lines = rank_slices(lines, route)
        return {
            "route": name,
            **window.as_json(),
            "dimension": dimension,
            "teacher_version": teacher_version,
            "slices": lines,
            "aggregate": mark_samples(slice_json("all", "all", _figures(total), None), route),
            "teacher_versions": [
                teacher_version_json(
                    row.model,
                    row.fingerprint,
                    (row.requests, row.samples, row.agreed),
                    (row.first_seen, row.last_seen),
                )
                for row in versions
            ],
        }


def _figures(row: tuple[int, ...] | None) -> tuple[int, ...]:
    return (0,) * len(_COUNTS) if row is None else row
