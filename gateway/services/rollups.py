"""Hourly rollups of ``requests`` and ``student_answers``, kept current in the background.

A *bucket* is one route's UTC hour. Its rollup (the ``rollup_*`` tables of migration 0015)
holds, per teacher version and slice label (and the route as a whole), the counts the slices,
thresholds, drift and candidates reports and the console's trend add up: requests, compared,
agreed, fallbacks, confidence bins, prompt lengths, paired tables, latency bins (the binned
tables one row per key, the bins and their counts as arrays: migration 0017).

Invariants:

- **Every change is noticed, in its own transaction.** Statement-level triggers on
  ``requests`` and ``student_answers`` put each changed bucket in ``rollup_dirty`` in the
  same transaction as the change, whoever writes it: the log writer, a replayed journal, a
  late student half, ``replay``, plain SQL. (The writer's observer would see neither
  ``student_answers`` nor writes from other processes, and runs after the commit.)
- **A bucket is recomputed whole** from its raw rows (DELETE + INSERT … SELECT … GROUP BY, one
  transaction), never incremented, so a journal replayed twice or a half written again gives
  the same rollup: idempotent by construction.
- **Reports are exact.** A report reads a bucket's rollup only while the bucket is computed,
  not ``stale`` and not in ``rollup_dirty``, in one REPEATABLE READ snapshot; every other
  hour of its window (the partial hours at its ends included) it reads raw
  (:mod:`gateway.services.reports.rollup`). A round first moves its dirty marks into
  ``rollup_buckets.stale`` (committed at once, so a writer never waits on a recompute), then
  recomputes the stale buckets; a row written meanwhile marks its bucket dirty again.
- **One job at a time** across replicas (an advisory lock); a round another replica holds is
  skipped. Only hours that ended ``settle_s`` ago are recomputed: the current hour changes
  with every batch, and reports read it raw anyway.
"""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.background import BackgroundLoop, RecurringFailure
from gateway.config import RollupsConfig
from gateway.services.reports.common import EACH_LABEL, last_user_text_sql
from gateway.services.reports.rollup import GRID, LATENCY_BIN

_log = logging.getLogger("shadow_gateway.rollups")

HOUR = timedelta(hours=1)
ADVISORY_KEY = 0x5347_524F_4C4C  # "SGROLL"
_BUCKET = "r.route = :route AND r.created_at >= :hour AND r.created_at < :end"
_ALL_LABELS = (
    f"CROSS JOIN LATERAL (SELECT NULL::text, NULL::text UNION ALL {EACH_LABEL}) AS s(dim, val)"
)
# student_answers rows with their request's teacher version (the request's time is theirs)
_ANSWERS_FROM = (
    "FROM student_answers AS r LEFT JOIN requests AS q ON q.request_id = r.request_id "
    "AND q.created_at = r.created_at AND q.created_at >= :hour AND q.created_at < :end"
)
_TEACHER = "q.teacher_model_reported, q.teacher_fingerprint"


def _arrays(*counts: str) -> str:
    """A binned rollup's arrays from per-bin rows ``b`` (migration 0017): the bins ascending,
    each count in the same order."""
    return ", ".join(f"array_agg(b.{name} ORDER BY b.bin)" for name in ("bin", *counts))


