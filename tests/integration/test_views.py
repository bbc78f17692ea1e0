"""The analyst views of migration 0005 (agreement_daily's interval as of 0007), on rows inserted
with SQL, and the indexes they use."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.config import GatewayConfig
from gateway.core.statistics import wilson_interval
from gateway.db.engine import create_engine, plain_dsn
from gateway.protocol.reports import Window
from gateway.services.reports import Reports
from tests.support.db import execute, fetch
from tests.support.gateway import route

DAY1 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def insert(url: str, rows: list[dict[str, Any]]) -> None:
    columns = sorted({column for row in rows for column in row})
    casts = {"slices": "::jsonb", "request_payload": "::jsonb"}
    values = ", ".join(f"${n}{casts.get(c, '')}" for n, c in enumerate(columns, 1))
    sql = f"INSERT INTO requests ({', '.join(columns)}) VALUES ({values})"

    def encode(value: Any) -> Any:
        return orjson.dumps(value).decode() if isinstance(value, dict) else value

    async def run() -> None:
        connection = await asyncpg.connect(plain_dsn(url), timeout=5)
        try:
            records = [tuple(encode(row.get(c)) for c in columns) for row in rows]
            await connection.executemany(sql, records)
        finally:
            await connection.close()

    asyncio.run(run())


def row(n: int, **columns: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": f"r{n}",
        "route": "support-bot",
        "endpoint": "chat",
        "created_at": DAY1,
        "mode": "shadow",
        "served_by": "teacher",
        "slices": {},
    }
    return base | columns


def session(url: str, *statements: str) -> list[dict[str, Any]]:
    """Run statements on one connection (so SETs hold); the last one's rows."""

    async def run() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(plain_dsn(url), timeout=5)
        try:
            for statement in statements[:-1]:
                await connection.execute(statement)
            return [dict(r) for r in await connection.fetch(statements[-1])]
        finally:
            await connection.close()

    return asyncio.run(run())


# --- disagreements -----------------------------------------------------------------------------


def test_disagreements_show_both_answers_and_the_prompt(clean_db: str) -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "Is it raining?"},
        ]
    }
    insert(
        clean_db,
        [
            row(1, agree=False, request_payload=chat, teacher_output="yes", student_output="no",
                agreement_score=0.0, agreement_reason="text_differs", student_confidence=0.4,
                slices={"tier": "free"}),
            row(2, agree=False, endpoint="text", request_payload={"prompt": "2 + 2 ="},
                teacher_output="4", student_output="5", agreement_score=0.0),
            row(3, agree=False, endpoint="text", request_payload={"prompt": ["a", "b"]},
                teacher_output="x", student_output="y"),
            row(4, agree=False, request_payload=None, teacher_output="t", student_output="s"),
            row(5, agree=True, request_payload=chat, teacher_output="yes", student_output="yes"),
            row(6, agree=None, request_payload=chat, teacher_output="yes"),
        ],
    )  # fmt: skip
    found = {
        r["request_id"]: r
        for r in fetch(clean_db, "SELECT * FROM disagreements ORDER BY request_id")
    }
    assert set(found) == {"r1", "r2", "r3", "r4"}
    first = found["r1"]
    assert (first["prompt"], first["teacher_output"], first["student_output"]) == (
        "Is it raining?",
        "yes",
        "no",
    )
    assert first["agreement_reason"] == "text_differs"
    assert first["student_confidence"] == 0.4
    assert first["day"] == date(2026, 11, 1)
    assert orjson.loads(first["slices"]) == {"tier": "free"}
    assert found["r2"]["prompt"] == "2 + 2 ="
    assert found["r3"]["prompt"] == "a"
    assert found["r4"]["prompt"] is None


# --- agreement per route, slice and day --------------------------------------------------------


