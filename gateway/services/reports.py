"""The analyst reports: slices, disagreements, threshold calibration, drift.

Every figure is aggregated in Postgres (``GROUP BY`` over the route's rows in the window:
labels, ``width_bucket`` of the confidence, prompt length, day); Python only sees per-group
counts, plus one page of rows for the disagreement listing. The statistics on those counts
(Wilson intervals, calibration curves, PSI) are :mod:`gateway.core.statistics`.

Reports answer with plain JSON-ready dicts, the same for the API and the CLI. Bad input is a
gateway error: :class:`~gateway.errors.RouteNotFound`, :class:`UnknownDimension` and
:class:`NoData` (404), :class:`NotEnoughData` and :class:`~gateway.errors.InvalidRequest`
(400).

:class:`DriftMonitor` keeps ``shadow_gateway_drift_psi{route,dimension}`` current in the
background: each route's last day against the week before it.
"""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import Text, literal_column, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.config import GatewayConfig, RouteConfig
from gateway.core import statistics as stats
from gateway.db.tables import requests, route_state
from gateway.errors import NoData, NotEnoughData, RouteNotFound, UnknownDimension
from gateway.protocol.reports import (
    LENGTH_DIMENSION,
    ReferenceDataset,
    Window,
    curve_json,
    encode_cursor,
    iso_time,
    point_json,
    proportion_json,
    psi_json,
    slice_json,
)
from gateway.shadow.analysis import slice_rules

_log = logging.getLogger("shadow_gateway.reports")
DEFAULT_PSI_THRESHOLD = 0.2
DEFAULT_MIN_ROWS = 50


TEXT_PARTS_COUNTED = 32


def last_user_text_sql(payload: str) -> str:
    """SQL for :func:`gateway.core.slices.last_user_text` of a jsonb column (NULL if NULL).

    No subqueries, so Postgres can scan in parallel: jsonpath finds the last user message,
    and a content-parts message joins its first :data:`TEXT_PARTS_COUNTED` text parts.
    """
    last = (
        f"(jsonb_path_query_array({payload}, "
        """'strict $.messages[*] ? (@.role == "user")', '{}', true) -> -1)"""
    )
    parts = (
        f"jsonb_path_query_array({last} -> 'content', "
        """'strict $[*] ? (@.text.type() == "string").text', '{}', true)"""
    )
    joined = ", ".join(f"{parts} ->> {i}" for i in range(TEXT_PARTS_COUNTED))
    return (
        f"CASE WHEN {payload} IS NULL THEN NULL"
        # the usual case, a chat whose last message is the user's text: no search
        f" WHEN {payload} -> 'messages' -> -1 ->> 'role' = 'user'"
        f" AND jsonb_typeof({payload} -> 'messages' -> -1 -> 'content') = 'string'"
        f" THEN {payload} -> 'messages' -> -1 ->> 'content'"
        f" WHEN jsonb_typeof({payload} -> 'messages') = 'array' THEN"
        f" CASE jsonb_typeof({last} -> 'content')"
        f" WHEN 'string' THEN {last} ->> 'content'"
        f" WHEN 'array' THEN concat_ws(' ', {joined})"
        " ELSE '' END"
        f" WHEN jsonb_typeof({payload} -> 'prompt') = 'string' THEN {payload} ->> 'prompt'"
        f" WHEN jsonb_typeof({payload} -> 'prompt' -> 0) = 'string'"
        f" THEN {payload} -> 'prompt' ->> 0"
        " ELSE '' END"
    )


