"""The export's queries: which rows match, counts per stratum, and why nothing matched."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Text, and_, cast, func, or_, select, union
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.tables import feedback, requests, reviews
from gateway.services import judgements
from gateway.services.export.model import ExportRequest, ExportResult, Stratum

COLUMNS = (
    requests.c.request_id,
    requests.c.endpoint,
    requests.c.created_at,
    requests.c.slices,
    requests.c.request_payload,
    requests.c.teacher_output,
    requests.c.teacher_tool_calls,
    requests.c.teacher_refusal,
    requests.c.teacher_model_reported,
    requests.c.teacher_fingerprint,
)
# The teacher gave a whole answer: text, tool calls or a refusal.
ANSWERED = and_(
    requests.c.teacher_status == 200,
    or_(
        requests.c.teacher_output != "",
        requests.c.teacher_tool_calls.is_not(None),
        requests.c.teacher_refusal.is_not(None),
    ),
    requests.c.teacher_error.is_(None),
)
USABLE = and_(ANSWERED, requests.c.teacher_finish_reason.is_distinct_from("length"))
JOINT = cast(requests.c.slices, Text)  # jsonb's text form: the same labels, the same text


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One REPEATABLE READ, read-only transaction: counts and rows agree while the gateway
    keeps logging."""
    async with engine.connect() as connection:
        await connection.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
        async with connection.begin():
            yield connection


def in_window(request: ExportRequest) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [requests.c.route == request.route]
    if request.since is not None:
        conditions.append(requests.c.created_at >= request.since)
    if request.until is not None:
        conditions.append(requests.c.created_at < request.until)
    return conditions


def matching(request: ExportRequest) -> list[ColumnElement[bool]]:
    conditions = in_window(request)
    for dimension, values in request.slices.items():
        conditions.append(or_(*(requests.c.slices.contains({dimension: v}) for v in values)))
    if request.mix is not None:
        mix = request.mix
        conditions.append(requests.c.slices[mix.dimension].astext.in_(list(mix.shares)))
    if request.only_disagreements:
        conditions.append(requests.c.agree.is_(False))
    return conditions


def stratum_key(request: ExportRequest) -> ColumnElement[Any]:
    if request.mix is not None:
        value: ColumnElement[Any] = requests.c.slices[request.mix.dimension].astext
        return value
    return JOINT


async def survey(connection: AsyncConnection, request: ExportRequest) -> ExportResult:
    """Count what the filters match, per stratum, before reading any row in full."""
    query = (
        select(
            JOINT,
            func.count(),
            func.count().filter(requests.c.teacher_status.is_(None)),
            func.count().filter(ANSWERED),
            func.count().filter(USABLE),
            func.min(requests.c.created_at),
            func.max(requests.c.created_at),
        )
        .where(*matching(request))
        .group_by(JOINT)
    )
    found = ExportResult(request)
    rows = await connection.execute(query)
    for text, live, not_asked, answered, usable, first, last in rows:
        labels: dict[str, str] = orjson.loads(text)
        key, shown = text, labels
        if request.mix is not None:
            key = labels[request.mix.dimension]
            shown = {request.mix.dimension: key}
        stratum = found.strata.setdefault(key, Stratum(shown))
        stratum.live += live
        stratum.usable += usable
        found.live_per_slice.update(dict.fromkeys(labels.items(), live))
        found.live += live
        found.not_asked += not_asked
        found.answered += answered
        found.usable += usable
        found.first_row = min(found.first_row or first, first)
        found.last_row = max(found.last_row or last, last)
    return found


def window_text(request: ExportRequest) -> str:
    since = request.since.isoformat() if request.since else "the first row"
    return f"from {since} until {request.until.isoformat() if request.until else 'now'}"


