"""What the console draws that the reports do not answer: agreement per slice over time, the
slice table in the console's order, and one logged row as it is stored.

The trend is aggregated in Postgres like every report: one scan of the route's rows in the
window, grouped by slice label and by ``date_bin`` of ``created_at`` (UTC hours or days), the
route as a whole in the same scan. A critical slice is judged against its bar over the whole
window and point by point; the aggregate comes beside the slices, never alone (a window whose
rows carry no slice label is a 404, as in the slices report).

Every slice list here is in the one order of :func:`~gateway.services.reports.common.rank_slices`
(failing critical slices first, then by the low end of the interval; slices with too few
comparisons marked and last), so the charts and the table beside them agree.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, text

from gateway.core.routing import judge_slice
from gateway.db.tables import requests
from gateway.errors import InvalidRequest, NoData
from gateway.protocol.reports import Window, iso_time, proportion_json
from gateway.services.reports.common import mark_samples, rank_slices
from gateway.services.reports.slices import SliceReport

Step = Literal["hour", "day"]
STEPS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_POINTS = 1000  # buckets per series
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # buckets start on UTC hours and midnights

_TREND = text(
    "SELECT s.dim, s.val, date_bin(CAST(:step AS interval), r.created_at, "
    "CAST(:origin AS timestamptz)) AS at, count(*) AS requests, "
    "count(r.agree) AS samples, count(*) FILTER (WHERE r.agree) AS agreed "
    "FROM requests AS r CROSS JOIN LATERAL (SELECT NULL::text, NULL::text UNION ALL "
    "SELECT key, value FROM jsonb_each_text(CASE WHEN jsonb_typeof(r.slices) = 'object' "
    "THEN r.slices ELSE '{}' END) WHERE value IS NOT NULL "
    "AND (CAST(:dimension AS text) IS NULL OR key = CAST(:dimension AS text))) AS s(dim, val) "
    "WHERE r.route = :route AND r.created_at >= :since AND r.created_at < :until "
    "GROUP BY 1, 2, 3"
)

# The same from the hourly rollups (migration 0015), for the window's clean hours.
_ROLLUP_TREND = text(
    "SELECT r.dimension AS dim, r.value AS val, date_bin(CAST(:step AS interval), r.hour, "
    "CAST(:origin AS timestamptz)) AS at, sum(r.requests)::bigint AS requests, "
    "sum(r.compared)::bigint AS samples, sum(r.agreed)::bigint AS agreed "
    "FROM rollup_requests AS r WHERE r.route = :route "
    "AND r.hour = ANY(CAST(:hours AS timestamptz[])) AND (CAST(:dimension AS text) IS NULL "
    "OR r.dimension IS NULL OR r.dimension = CAST(:dimension AS text)) GROUP BY 1, 2, 3"
)


def default_step(window: Window) -> Step:
    return "hour" if window.until - window.since <= timedelta(days=2) else "day"


def bucket_starts(window: Window, step: timedelta) -> list[datetime]:
    """The start of every bucket that overlaps the window, as ``date_bin`` makes them."""
    first = ORIGIN + step * math.floor((window.since - ORIGIN) / step)
    count = math.ceil((window.until - first) / step)
    if count > MAX_POINTS:
        raise InvalidRequest(
            f"The window {window.describe()} holds {count} steps of {step}; at most "
            f"{MAX_POINTS} are drawn. Use a longer step or a shorter window.",
            param="step",
            code="invalid_value",
        )
    return [first + step * i for i in range(count)]


def _series(
    dimension: str,
    value: str,
    buckets: dict[datetime, tuple[int, int, int]],
    bar: tuple[float, int] | None,
) -> dict[str, Any]:
    """``buckets``: start → (requests, comparisons, agreed); ``bar``: (min agreement, samples)."""
    requests_n = sum(b[0] for b in buckets.values())
    samples = sum(b[1] for b in buckets.values())
    agreed = sum(b[2] for b in buckets.values())
    points = []
    for at in sorted(buckets):
        rows, compared, agreeing = buckets[at]
        share = agreeing / compared if compared else None
        points.append(
            {
                "at": iso_time(at),
                "requests": rows,
                "samples": compared,
                "agreed": agreeing,
                **proportion_json(agreeing, compared),
                "below_bar": (share < bar[0]) if bar and share is not None else None,
            }
        )
    return {
        "dimension": dimension,
        "value": value,
        "critical": bar is not None,
        "bar": bar[0] if bar else None,
        "min_samples": bar[1] if bar else None,
        "verdict": judge_slice(samples, agreed, bar[0], bar[1]) if bar else None,
        "requests": requests_n,
        "samples": samples,
        "agreed": agreed,
        **proportion_json(agreed, samples),
        "points": points,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


class ConsoleData(SliceReport):
    async def agreement_trend(
        self,
        name: str,
        window: Window,
        step: Step | None = None,
        dimension: str | None = None,
        max_slices: int = 24,
    ) -> dict[str, Any]:
        """Agreement per slice per bucket, worst slices first, the aggregate beside them."""
        route = self.route(name)
        chosen: Step = step or default_step(window)
        width = STEPS[chosen]
        starts = bucket_starts(window, width)
        params = {
            "route": name,
            "since": window.since,
            "until": window.until,
            "step": width,
            "origin": ORIGIN,
            "dimension": dimension,
        }
        # whole hours from the rollups, the rest raw, in one snapshot (services.reports.rollup)
        async with self._snapshot() as connection:
            cover = await self._coverage(connection, route, window)
            rows: list[Any] = []
            if cover.hours:
                hours = {**params, **cover.params(name)}
                rows.extend((await connection.execute(_ROLLUP_TREND, hours)).all())
            for part in cover.raw:
                raw = {**params, "since": part.since, "until": part.until}
                rows.extend((await connection.execute(_TREND, raw)).all())
        grouped: dict[tuple[str | None, str | None], dict[datetime, tuple[int, int, int]]] = {}
        for row in rows:
            points = grouped.setdefault((row.dim, row.val), {})
            before = points.get(row.at, (0, 0, 0))
            points[row.at] = (
                before[0] + int(row.requests),
                before[1] + int(row.samples),
                before[2] + int(row.agreed),
            )
        total = grouped.pop((None, None), None)
        if total is None:
            raise NoData(f"Route '{name}' has no requests from {window.describe()}.")
        bars = {
            (c.dimension, c.value): (c.min_agreement, c.min_samples)
            for c in route.slices.critical
            if dimension is None or c.dimension == dimension
        }
        keys = {(str(d), str(v)) for d, v in grouped} | bars.keys()
        if not keys:
            within = f" in dimension '{dimension}'" if dimension else ""
            raise NoData(
                f"No request of route '{name}' from {window.describe()} has a slice "
                f"label{within}. The aggregate alone is not reported: it hides bad slices."
            )
        lines = rank_slices(
            (_series(d, v, grouped.get((d, v), {}), bars.get((d, v))) for d, v in keys), route
        )
        return {
            "route": name,
            **window.as_json(),
            "step": chosen,
            "buckets": [iso_time(at) for at in starts],
            "dimension": dimension,
            "slices": lines[:max_slices],
            "omitted_slices": max(0, len(lines) - max_slices),
            "aggregate": mark_samples(_series("all", "all", total, None), route),
        }

    async def slice_table(
        self, name: str, window: Window, dimension: str | None = None
    ) -> dict[str, Any]:
        """The slices report's lines (comparisons, agreement, bar, verdict, fallbacks, student
        share) in the console's order, each marked; the aggregate last, never instead."""
        report = await self.slices(name, window, dimension)
        return {
            "route": name,
            **window.as_json(),
            "dimension": dimension,
            "slices": report["slices"],  # in the one order already, marked
            "aggregate": report["aggregate"],
        }

    async def request_row(self, request_id: str) -> dict[str, Any]:
        """One row of ``requests``, every column, as stored."""
        if "\x00" in request_id:  # Postgres text cannot hold it, so no row has it
            raise NoData("No request with a NUL character in its id is logged.", param="request_id")
        async with self._engine.connect() as connection:
            row = (
                (
                    await connection.execute(
                        select(requests).where(requests.c.request_id == request_id)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NoData(f"No request '{request_id[:200]}' is logged.", param="request_id")
        return {column: _jsonable(value) for column, value in row.items()}
