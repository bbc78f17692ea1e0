"""The analyst reports on the real Postgres: services, the admin API, the CLI, bad input.

Rows are synthetic, inserted with one ``INSERT … SELECT generate_series`` per group so every
expected figure can be worked out from the group definitions below.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, Gauge

from gateway import cli
from gateway.config import GatewayConfig
from gateway.core import statistics as stats
from gateway.core.slices import last_user_text
from gateway.db.engine import create_engine
from gateway.errors import NoData
from gateway.protocol.reports import Window, decode_cursor
from gateway.services.reports import (
    DriftMonitor,
    Reports,
    last_user_text_sql,
    reference_dataset,
)
from tests.integration.conftest import ROUTE
from tests.support.db import execute, fetch
from tests.support.gateway import GatewayServer, route, write_config

T = TypeVar("T")
ANALYST, APP = "analyst-secret", "test-app-key"
ENTERPRISE = {
    "dimension": "tier",
    "value": "enterprise",
    "min_agreement": 0.9,
    "min_samples": 20,
}
GOLD = {"dimension": "tier", "value": "gold", "min_agreement": 0.9, "min_samples": 20}
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "analyst", "key_env": "SGW_TEST_ANALYST_KEY", "scopes": ["analyst"]},
]


def routes() -> list[dict[str, Any]]:
    main = route(ROUTE, "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])
    main["slices"] = {"critical": [ENTERPRISE, GOLD], "length_buckets": {"bounds": [20]}}
    return [main, route("other", "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])]


CONFIG = GatewayConfig.model_validate({"routes": routes()})


def insert(url: str, count: int, prefix: str, **columns: str) -> None:
    """``count`` rows; each column is an SQL expression of ``i`` (0 … count-1)."""
    values = {
        "route": f"'{ROUTE}'",
        "endpoint": "'chat'",
        "created_at": "now() - interval '1 hour'",
        "mode": "'shadow'",
        "served_by": "'teacher'",
        "slices": "'{}'::jsonb",
        **columns,
    }
    execute(
        url,
        f"INSERT INTO requests (request_id, {', '.join(values)}) "
        f"SELECT '{prefix}-' || i, {', '.join(values.values())} "
        f"FROM generate_series(0, {count - 1}) AS i",
    )


def chat(text_sql: str) -> str:
    message = f"jsonb_build_object('role', 'user', 'content', {text_sql})"
    return f"jsonb_build_object('messages', jsonb_build_array({message}))"


def seed(url: str) -> None:
    """Last hour: enterprise 100 (confidence i/100, agree iff i >= 30), free 50 (agree 1 in 2),
    gold 10 (all agree: too few for its bar). Plus rows calibration must ignore."""
    insert(
        url,
        100,
        "ent",
        slices="""'{"tier": "enterprise", "category": "billing"}'::jsonb""",
        student_confidence="i / 100.0",
        agree="i >= 30",
        agreement_score="CASE WHEN i >= 30 THEN 1.0 ELSE i / 100.0 END",
        agreement_reason="CASE WHEN i >= 30 THEN NULL ELSE 'mismatch' END",
        teacher_output="'teacher ' || i",
        student_output="'student ' || i",
        request_payload=chat("'enterprise question ' || i"),
    )
    insert(
        url,
        50,
        "free",
        slices="""'{"tier": "free"}'::jsonb""",
        student_confidence="0.9",
        agree="i % 2 = 0",
        fallback_reason="CASE WHEN i < 5 THEN 'low_confidence' END",
        request_payload=chat("repeat('x', 5 + i)"),
    )
    insert(
        url,
        10,
        "gold",
        slices="""'{"tier": "gold"}'::jsonb""",
        student_confidence="0.95",
        agree="true",
        served_by="CASE WHEN i < 4 THEN 'student' ELSE 'teacher' END",
    )
    # served by the student or fallbacks: chosen by the live threshold, so not calibration data
    insert(
        url,
        40,
        "served",
        slices="""'{"tier": "enterprise"}'::jsonb""",
        student_confidence="0.99",
        agree="false",
        served_by="'student'",
        mode="'rollout'",
    )
    insert(
        url,
        10,
        "fallback",
        slices="""'{"tier": "enterprise"}'::jsonb""",
        student_confidence="0.1",
        agree="false",
        fallback_reason="'low_confidence'",
        mode="'rollout'",
    )


def run(url: str, work: Callable[[Reports], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = create_engine(url, CONFIG.database)
        try:
            return await work(Reports(engine, CONFIG))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def last_day() -> Window:
    now = datetime.now(UTC)
    return Window(now - timedelta(days=1), now)


@pytest.fixture
def seeded(clean_db: str) -> str:
    seed(clean_db)
    return clean_db


# -- slices ---------------------------------------------------------------------------------


def test_slice_report_worst_first_with_intervals_bars_and_the_aggregate_last(seeded: str) -> None:
    report = run(seeded, lambda r: r.slices(ROUTE, last_day(), "tier"))
    lines = {line["value"]: line for line in report["slices"]}
    # the one order (the console's too): the failing critical slice first, then by the
    # interval's low end; gold, with fewer comparisons than its min_samples, last and marked
    assert [line["value"] for line in report["slices"]] == ["enterprise", "free", "gold"]
    assert [line["enough_samples"] for line in report["slices"]] == [True, True, False]
    free, enterprise, gold = lines["free"], lines["enterprise"], lines["gold"]
    assert (free["samples"], free["agreed"], free["verdict"], free["critical"]) == (
        50,
        25,
        None,
        False,
    )
    assert free["fallback_rate"] == pytest.approx(5 / 50)
    # enterprise: 70 of 100 shadowed agree, the 50 rollout rows all disagree
    assert (enterprise["samples"], enterprise["agreed"]) == (150, 70)
    assert (enterprise["ci_low"], enterprise["ci_high"]) == pytest.approx(
        stats.wilson_interval(70, 150)
    )
    assert (enterprise["bar"], enterprise["verdict"]) == (0.9, "fail")
    assert enterprise["student_share"] == pytest.approx(40 / 150)
    assert enterprise["fallback_rate"] == pytest.approx(10 / 150)
    assert (gold["samples"], gold["verdict"]) == (10, "not_enough_data")
    assert gold["student_share"] == pytest.approx(0.4)
    assert report["aggregate"]["requests"] == 210
    assert report["aggregate"]["samples"] == 210
    everything = run(seeded, lambda r: r.slices(ROUTE, last_day()))
    assert {(s["dimension"], s["value"]) for s in everything["slices"]} == {
        ("tier", "enterprise"),
        ("tier", "free"),
        ("tier", "gold"),
        ("category", "billing"),
    }


def test_a_critical_slice_without_traffic_is_listed_not_hidden(clean_db: str) -> None:
    insert(clean_db, 5, "x", slices="""'{"tier": "free"}'::jsonb""", agree="true")
    report = run(clean_db, lambda r: r.slices(ROUTE, last_day()))
    gold = next(s for s in report["slices"] if s["value"] == "gold")
    assert (gold["requests"], gold["verdict"], gold["agreement"], gold["ci_low"]) == (
        0,
        "not_enough_data",
        None,
        None,
    )
    assert report["slices"][-1]["samples"] == 0  # no data sorts after the judged slices


def test_the_aggregate_is_never_reported_alone(clean_db: str) -> None:
    insert(clean_db, 3, "plain", route="'other'", agree="true")
    insert(clean_db, 1, "odd", route="'other'", slices="""'["not", "an object"]'::jsonb""")
    insert(clean_db, 1, "null", route="'other'", slices="""'{"region": null}'::jsonb""")
    with pytest.raises(NoData, match="aggregate alone is not reported"):
        run(clean_db, lambda r: r.slices("other", last_day()))
    insert(
        clean_db,
        5,
        "labelled",
        route="'other'",
        slices="""'{"region": "eu"}'::jsonb""",
        created_at="now() - interval '3 days'",
    )
    now = datetime.now(UTC)
    report = run(clean_db, lambda r: r.slices("other", Window(now - timedelta(days=4), now)))
    assert [s["value"] for s in report["slices"]] == ["eu"]
    assert report["aggregate"]["requests"] == 10
    # a dimension the route has, but no request in this window carries
    with pytest.raises(NoData, match="has a slice label in dimension 'region'"):
        run(clean_db, lambda r: r.slices("other", last_day(), "region"))


# -- disagreements --------------------------------------------------------------------------


def test_disagreements_filter_and_page_with_a_cursor(seeded: str) -> None:
    first = run(
        seeded,
        lambda r: r.disagreements(ROUTE, last_day(), slices=[("tier", "enterprise")], limit=20),
    )
    assert len(first["disagreements"]) == 20
    seen = [row["request_id"] for row in first["disagreements"]]
    cursor = first["next_cursor"]
    while cursor:
        page = run(
            seeded,
            lambda r, c=cursor: r.disagreements(  # type: ignore[misc]
                ROUTE,
                last_day(),
                slices=[("tier", "enterprise")],
                limit=20,
                cursor=decode_cursor(c),
            ),
        )
        seen += [row["request_id"] for row in page["disagreements"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 30 + 40 + 10

    narrow = run(
        seeded,
        lambda r: r.disagreements(
            ROUTE,
            last_day(),
            slices=[("tier", "enterprise"), ("category", "billing")],
            served_by="teacher",
            score=(0.1, 0.2),
            confidence=(0.15, 1.0),
        ),
    )
    rows = narrow["disagreements"]
    assert sorted(row["request_id"] for row in rows) == [f"ent-{i}" for i in range(15, 21)]
    row = next(r for r in rows if r["request_id"] == "ent-17")
    assert row["prompt"] == "enterprise question 17"
    assert (row["teacher_output"], row["student_output"]) == ("teacher 17", "student 17")
    assert (row["student_confidence"], row["agreement_score"]) == (0.17, 0.17)
    assert row["agreement_reason"] == "mismatch"
    assert narrow["next_cursor"] is None
    student = run(seeded, lambda r: r.disagreements(ROUTE, last_day(), served_by="student"))
    assert len(student["disagreements"]) == 40


PAYLOADS = [
    {"messages": [{"role": "user", "content": "first"}, {"role": "user", "content": "last"}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url"}]}, "junk", 3]},
    {"messages": [{"role": "system", "content": "only system"}]},
    {"prompt": "a completion prompt"},
    {"prompt": ["first prompt", "second"]},
    {"prompt": [1, 2]},
    {"model": "x"},
    {"messages": [{"role": "user", "content": "naïve ünïcödé ✓"}]},
    {"messages": [{"content": "no role"}, {"role": "user", "content": "it"}, {"role": 3}, []]},
    {"messages": [{"role": "user", "content": "it"}, {"role": "user", "content": 7}]},
    {"messages": [{"role": "user", "content": [{"text": ""}, "x", {"text": 5}, {"text": "b"}]}]},
    {"messages": [{"role": "user", "content": [{"text": str(i)} for i in range(32)]}]},
    {"messages": "not a list", "prompt": "the prompt"},
    {"messages": [], "prompt": "ignored: there are messages"},
    {"messages": [{"role": "user", "content": 'quotes " and \\ and \n new line'}]},
]


def test_the_sql_prompt_is_the_python_last_user_text(clean_db: str) -> None:
    for number, payload in enumerate(PAYLOADS):
        literal = orjson.dumps(payload).decode().replace("'", "''")
        insert(clean_db, 1, f"p{number}", request_payload=f"'{literal}'::jsonb")
    found = fetch(
        clean_db,
        f"SELECT request_id, {last_user_text_sql('request_payload')} AS text, "
        f"char_length({last_user_text_sql('request_payload')}) AS n FROM requests",
    )
    by_id = {row["request_id"]: row for row in found}
    for number, payload in enumerate(PAYLOADS):
        expected = last_user_text(payload)
        assert by_id[f"p{number}-0"]["text"] == expected, payload
        assert by_id[f"p{number}-0"]["n"] == len(expected)


# -- thresholds -----------------------------------------------------------------------------


def test_threshold_recommendation_keeps_every_critical_slice(seeded: str) -> None:
    report = run(seeded, lambda r: r.thresholds(ROUTE, last_day()))
    assert report["comparisons"] == 100 + 45 + 6  # shadow comparisons only: no fallbacks
    assert report["current_threshold"] == 0.8
    assert [b["source"] for b in report["bars"]] == ["critical_slice", "critical_slice"]
    curves = {(c["dimension"], c["value"]): c for c in report["curves"]}
    enterprise = {p["threshold"]: p for p in curves[("tier", "enterprise")]["points"]}
    assert (enterprise[0.2]["served"], enterprise[0.2]["agreed"]) == (80, 70)
    assert (enterprise[0.25]["served"], enterprise[0.25]["agreed"]) == (75, 70)
    assert enterprise[0.25]["meets_bar"] is True
    assert enterprise[0.2]["meets_bar"] is False
    # gold has only 6 shadow comparisons (< 20): no threshold can be vouched for
    rec = report["recommendation"]
    assert rec["threshold"] is None
    assert "tier=gold never has 20 comparisons served" in rec["reason"]


def test_threshold_recommendation_and_what_it_would_serve(seeded: str) -> None:
    cfg = routes()
    cfg[0]["slices"]["critical"] = [ENTERPRISE]
    config = GatewayConfig.model_validate({"routes": cfg})

    async def work(engine: Any) -> dict[str, Any]:
        return await Reports(engine, config).thresholds(ROUTE, last_day(), dimension="tier")

    async def go() -> dict[str, Any]:
        engine = create_engine(seeded, config.database)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    report = asyncio.run(go())
    rec = report["recommendation"]
    assert rec["threshold"] == 0.25
    served = {(s["dimension"], s["value"]): s for s in rec["served"]}
    assert served[("tier", "enterprise")]["served"] == 75
    assert served[("tier", "enterprise")]["share"] == pytest.approx(0.75)
    assert served[("all", "all")]["served"] == 75 + 45 + 6
    assert {(c["dimension"], c["value"]) for c in report["curves"]} == {
        ("all", "all"),
        ("tier", "enterprise"),
        ("tier", "free"),
        ("tier", "gold"),
    }
    strict = asyncio.run(_thresholds_conservative(seeded, config))
    assert strict["recommendation"]["threshold"] == 0.3  # 70/70: lower bound 0.948


async def _thresholds_conservative(url: str, config: GatewayConfig) -> dict[str, Any]:
    engine = create_engine(url, config.database)
    try:
        return await Reports(engine, config).thresholds(ROUTE, last_day(), conservative=True)
    finally:
        await engine.dispose()


# -- drift ----------------------------------------------------------------------------------


def seed_drift(url: str) -> None:
    """Reference (8 to 2 days ago): tier 50/50, short prompts. Current (last day): 90/10,
    prompts ten times as long; category the same on both sides."""
    for prefix, count, ago, free_every, length in (
        ("ref", 400, "interval '3 days'", 2, "5 + i % 20"),
        ("cur", 200, "interval '1 hour'", 10, "50 + i % 200"),
    ):
        insert(
            url,
            count,
            prefix,
            created_at=f"now() - {ago} - make_interval(secs => i)",
            slices=f"""jsonb_build_object('tier', CASE WHEN i % {free_every} = 0 THEN 'free'
                ELSE 'enterprise' END, 'category', CASE WHEN i % 4 = 0 THEN 'billing'
                ELSE 'tech' END)""",
            request_payload=chat(f"repeat('y', {length})"),
            agree="i % 5 <> 0",
        )


def test_drift_against_a_reference_window(clean_db: str) -> None:
    seed_drift(clean_db)
    report = run(clean_db, lambda r: r.drift(ROUTE, last_day()))  # default: the week before
    dims = {d["dimension"]: d for d in report["dimensions"]}
    assert report["reference"]["requests"] == 400
    assert report["current"]["requests"] == 200
    assert dims["tier"]["flagged"] is True
    assert dims["tier"]["psi"] == pytest.approx(
        stats.psi({"enterprise": 200, "free": 200}, {"enterprise": 180, "free": 20}).value
    )
    assert dims["category"]["flagged"] is False
    assert dims["category"]["psi"] < 0.01
    length = report["prompt_length"]
    assert length["flagged"] is True
    assert length["edges"] == [6, 8, 10, 12, 14, 16, 18, 20, 22]
    assert report["flagged"] == ["tier", "_prompt_length"]
    assert len(report["agreement_trend"]) in (1, 2)  # the last hour may straddle midnight UTC
    assert sum(day["samples"] for day in report["agreement_trend"]) == 200
    assert report["reference_agreement"]["agreement"] == pytest.approx(0.8)
    only_tier = run(clean_db, lambda r: r.drift(ROUTE, last_day(), dimension="tier"))
    assert [d["dimension"] for d in only_tier["dimensions"]] == ["tier"]


def reference_file(path: Path, count: int, enterprise_every: int = 1) -> Path:
    lines = []
    for i in range(count):
        tier = "enterprise" if i % enterprise_every == 0 else "free"
        if i % 2:
            lines.append({"messages": [{"role": "user", "content": "z" * (60 + i)}]})
            lines[-1]["slices"] = {"tier": tier}
        else:
            lines.append({"prompt": "z" * (60 + i), "slices": {"tier": tier}})
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n\n")
    return path


def test_drift_against_a_reference_dataset(clean_db: str, tmp_path: Path) -> None:
    seed_drift(clean_db)
    dataset_path = reference_file(tmp_path / "train.jsonl", 300, enterprise_every=10)

    async def work(reports: Reports) -> dict[str, Any]:
        dataset = reference_dataset(reports.route(ROUTE), "train.jsonl")
        with dataset_path.open("rb") as lines:
            dataset.add_lines(lines)
        return await reports.drift(ROUTE, last_day(), dataset)

    report = run(clean_db, work)
    assert report["reference"] == {"kind": "dataset", "source": "train.jsonl", "prompts": 300}
    dims = {d["dimension"]: d for d in report["dimensions"]}
    # the route's length rule labels the file's prompts too, like live traffic
    assert set(dims) == {"tier", "prompt_length"}
    assert dims["tier"]["flagged"] is True  # 10% enterprise in training, 90% live
    assert report["skipped_dimensions"] == [
        {"dimension": "category", "why": "the reference dataset has no labels in it"}
    ]
    assert report["prompt_length"] is not None
    assert report["reference_agreement"] is None


def test_drift_monitor_exports_bounded_psi_gauges(clean_db: str) -> None:
    seed_drift(clean_db)
    gauge = Gauge(
        "shadow_gateway_drift_psi",
        "PSI",
        ["route", "dimension", "reference"],
        registry=CollectorRegistry(),
    )

    async def go() -> list[tuple[dict[str, str], float]]:
        engine = create_engine(clean_db, CONFIG.database)
        try:
            monitor = DriftMonitor(engine, CONFIG, gauge)
            await monitor.refresh()
            first = [(s.labels, s.value) for m in gauge.collect() for s in m.samples]
            await asyncio.to_thread(
                execute, clean_db, "DELETE FROM requests WHERE request_id LIKE 'cur-%'"
            )
            await monitor.refresh()  # not enough data now: the series go, not stay stale
            return first + [(s.labels, s.value) for m in gauge.collect() for s in m.samples]
        finally:
            await engine.dispose()

    samples = asyncio.run(go())
    by_dimension = {labels["dimension"]: value for labels, value in samples}
    assert set(by_dimension) == {"tier", "_prompt_length"}  # category is not allow-listed
    assert by_dimension["tier"] > 0.2
    assert all(labels["route"] == ROUTE for labels, _ in samples)
    assert all(labels["reference"] == "window" for labels, _ in samples)  # no training set
    assert len(samples) == 2


# -- the API --------------------------------------------------------------------------------


@pytest.fixture
def api(
    tmp_path: Path, seeded: str, app_key: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GatewayServer]:
    monkeypatch.setenv("DATABASE_URL", seeded)
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)
    server = GatewayServer(write_config(tmp_path / "gateway.yaml", routes(), auth={"keys": KEYS}))
    server.start()
    yield server
    server.stop()


def get(server: GatewayServer, path: str, key: str | None = ANALYST, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server.url}/admin/reports/{path}", headers=headers, timeout=30, **kw)


def test_api_answers_each_report_to_analysts_only(
    api: GatewayServer, seeded: str, tmp_path: Path
) -> None:
    assert get(api, "slices", None, params={"route": ROUTE}).status_code == 401
    assert get(api, "slices", APP, params={"route": ROUTE}).status_code == 403
    slices = get(api, "slices", params={"route": ROUTE, "since": "2d"})
    assert slices.status_code == 200, slices.text
    assert slices.json()["aggregate"]["requests"] == 210
    listing = get(
        api,
        "disagreements",
        params={"route": ROUTE, "slice": ["tier=enterprise"], "limit": 5, "served_by": "teacher"},
    )
    assert listing.status_code == 200, listing.text
    page = listing.json()
    assert len(page["disagreements"]) == 5
    following = get(
        api,
        "disagreements",
        params={
            "route": ROUTE,
            "slice": "tier=enterprise",
            "limit": 5,
            "cursor": page["next_cursor"],
        },
    ).json()
    assert not {r["request_id"] for r in page["disagreements"]} & {
        r["request_id"] for r in following["disagreements"]
    }
    thresholds = get(api, "thresholds", params={"route": ROUTE, "thresholds": "0.2,0.25,0.3"})
    assert thresholds.status_code == 200, thresholds.text
    assert [p["threshold"] for p in thresholds.json()["curves"][0]["points"]] == [
        0.2,
        0.25,
        0.3,
        0.8,
    ]
    empty_reference = get(api, "drift", params={"route": ROUTE})
    assert empty_reference.status_code == 404
    assert "reference window" in empty_reference.json()["error"]["message"]
    execute(  # move the shadowed rows into last week: they become the reference
        seeded,
        "UPDATE requests SET created_at = created_at - interval '3 days' "
        "WHERE request_id LIKE 'free-%' OR request_id LIKE 'ent-%'",
    )
    drift = get(api, "drift", params={"route": ROUTE, "min_rows": 10})
    assert drift.status_code == 200, drift.text
    assert drift.json()["reference"]["requests"] == 150
    upload = httpx.post(
        f"{api.url}/admin/reports/drift",
        params={"route": ROUTE, "min_rows": 10, "name": "train.jsonl"},
        content=reference_file(tmp_path / "train.jsonl", 120).read_bytes(),
        headers={"Authorization": f"Bearer {ANALYST}", "Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["reference"]["prompts"] == 120


@pytest.mark.parametrize(
    ("path", "params", "status", "code", "message"),
    [
        ("slices", {"route": "nope"}, 404, "model_not_found", "Unknown route 'nope'"),
        ("slices", {}, 400, "invalid_value", "route"),
        ("slices", {"route": ROUTE, "dimension": "colour"}, 404, "dimension_not_found", "colour"),
        ("slices", {"route": ROUTE, "dimension": "Bad Name"}, 400, "invalid_value", "dimension"),
        ("slices", {"route": "other"}, 404, "no_data", "no requests"),
        ("slices", {"route": ROUTE, "since": "yesterday"}, 400, "invalid_value", "ISO 8601"),
        ("slices", {"route": ROUTE, "since": "2024-13-01"}, 400, "invalid_value", "since"),
        ("slices", {"route": ROUTE, "since": "1h", "until": "2d"}, 400, "invalid_value", "before"),
        (
            "slices",
            {"route": ROUTE, "since": "2020-01-01", "until": "2020-01-02"},
            404,
            "no_data",
            "2020-01-01",
        ),
        (
            "disagreements",
            {"route": ROUTE, "slice": "tier"},
            400,
            "invalid_value",
            "dimension=value",
        ),
        (
            "disagreements",
            {"route": ROUTE, "slice": "colour=red"},
            404,
            "dimension_not_found",
            "colour",
        ),
        (
            "disagreements",
            {"route": ROUTE, "min_score": 0.9, "max_score": 0.1},
            400,
            "invalid_value",
            "min_score",
        ),
        (
            "disagreements",
            {"route": ROUTE, "min_confidence": 2},
            400,
            "invalid_value",
            "min_confidence",
        ),
        ("disagreements", {"route": ROUTE, "cursor": "garbage"}, 400, "invalid_value", "cursor"),
        ("disagreements", {"route": ROUTE, "limit": 0}, 400, "invalid_value", "limit"),
        (
            "disagreements",
            {"route": ROUTE, "served_by": "robot"},
            400,
            "invalid_value",
            "served_by",
        ),
        (
            "thresholds",
            {"route": ROUTE, "thresholds": "0.5,high"},
            400,
            "invalid_value",
            "thresholds",
        ),
        ("thresholds", {"route": ROUTE, "thresholds": "1.5"}, 400, "invalid_value", "thresholds"),
        (
            "drift",
            {"route": ROUTE, "reference_since": "1d", "reference_until": "3d"},
            400,
            "invalid_value",
            "reference_since",
        ),
        ("drift", {"route": ROUTE, "psi_threshold": -1}, 400, "invalid_value", "psi_threshold"),
        ("drift", {"route": ROUTE, "since": "2h", "min_rows": 500}, 400, "not_enough_data", "500"),
    ],
)
def test_api_bad_input(
    api: GatewayServer, path: str, params: dict[str, Any], status: int, code: str, message: str
) -> None:
    response = get(api, path, params=params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"] or message == error["param"]


def test_api_thresholds_without_shadow_comparisons(api: GatewayServer, seeded: str) -> None:
    insert(seeded, 3, "plain", route="'other'")
    response = get(api, "thresholds", params={"route": "other"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "not_enough_data"
    assert "no shadow comparison" in response.json()["error"]["message"]


def test_api_rejects_a_malformed_reference_dataset(api: GatewayServer) -> None:
    response = httpx.post(
        f"{api.url}/admin/reports/drift",
        params={"route": ROUTE},
        content=b'{"prompt": "fine"}\n\n{"prompt": "broken"\n',
        headers={"Authorization": f"Bearer {ANALYST}"},
        timeout=30,
    )
    assert response.status_code == 400
    assert "line 3: not JSON" in response.json()["error"]["message"]


# -- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def shell(
    tmp_path: Path, seeded: str, app_key: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    """``shadow-gateway …`` in this process (cli.main: its parser, exit codes, messages)."""
    monkeypatch.setenv("DATABASE_URL", seeded)
    config = write_config(tmp_path / "gateway.yaml", routes())

    def call(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([*args, "--config", str(config)])
            except SystemExit as exc:  # argparse's own usage errors
                code = int(exc.code or 0)
        return code, out.getvalue(), err.getvalue()

    return call


def test_cli_reports_as_tables_and_json(
    shell: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    code, out, err = shell("report", "slices", ROUTE)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[3].startswith("SLICE")
    assert lines[4].startswith("tier=enterprise")  # failing critical slices first
    assert lines[-2].startswith("tier=gold *")  # too few comparisons to rank: marked, last
    assert lines[-1].startswith("all ")
    assert "FAIL" in out
    assert "not enough data" in out
    code, out, _ = shell("report", "slices", ROUTE, "--json", "--dimension", "tier")
    assert orjson.loads(out)["aggregate"]["requests"] == 210
    code, out, err = shell(
        "report",
        "disagreements",
        ROUTE,
        "--slice",
        "tier=enterprise",
        "--limit",
        "3",
        "--max-score",
        "0.5",
    )
    assert code == 0, err
    assert "enterprise question" in out
    assert "more: add --cursor " in out
    cursor = out.rsplit("--cursor ", 1)[1].strip()
    code, out, err = shell("report", "disagreements", ROUTE, "--cursor", cursor, "--json")
    assert code == 0, err
    assert orjson.loads(out)["disagreements"]
    code, out, err = shell("report", "thresholds", ROUTE)
    assert code == 0, err
    assert "No recommendation: no candidate threshold keeps every bar" in out
    assert "0.8 (current)" in out
    code, out, err = shell(
        "report",
        "drift",
        ROUTE,
        "--since",
        "2h",
        "--reference-file",
        str(reference_file(tmp_path / "train.jsonl", 100)),
        "--min-rows",
        "10",
    )
    assert code == 0, err
    assert "DIMENSION" in out
    assert "agreement per day (UTC)" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["report", "slices", "nope"], 1, "Unknown route 'nope'"),
        (["report", "slices", ROUTE, "--dimension", "colour"], 1, "no slice dimension 'colour'"),
        (["report", "slices", "other"], 1, "no requests"),
        (["report", "slices", ROUTE, "--since", "soon"], 2, "is not a time"),
        (["report", "slices", ROUTE, "--since", "1h", "--until", "1d"], 2, "must be before"),
        (["report", "disagreements", ROUTE, "--min-score", "2"], 2, "from 0 to 1"),
        (
            ["report", "disagreements", ROUTE, "--min-score", ".9", "--max-score", ".1"],
            2,
            "must not be above",
        ),
        (["report", "disagreements", ROUTE, "--slice", "tier"], 2, "dimension=value"),
        (["report", "disagreements", ROUTE, "--cursor", "nope"], 2, "cursor"),
        (["report", "disagreements", ROUTE, "--limit", "0"], 2, "above 0"),
        (["report", "thresholds", ROUTE, "--thresholds", "a,b"], 2, "not a list of thresholds"),
        (["report", "thresholds", "other"], 1, "no requests"),
        (["report", "drift", ROUTE], 1, "no requests"),
        (["report", "drift", ROUTE, "--since", "2h", "--min-rows", "500"], 1, "at least 500"),
        (["report", "drift", ROUTE, "--reference-file", "/nonexistent.jsonl"], 1, "cannot read"),
        (
            ["report", "drift", ROUTE, "--reference-file", "x", "--reference-since", "9d"],
            2,
            "give one reference",
        ),
        (["report"], 2, "REPORT"),
    ],
)
def test_cli_bad_input(
    shell: Callable[..., tuple[int, str, str]], args: list[str], code: int, message: str
) -> None:
    found, out, err = shell(*args)
    assert found == code, out + err
    assert message in err
    assert "Traceback" not in err


def test_cli_malformed_reference_file(
    shell: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n["a list"]\n')
    found, _, err = shell("report", "drift", ROUTE, "--reference-file", str(bad))
    assert found == 1
    assert "line 2: not a JSON object" in err


# -- scale ----------------------------------------------------------------------------------


def test_report_times_on_100k_rows(clean_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted: each report's time on 100,000 rows (printed; run with -s)."""
    started = time.perf_counter()
    insert(
        clean_db,
        100_000,
        "bulk",
        created_at="now() - make_interval(secs => i * 6)",  # about a week, 100k rows
        slices="""jsonb_build_object('tier', (ARRAY['free','pro','enterprise','gold'])[1 + i % 4],
            'category', (ARRAY['billing','tech','sales'])[1 + i % 3])""",
        request_payload=chat("repeat('w', 10 + i % 300)"),
        student_confidence="(i % 100) / 100.0",
        agree="i % 7 <> 0",
        agreement_score="(i % 10) / 10.0",
        teacher_output="'teacher answer ' || i",
        student_output="'student answer ' || i",
        fallback_reason="CASE WHEN i % 50 = 0 THEN 'low_confidence' END",
    )
    execute(clean_db, "ANALYZE requests")
    inserted = time.perf_counter() - started
    now = datetime.now(UTC)
    day, week = Window(now - timedelta(days=1), now), Window(now - timedelta(days=7), now)
    timings: dict[str, float] = {}
    results: dict[str, Any] = {}
    for name, work in (
        ("slices (1 day, all dims)", lambda r: r.slices(ROUTE, day)),
        ("slices (7 days, all dims)", lambda r: r.slices(ROUTE, week)),
        (
            "disagreements (page of 50)",
            lambda r: r.disagreements(ROUTE, week, slices=[("tier", "gold")]),
        ),
        (
            "thresholds (7 days, 21 candidates)",
            lambda r: r.thresholds(ROUTE, week, dimension="tier"),
        ),
        ("drift (1 day vs the week before)", lambda r: r.drift(ROUTE, day)),
    ):
        began = time.perf_counter()
        results[name] = run(clean_db, work)
        timings[name] = time.perf_counter() - began
    with capsys.disabled():
        print(f"\n100k rows inserted in {inserted:.2f}s")
        for name, seconds in timings.items():
            print(f"  {name}: {seconds * 1000:.0f} ms")
    assert results["slices (7 days, all dims)"]["aggregate"]["requests"] == 100_000
