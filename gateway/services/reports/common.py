"""What every report shares: the route's window in SQL, a reading connection, bad-input checks,
and the one order slices are listed in (:func:`rank_slices`)."""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.config import GatewayConfig, RouteConfig
from gateway.errors import NoData, NotEnoughData, UnknownDimension
from gateway.protocol.reports import Window
from gateway.services.reports.rollup import Coverage, coverage

TEXT_PARTS_COUNTED = 32


def last_user_text_sql(payload: str) -> str:
    """SQL for :func:`gateway.core.slices.last_user_text` of a jsonb column (NULL if NULL),
    chat ``messages``, the Responses API's ``input`` and completion prompts alike.

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
    responses = last.replace("$.messages", "$.input")
    responses_parts = parts.replace(last, responses)
    responses_joined = ", ".join(f"{responses_parts} ->> {i}" for i in range(TEXT_PARTS_COUNTED))
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
        # the Responses API: an input string, or the last user item of an input list
        f" WHEN jsonb_typeof({payload} -> 'input') = 'string' THEN {payload} ->> 'input'"
        f" WHEN jsonb_typeof({payload} -> 'input') = 'array' THEN"
        f" CASE jsonb_typeof({responses} -> 'content')"
        f" WHEN 'string' THEN {responses} ->> 'content'"
        f" WHEN 'array' THEN concat_ws(' ', {responses_joined})"
        " ELSE '' END"
        f" WHEN jsonb_typeof({payload} -> 'prompt') = 'string' THEN {payload} ->> 'prompt'"
        f" WHEN jsonb_typeof({payload} -> 'prompt' -> 0) = 'string'"
        f" THEN {payload} -> 'prompt' ->> 0"
        " ELSE '' END"
    )


IN_WINDOW = "r.route = :route AND r.created_at >= :since AND r.created_at < :until"
# A row's labels (the writer stores an object of strings; anything else counts as no labels).
EACH_LABEL = (
    "SELECT key, value FROM jsonb_each_text(CASE WHEN jsonb_typeof(r.slices) = 'object' "
    "THEN r.slices ELSE '{}' END) WHERE value IS NOT NULL"
)
# One row per (dimension, value) and one with NULLs for the route as a whole, in one scan.
LABELS = (
    f"CROSS JOIN LATERAL (SELECT NULL::text, NULL::text UNION ALL {EACH_LABEL} "
    "AND (CAST(:dimension AS text) IS NULL OR key = CAST(:dimension AS text))) AS s(dim, val)"
)
# teacher_version: the rows whose teacher reported that fingerprint or that model (NULL: all).
TEACHER_VERSION = (
    "(CAST(:teacher_version AS text) IS NULL OR r.teacher_fingerprint = :teacher_version "
    "OR r.teacher_model_reported = :teacher_version)"
)
# The same for student_answers rows: their request's teacher.
ANSWER_TEACHER_VERSION = (
    "(CAST(:teacher_version AS text) IS NULL OR EXISTS (SELECT 1 FROM requests AS q "
    "WHERE q.request_id = r.request_id AND q.created_at = r.created_at "
    "AND (q.teacher_fingerprint = :teacher_version "
    "OR q.teacher_model_reported = :teacher_version)))"
)
_ROWS = text(f"SELECT count(*) AS n FROM requests AS r WHERE {IN_WINDOW}")
_TEACHER_VERSIONS = text(
    "SELECT model_reported, fingerprint FROM teacher_versions WHERE route = :route "
    "ORDER BY first_seen, id"
)
_NO_JIT = text("SET LOCAL jit = off")
_REPEATABLE_READ = text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
HAS_DIMENSION = text(
    "SELECT EXISTS (SELECT 1 FROM requests WHERE route = :route AND slices ? :dimension)"
)


def configured_dimensions(route: RouteConfig) -> set[str]:
    """Dimensions the route's config knows of (critical slices, rules, length, defaults)."""
    found = {c.dimension for c in route.slices.critical}
    found.update(rule.dimension for rule in route.slices.rules)
    found.update(route.slices.defaults)
    if route.slices.length_buckets:
        found.add(route.slices.length_buckets.dimension)
    return found


def of_version(teacher_version: str | None) -> str:
    """`` answered by teacher version 'V'`` for a message, or nothing."""
    return f" answered by teacher version '{teacher_version}'" if teacher_version else ""


def window_params(route: RouteConfig, window: Window, **extra: Any) -> dict[str, Any]:
    """The window's parameters, with no teacher version unless ``extra`` names one."""
    return {
        "route": route.name,
        "since": window.since,
        "until": window.until,
        "teacher_version": None,
        **extra,
    }


def samples_needed(line: Mapping[str, Any], route: RouteConfig) -> int:
    """The comparisons a slice needs before its agreement counts in the order: its bar's
    ``min_samples`` for a critical slice, else the route's own bar's ``gate_min_samples``."""
    needed = line.get("min_samples")
    return int(needed) if needed else route.rollout.gate_min_samples


