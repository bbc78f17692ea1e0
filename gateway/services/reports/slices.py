"""The slice report: per slice, agreement with its 95% interval against the slice's bar."""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from gateway.core import statistics as stats
from gateway.errors import NoData
from gateway.protocol.reports import Window, slice_json
from gateway.services.reports.common import IN_WINDOW, LABELS, ReportsBase, window_params

_SLICES = text(
    "SELECT s.dim, s.val, count(*) AS requests, count(r.agree) AS samples, "
    "count(*) FILTER (WHERE r.agree) AS agreed, count(r.fallback_reason) AS fallbacks, "
    "count(*) FILTER (WHERE r.served_by = 'student') AS student_served, "
    "count(*) FILTER (WHERE r.fallback_reason = 'out_of_scope') AS out_of_scope, "
    "count(*) FILTER (WHERE r.fallback_reason = 'slice_teacher_only') AS slice_teacher_only "
    f"FROM requests AS r {LABELS} WHERE {IN_WINDOW} GROUP BY 1, 2"
)


class SliceReport(ReportsBase):
    async def slices(
        self, name: str, window: Window, dimension: str | None = None
    ) -> dict[str, Any]:
        """Per slice: comparisons, agreement (95% interval), bar, fallbacks, student share."""
        route = self.route(name)
        async with self._reading() as connection:
            rows = (
                await connection.execute(_SLICES, window_params(route, window, dimension=dimension))
            ).all()
            if dimension is not None:
                await self._check_dimension(connection, route, dimension)
        counts = {(row.dim, row.val): row for row in rows}
        total = counts.pop((None, None), None)
        if total is None:
            raise NoData(f"Route '{name}' has no requests from {window.describe()}.")
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
            "slices": lines,
            "aggregate": slice_json("all", "all", _figures(total), None),
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
