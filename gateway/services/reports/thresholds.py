"""Threshold calibration: for each candidate confidence threshold, the share of traffic the
student would serve and the agreement on that share, per slice; and the lowest threshold that
keeps every critical slice at its bar (:meth:`ThresholdReport.thresholds`), or, per slice,
the lowest threshold at which that slice meets a target agreement
(:meth:`ThresholdReport.slice_thresholds`, what ``rollout calibrate`` applies)."""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import RouteConfig
from gateway.core import statistics as stats
from gateway.db.tables import route_state
from gateway.errors import InvalidRequest, NoData, NotEnoughData
from gateway.protocol.reports import Window, curve_json, point_json
from gateway.services.reports.common import (
    EACH_LABEL,
    IN_WINDOW,
    TEACHER_VERSION,
    ReportsBase,
    window_params,
    window_params_of,
)
from gateway.services.reports.rollup import GRID, IN_HOURS, all_raw, grid_buckets, regrid

# Shadow comparisons only: the teacher answered and the student was not chosen. Fallbacks and
# student-served rows are selected by the live threshold, so they would bias the curve.
_CALIBRATION = text(
    "SELECT s.dim, s.val, "
    "width_bucket(r.student_confidence, CAST(:thresholds AS float8[])) AS bucket, "
    "count(*) AS samples, count(*) FILTER (WHERE r.agree) AS agreed "
    f"FROM requests AS r CROSS JOIN LATERAL (SELECT NULL::text, NULL::text UNION ALL "
    f"{EACH_LABEL} AND (CAST(:dimensions AS text[]) IS NULL "
    "OR key = ANY(CAST(:dimensions AS text[])))) AS s(dim, val) "
    f"WHERE {IN_WINDOW} AND r.student_confidence IS NOT NULL AND r.agree IS NOT NULL "
    "AND r.served_by IS DISTINCT FROM 'student' AND r.fallback_reason IS NULL "
    f"AND {TEACHER_VERSION} GROUP BY 1, 2, 3"
)


# The same from the rollups' confidence bins (:data:`~.rollup.GRID`), for the clean hours: a
# row per hour, teacher version and slice, its bins and counts as arrays that Python adds up
# (summing them in SQL would unnest them back into one row per bin, what cost the time).
_ROLLUP_CALIBRATION = text(
    "SELECT r.dimension AS dim, r.value AS val, r.bins, r.compared, r.agreed "
    f"FROM rollup_confidence AS r WHERE {IN_HOURS} AND (CAST(:dimensions AS text[]) IS NULL "
    "OR r.dimension IS NULL OR r.dimension = ANY(CAST(:dimensions AS text[]))) "
    f"AND {TEACHER_VERSION}"
)

DEFAULT_MIN_SERVED = stats.MIN_SERVED
# (dimension, value) (None, None for all) → report bucket → (samples, agreed)
Calibration = dict[tuple[Any, Any], dict[int, tuple[int, int]]]


