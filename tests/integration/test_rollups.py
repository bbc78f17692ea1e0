"""The hourly rollups against the raw rows: every report read through them (slices, thresholds,
per-slice calibration, drift, candidates, the console's trend) equals the same report computed
from raw rows only, before the rollup job ran, after it, after late student halves and a
journal replayed twice (before and after the next round), and after retention."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig, LogWriterConfig, PartitionsConfig
from gateway.db.engine import create_engine, plain_dsn
from gateway.db.partitions import maintain
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics
from gateway.protocol.reports import Window
from gateway.services.console import ConsoleData
from gateway.services.reports import Reports
from gateway.services.reports.rollup import coverage
from gateway.services.rollups import refresh
from tests.integration.conftest import ROUTE
from tests.support.db import execute, fetch
from tests.support.gateway import route

ENTERPRISE = {"dimension": "tier", "value": "enterprise", "min_agreement": 0.7, "min_samples": 20}
CONFIG = GatewayConfig.model_validate(
    {
        "routes": [
            {
                **route(ROUTE, "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"]),
                "slices": {"critical": [ENTERPRISE]},
            }
        ]
    }
)
LATENCY = {"latency_p50_ms", "latency_p95_ms"}  # from 2% bins: within 1%
FAR = datetime(2100, 1, 1, tzinfo=UTC)  # a round "now" that settles every hour

# 3,000 requests, one every 31 s back from now (about 26 hours), two teacher versions, four
# tiers and three categories, confidences on and off the 0.01 grid, every kind of fallback.
REQUESTS = """
INSERT INTO requests (request_id, route, endpoint, created_at, mode, served_by, fallback_reason,
    slices, request_payload, student_confidence, agree, teacher_model_reported,
    teacher_fingerprint)
SELECT 'q-' || i, :route, 'chat', now() - make_interval(secs => i * 31), 'shadow',
    CASE WHEN i % 11 = 0 THEN 'student' ELSE 'teacher' END,
    CASE WHEN i % 19 = 0 THEN 'low_confidence' WHEN i % 23 = 0 THEN 'out_of_scope'
         WHEN i % 29 = 0 THEN 'slice_teacher_only' END,
    CASE WHEN i % 17 = 0 THEN '{}'::jsonb ELSE jsonb_build_object(
        'tier', (ARRAY['free', 'enterprise', 'gold', 'silver'])[i % 4 + 1],
        'category', (ARRAY['billing', 'tech', 'other'])[i % 3 + 1]) END,
    CASE WHEN i % 7 = 0 THEN NULL ELSE jsonb_build_object('messages', jsonb_build_array(
        jsonb_build_object('role', 'user', 'content', repeat('x', i % 230)))) END,
    CASE WHEN i % 9 = 0 THEN ((i * 37) % 1000) / 1000.0 ELSE ((i * 37) % 101) / 100.0 END,
    CASE WHEN i % 13 = 0 THEN NULL ELSE (i * 7) % 10 < 7 END,
    CASE WHEN i < 1500 THEN 'big-1' ELSE 'big-2' END,
    CASE WHEN i < 1500 THEN 'fp-a' ELSE 'fp-b' END
FROM generate_series(0, 2999) AS i
"""
# Three students answer each request live, the rival also on replay for one in five.
ANSWERS = """
INSERT INTO student_answers (request_id, student, source, created_at, route, endpoint, slices,
    student_status, student_latency_ms, student_confidence, agree)
SELECT q.request_id, s.name, s.source, q.created_at, q.route, q.endpoint, q.slices,
    CASE WHEN n % 31 = 0 THEN 'error' ELSE 'ok' END,
    20 + (n * 13 + s.k * 101) % 500 + 0.37, (n % 100) / 100.0,
    CASE WHEN n % 41 = 0 THEN NULL ELSE (n * (3 + s.k)) % 10 < 6 + s.k END
FROM (SELECT request_id, created_at, route, endpoint, slices,
        substr(request_id, 3)::int AS n FROM requests) AS q
CROSS JOIN (VALUES ('default', 'live', 0), ('rival', 'live', 1), ('third', 'live', 2),
                   ('rival', 'replay', 3)) AS s(name, source, k)
