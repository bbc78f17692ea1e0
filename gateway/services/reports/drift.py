"""Drift: the current window against a reference (a window, or an uploaded dataset) — PSI per
slice dimension and over prompt length, and the agreement trend per day."""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import RouteConfig
from gateway.core import statistics as stats
from gateway.protocol.reports import (
    LENGTH_DIMENSION,
    ReferenceDataset,
    Window,
    proportion_json,
    psi_json,
)
from gateway.services.reports.common import (
    DEFAULT_MIN_ROWS,
    DEFAULT_PSI_THRESHOLD,
    IN_WINDOW,
    LABELS,
    ReportsBase,
    enough,
    last_user_text_sql,
    window_params,
)
from gateway.shadow.analysis import slice_rules

# Per (dimension, value) and per UTC day, with the route as a whole (the NULL row), in one
# scan: drift's populations and its agreement trend. (Grouping every row by day, not only the
# NULL row, keeps the planner's group estimate sane, so it hashes rather than sorts.)
_LABEL_COUNTS = text(
    "SELECT s.dim, s.val, (r.created_at AT TIME ZONE 'UTC')::date AS day, "
    "count(*) AS n, count(r.agree) AS samples, count(*) FILTER (WHERE r.agree) AS agreed "
    f"FROM requests AS r {LABELS} WHERE {IN_WINDOW} GROUP BY 1, 2, 3"
)
# Prompt lengths grouped by length: a few thousand numbers however many rows.
_LENGTHS = text(
    f"SELECT char_length({last_user_text_sql('r.request_payload')}) AS length, count(*) AS n "
    f"FROM requests AS r WHERE {IN_WINDOW} AND r.request_payload IS NOT NULL GROUP BY 1"
)


class DriftReport(ReportsBase):
    async def drift(
        self,
        name: str,
        current: Window,
        reference: Window | ReferenceDataset | None = None,
        *,
        psi_threshold: float = DEFAULT_PSI_THRESHOLD,
        min_rows: int = DEFAULT_MIN_ROWS,
        dimension: str | None = None,
    ) -> dict[str, Any]:
        """PSI per slice dimension and over prompt length, and the agreement trend per day."""
        route = self.route(name)
        if reference is None:
            reference = Window(current.since - timedelta(days=7), current.since)
        async with self._reading() as connection:
            if dimension is not None:
                await self._check_dimension(connection, route, dimension)
            now = await _population(connection, route, current, dimension)
            now_rows, now_labels = now.rows, now.labels
            enough(now_rows, min_rows, f"Route '{name}' from {current.describe()}")
            reference_agreement = None
            if isinstance(reference, Window):
                ref = await _population(connection, route, reference, dimension)
                ref_rows, ref_labels = ref.rows, ref.labels
                reference_agreement = proportion_json(
                    sum(day.agreed for day in ref.days), sum(day.samples for day in ref.days)
                )
                enough(
                    ref_rows, min_rows, f"Route '{name}', reference window {reference.describe()}"
                )
                ref_lengths = await _lengths(connection, route, reference)
            else:
                ref_rows, ref_labels = reference.rows, reference.labels(dimension)
                enough(ref_rows, min_rows, f"The reference dataset {reference.source}")
                ref_lengths = reference.lengths
            now_lengths = await _lengths(connection, route, current)
        compared = set(ref_labels)
        if isinstance(reference, Window):
            compared |= set(now_labels)
        dimensions = []
        for dim in sorted(compared):
            ref_counts, now_counts = stats.collapse_tail(
                stats.with_missing(ref_labels.get(dim, {}), ref_rows),
                stats.with_missing(now_labels.get(dim, {}), now_rows),
            )
            dimensions.append(psi_json(dim, stats.psi(ref_counts, now_counts), psi_threshold))
        dimensions.sort(key=lambda d: -d["psi"])
        skipped = [
            {"dimension": dim, "why": "the reference dataset has no labels in it"}
            for dim in sorted(set(now_labels) - compared)
        ]
        length = None
        if now_lengths and ref_lengths:  # none when payloads are not stored
            edges = stats.length_edges(stats.percentiles(ref_lengths))
            shift = stats.psi(
                stats.histogram(ref_lengths, edges), stats.histogram(now_lengths, edges)
            )
            length = psi_json(LENGTH_DIMENSION, shift, psi_threshold)
            length["edges"] = list(edges)
        return {
            "route": name,
            "current": {**current.as_json(), "requests": now_rows},
            "reference": (
                {"kind": "window", **reference.as_json(), "requests": ref_rows}
                if isinstance(reference, Window)
                else {"kind": "dataset", "source": reference.source, "prompts": ref_rows}
            ),
            "psi_threshold": psi_threshold,
            "flagged": [d["dimension"] for d in dimensions if d["flagged"]]
            + ([LENGTH_DIMENSION] if length and length["flagged"] else []),
            "dimensions": dimensions,
            "skipped_dimensions": skipped,
            "prompt_length": length,
            "agreement_trend": [
                {
                    "day": day.day.isoformat(),
                    "requests": day.n,
                    "samples": day.samples,
                    **proportion_json(day.agreed, day.samples),
                }
                for day in now.days
            ],
            "reference_agreement": reference_agreement,
        }


def reference_dataset(route: RouteConfig, source: str) -> ReferenceDataset:
    """An empty reference dataset that labels prompts with the route's slice rules."""
    return ReferenceDataset(slice_rules(route.slices), source)


@dataclass(frozen=True)
class _Population:
    rows: int
    labels: dict[str, dict[str, int]]  # dimension → value → requests
    days: list[Any]  # rows with day, n, samples, agreed; by day


async def _population(
    connection: AsyncConnection, route: RouteConfig, window: Window, dimension: str | None
) -> _Population:
    rows = (
        await connection.execute(_LABEL_COUNTS, window_params(route, window, dimension=dimension))
    ).all()
    labels: dict[str, dict[str, int]] = {}
    for row in rows:
        if row.dim is not None:
            values = labels.setdefault(row.dim, {})
            values[row.val] = values.get(row.val, 0) + row.n
    days = sorted((row for row in rows if row.dim is None), key=lambda row: row.day)
    return _Population(sum(day.n for day in days), labels, days)


async def _lengths(
    connection: AsyncConnection, route: RouteConfig, window: Window
) -> dict[int, int]:
    rows = await connection.execute(_LENGTHS, window_params(route, window))
    return {row.length: row.n for row in rows}