_IN_WINDOW = "r.route = :route AND r.created_at >= :since AND r.created_at < :until"
# A row's labels (the writer stores an object of strings; anything else counts as no labels).
_EACH_LABEL = (
    "SELECT key, value FROM jsonb_each_text(CASE WHEN jsonb_typeof(r.slices) = 'object' "
    "THEN r.slices ELSE '{}' END) WHERE value IS NOT NULL"
)
# One row per (dimension, value) and one with NULLs for the route as a whole, in one scan.
_LABELS = (
    f"CROSS JOIN LATERAL (SELECT NULL::text, NULL::text UNION ALL {_EACH_LABEL} "
    "AND (CAST(:dimension AS text) IS NULL OR key = CAST(:dimension AS text))) AS s(dim, val)"
)
_SLICES = text(
    "SELECT s.dim, s.val, count(*) AS requests, count(r.agree) AS samples, "
    "count(*) FILTER (WHERE r.agree) AS agreed, count(r.fallback_reason) AS fallbacks, "
    "count(*) FILTER (WHERE r.served_by = 'student') AS student_served "
    f"FROM requests AS r {_LABELS} WHERE {_IN_WINDOW} GROUP BY 1, 2"
)
# Shadow comparisons only: the teacher answered and the student was not chosen. Fallbacks and
# student-served rows are selected by the live threshold, so they would bias the curve.
_CALIBRATION = text(
    "SELECT s.dim, s.val, "
    "width_bucket(r.student_confidence, CAST(:thresholds AS float8[])) AS bucket, "
    "count(*) AS samples, count(*) FILTER (WHERE r.agree) AS agreed "
    f"FROM requests AS r CROSS JOIN LATERAL (SELECT NULL::text, NULL::text UNION ALL "
    f"{_EACH_LABEL} AND key = ANY(CAST(:dimensions AS text[]))) AS s(dim, val) "
    f"WHERE {_IN_WINDOW} AND r.student_confidence IS NOT NULL AND r.agree IS NOT NULL "
    "AND r.served_by IS DISTINCT FROM 'student' AND r.fallback_reason IS NULL "
    "GROUP BY 1, 2, 3"
)
# Per (dimension, value) and per UTC day, with the route as a whole (the NULL row), in one
# scan: drift's populations and its agreement trend. (Grouping every row by day, not only the
# NULL row, keeps the planner's group estimate sane, so it hashes rather than sorts.)
_LABEL_COUNTS = text(
    "SELECT s.dim, s.val, (r.created_at AT TIME ZONE 'UTC')::date AS day, "
    "count(*) AS n, count(r.agree) AS samples, count(*) FILTER (WHERE r.agree) AS agreed "
    f"FROM requests AS r {_LABELS} WHERE {_IN_WINDOW} GROUP BY 1, 2, 3"
)
# Prompt lengths grouped by length: a few thousand numbers however many rows.
_LENGTHS = text(
    f"SELECT char_length({last_user_text_sql('r.request_payload')}) AS length, count(*) AS n "
    f"FROM requests AS r WHERE {_IN_WINDOW} AND r.request_payload IS NOT NULL GROUP BY 1"
)
_ROWS = text(f"SELECT count(*) AS n FROM requests AS r WHERE {_IN_WINDOW}")
_NO_JIT = text("SET LOCAL jit = off")
_HAS_DIMENSION = text(
    "SELECT EXISTS (SELECT 1 FROM requests WHERE route = :route AND slices ? :dimension)"
)


def route_config(config: GatewayConfig, name: str) -> RouteConfig:
    found = config.route(name)
    if found is None:
        known = ", ".join(sorted(route.name for route in config.routes))
        raise RouteNotFound(f"Unknown route '{name}'. Routes: {known}.", param="route")
    return found


def configured_dimensions(route: RouteConfig) -> set[str]:
    """Dimensions the route's config knows of (critical slices, rules, length, defaults)."""
    found = {c.dimension for c in route.slices.critical}
    found.update(rule.dimension for rule in route.slices.rules)
    found.update(route.slices.defaults)
    if route.slices.length_buckets:
        found.add(route.slices.length_buckets.dimension)
    return found


def _params(route: RouteConfig, window: Window, **extra: Any) -> dict[str, Any]:
    return {"route": route.name, "since": window.since, "until": window.until, **extra}