WHERE s.source = 'live' OR q.n % 5 = 0
"""


@pytest.fixture
def logged(clean_db: str) -> str:
    execute(clean_db, REQUESTS.replace(":route", f"'{ROUTE}'"))
    execute(clean_db, ANSWERS)
    _NOW.append(datetime.now(UTC))
    return clean_db


def run(url: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        engine = create_engine(url, CONFIG.database)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


_NOW: list[datetime] = []  # the moment the windows end at, fixed per test by ``logged``


def windows() -> dict[str, Window]:
    now = _NOW[-1]
    return {
        "ragged": Window(now - timedelta(hours=20, minutes=17), now - timedelta(minutes=7)),
        "current": Window(now - timedelta(hours=10, minutes=5), now),
        "reference": Window(now - timedelta(hours=27), now - timedelta(hours=10, minutes=5)),
    }


def every_report(url: str, rollups: bool) -> dict[str, Any]:
    """Each report (and the trend) on the same windows, through the rollups or raw only."""
    spans = windows()
    ragged = spans["ragged"]

    async def work(engine: Any) -> dict[str, Any]:
        reports = Reports(engine, CONFIG, rollups=rollups)
        console = ConsoleData(engine, CONFIG, rollups=rollups)
        return {
            "slices": await reports.slices(ROUTE, ragged),
            "slices_tier": await reports.slices(ROUTE, ragged, dimension="tier"),
            "slices_version": await reports.slices(ROUTE, ragged, teacher_version="fp-b"),
            "slices_model": await reports.slices(ROUTE, ragged, teacher_version="big-1"),
            "thresholds": await reports.thresholds(ROUTE, ragged, dimension="category"),
            "thresholds_off_grid": await reports.thresholds(ROUTE, ragged, [0.333, 0.5, 0.91]),
            "thresholds_version": await reports.thresholds(ROUTE, ragged, teacher_version="fp-a"),
            "calibrate": await reports.slice_thresholds(ROUTE, ragged, 0.6),
            "drift": await reports.drift(ROUTE, spans["current"], spans["reference"], min_rows=10),
            "drift_tier": await reports.drift(
                ROUTE, spans["current"], spans["reference"], min_rows=10, dimension="tier"
            ),
            "candidates": await reports.candidates(ROUTE, ragged, baseline="default"),
            "candidates_rival": await reports.candidates(
                ROUTE, ragged, baseline="rival", min_pairs=5, teacher_version="fp-a"
            ),
            "trend_hour": await console.agreement_trend(ROUTE, ragged, step="hour"),
            "trend_day": await console.agreement_trend(ROUTE, ragged, step="day"),
        }

    return run(url, work)  # type: ignore[no-any-return]


def assert_same(left: Any, right: Any, path: str = "") -> None:
    key = path.rsplit(".", 1)[-1]
    if isinstance(left, dict) and isinstance(right, dict):
        assert left.keys() == right.keys(), path
        for name in left:
            assert_same(left[name], right[name], f"{path}.{name}")
    elif isinstance(left, list) and isinstance(right, list):
        assert len(left) == len(right), path
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(left, float) and isinstance(right, float):
        tolerance = 0.011 if key in LATENCY else 1e-9
        assert math.isclose(left, right, rel_tol=tolerance, abs_tol=1e-12), (path, left, right)
    else:
        assert left == right, (path, left, right)


def assert_reports_equal_raw(url: str) -> dict[str, Any]:
    through = every_report(url, rollups=True)
    assert_same(through, every_report(url, rollups=False))
    return through


def clean_hours(url: str) -> int:
    ragged = windows()["ragged"]

    async def work(engine: Any) -> int:
        async with engine.connect() as connection:
            return len((await coverage(connection, ROUTE, ragged)).hours)

    return run(url, work)  # type: ignore[no-any-return]


def round_of(url: str, now: datetime = FAR) -> int | None:
    return run(url, lambda engine: refresh(engine, now=now, settle_s=0))  # type: ignore[no-any-return]


def test_reports_through_rollups_equal_the_raw_rows(logged: str) -> None:
    assert clean_hours(logged) == 0  # the triggers marked every hour dirty; nothing computed
    assert_reports_equal_raw(logged)
    computed = round_of(logged)
    assert computed is not None
    assert computed >= 26
    assert fetch(logged, "SELECT count(*) AS n FROM rollup_dirty") == [{"n": 0}]
    assert clean_hours(logged) >= 19  # the whole hours of the 20-hour window
    report = assert_reports_equal_raw(logged)
    assert report["slices"]["aggregate"]["requests"] > 2000
    assert {e["student"] for e in report["candidates"]["sources"][0]["overall"]["candidates"]} == {
        "default",
        "rival",
        "third",
    }
    assert round_of(logged) == 0  # nothing changed: nothing recomputed


def test_a_round_leaves_hours_that_have_not_settled(logged: str) -> None:
    now = datetime.now(UTC)
    run(logged, lambda engine: refresh(engine, now=now, settle_s=600))
    pending = fetch(logged, "SELECT hour FROM rollup_dirty")
    assert pending  # the current hour (and the last, if it ended under 10 minutes ago)
    assert all(row["hour"] + timedelta(hours=1) > now - timedelta(seconds=600) for row in pending)
    assert_reports_equal_raw(logged)


def late_halves(request_ids: list[str], created: list[datetime]) -> list[dict[str, Any]]:
    """Journal lines of student halves and candidates' answers arriving late, each twice."""
    lines: list[dict[str, Any]] = []
    for request_id, at in zip(request_ids, created, strict=True):
        stamp = at.isoformat()
        lines.append(
            {
                "request_id": request_id,
                "route": ROUTE,
                "endpoint": "chat",
                "created_at": stamp,
                "mode": "shadow",
                "slices": {"tier": "enterprise", "category": "billing"},
                "student_confidence": 0.55,
                "agree": False,
                "fallback_reason": "student_error",
            }
        )
        for student in ("rival", "late-one"):
            lines.append(
                {
                    "_table": "student_answers",
                    "request_id": request_id,
                    "student": student,
                    "source": "live",
                    "created_at": stamp,
                    "route": ROUTE,
                    "endpoint": "chat",
                    "slices": {"tier": "enterprise", "category": "billing"},
                    "student_status": "ok",
                    "student_latency_ms": 900.5,
                    "agree": True,
                }
            )
    return lines + lines  # a batch journaled twice