_RECOMPUTE = [
    text(
        "INSERT INTO rollup_requests (route, hour, teacher_model_reported, teacher_fingerprint, "
        "dimension, value, requests, compared, agreed, fallbacks, out_of_scope, "
        "slice_teacher_only, student_served, first_seen, last_seen) "
        "SELECT :route, :hour, r.teacher_model_reported, r.teacher_fingerprint, s.dim, s.val, "
        "count(*), count(r.agree), count(*) FILTER (WHERE r.agree), count(r.fallback_reason), "
        "count(*) FILTER (WHERE r.fallback_reason = 'out_of_scope'), "
        "count(*) FILTER (WHERE r.fallback_reason = 'slice_teacher_only'), "
        "count(*) FILTER (WHERE r.served_by = 'student'), min(r.created_at), max(r.created_at) "
        f"FROM requests AS r {_ALL_LABELS} WHERE {_BUCKET} GROUP BY 3, 4, 5, 6"
    ),
    # shadow comparisons only, as the threshold report counts them
    text(
        "INSERT INTO rollup_confidence (route, hour, teacher_model_reported, "
        "teacher_fingerprint, dimension, value, bins, compared, agreed) "
        f"SELECT :route, :hour, b.tm, b.tf, b.dim, b.val, {_arrays('compared', 'agreed')} "
        "FROM (SELECT r.teacher_model_reported AS tm, r.teacher_fingerprint AS tf, s.dim, s.val, "
        "width_bucket(r.student_confidence, CAST(:grid AS float8[])) AS bin, "
        "count(*) AS compared, count(*) FILTER (WHERE r.agree) AS agreed "
        f"FROM requests AS r {_ALL_LABELS} WHERE {_BUCKET} "
        "AND r.student_confidence IS NOT NULL AND r.agree IS NOT NULL "
        "AND r.served_by IS DISTINCT FROM 'student' AND r.fallback_reason IS NULL "
        "GROUP BY 1, 2, 3, 4, 5) AS b GROUP BY 3, 4, 5, 6"
    ),
    text(
        "INSERT INTO rollup_prompt_lengths (route, hour, length, requests) "
        f"SELECT :route, :hour, char_length({last_user_text_sql('r.request_payload')}), "
        f"count(*) FROM requests AS r WHERE {_BUCKET} AND r.request_payload IS NOT NULL "
        "GROUP BY 3"
    ),
    text(
        "INSERT INTO rollup_answers (route, hour, source, student, teacher_model_reported, "
        "teacher_fingerprint, dimension, value, answers, compared, agreed, confidence_sum, "
        "confidences) "
        f"SELECT :route, :hour, r.source, r.student, {_TEACHER}, s.dim, s.val, "
        "count(*) FILTER (WHERE r.student_status = 'ok'), count(r.agree), "
        "count(*) FILTER (WHERE r.agree), coalesce(sum(r.student_confidence), 0), "
        f"count(r.student_confidence) {_ANSWERS_FROM} {_ALL_LABELS} WHERE {_BUCKET} "
        "GROUP BY 3, 4, 5, 6, 7, 8"
    ),
    # every compared answer with each other student's compared answer to the same request:
    # from the same source if there is one, else live (the candidates report's pairing)
    text(
        "INSERT INTO rollup_answer_pairs (route, hour, source, student, baseline, "
        "teacher_model_reported, teacher_fingerprint, dimension, value, both_agreed, "
        "candidate_only, baseline_only, neither) "
        f"SELECT :route, :hour, r.source, r.student, b.student, {_TEACHER}, s.dim, s.val, "
        "count(*) FILTER (WHERE r.agree AND b.agree), "
        "count(*) FILTER (WHERE r.agree AND NOT b.agree), "
        "count(*) FILTER (WHERE NOT r.agree AND b.agree), "
        f"count(*) FILTER (WHERE NOT r.agree AND NOT b.agree) {_ANSWERS_FROM} "
        "CROSS JOIN LATERAL (SELECT DISTINCT ON (b.student) b.student, b.agree "
        "FROM student_answers AS b WHERE b.request_id = r.request_id "
        "AND b.created_at = r.created_at AND b.student <> r.student AND b.agree IS NOT NULL "
        "AND b.source IN (r.source, 'live') ORDER BY b.student, b.source = r.source DESC) AS b "
        f"{_ALL_LABELS} WHERE {_BUCKET} AND r.agree IS NOT NULL GROUP BY 3, 4, 5, 6, 7, 8, 9"
    ),
    text(
        "INSERT INTO rollup_answer_latency (route, hour, source, student, "
        "teacher_model_reported, teacher_fingerprint, dimension, value, bins, answers) "
        f"SELECT :route, :hour, b.source, b.student, b.tm, b.tf, b.dim, b.val, "
        f"{_arrays('answers')} FROM (SELECT r.source, r.student, q.teacher_model_reported AS tm, "
        f"q.teacher_fingerprint AS tf, s.dim, s.val, {LATENCY_BIN} AS bin, count(*) AS answers "
        f"{_ANSWERS_FROM} {_ALL_LABELS} WHERE {_BUCKET} "
        "AND r.student_status = 'ok' AND r.student_latency_ms IS NOT NULL "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7) AS b GROUP BY 3, 4, 5, 6, 7, 8"
    ),
]
FACT_TABLES = (
    "rollup_requests",
    "rollup_confidence",
    "rollup_prompt_lengths",
    "rollup_answers",
    "rollup_answer_pairs",
    "rollup_answer_latency",
)
_CLEAR = [
    text(f"DELETE FROM {table} WHERE route = :route AND hour = :hour") for table in FACT_TABLES
]
_COMPUTED = text(
    "UPDATE rollup_buckets SET stale = false, computed_at = now() "
    "WHERE route = :route AND hour = :hour"
)
# Dirty marks of settled hours become stale buckets, in one short transaction.
_CLAIM = text(
    "WITH claimed AS (DELETE FROM rollup_dirty WHERE hour < :cutoff RETURNING route, hour) "
    "INSERT INTO rollup_buckets (route, hour, stale) SELECT DISTINCT route, hour, true "
    "FROM claimed ON CONFLICT (route, hour) DO UPDATE SET stale = true"
)
_STALE = text(
    "SELECT route, hour FROM rollup_buckets WHERE stale ORDER BY hour DESC, route LIMIT :limit"
)
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
_NO_JIT = text("SET LOCAL jit = off")