class ThresholdReport(ReportsBase):
    async def _calibration(
        self,
        connection: AsyncConnection,
        route: RouteConfig,
        window: Window,
        thresholds: Sequence[float],
        params: dict[str, Any],
    ) -> Calibration:
        """Shadow comparisons per slice and ``width_bucket`` over ``thresholds``: the whole
        hours from the rollups when every threshold is on their grid, the rest raw."""
        places = grid_buckets(thresholds)
        cover = await self._coverage(connection, route, window)
        if places is None:
            cover = all_raw(window)
        found: Calibration = {}

        def add(dim: Any, val: Any, bucket: int, samples: int, agreed: int) -> None:
            counts = found.setdefault((dim, val), {})
            before = counts.get(bucket, (0, 0))
            counts[bucket] = (before[0] + int(samples), before[1] + int(agreed))

        if cover.hours and places is not None:
            rollup = {**params, **cover.params(route.name)}
            bucket_of = [regrid(grid_bin, places) for grid_bin in range(len(GRID) + 1)]
            for row in (await connection.execute(_ROLLUP_CALIBRATION, rollup)).all():
                counts = found.setdefault((row.dim, row.val), {})
                for grid_bin, samples, agreed in zip(
                    row.bins, row.compared, row.agreed, strict=True
                ):
                    bucket = bucket_of[grid_bin]
                    before = counts.get(bucket, (0, 0))
                    counts[bucket] = (before[0] + samples, before[1] + agreed)
        for part in cover.raw:
            raw = window_params_of(params, part)
            for row in (await connection.execute(_CALIBRATION, raw)).all():
                add(row.dim, row.val, row.bucket, row.samples, row.agreed)
        return found

    async def thresholds(
        self,
        name: str,
        window: Window,
        candidates: Sequence[float] | None = None,
        dimension: str | None = None,
        conservative: bool = False,
        teacher_version: str | None = None,
    ) -> dict[str, Any]:
        """Served share and agreement per candidate threshold; the lowest that keeps every bar.
        ``teacher_version``: only rows whose teacher reported that fingerprint or model."""
        route = self.route(name)
        bars = [
            stats.Bar(c.dimension, c.value, c.min_agreement, c.min_samples)
            for c in route.slices.critical
        ]
        gate = not bars
        if gate:  # no critical slice: the route as a whole, against its ramp gate
            rollout = route.rollout
            bars = [stats.Bar("all", "all", rollout.gate_min_agreement, rollout.gate_min_samples)]
        async with self._snapshot() as connection:
            live = (
                await connection.execute(
                    select(route_state.c.confidence_threshold).where(route_state.c.route == name)
                )
            ).scalar()
            current = route.rollout.threshold if live is None else float(live)
            candidates = candidates or stats.candidate_thresholds()
            thresholds = stats.check_thresholds([*candidates, current])
            dimensions = {b.dimension for b in bars if not gate}
            if dimension is not None:
                await self._check_dimension(connection, route, dimension)
                dimensions.add(dimension)
            params = window_params(
                route,
                window,
                thresholds=list(thresholds),
                dimensions=sorted(dimensions),
                teacher_version=teacher_version,
            )
            found = await self._calibration(connection, route, window, thresholds, params)
            if not found:
                await self._check_teacher_version(connection, route, teacher_version)
                count = await self._count(connection, route, window)
                if count == 0:
                    raise NoData(f"Route '{name}' has no requests from {window.describe()}.")
                raise NotEnoughData(
                    f"Route '{name}' has {count} requests from {window.describe()} but no "
                    "shadow comparison with a student confidence (the teacher answered, the "
                    "student was not chosen, both answers compared); calibration needs those."
                )
        buckets = {
            (("all", "all") if dim is None else (dim, val)): counts
            for (dim, val), counts in found.items()
        }
        wanted = {(b.dimension, b.value) for b in bars} | {("all", "all")}
        wanted |= {key for key in buckets if key[0] == dimension}
        curves = {key: stats.calibration_curve(thresholds, buckets.get(key, {})) for key in wanted}
        recommendation = stats.recommend_threshold(curves, bars, conservative)
        bar_of = {(b.dimension, b.value): b for b in bars}
        ordered = sorted(wanted, key=lambda k: (k != ("all", "all"), k not in bar_of, k))
        return {
            "route": name,
            **window.as_json(),
            "comparisons": curves[("all", "all")][0].total,
            "current_threshold": current,
            "conservative": conservative,
            "teacher_version": teacher_version,
            "bars": [
                {
                    "dimension": b.dimension,
                    "value": b.value,
                    "min_agreement": b.min_agreement,
                    "min_samples": b.min_samples,
                    "source": "route_gate" if gate else "critical_slice",
                }
                for b in bars
            ],
            "curves": [
                curve_json(key, curves[key], bar_of.get(key), conservative) for key in ordered
            ],
            "recommendation": {
                "threshold": recommendation.threshold,
                "reason": recommendation.reason,
                "served": [
                    {"dimension": key[0], "value": key[1], **point_json(point)}
                    for key in ordered
                    for point in curves[key]
                    if point.threshold == recommendation.threshold
                ],
            },
        }

    async def slice_thresholds(
        self,
        name: str,
        window: Window,
        target: float,
        *,
        conservative: bool = False,
        dimension: str | None = None,
        min_served: int = DEFAULT_MIN_SERVED,
        candidates: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        """Per slice, the lowest candidate threshold at which the answers the student would
        serve agree with the teacher at least ``target`` of the time (with ``conservative``,
        the lower end of the 95% interval must reach it), over at least ``min_served`` of them.

        Each slice's ``status``: ``ok`` (a threshold), ``not_enough_data`` (fewer than
        ``min_served`` comparisons in all: no threshold is judged), or ``unreachable`` (no
        candidate reaches the target: the slice belongs on the teacher).
        """
        route = self.route(name)
        if not 0.0 < target <= 1.0:
            raise InvalidRequest(
                "the target agreement must be above 0 and at most 1",
                param="target_agreement",
                code="invalid_value",
            )
        thresholds = stats.check_thresholds(candidates or stats.candidate_thresholds())
        async with self._snapshot() as connection:
            if dimension is not None:
                await self._check_dimension(connection, route, dimension)
            params = window_params(
                route,
                window,
                thresholds=list(thresholds),
                dimensions=None if dimension is None else [dimension],
            )
            found = await self._calibration(connection, route, window, thresholds, params)
        buckets = {key: counts for key, counts in found.items() if key[0] is not None}
        if not buckets:
            raise NoData(
                f"Route '{name}' has no labelled shadow comparison with a student confidence "
                f"from {window.describe()}: calibration per slice needs those."
            )
        slices = []
        for (dim, val), counts in sorted(buckets.items()):
            points = stats.calibration_curve(thresholds, counts)
            bar = stats.Bar(dim, val, target, min_served)
            chosen = next((p for p in points if stats.meets(p, bar, conservative)), None)
            total = points[0].total
            status = "ok" if chosen else "not_enough_data" if total < min_served else "unreachable"
            slices.append(
                {
                    "dimension": dim,
                    "value": val,
                    "comparisons": total,
                    "status": status,
                    "threshold": chosen.threshold if chosen else None,
                    "at_threshold": point_json(chosen) if chosen else None,
                }
            )
        return {
            "route": name,
            **window.as_json(),
            "target_agreement": target,
            "conservative": conservative,
            "min_served": min_served,
            "slices": slices,
        }


def calibrated_overrides(result: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """What applying a per-slice calibration sets: each judged slice's threshold, and the
    teacher for a slice no threshold makes good enough; slices without enough data are left."""
    changes: dict[tuple[str, str], dict[str, Any]] = {}
    for line in result["slices"]:
        key = (line["dimension"], line["value"])
        if line["status"] == "ok":
            changes[key] = {"confidence_threshold": line["threshold"]}
        elif line["status"] == "unreachable":
            changes[key] = {"mode": "teacher"}
    return changes
