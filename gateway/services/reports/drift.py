"""Drift: the current window against a reference (a window, a registered dataset, or an
uploaded JSONL file) — PSI per slice dimension and over prompt length, the prompt-content
distance against a registered dataset, and the agreement trend per day."""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import RouteConfig
from gateway.core import statistics as stats
from gateway.protocol.reports import (
    CONTENT_DIMENSION,
    DEFAULT_MIN_ROWS,
    DEFAULT_PSI_THRESHOLD,
    LENGTH_DIMENSION,
    ReferenceDataset,
    Window,
    content_json,
    proportion_json,
    psi_json,
)
from gateway.services.reports.common import (
    IN_WINDOW,
    LABELS,
    ReportsBase,
    enough,
    last_user_text_sql,
    window_params,
)
from gateway.services.reports.reference import (
    RegisteredDataset,
    champion_datasets,
    content_shift,
    load_dataset,
)
from gateway.services.reports.rollup import IN_HOURS, Coverage

# A reference: a window, an uploaded file, a registered dataset (loaded, or its id, or
# "champion" for the champion's training set).
Reference = Window | ReferenceDataset | RegisteredDataset | int | str

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

# The same two from the rollups, for the clean hours.
_ROLLUP_LABEL_COUNTS = text(
    "SELECT r.dimension AS dim, r.value AS val, (r.hour AT TIME ZONE 'UTC')::date AS day, "
    "sum(r.requests)::bigint AS n, sum(r.compared)::bigint AS samples, "
    f"sum(r.agreed)::bigint AS agreed FROM rollup_requests AS r WHERE {IN_HOURS} "
    "AND (CAST(:dimension AS text) IS NULL OR r.dimension IS NULL "
    "OR r.dimension = CAST(:dimension AS text)) GROUP BY 1, 2, 3"
)
_ROLLUP_LENGTHS = text(
    "SELECT r.length, sum(r.requests)::bigint AS n FROM rollup_prompt_lengths AS r "
    f"WHERE {IN_HOURS} GROUP BY 1"
)


class DriftReport(ReportsBase):
    async def dataset_reference(self, name: str, chosen: int | str) -> RegisteredDataset:
        """A registered dataset (an id, or ``champion``) read as a reference for ``drift``."""
        route = self.route(name)
        async with self._reading() as connection:
            return await load_dataset(connection, route, chosen)

    async def champion_datasets(self) -> dict[str, int]:
        """route → its champion's training dataset, for the routes that record one."""
        async with self._reading() as connection:
            return await champion_datasets(connection)

    async def drift(
        self,
        name: str,
        current: Window,
        reference: Reference | None = None,
        *,
        psi_threshold: float = DEFAULT_PSI_THRESHOLD,
        min_rows: int = DEFAULT_MIN_ROWS,
        dimension: str | None = None,
    ) -> dict[str, Any]:
        """PSI per slice dimension and over prompt length (and, against a registered dataset,
        the prompt content), and the agreement trend per day."""
        route = self.route(name)
        if reference is None:
            reference = Window(current.since - timedelta(days=7), current.since)
        content: dict[str, Any] | str | None = None
        async with self._snapshot() as connection:
            if dimension is not None:
                await self._check_dimension(connection, route, dimension)
            if isinstance(reference, int | str):
                reference = await load_dataset(connection, route, reference)
            now_cover = await self._coverage(connection, route, current)
            now = await _population(connection, route, now_cover, dimension)
            now_rows, now_labels = now.rows, now.labels
            enough(now_rows, min_rows, f"Route '{name}' from {current.describe()}")
            reference_agreement = None
            if isinstance(reference, Window):
                ref_cover = await self._coverage(connection, route, reference)
                ref = await _population(connection, route, ref_cover, dimension)
                ref_rows, ref_labels = ref.rows, ref.labels
                reference_agreement = proportion_json(
                    sum(day.agreed for day in ref.days), sum(day.samples for day in ref.days)
                )
                enough(
                    ref_rows, min_rows, f"Route '{name}', reference window {reference.describe()}"
                )
                ref_lengths = await _lengths(connection, route, ref_cover)
            elif isinstance(reference, RegisteredDataset):
                ref_rows, ref_labels = reference.rows, reference.labels(dimension)
                enough(ref_rows, min_rows, f"{reference.describe()} (its requests still logged)")
                ref_lengths = reference.lengths
                if dimension is None:
                    content = await _content(
                        connection, route, current, now_rows, reference, psi_threshold
                    )
            else:
                ref_rows, ref_labels = reference.rows, reference.labels(dimension)
                enough(ref_rows, min_rows, f"The reference dataset {reference.source}")
                ref_lengths = reference.lengths
            now_lengths = await _lengths(connection, route, now_cover)
        compared = set(ref_labels)
        if not isinstance(reference, ReferenceDataset):  # the same labelling on both sides
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
        if isinstance(content, str):
            skipped.append({"dimension": CONTENT_DIMENSION, "why": content})
            content = None
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
            "reference": _reference_json(reference, ref_rows),
            "psi_threshold": psi_threshold,
            "flagged": [d["dimension"] for d in dimensions if d["flagged"]]
            + ([LENGTH_DIMENSION] if length and length["flagged"] else [])
            + ([CONTENT_DIMENSION] if content and content["flagged"] else []),
            "dimensions": dimensions,
            "skipped_dimensions": skipped,
            "prompt_length": length,
            "content": content,
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