def replay_journal(url: str, tmp_path: Path, lines: list[dict[str, Any]]) -> None:
    journal = tmp_path / "journal"
    journal.mkdir(exist_ok=True)
    orphan = journal / "journal-99999-deadbeef.jsonl"
    orphan.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))

    async def go() -> None:
        config = LogWriterConfig(batch_size=7, flush_interval_s=0.05)
        log = LogWriter(plain_dsn(url), journal, config, Metrics(CollectorRegistry()))
        await log.start()
        for _ in range(200):
            if not orphan.exists():
                break
            await asyncio.sleep(0.05)
        await log.close()

    asyncio.run(go())
    assert not orphan.exists()


def test_late_halves_and_a_replayed_journal_keep_reports_exact(logged: str, tmp_path: Path) -> None:
    round_of(logged)
    old = fetch(
        logged,
        "SELECT request_id, created_at FROM requests WHERE created_at < now() - interval '3 hours' "
        "ORDER BY created_at DESC LIMIT 40",
    )
    lines = late_halves([r["request_id"] for r in old], [r["created_at"] for r in old])
    replay_journal(logged, tmp_path, lines)
    assert fetch(logged, "SELECT count(*) AS n FROM rollup_dirty")[0]["n"] >= 1
    before = assert_reports_equal_raw(logged)  # dirty hours read raw: exact before the round
    round_of(logged)
    after = assert_reports_equal_raw(logged)
    assert_same(before, after)
    overall = after["candidates"]["sources"][0]["overall"]["candidates"]
    assert "late-one" in {entry["student"] for entry in overall}
    replay_journal(logged, tmp_path, lines)  # the same journal again: the same figures
    assert_same(assert_reports_equal_raw(logged), after)
    round_of(logged)
    assert_same(assert_reports_equal_raw(logged), after)


def test_a_recompute_while_rows_arrive_marks_the_bucket_again(logged: str) -> None:
    round_of(logged)
    hour = fetch(logged, "SELECT max(hour) - interval '5 hours' AS h FROM rollup_buckets")[0]["h"]
    execute(
        logged,
        f"INSERT INTO requests (request_id, route, endpoint, created_at, mode, agree, slices) "
        f"VALUES ('extra', '{ROUTE}', 'chat', '{hour.isoformat()}'::timestamptz "
        "+ interval '10 minutes', 'shadow', true, '{\"tier\": \"gold\"}')",
    )
    assert fetch(logged, "SELECT route, hour FROM rollup_dirty") == [{"route": ROUTE, "hour": hour}]
    assert_reports_equal_raw(logged)
    execute(logged, "DELETE FROM requests WHERE request_id = 'extra'")
    assert_reports_equal_raw(logged)
    assert round_of(logged) == 1
    assert_reports_equal_raw(logged)


def test_retention_drops_the_rollups_with_the_partitions(logged: str) -> None:
    round_of(logged)
    assert fetch(logged, "SELECT count(*) AS n FROM rollup_requests")[0]["n"] > 0
    later = datetime.now(UTC) + timedelta(days=5)
    config = PartitionsConfig(retention_days=2)
    done = run(logged, lambda engine: maintain(engine, config, now=later))
    assert done.rollup_rows_dropped > 0
    for table in ("rollup_requests", "rollup_answers", "rollup_buckets", "rollup_confidence"):
        left = fetch(logged, f"SELECT count(*) AS n FROM {table} WHERE hour < $1", done.cutoff)
        assert left == [{"n": 0}], table


def test_truncate_makes_every_bucket_stale(logged: str) -> None:
    round_of(logged)
    execute(logged, "TRUNCATE requests, student_answers")
    assert fetch(logged, "SELECT bool_and(stale) AS all_stale FROM rollup_buckets") == [
        {"all_stale": True}
    ]
    assert clean_hours(logged) == 0
    fewer = REQUESTS.replace("2999", "1999").replace("i < 1500", "i < 1000")
    execute(logged, fewer.replace(":route", f"'{ROUTE}'"))
    execute(logged, ANSWERS)
    assert_reports_equal_raw(logged)
    round_of(logged)
    assert clean_hours(logged) >= 1
    assert_reports_equal_raw(logged)