async def explain_empty(connection: AsyncConnection, request: ExportRequest) -> str:
    """Why nothing matched, in terms the person can act on."""
    route, window = request.route, in_window(request)
    rows, first, last = (
        await connection.execute(
            select(
                func.count(), func.min(requests.c.created_at), func.max(requests.c.created_at)
            ).where(requests.c.route == route)
        )
    ).one()
    if rows == 0:
        return f"no rows: route {route!r} has no logged requests"
    where = f"for route {route!r} {window_text(request)}"
    if (await connection.execute(select(func.count()).where(*window))).scalar_one() == 0:
        return f"no rows {where}; its {rows} rows are from {first:%Y-%m-%d} to {last:%Y-%m-%d}"
    wanted = {dimension: list(values) for dimension, values in request.slices.items()}
    if request.mix is not None:
        wanted.setdefault(request.mix.dimension, []).extend(request.mix.shares)
    for dimension, values in wanted.items():
        if problem := await unknown_slice(connection, window, dimension, values):
            return f"no rows {where}: {problem}"
    if request.only_disagreements:
        return f"no rows {where}: no disagreement (agree = false) among the rows that match"
    shown = ", ".join(f"{dimension}={'|'.join(values)}" for dimension, values in wanted.items())
    return f"no rows {where} match all of {shown} at once"


async def unknown_slice(
    connection: AsyncConnection,
    window: list[ColumnElement[bool]],
    dimension: str,
    values: Sequence[str],
) -> str | None:
    value = requests.c.slices[dimension].astext
    query = select(value).where(*window, value.is_not(None)).distinct().limit(51)
    seen = sorted(v for (v,) in await connection.execute(query))
    if not seen:
        keys = func.jsonb_object_keys(requests.c.slices)
        query = select(keys).where(*window).distinct().limit(50)
        dimensions = ", ".join(sorted(k for (k,) in await connection.execute(query)))
        return f"no row has the slice {dimension!r} (slices seen: {dimensions or 'none'})"
    missing = [v for v in values if v not in seen]
    if len(seen) > 50:  # the list was cut short: ask about each value
        missing = []
        for v in values:
            probe = select(1).where(*window, requests.c.slices.contains({dimension: v})).limit(1)
            if (await connection.execute(probe)).first() is None:
                missing.append(v)
    if not missing:
        return None
    listed = ", ".join(seen[:50]) + (", …" if len(seen) > 50 else "")
    return f"no row has {dimension}={missing[0]} (values seen for {dimension}: {listed})"


@dataclass(frozen=True)
class JudgedWrong:
    """A usable row whose teacher answer was judged wrong (:mod:`gateway.services.judgements`)."""

    stratum: str
    labels: dict[str, str]
    by_review: bool
    correction: str | None


async def judged_wrong(
    connection: AsyncConnection, request: ExportRequest
) -> dict[tuple[str, datetime], JudgedWrong]:
    """The usable rows the filters match whose teacher answer was judged wrong, by key.

    The judgement is evaluated only on rows with a review or a feedback row at all (found by
    key, so each reaches only its own partition): a handful of people's and apps' judgements,
    not the whole window, so the dict stays small and the query fast.
    """
    route = request.route
    judged = union(
        select(reviews.c.request_id, reviews.c.request_created_at).where(
            reviews.c.route == route, reviews.c.verdict.is_not(None)
        ),
        select(feedback.c.request_id, feedback.c.request_created_at).where(
            feedback.c.route == route
        ),
    ).subquery("judged")
    query = (
        select(
            requests.c.request_id,
            requests.c.created_at,
            stratum_key(request),
            requests.c.slices,
            judgements.judged_by_review(),
            judgements.teacher_correction(),
        )
        .select_from(
            judged.join(
                requests,
                and_(
                    requests.c.request_id == judged.c.request_id,
                    requests.c.created_at == judged.c.request_created_at,
                ),
            )
        )
        .where(*matching(request), USABLE, judgements.teacher_judged_wrong())
    )
    return {
        (request_id, created_at): JudgedWrong(key, labels or {}, by_review, correction)
        for request_id, created_at, key, labels, by_review, correction in await connection.execute(
            query
        )
    }