async def _content(
    connection: AsyncConnection,
    route: RouteConfig,
    window: Window,
    rows: int,
    reference: RegisteredDataset,
    threshold: float,
) -> dict[str, Any] | str:
    """The content figure's JSON, or why there is none."""
    if isinstance(reference.content, str):
        return reference.content
    shift, source = await content_shift(connection, route, window, rows, reference.content)
    return shift if isinstance(shift, str) else content_json(shift, threshold, source)


def _reference_json(
    reference: Window | ReferenceDataset | RegisteredDataset, rows: int
) -> dict[str, Any]:
    if isinstance(reference, Window):
        return {"kind": "window", **reference.as_json(), "requests": rows}
    if isinstance(reference, RegisteredDataset):
        return reference.as_json()
    return {"kind": "dataset", "source": reference.source, "prompts": rows}


def reference_dataset(route: RouteConfig, source: str) -> ReferenceDataset:
    """An empty reference dataset that labels prompts with the route's slice rules."""
    # here, not at the top: gateway.shadow.analysis brings the metrics and the comparators,
    # which no report but a reference file needs (the CLI's start-up)
    from gateway.shadow.analysis import slice_rules

    return ReferenceDataset(slice_rules(route.slices), source)


@dataclass
class _Day:
    day: date
    n: int
    samples: int
    agreed: int


@dataclass(frozen=True)
class _Population:
    rows: int
    labels: dict[str, dict[str, int]]  # dimension → value → requests
    days: list[_Day]  # by day


async def _population(
    connection: AsyncConnection, route: RouteConfig, cover: Coverage, dimension: str | None
) -> _Population:
    """Requests per label and per UTC day (with their agreement): rollup hours and raw parts."""
    rows: list[Any] = []
    if cover.hours:
        params = {**cover.params(route.name), "dimension": dimension}
        rows.extend((await connection.execute(_ROLLUP_LABEL_COUNTS, params)).all())
    for part in cover.raw:
        params = window_params(route, part, dimension=dimension)
        rows.extend((await connection.execute(_LABEL_COUNTS, params)).all())
    labels: dict[str, dict[str, int]] = {}
    days: dict[date, _Day] = {}
    for row in rows:
        if row.dim is not None:
            values = labels.setdefault(row.dim, {})
            values[row.val] = values.get(row.val, 0) + int(row.n)
            continue
        day = days.setdefault(row.day, _Day(row.day, 0, 0, 0))
        day.n += int(row.n)
        day.samples += int(row.samples)
        day.agreed += int(row.agreed)
    ordered = sorted(days.values(), key=lambda day: day.day)
    # in a set order (SQL's grouping has none), so ties in the PSI's bins come out the same
    labels = {dim: dict(sorted(values.items())) for dim, values in sorted(labels.items())}
    return _Population(sum(day.n for day in ordered), labels, ordered)


async def _lengths(
    connection: AsyncConnection, route: RouteConfig, cover: Coverage
) -> dict[int, int]:
    rows: list[Any] = []
    if cover.hours:
        rows.extend((await connection.execute(_ROLLUP_LENGTHS, cover.params(route.name))).all())
    for part in cover.raw:
        rows.extend((await connection.execute(_LENGTHS, window_params(route, part))).all())
    lengths: dict[int, int] = {}
    for row in rows:
        lengths[row.length] = lengths.get(row.length, 0) + int(row.n)
    return dict(sorted(lengths.items(), key=lambda item: (item[0] is None, item[0] or 0)))