class Reports:
    def __init__(self, engine: AsyncEngine, config: GatewayConfig) -> None:
        self._engine = engine
        self._config = config

    def route(self, name: str) -> RouteConfig:
        return route_config(self._config, name)

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as connection:
            # The planner takes jsonb_each_text for 100 rows a call, expects ~50 times the
            # real row count and JIT-compiles; compiling then costs more than the query.
            await connection.execute(_NO_JIT)
            yield connection

    async def _check_dimension(
        self, connection: AsyncConnection, route: RouteConfig, dimension: str
    ) -> None:
        """404 unless the dimension is configured or some row of the route ever had it."""
        if dimension in configured_dimensions(route):
            return
        params = {"route": route.name, "dimension": dimension}
        if not (await connection.execute(_HAS_DIMENSION, params)).scalar():
            raise UnknownDimension(
                f"Route '{route.name}' has no slice dimension '{dimension}': no request was "
                "ever labelled with it and the route's config does not name it.",
                param="dimension",
            )

    async def _count(self, connection: AsyncConnection, route: RouteConfig, window: Window) -> int:
        return int((await connection.execute(_ROWS, _params(route, window))).scalar_one())

    # -- slices ---------------------------------------------------------------------------

    async def slices(
        self, name: str, window: Window, dimension: str | None = None
    ) -> dict[str, Any]:
        """Per slice: comparisons, agreement (95% interval), bar, fallbacks, student share."""
        route = self.route(name)
        async with self._reading() as connection:
            rows = (
                await connection.execute(_SLICES, _params(route, window, dimension=dimension))
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

    # -- disagreements --------------------------------------------------------------------

    async def disagreements(
        self,
        name: str,
        window: Window,
        *,
        slices: Sequence[tuple[str, str]] = (),
        served_by: str | None = None,
        score: tuple[float | None, float | None] = (None, None),
        confidence: tuple[float | None, float | None] = (None, None),
        limit: int = 50,
        cursor: tuple[datetime, str] | None = None,
    ) -> dict[str, Any]:
        """One page of comparisons that disagreed, newest first, with both answers."""
        route = self.route(name)
        r = requests.c
        prompt = literal_column(last_user_text_sql("requests.request_payload"), Text).label(
            "prompt"
        )
        query = select(
            r.request_id,
            r.created_at,
            r.served_by,
            r.slices,
            prompt,
            r.teacher_output,
            r.student_output,
            r.student_confidence,
            r.agreement_score,
            r.agreement_reason,
        ).where(
            r.route == name,
            r.agree.is_(False),
            r.created_at >= window.since,
            r.created_at < window.until,
        )
        if slices:
            query = query.where(r.slices.contains(dict(slices)))
        if served_by is not None:
            query = query.where(r.served_by == served_by)
        for column, (low, high) in ((r.agreement_score, score), (r.student_confidence, confidence)):
            if low is not None:
                query = query.where(column >= low)
            if high is not None:
                query = query.where(column <= high)
        if cursor is not None:
            query = query.where(tuple_(r.created_at, r.request_id) < tuple_(*cursor))
        query = query.order_by(r.created_at.desc(), r.request_id.desc()).limit(limit + 1)
        async with self._reading() as connection:
            rows = (await connection.execute(query)).all()
            if not rows:
                for dimension, _ in slices:
                    await self._check_dimension(connection, route, dimension)
        page = rows[:limit]
        next_cursor = (
            encode_cursor(page[-1].created_at, page[-1].request_id) if len(rows) > limit else None
        )
        return {
            "route": name,
            **window.as_json(),
            "filters": {
                "slices": dict(slices),
                "served_by": served_by,
                "min_score": score[0],
                "max_score": score[1],
                "min_confidence": confidence[0],
                "max_confidence": confidence[1],
            },
            "disagreements": [
                {
                    "request_id": row.request_id,
                    "created_at": iso_time(row.created_at),
                    "served_by": row.served_by,
                    "slices": row.slices,
                    "prompt": row.prompt,
                    "teacher_output": row.teacher_output,
                    "student_output": row.student_output,
                    "student_confidence": row.student_confidence,
                    "agreement_score": row.agreement_score,
                    "agreement_reason": row.agreement_reason,
                }
                for row in page
            ],
            "next_cursor": next_cursor,
        }

    # -- threshold calibration ------------------------------------------------------------

    async def thresholds(
        self,
        name: str,
        window: Window,
        candidates: Sequence[float] | None = None,
        dimension: str | None = None,
        conservative: bool = False,
    ) -> dict[str, Any]:
        """Served share and agreement per candidate threshold; the lowest that keeps every bar."""
        route = self.route(name)
        bars = [
            stats.Bar(c.dimension, c.value, c.min_agreement, c.min_samples)
            for c in route.slices.critical
        ]
        gate = not bars
        if gate:  # no critical slice: the route as a whole, against its ramp gate
            rollout = route.rollout
            bars = [stats.Bar("all", "all", rollout.gate_min_agreement, rollout.gate_min_samples)]
        async with self._reading() as connection:
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
            params = _params(
                route, window, thresholds=list(thresholds), dimensions=sorted(dimensions)
            )
            rows = (await connection.execute(_CALIBRATION, params)).all()
            if not rows:
                count = await self._count(connection, route, window)
                if count == 0:
                    raise NoData(f"Route '{name}' has no requests from {window.describe()}.")
                raise NotEnoughData(
                    f"Route '{name}' has {count} requests from {window.describe()} but no "
                    "shadow comparison with a student confidence (the teacher answered, the "
                    "student was not chosen, both answers compared); calibration needs those."
                )
        buckets: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
        for row in rows:
            key = ("all", "all") if row.dim is None else (row.dim, row.val)
            buckets.setdefault(key, {})[row.bucket] = (row.samples, row.agreed)
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

    # -- drift ----------------------------------------------------------------------------

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
            _enough(now_rows, min_rows, f"Route '{name}' from {current.describe()}")
            reference_agreement = None
            if isinstance(reference, Window):
                ref = await _population(connection, route, reference, dimension)
                ref_rows, ref_labels = ref.rows, ref.labels
                reference_agreement = proportion_json(
                    sum(day.agreed for day in ref.days), sum(day.samples for day in ref.days)
                )
                _enough(
                    ref_rows, min_rows, f"Route '{name}', reference window {reference.describe()}"
                )
                ref_lengths = await _lengths(connection, route, reference)
            else:
                ref_rows, ref_labels = reference.rows, reference.labels(dimension)
                _enough(ref_rows, min_rows, f"The reference dataset {reference.source}")
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


def _figures(row: Any) -> tuple[int, int, int, int, int]:
    if row is None:
        return 0, 0, 0, 0, 0
    return row.requests, row.samples, row.agreed, row.fallbacks, row.student_served


def _enough(rows: int, min_rows: int, subject: str) -> None:
    """``subject``: what has the rows, e.g. "Route 'x' from <window>"."""
    if rows == 0:
        raise NoData(f"{subject}: no requests.")
    if rows < min_rows:
        raise NotEnoughData(
            f"{subject}: only {rows} requests; drift needs at least {min_rows} on each side "
            "(widen the window, or lower min_rows)."
        )


@dataclass(frozen=True)
class _Population:
    rows: int
    labels: dict[str, dict[str, int]]  # dimension → value → requests
    days: list[Any]  # rows with day, n, samples, agreed; by day


async def _population(
    connection: AsyncConnection, route: RouteConfig, window: Window, dimension: str | None
) -> _Population:
    rows = (
        await connection.execute(_LABEL_COUNTS, _params(route, window, dimension=dimension))
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
    rows = await connection.execute(_LENGTHS, _params(route, window))
    return {row.length: row.n for row in rows}


class DriftMonitor:
    """Refreshes ``shadow_gateway_drift_psi{route,dimension}`` every ``interval_s``.

    Each route's last ``current_s`` is compared with the ``reference_s`` before it. Exported
    dimensions are bounded like every slice metric: critical slices' dimensions, the ones
    listed in ``metrics.slice_values``, and ``_prompt_length``. A route without enough data on
    either side has its series removed rather than left stale.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        config: GatewayConfig,
        gauge: Gauge,
        *,
        interval_s: float = 300.0,
        current_s: float = 86400.0,
        reference_s: float = 7 * 86400.0,
        min_rows: int = DEFAULT_MIN_ROWS,
    ) -> None:
        self._reports = Reports(engine, config)
        self._config = config
        self._gauge = gauge
        self._interval_s = interval_s
        self._current_s = current_s
        self._reference_s = reference_s
        self._min_rows = min_rows
        self._exported: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="drift-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # Postgres down or a bad row: try again next round
                _log.warning(
                    "drift refresh failed; retrying in %gs", self._interval_s, exc_info=True
                )
            await asyncio.sleep(self._interval_s)

    async def refresh(self, now: datetime | None = None) -> None:
        until = now or datetime.now(UTC)
        current = Window(until - timedelta(seconds=self._current_s), until)
        reference = Window(current.since - timedelta(seconds=self._reference_s), current.since)
        for route in self._config.routes:
            exported = {c.dimension for c in route.slices.critical} | set(
                self._config.metrics.slice_values
            )
            try:
                report = await self._reports.drift(
                    route.name, current, reference, min_rows=self._min_rows
                )
            except (NoData, NotEnoughData):
                values: dict[str, float] = {}
            else:
                values = {d["dimension"]: d["psi"] for d in report["dimensions"]}
                values = {dim: psi for dim, psi in values.items() if dim in exported}
                if report["prompt_length"] is not None:
                    values[LENGTH_DIMENSION] = report["prompt_length"]["psi"]
            self._set(route.name, values)

    def _set(self, route: str, values: Mapping[str, float]) -> None:
        for stale in self._exported.get(route, set()) - set(values):
            with contextlib.suppress(KeyError):
                self._gauge.remove(route, stale)
        for dimension, value in values.items():
            self._gauge.labels(route, dimension).set(value)
        self._exported[route] = set(values)
