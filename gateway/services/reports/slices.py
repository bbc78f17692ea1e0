"""The slice report: per slice, agreement with its 95% interval against the slice's bar; and
per teacher version, so a teacher upgrade shows (:mod:`gateway.services.teachers`)."""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from gateway.core import statistics as stats
from gateway.errors import NoData
from gateway.protocol.reports import Window, slice_json, teacher_version_json
from gateway.services.reports.common import (
    IN_WINDOW,
    LABELS,
    TEACHER_VERSION,
    ReportsBase,
    of_version,
    window_params,
)

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


class SliceReport(ReportsBase):
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
        async with self._reading() as connection:
            rows = (await connection.execute(_SLICES, params)).all()
            if dimension is not None:
                await self._check_dimension(connection, route, dimension)
            if not rows:
                await self._check_teacher_version(connection, route, teacher_version)
            versions = (await connection.execute(_VERSIONS, params)).all() if rows else []
        counts = {(row.dim, row.val): row for row in rows}
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
        lines.sort(
            key=lambda s: (s["samples"] == 0, s["ci_low"] or 0.0, s["dimension"], s["value"])
        )
        return {
            "route": name,
            **window.as_json(),
            "dimension": dimension,
            "teacher_version": teacher_version,
            "slices": lines,
            "aggregate": slice_json("all", "all", _figures(total), None),
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


def _figures(row: Any) -> tuple[int, ...]:
    if row is None:
        return 0, 0, 0, 0, 0, 0, 0
    return (
        row.requests,
        row.samples,
        row.agreed,
        row.fallbacks,
        row.student_served,
        row.out_of_scope,
        row.slice_teacher_only,
    )