def test_agreement_daily_counts_every_dimension_and_the_route_total(clean_db: str) -> None:
    rows = []
    for n in range(40):
        tier = "free" if n < 30 else "paid"
        rows.append(
            row(
                n,
                created_at=DAY1 + timedelta(days=n // 20),  # 20 rows on each of two days
                slices={"tier": tier, "lang": "en"} if n % 2 else {"tier": tier},
                agree=None if n % 10 == 9 else n % 3 != 0,
                agreement_score=None if n % 10 == 9 else float(n % 3 != 0),
                served_by="student" if n % 5 == 0 else "teacher",
                fallback_reason="low_confidence" if n % 5 == 1 else None,
                student_confidence=0.5,
            )
        )
    insert(clean_db, rows)
    daily = fetch(clean_db, "SELECT * FROM agreement_daily ORDER BY day, dimension, value")
    by_key = {(r["day"].day, r["dimension"], r["value"]): r for r in daily}
    assert set(by_key) == {
        (1, "(all)", "(all)"), (1, "tier", "free"), (1, "lang", "en"),
        (2, "(all)", "(all)"), (2, "tier", "free"), (2, "tier", "paid"), (2, "lang", "en"),
    }  # fmt: skip
    for (day, dimension, value), found in by_key.items():
        members = [
            r
            for r in rows
            if r["created_at"].day == day
            and (dimension == "(all)" or r["slices"].get(dimension) == value)
        ]
        compared = [r for r in members if r["agree"] is not None]
        agreed = sum(1 for r in compared if r["agree"])
        assert found["requests"] == len(members)
        assert found["compared"] == len(compared)
        assert found["agreed"] == agreed
        assert found["disagreed"] == len(compared) - agreed
        assert found["agreement"] == pytest.approx(agreed / len(compared))
        low, high = wilson_interval(agreed, len(compared))
        assert found["agreement_low"] == pytest.approx(low, abs=1e-12)
        assert found["agreement_high"] == pytest.approx(high, abs=1e-12)
        assert found["student_served"] == sum(1 for r in members if r["served_by"] == "student")
        assert found["fallbacks"] == sum(1 for r in members if r["fallback_reason"])
        assert found["mean_confidence"] == pytest.approx(0.5)


def test_a_day_is_a_utc_day_whatever_the_session_time_zone(clean_db: str) -> None:
    late = datetime(2026, 11, 1, 23, 30, tzinfo=UTC)  # Nov 2 in Tokyo, Nov 1 in Los Angeles
    insert(clean_db, [row(1, created_at=late, agree=True), row(2, created_at=late, agree=False)])
    for zone in ("Asia/Tokyo", "America/Los_Angeles", "UTC"):
        days = session(
            clean_db,
            f"SET TimeZone = '{zone}'",
            "SELECT DISTINCT day FROM agreement_daily UNION SELECT day FROM disagreements",
        )
        assert days == [{"day": date(2026, 11, 1)}], zone


def test_agreement_is_null_when_nothing_was_compared(clean_db: str) -> None:
    insert(clean_db, [row(1, agree=None), row(2, agree=None)])
    (total,) = fetch(clean_db, "SELECT * FROM agreement_daily")
    assert (total["requests"], total["compared"], total["agreement"]) == (2, 0, None)
    assert (total["agreement_low"], total["agreement_high"]) == (None, None)


# (agreed, compared) per tier: everything agreed, nothing agreed, single comparisons, a large
# slice, small and middling shares; each slice also has one request with no verdict.
INTERVAL_SLICES = {
    "all": (7, 7), "none": (0, 9), "one-yes": (1, 1), "one-no": (0, 1), "third": (1, 3),
    "tenth": (3, 10), "most": (9, 10), "half": (25, 50), "large": (937, 1000),
}  # fmt: skip


def interval_rows() -> list[dict[str, Any]]:
    rows, n = [], 0
    for tier, (agreed, compared) in INTERVAL_SLICES.items():
        for i in range(compared + 1):
            verdict = None if i == compared else i < agreed
            rows.append(row(n, slices={"tier": tier}, agree=verdict))
            n += 1
    return rows


def test_agreement_interval_is_the_reports_wilson_interval(clean_db: str) -> None:
    """Full-precision z (0007): the bounds the reports give for the same counts, within [0, 1]."""
    insert(clean_db, interval_rows())
    daily = fetch(clean_db, "SELECT * FROM agreement_daily")
    found = {r["value"]: r for r in daily if r["dimension"] == "tier"}
    assert {v: (r["agreed"], r["compared"]) for v, r in found.items()} == INTERVAL_SLICES
    for tier, (agreed, compared) in INTERVAL_SLICES.items():
        low, high = wilson_interval(agreed, compared)
        assert found[tier]["agreement_low"] == pytest.approx(low, abs=1e-12), tier
        assert found[tier]["agreement_high"] == pytest.approx(high, abs=1e-12), tier
    (total,) = [r for r in daily if r["dimension"] == "(all)"]
    interval = wilson_interval(total["agreed"], total["compared"])
    assert (total["agreement_low"], total["agreement_high"]) == pytest.approx(interval, abs=1e-12)
    for r in daily:
        assert 0.0 <= r["agreement_low"] <= r["agreement"] <= r["agreement_high"] <= 1.0, r
    for tier in ("all", "one-yes"):
        assert found[tier]["agreement_high"] == 1.0, tier
    for tier in ("none", "one-no"):
        assert found[tier]["agreement_low"] == 0.0, tier


def test_agreement_interval_matches_the_slice_report_on_the_same_rows(clean_db: str) -> None:
    """The slice report (gateway.services.reports) over the same UTC day gives the same bounds."""
    insert(clean_db, interval_rows())
    config = GatewayConfig.model_validate(
        {"routes": [route("support-bot", "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])]}
    )
    day = datetime(DAY1.year, DAY1.month, DAY1.day, tzinfo=UTC)

    async def report() -> dict[str, Any]:
        engine = create_engine(clean_db, config.database)
        try:
            reports = Reports(engine, config)
            return await reports.slices("support-bot", Window(day, day + timedelta(days=1)))
        finally:
            await engine.dispose()

    slices = asyncio.run(report())
    reported = {(s["dimension"], s["value"]): s for s in slices["slices"]}
    reported["(all)", "(all)"] = slices["aggregate"]
    daily = fetch(clean_db, "SELECT * FROM agreement_daily WHERE day = $1", day.date())
    assert len(daily) == len(reported) == len(INTERVAL_SLICES) + 1
    for r in daily:
        line = reported[r["dimension"], r["value"]]
        assert (line["samples"], line["agreed"]) == (r["compared"], r["agreed"])
        assert r["agreement_low"] == pytest.approx(line["ci_low"], abs=1e-12), r["value"]
        assert r["agreement_high"] == pytest.approx(line["ci_high"], abs=1e-12), r["value"]


# --- fallbacks per day -------------------------------------------------------------------------


def test_fallbacks_daily_gives_each_reason_and_its_share_of_chosen_requests(
    clean_db: str,
) -> None:
    rows = [
        row(1, mode="rollout", served_by="student"),
        row(2, mode="rollout", served_by="student"),
        row(3, mode="rollout", served_by="student"),
        row(4, mode="rollout", served_by="teacher", fallback_reason="low_confidence"),
        row(5, mode="rollout", served_by="teacher", fallback_reason="low_confidence"),
        row(6, mode="rollout", served_by="teacher", fallback_reason="student_timeout"),
        row(7, mode="rollout", served_by="teacher"),  # not chosen
        row(8, route="other", mode="rollout", served_by="teacher", fallback_reason="student_error"),
        row(9, mode="rollout", fallback_reason="student_error", created_at=DAY1 + timedelta(1)),
    ]
    insert(clean_db, rows)
    found = fetch(clean_db, "SELECT * FROM fallbacks_daily ORDER BY day, route, fallback_reason")
    assert [
        (r["day"].day, r["route"], r["fallback_reason"], r["fallbacks"], r["student_chosen"])
        for r in found
    ] == [
        (1, "other", "student_error", 1, 1),
        (1, "support-bot", "low_confidence", 2, 6),
        (1, "support-bot", "student_timeout", 1, 6),
        (2, "support-bot", "student_error", 1, 1),
    ]
    assert found[1]["share"] == pytest.approx(2 / 6)


# --- the indexes serve the views ---------------------------------------------------------------


def plan(url: str, query: str) -> str:
    rows = session(url, "ANALYZE requests", "SET enable_seqscan = off", f"EXPLAIN {query}")
    return "\n".join(r["QUERY PLAN"] for r in rows)


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("SELECT * FROM agreement_daily WHERE day >= DATE '2026-11-01'", "ix_requests_day_route"),
        (
            "SELECT * FROM agreement_daily WHERE route = 'a' AND day = DATE '2026-11-01' "
            "AND dimension = 'tier'",
            "ix_requests_day_route|ix_requests_route_created_at",  # either: both pushed down
        ),
        ("SELECT * FROM fallbacks_daily WHERE day >= DATE '2026-11-01'", "ix_requests_day_route"),
        (
            "SELECT * FROM disagreements WHERE route = 'a' ORDER BY created_at DESC LIMIT 20",
            "ix_requests_disagreements",
        ),
        (
            "SELECT count(*) FROM disagreements WHERE route = 'a' "
            "AND created_at >= timestamptz '2026-10-20'",
            "ix_requests_disagreements",
        ),
    ],
)
def test_conditions_on_the_views_reach_their_index(clean_db: str, query: str, index: str) -> None:
    execute(
        clean_db,
        "INSERT INTO requests (request_id, route, endpoint, created_at, mode, agree) "
        "SELECT 'p' || g, (ARRAY['a', 'b'])[1 + g % 2], 'chat', "
        "timestamptz '2026-10-01' + g * interval '10 minutes', 'shadow', g % 20 <> 0 "
        "FROM generate_series(1, 5000) AS g",
    )
    found = plan(clean_db, query)
    names = [name for parent in index.split("|") for name in index_family(clean_db, parent)]
    assert any(f" {name} " in found for name in names), found


def index_family(url: str, index: str) -> list[str]:
    """The index on ``requests`` and its copies on each partition (migration 0006)."""
    rows = fetch(
        url,
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits WHERE inhparent = $1::regclass",
        index,
    )
    return [index, *(row["name"] for row in rows)]


@pytest.mark.slow
def test_view_query_times_on_a_large_table(clean_db: str) -> None:
    """Printed, not asserted: 200,000 rows over 100 days, 3 routes, 2 dimensions."""
    execute(
        clean_db,
        "INSERT INTO requests (request_id, route, endpoint, created_at, mode, served_by, "
        "fallback_reason, slices, teacher_output, student_output, agree, agreement_score) "
        "SELECT 'v' || g, (ARRAY['support-bot', 'search', 'extract'])[1 + g % 3], 'chat', "
        "timestamptz '2026-08-01' + g * interval '43 seconds', 'rollout', "
        "CASE WHEN g % 7 = 0 THEN 'student' ELSE 'teacher' END, "
        "CASE WHEN g % 11 = 0 THEN 'low_confidence' WHEN g % 13 = 0 THEN 'student_timeout' END, "
        "jsonb_build_object('tier', (ARRAY['free', 'paid', 'enterprise'])[1 + g % 3], "
        "'category', (ARRAY['billing', 'tech', 'account', 'other'])[1 + g % 4]), "
        "'teacher says ' || g, 'student says ' || g, g % 9 <> 0, (g % 9 <> 0)::int "
        "FROM generate_series(1, 200000) AS g",
    )
    execute(clean_db, "ANALYZE requests")
    queries = {
        "agreement_daily, one route, last 7 days": (
            "SELECT * FROM agreement_daily WHERE route = 'support-bot' "
            "AND day > DATE '2026-11-08' - 7"
        ),
        "agreement_daily, all routes, 100 days": "SELECT * FROM agreement_daily",
        "fallbacks_daily, last 7 days": (
            "SELECT * FROM fallbacks_daily WHERE day > DATE '2026-11-08' - 7"
        ),
        "disagreements, latest 50 of a route": (
            "SELECT * FROM disagreements WHERE route = 'support-bot' "
            "ORDER BY created_at DESC LIMIT 50"
        ),
    }
    for name, query in queries.items():
        started = time.perf_counter()
        rows = fetch(clean_db, query)
        print(f"\n{name}: {len(rows)} rows in {1000 * (time.perf_counter() - started):.0f} ms")


# --- per student ---------------------------------------------------------------------------


def test_student_views_give_each_students_agreement_and_disagreements(clean_db: str) -> None:
    """Two students on the same 30 requests: small agrees on 27, tiny on 12 (all free ones
    wrong); tiny's replay of 10 of them agrees on 10."""
    requests = [
        row(
            n,
            slices={"tier": "free" if n < 15 else "pro"},
            request_payload={"messages": [{"role": "user", "content": f"question {n}"}]},
            teacher_output=f"answer {n}",
            teacher_model="big",
        )
        for n in range(30)
    ]
    insert(clean_db, requests)
    answers = (
        [("small", "live", n, n >= 3) for n in range(30)]
        + [("tiny", "live", n, n >= 18) for n in range(30)]
        + [("tiny", "replay", n, True) for n in range(20, 30)]
    )
    values = ", ".join(
        f"('r{n}', '{student}', '{source}', '{DAY1.isoformat()}', 'support-bot', 'chat', "
        f"'{{\"tier\": \"{'free' if n < 15 else 'pro'}\"}}'::jsonb, 'ok', "
        f"'{'same' if agree else 'other'} {n}', {str(agree).lower()}, 0.5, 20)"
        for student, source, n, agree in answers
    )
    execute(
        clean_db,
        "INSERT INTO student_answers (request_id, student, source, created_at, route, "
        "endpoint, slices, student_status, student_output, agree, student_confidence, "
        f"student_latency_ms) VALUES {values}",
    )
    daily = fetch(
        clean_db,
        "SELECT student, source, dimension, value, answers, compared, agreed, agreement_low, "
        "agreement_high FROM student_agreement_daily ORDER BY 1, 2, 3, 4",
    )
    by_key = {(d["student"], d["source"], d["dimension"], d["value"]): d for d in daily}
    for key, agreed, compared in (
        (("small", "live", "(all)", "(all)"), 27, 30),
        (("small", "live", "tier", "free"), 12, 15),
        (("tiny", "live", "(all)", "(all)"), 12, 30),
        (("tiny", "live", "tier", "free"), 0, 15),
        (("tiny", "replay", "(all)", "(all)"), 10, 10),
    ):
        line = by_key[key]
        assert (line["agreed"], line["compared"], line["answers"]) == (agreed, compared, compared)
        low, high = wilson_interval(agreed, compared)
        assert (line["agreement_low"], line["agreement_high"]) == (low, high)  # bit for bit

    disagreements = fetch(
        clean_db,
        "SELECT student, source, request_id, prompt, teacher_output, student_output "
        "FROM student_disagreements ORDER BY student, request_id",
    )
    assert [(d["student"], d["source"]) for d in disagreements] == [("small", "live")] * 3 + [
        ("tiny", "live")
    ] * 18
    first = disagreements[0]
    assert (first["request_id"], first["prompt"], first["teacher_output"]) == (
        "r0",
        "question 0",
        "answer 0",
    )
    assert first["student_output"] == "other 0"