def worst_first(line: Mapping[str, Any]) -> tuple[Any, ...]:
    """The one slice order (a sort key over a line marked by :func:`rank_slices`).

    Slices with too few comparisons come last, never first because of one bad sample (those
    with none at the very end); before them, failing critical slices first, then every slice
    by the low end of its 95% interval, worst first. A failing slice always has enough
    comparisons: a critical slice is judged only from its ``min_samples``.
    """
    low = line["ci_low"]
    return (
        not line["enough_samples"],
        line["samples"] == 0,
        line["verdict"] != "fail",
        low if low is not None else 0.0,
        line["dimension"],
        line["value"],
    )


def mark_samples(line: Mapping[str, Any], route: RouteConfig) -> dict[str, Any]:
    """A copy of a slice line with ``samples_needed`` and ``enough_samples``, so a reader
    sees why a slice is ranked last."""
    needed = samples_needed(line, route)
    return {**line, "samples_needed": needed, "enough_samples": line["samples"] >= needed}


def rank_slices(lines: Iterable[Mapping[str, Any]], route: RouteConfig) -> list[dict[str, Any]]:
    """Slice lines (``dimension``, ``value``, ``samples``, ``ci_low``, ``verdict``,
    ``min_samples``), marked (:func:`mark_samples`) and in :func:`worst_first` order."""
    return sorted((mark_samples(line, route) for line in lines), key=worst_first)


def window_params_of(params: dict[str, Any], part: Window) -> dict[str, Any]:
    """``params`` (of :func:`window_params`) for a part of their window, read raw."""
    return {**params, "since": part.since, "until": part.until}


def enough(rows: int, min_rows: int, subject: str) -> None:
    """``subject``: what has the rows, e.g. "Route 'x' from <window>"."""
    if rows == 0:
        raise NoData(f"{subject}: no requests.")
    if rows < min_rows:
        raise NotEnoughData(
            f"{subject}: only {rows} requests; drift needs at least {min_rows} on each side "
            "(widen the window, or lower min_rows)."
        )


class ReportsBase:
    """The engine, the config and the checks each report's mixin builds on."""

    def __init__(self, engine: AsyncEngine, config: GatewayConfig, *, rollups: bool = True) -> None:
        self._engine = engine
        self._config = config
        # False: every figure from raw rows (what the rollups are tested against)
        self._rollups = rollups

    def route(self, name: str) -> RouteConfig:
        return self._config.find_route(name)

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as connection:
            # The planner takes jsonb_each_text for 100 rows a call, expects ~50 times the
            # real row count and JIT-compiles; compiling then costs more than the query.
            await connection.execute(_NO_JIT)
            yield connection

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[AsyncConnection]:
        """:meth:`_reading` in one REPEATABLE READ snapshot: a report that adds rollup hours
        to raw sub-windows sees the rollups and the raw rows as of the same moment."""
        async with self._engine.connect() as connection:
            await connection.execute(_REPEATABLE_READ)
            await connection.execute(_NO_JIT)
            yield connection

    async def _coverage(
        self, connection: AsyncConnection, route: RouteConfig, window: Window
    ) -> Coverage:
        return await coverage(connection, route.name, window, enabled=self._rollups)

    async def _check_dimension(
        self, connection: AsyncConnection, route: RouteConfig, dimension: str
    ) -> None:
        """404 unless the dimension is configured or some row of the route ever had it."""
        if dimension in configured_dimensions(route):
            return
        found = {"route": route.name, "dimension": dimension}
        if not (await connection.execute(HAS_DIMENSION, found)).scalar():
            raise UnknownDimension(
                f"Route '{route.name}' has no slice dimension '{dimension}': no request was "
                "ever labelled with it and the route's config does not name it.",
                param="dimension",
            )

    async def _check_teacher_version(
        self, connection: AsyncConnection, route: RouteConfig, version: str | None
    ) -> None:
        """404 unless the route's teacher ever reported ``version`` (as a fingerprint or a
        model); called when a report filtered on it found nothing."""
        if version is None:
            return
        rows = (await connection.execute(_TEACHER_VERSIONS, {"route": route.name})).all()
        if any(version in (row.fingerprint, row.model_reported) for row in rows):
            return
        known = list(dict.fromkeys(row.fingerprint or row.model_reported for row in rows))
        raise NoData(
            f"Route '{route.name}' has no teacher version '{version[:100]}': its teacher never "
            "reported it as a system_fingerprint or a model (versions: "
            f"{', '.join(known[-10:]) or 'none yet'}).",
            param="teacher_version",
            code="teacher_version_not_found",
        )

    async def _count(self, connection: AsyncConnection, route: RouteConfig, window: Window) -> int:
        return int((await connection.execute(_ROWS, window_params(route, window))).scalar_one())
