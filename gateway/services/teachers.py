"""Teacher versions: which (model, system fingerprint) each route's teacher answers with, and
when that changes.

Every ``requests`` row keeps what the teacher's answer said of itself:
``teacher_model_reported`` (the response's ``model``) and ``teacher_fingerprint`` (its
``system_fingerprint``), streams included. A route's *teacher version* is that pair; either
half may be missing (vLLM reports no fingerprint), not both: a row with neither (the teacher
failed) has no version.

:class:`TeacherVersions` watches the rows the log writer stores (:meth:`LogWriter.observe`: in
the writer's task once the batch is in Postgres, fresh or replayed from the journal; the
request path does nothing) and keeps ``teacher_versions`` (migration 0013) and the audit log:

- The first version a route ever reports is recorded in ``teacher_versions`` without an
  event: nothing changed (its ``first_seen`` says when it started).
- A version new to a route that already had one is recorded with exactly one
  ``teacher_changed`` event in ``route_events`` (actor ``gateway``, old and new
  ``{model, fingerprint}``) and one increment of ``shadow_gateway_teacher_changes_total``,
  however many workers and replicas see it at once: the event is written in the transaction
  whose ``INSERT … ON CONFLICT DO NOTHING RETURNING`` inserted the version, so only that one
  writes it, and the counter grows in that process (Prometheus sums them). A per-route
  advisory lock orders new versions of one route, so only one can be its first.
- A version the route reported before is not new, however long ago: a teacher going back to
  an older version (load-balanced fingerprints alternate) adds to its counts and makes no
  event, so the alert does not flap.

Cost: a set look-up per stored row. Postgres is asked only about a version this process has
not seen (a few statements, once per version), and once every ``flush_interval_s`` for the
counts (``requests``, ``last_seen``: one ``UPDATE``). The set is seeded from the table at
start-up. While Postgres refuses, what was seen is kept (bounded) for the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.background import BackgroundLoop, RecurringFailure
from gateway.config import GatewayConfig
from gateway.db.tables import route_events, teacher_versions
from gateway.metrics import Metrics
from gateway.protocol.reports import iso_time, version_name

_log = logging.getLogger("shadow_gateway.teachers")

ACTOR = "gateway"
CHANGED = "teacher_changed"
DEFAULT_FLUSH_INTERVAL_S = 2.0
# Versions (with their counts) held between flushes; only reached while Postgres refuses, with
# more versions than any teacher has: the rest are seen again once it is back.
MAX_PENDING = 10_000

VersionKey = tuple[str, str | None, str | None]  # route, model reported, fingerprint

_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('shadow_gateway_teacher_versions:' || :route))")
# The version the route was answering with before the new one: the one seen last.
_PREVIOUS = text(
    "SELECT model_reported, fingerprint FROM teacher_versions WHERE route = :route AND id <> :id "
    "ORDER BY last_seen DESC, id DESC LIMIT 1"
)
_ADD_COUNTS = text(
    "UPDATE teacher_versions AS v SET requests = v.requests + u.n, "
    "last_seen = greatest(v.last_seen, u.last_seen), "
    "first_request_id = CASE WHEN u.first_seen < v.first_seen THEN u.first_request_id "
    "ELSE v.first_request_id END, "
    "first_seen = least(v.first_seen, u.first_seen) "
    "FROM unnest(CAST(:routes AS text[]), CAST(:models AS text[]), "
    "CAST(:fingerprints AS text[]), CAST(:counts AS bigint[]), CAST(:firsts AS timestamptz[]), "
    "CAST(:first_ids AS text[]), CAST(:lasts AS timestamptz[])) "
    "AS u(route, model, fingerprint, n, first_seen, first_request_id, last_seen) "
    "WHERE v.route = u.route AND coalesce(v.model_reported, '') = coalesce(u.model, '') "
    "AND coalesce(v.fingerprint, '') = coalesce(u.fingerprint, '')"
)


def describe(model: str | None, fingerprint: str | None) -> str:
    """A version in words: ``model gpt-4o fingerprint fp_1``, ``model m, no fingerprint``."""
    said = f"model {model}" if model is not None else "no model"
    return (
        f"{said} fingerprint {fingerprint}"
        if fingerprint is not None
        else f"{said}, no fingerprint"
    )


def _version(model: Any, fingerprint: Any) -> dict[str, Any]:
    return {"model": model, "fingerprint": fingerprint}


@dataclass
class _Seen:
    """What the rows of one version said since the last flush."""

    requests: int
    first_seen: datetime
    first_request_id: str
    last_seen: datetime

    def add(self, requests: int, first: datetime, first_request_id: str, last: datetime) -> None:
        self.requests += requests
        if first < self.first_seen:
            self.first_seen, self.first_request_id = first, first_request_id
        self.last_seen = max(self.last_seen, last)


class TeacherVersions(BackgroundLoop):
    """Records each route's teacher versions and their changes (see the module docstring)."""

    task_name = "teacher-versions"

    def __init__(
        self,
        engine: AsyncEngine,
        metrics: Metrics,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        super().__init__()
        self._engine = engine
        self._metrics = metrics
        self._flush_interval_s = flush_interval_s
        self._max_pending = max_pending
        self._known: set[VersionKey] = set()  # recorded in teacher_versions
        self._seen: dict[VersionKey, _Seen] = {}  # since the last flush
        self._wake = asyncio.Event()
        self._failure = RecurringFailure(_log, "recording teacher versions")

    async def seed(self) -> None:
        """The versions already recorded, so only a new one costs a trip to Postgres."""
        columns = teacher_versions.c
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(columns.route, columns.model_reported, columns.fingerprint)
            )
            self._known.update((row.route, row.model_reported, row.fingerprint) for row in rows)

    # -- the writer's task ------------------------------------------------------------------

    def saw(self, records: Iterable[dict[str, Any]]) -> None:
        """Rows the writer stored (:meth:`LogWriter.observe`): no I/O, a look-up per row."""
        seen = self._seen
        for record in records:
            model = record.get("teacher_model_reported") or None
            fingerprint = record.get("teacher_fingerprint") or None
            if model is None and fingerprint is None:
                continue  # not a teacher half, or a teacher that said nothing of itself
            key = (record["route"], model, fingerprint)
            at = record.get("created_at")
            if not isinstance(at, datetime):
                at = datetime.now(UTC)
            request_id = str(record.get("request_id"))
            held = seen.get(key)
            if held is not None:
                held.add(1, at, request_id, at)
            elif len(seen) < self._max_pending:
                seen[key] = _Seen(1, at, request_id, at)
                if key not in self._known:
                    self._wake.set()  # record it now, not at the next round

    # -- the background task ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # Postgres down, say: kept for the next round
                self._failure.failed(exc)
            else:
                self._failure.succeeded()

    async def stop(self) -> None:
        """Stop the loop, then write what the last batches showed (the writer is closed)."""
        await super().stop()
        try:
            await asyncio.wait_for(self.flush(), 5)
        except Exception as exc:
            _log.warning("teacher versions seen last were not recorded (%s)", exc)

    async def flush(self) -> None:
        """Record the versions not seen before, then add every version's counts."""
        seen, self._seen = self._seen, {}
        if not seen:
            return
        try:
            new = sorted(
                (k for k in seen if k not in self._known), key=lambda k: seen[k].first_seen
            )
            for key in new:
                await self._record(key, seen[key])
                self._known.add(key)
            await self._add_counts(seen)
        except BaseException:
            self._keep(seen)
            raise

    def _keep(self, seen: dict[VersionKey, _Seen]) -> None:
        """Put back what a failed flush took, merged with what came meanwhile."""
        for key, old in seen.items():
            held = self._seen.get(key)
            if held is None:
                self._seen[key] = old
            else:
                held.add(old.requests, old.first_seen, old.first_request_id, old.last_seen)

    async def _record(self, key: VersionKey, seen: _Seen) -> None:
        """Insert the version; the one process that inserts it writes the event, if any."""
        route, model, fingerprint = key
        async with self._engine.begin() as connection:
            await connection.execute(_LOCK, {"route": route})
            inserted = (
                await connection.execute(
                    pg_insert(teacher_versions)
                    .values(
                        route=route,
                        model_reported=model,
                        fingerprint=fingerprint,
                        first_seen=seen.first_seen,
                        last_seen=seen.first_seen,
                        first_request_id=seen.first_request_id,
                        requests=0,  # the counts follow, with every other version's
                    )
                    .on_conflict_do_nothing()
                    .returning(teacher_versions.c.id)
                )
            ).scalar()
            if inserted is None:
                return  # another worker or replica recorded it first
            changed = await self._changed(connection, key, inserted, seen)
        if changed:
            self._metrics.teacher_changes.labels(route).inc()

    async def _changed(
        self, connection: AsyncConnection, key: VersionKey, inserted: int, seen: _Seen
    ) -> bool:
        """The ``teacher_changed`` event, unless this is the route's first version."""
        route, model, fingerprint = key
        previous = (await connection.execute(_PREVIOUS, {"route": route, "id": inserted})).first()
        if previous is None:
            _log.info("route %s: the teacher reports %s", route, describe(model, fingerprint))
            return False
        was = describe(previous.model_reported, previous.fingerprint)
        reason = f"the teacher now reports {describe(model, fingerprint)} (was {was})"
        await connection.execute(
            insert(route_events).values(
                route=route,
                actor=ACTOR,
                action=CHANGED,
                old=_version(previous.model_reported, previous.fingerprint),
                new=_version(model, fingerprint),
                reason=reason,
                detail={
                    "first_request_id": seen.first_request_id,
                    "first_seen": iso_time(seen.first_seen),
                },
            )
        )
        _log.warning("route %s: %s", route, reason)
        return True

    async def _add_counts(self, seen: dict[VersionKey, _Seen]) -> None:
        counted = [(key, value) for key, value in seen.items() if key in self._known]
        if not counted:
            return
        async with self._engine.begin() as connection:
            await connection.execute(
                _ADD_COUNTS,
                {
                    "routes": [key[0] for key, _ in counted],
                    "models": [key[1] for key, _ in counted],
                    "fingerprints": [key[2] for key, _ in counted],
                    "counts": [value.requests for _, value in counted],
                    "firsts": [value.first_seen for _, value in counted],
                    "first_ids": [value.first_request_id for _, value in counted],
                    "lasts": [value.last_seen for _, value in counted],
                },
            )


# -- reading --------------------------------------------------------------------------------


async def route_versions(engine: AsyncEngine, config: GatewayConfig, name: str) -> dict[str, Any]:
    """The route's teacher versions, oldest first; ``latest``: the one seen last. Raises
    :class:`~gateway.errors.RouteNotFound` for a route the config does not have."""
    config.find_route(name)
    columns = teacher_versions.c
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(teacher_versions)
                .where(columns.route == name)
                .order_by(columns.first_seen, columns.id)
            )
        ).all()
    latest = max(rows, key=lambda row: (row.last_seen, row.id)) if rows else None
    return {
        "route": name,
        "versions": [
            {
                "version": version_name(row.model_reported, row.fingerprint),
                "model_reported": row.model_reported,
                "fingerprint": row.fingerprint,
                "first_seen": iso_time(row.first_seen),
                "last_seen": iso_time(row.last_seen),
                "first_request_id": row.first_request_id,
                "requests": row.requests,
                "latest": row is latest,
            }
            for row in rows
        ],
    }
