"""Which hours of a report's window its rollups answer, and which it reads raw.

A report splits its window ``[since, until)`` into the whole UTC hours whose bucket is
*clean* (computed, not stale, not in ``rollup_dirty``: :mod:`gateway.services.rollups`),
read from the ``rollup_*`` tables, and the rest (the partial hours at either end, the current
hour, any hour not computed or changed since), read from raw rows with the report's own query,
one sub-window at a time. Both reads happen in one REPEATABLE READ snapshot, so the sum is the
raw answer exactly: a row the rollup does not count has its bucket dirty in the same snapshot.

Also here: the bins the rollups count in (confidence, latency) and what they make of them.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.protocol.reports import Window

HOUR = timedelta(hours=1)
# More separate raw sub-windows than this (a window checkered with dirty hours): read it all raw.
MAX_RAW_PARTS = 12
# Confidence bin edges: width_bucket(confidence, GRID). A threshold report is served from the
# rollup when each of its thresholds is one of these (the defaults are).
GRID: tuple[float, ...] = tuple(round(i / 100, 2) for i in range(101))
_GRID_INDEX = {value: index for index, value in enumerate(GRID, start=1)}
LATENCY_RATIO = 1.02  # latency bins are 2% wide: a percentile is within 1% of the raw one
_TOP_BIN = 32767  # NaN and absurd latencies
LATENCY_BIN = (
    "CASE WHEN r.student_latency_ms < 1 THEN 0 WHEN r.student_latency_ms < 1e12 "
    f"THEN 1 + floor(ln(r.student_latency_ms) / ln({LATENCY_RATIO}))::int ELSE {_TOP_BIN} END"
)
# The clean buckets of the window's whole hours.
_CLEAN = text(
    "SELECT b.hour FROM rollup_buckets AS b WHERE b.route = :route AND b.hour >= :first "
    "AND b.hour < :last AND NOT b.stale AND NOT EXISTS (SELECT 1 FROM rollup_dirty AS d "
    "WHERE d.route = b.route AND d.hour = b.hour) ORDER BY b.hour"
)
# What a rollup query filters on: the route and the clean hours. The range makes the index
# scan read the window's hours whatever the table's statistics say (stale after a big round,
# or with autovacuum off, the planner scanned the route's every hour and filtered).
IN_HOURS = (
    "r.route = :route AND r.hour >= :first_hour AND r.hour <= :last_hour "
    "AND r.hour = ANY(CAST(:hours AS timestamptz[]))"
)


@dataclass(frozen=True)
class Coverage:
    """``hours``: whole hours read from the rollups; ``raw``: the rest, read from raw rows."""

    hours: list[datetime]
    raw: list[Window]

    def params(self, route: str) -> dict[str, object]:
        first, last = (self.hours[0], self.hours[-1]) if self.hours else (None, None)
        return {"route": route, "hours": self.hours, "first_hour": first, "last_hour": last}


def all_raw(window: Window) -> Coverage:
    return Coverage([], [window])


async def coverage(
    connection: AsyncConnection, route: str, window: Window, *, enabled: bool = True
) -> Coverage:
    """The window split into clean rollup hours and raw sub-windows (``enabled=False``: raw)."""
    first = _hour_at_or_after(window.since)
    last = window.until
    if not enabled or first + HOUR > last:
        return all_raw(window)
    found = await connection.execute(
        _CLEAN, {"route": route, "first": first, "last": last - HOUR + timedelta(microseconds=1)}
    )
    hours = [row.hour for row in found]
    raw: list[Window] = []
    cursor = window.since
    for hour in hours:
        if hour > cursor:
            raw.append(Window(cursor, hour))
        cursor = hour + HOUR
    if cursor < window.until:
        raw.append(Window(cursor, window.until))
    if len(raw) > MAX_RAW_PARTS:
        return all_raw(window)
    return Coverage(hours, raw)


def _hour_at_or_after(moment: datetime) -> datetime:
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + HOUR


def grid_buckets(thresholds: Sequence[float]) -> list[int] | None:
    """Each threshold's place among :data:`GRID` (1-based), or None if one is not on it."""
    places = [_GRID_INDEX.get(value) for value in thresholds]
    if any(place is None for place in places):
        return None
    return sorted(place for place in places if place is not None)


def regrid(grid_bin: int, places: Sequence[int]) -> int:
    """The ``width_bucket`` over the report's thresholds of a value in ``grid_bin`` (its
    ``width_bucket`` over :data:`GRID`), the thresholds being ``GRID[p - 1]`` for p in
    ``places``: how many of them are at or below the value."""
    return bisect_right(places, grid_bin)


def latency_percentile(bins: Mapping[int, int], fraction: float) -> float | None:
    """``percentile_cont(fraction)`` of the latencies counted in ``bins`` (bin → answers),
    each latency taken as its bin's geometric middle: within 1% of the raw figure."""
    total = sum(bins.values())
    if total == 0:
        return None
    position = fraction * (total - 1)
    low_index, high_index = math.floor(position), math.ceil(position)
    low: float | None = None
    high: float | None = None
    seen = 0
    for bin_ in sorted(bins):
        seen += bins[bin_]
        if low is None and seen > low_index:
            low = _middle(bin_)
        if seen > high_index:
            high = _middle(bin_)
            break
    if low is None or high is None:  # unreachable: the last bin reaches total - 1
        return None
    if low == high:
        return low
    return low + (high - low) * (position - low_index)


def _middle(bin_: int) -> float:
    if bin_ <= 0:
        return 0.5
    if bin_ >= _TOP_BIN:
        return math.inf
    return float(LATENCY_RATIO ** (bin_ - 0.5))