async def recompute(connection: AsyncConnection, route: str, hour: datetime) -> None:
    """Recompute one bucket from its raw rows, in one transaction."""
    params = {"route": route, "hour": hour, "end": hour + HOUR, "grid": list(GRID)}
    async with connection.begin():
        await connection.execute(_NO_JIT)
        for statement in _CLEAR:
            await connection.execute(statement, params)
        for statement in _RECOMPUTE:
            await connection.execute(statement, params)
        await connection.execute(_COMPUTED, params)


async def refresh(
    engine: AsyncEngine,
    *,
    now: datetime | None = None,
    settle_s: float = 120.0,
    limit: int | None = None,
) -> int | None:
    """One round: the dirty buckets of every hour that ended ``settle_s`` before ``now`` are
    recomputed (at most ``limit``, newest first; the rest stay stale for the next round).
    The number recomputed, or None when another replica holds the job's lock."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settle_s) - HOUR
    done = 0
    async with engine.connect() as connection:
        async with connection.begin():
            if not (await connection.execute(_TRY_LOCK, {"key": ADVISORY_KEY})).scalar():
                return None
        try:
            async with connection.begin():
                await connection.execute(_CLAIM, {"cutoff": cutoff})
            while limit is None or done < limit:
                size = 100 if limit is None else min(100, limit - done)
                async with connection.begin():
                    stale = (await connection.execute(_STALE, {"limit": size})).all()
                if not stale:
                    break
                for row in stale:
                    await recompute(connection, row.route, row.hour)
                    done += 1
        finally:
            async with connection.begin():
                await connection.execute(_UNLOCK, {"key": ADVISORY_KEY})
    return done


class RollupJob(BackgroundLoop):
    """Runs :func:`refresh` every ``config.interval_s`` (``database.rollups``)."""

    task_name = "rollups"

    def __init__(self, engine: AsyncEngine, config: RollupsConfig) -> None:
        super().__init__()
        self._engine = engine
        self._config = config
        self._failure = RecurringFailure(_log, "rollup refresh")

    async def _run(self) -> None:
        while True:
            try:
                done = await refresh(
                    self._engine, settle_s=self._config.settle_s, limit=self._config.max_buckets
                )
            except Exception as exc:  # Postgres down: the marks wait in rollup_dirty
                self._failure.failed(exc, f"retrying every {self._config.interval_s:g}s")
            else:
                self._failure.succeeded()
                if done:
                    _log.debug("recomputed %d rollup bucket(s)", done)
            await asyncio.sleep(self._config.interval_s)
