"""Drift against a registered dataset (the champion's training set), on the real Postgres:
the report, the monitor's ``reference="dataset"`` series, the admin API and the CLI, bad input.

Rows (one ``INSERT … SELECT generate_series`` per group):

- training traffic, ten days ago: 300 support questions, tier free/enterprise alternating;
  dataset A (``train``) holds 250 of them; dataset B, of the route ``other``, 60 of its own;
- like it, three hours ago: 200 more of the same kind (other order numbers, same tiers);
- shifted, the last half hour: 200 where a third are tier ``gold`` (a value the training set
  never had), the prompts German questions about time zones, twice as long.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
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
from gateway.db.engine import create_engine
from gateway.errors import InvalidRequest, NoData
from gateway.protocol.reports import Window
from gateway.services.reports import DriftMonitor, Reports
from tests.integration.conftest import ROUTE
from tests.support.db import execute, fetch, wait_for
from tests.support.gateway import GatewayServer, route, write_config

T = TypeVar("T")
ANALYST = "analyst-secret"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "analyst", "key_env": "SGW_TEST_ANALYST_KEY", "scopes": ["analyst"]},
]
ENTERPRISE = {"dimension": "tier", "value": "enterprise", "min_agreement": 0.9}
SUPPORT = (
    "(ARRAY['Where is my invoice for order ', 'I cannot log in to my account, order ', "
    "'Please refund my last payment for order ', 'How do I change the shipping address of "
    "order ', 'My card was charged twice for order '])[1 + i % 5] || lpad(({start} + i)::text, "
    "4, '0') || ', thank you.'"
)
GERMAN = (
    "'Wie spät ist es in Berlin, wenn es in Tokio ' || i % 24 || ' Uhr ist? Bitte erklären "
    "Sie mir die Zeitzonen und die Sommerzeit ausführlich, mit Beispielen für Europa und Asien.'"
)
ALTERNATE = "jsonb_build_object('tier', CASE WHEN i % 2 = 0 THEN 'free' ELSE 'enterprise' END)"
WITH_GOLD = (
    "jsonb_build_object('tier', CASE WHEN i % 3 = 0 THEN 'gold' WHEN i % 2 = 0 THEN 'free' "
    "ELSE 'enterprise' END)"
)


def routes() -> list[dict[str, Any]]:
    main = route(ROUTE, "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])
    main["slices"] = {"critical": [ENTERPRISE]}
    return [main, route("other", "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])]


CONFIG = GatewayConfig.model_validate({"routes": routes()})


def insert(url: str, count: int, prefix: str, **columns: str) -> None:
    """``count`` rows; each column is an SQL expression of ``i`` (0 … count-1)."""
    values = {
        "route": f"'{ROUTE}'",
        "endpoint": "'chat'",
        "mode": "'shadow'",
        "served_by": "'teacher'",
        "agree": "true",
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


def register(url: str, route_name: str, prefix: str, count: int) -> int:
    """A training dataset of the requests ``prefix-0`` … ``prefix-(count-1)``."""
    dataset_id = int(
        fetch(
            url,
            "INSERT INTO datasets (route, created_by, kind, manifest, path, sha256, items) "
            "VALUES ($1, 'tests', 'train', '{}'::jsonb, '/tmp/train.jsonl', 'x', $2) "
            "RETURNING id",
            route_name,
            count,
        )[0]["id"]
    )
    execute(
        url,
        "INSERT INTO dataset_items (dataset_id, request_id, request_created_at, prompt_key) "
        f"SELECT {dataset_id}, request_id, created_at, md5(request_id) FROM requests "
        f"WHERE request_id LIKE '{prefix}-%' AND split_part(request_id, '-', 2)::int < {count}",
    )
    return dataset_id


def champion(url: str, dataset_id: int | None) -> None:
    """The route's champion, trained on ``dataset_id`` (inserted as the gateway would)."""
    trained = "NULL" if dataset_id is None else str(dataset_id)
    execute(
        url,
        "INSERT INTO route_students (route, name, status, base_urls, model, timeout_s, "
        "connect_timeout_s, shadow_sample, max_concurrency, top_logprobs, breaker_failures, "
        "breaker_cooldown_s, updated_by, train_dataset_id) VALUES ('support-bot', 'default', "
        "'champion', ARRAY['http://127.0.0.1:9/v1'], 'student-model', 1, 2, 1, 8, 5, 5, 10, "
        f"'tests', {trained}) ON CONFLICT (route, name) DO UPDATE "
        "SET train_dataset_id = EXCLUDED.train_dataset_id",
    )


@pytest.fixture
def datasets(clean_db: str) -> tuple[int, int]:
    """The rows above; (the route's training dataset, the other route's dataset)."""
    training = chat(SUPPORT.format(start=0))
    insert(
        clean_db,
        300,
        "train",
        created_at="now() - interval '10 days' - make_interval(secs => i)",
        slices=ALTERNATE,
        request_payload=training,
    )
    insert(
        clean_db,
        200,
        "like",
        created_at="now() - interval '3 hours' - make_interval(secs => i)",
        slices=ALTERNATE,
        request_payload=chat(SUPPORT.format(start=5000)),
    )
    insert(
        clean_db,
        200,
        "shift",
        created_at="now() - interval '30 minutes' + make_interval(secs => i)",
        slices=WITH_GOLD,
        request_payload=chat(GERMAN),
    )
    insert(
        clean_db,
        60,
        "other",
        route="'other'",
        created_at="now() - interval '10 days' - make_interval(secs => i)",
        request_payload=training,
    )
    return register(clean_db, ROUTE, "train", 250), register(clean_db, "other", "other", 60)


def run(url: str, work: Callable[[Reports], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = create_engine(url, CONFIG.database)
        try:
            return await work(Reports(engine, CONFIG))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def like_window() -> Window:
    now = datetime.now(UTC)
    return Window(now - timedelta(hours=4), now - timedelta(hours=2))


def shift_window() -> Window:
    now = datetime.now(UTC)
    return Window(now - timedelta(hours=1), now + timedelta(minutes=1))


def by_dimension(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {d["dimension"]: d for d in report["dimensions"]}
    if report["prompt_length"] is not None:
        found["_prompt_length"] = report["prompt_length"]
    if report["content"] is not None:
        found["_prompt_content"] = report["content"]
    return found


# -- the report -----------------------------------------------------------------------------


def test_like_traffic_is_close_to_the_training_set(
    clean_db: str, datasets: tuple[int, int]
) -> None:
    training, _ = datasets
    report = run(clean_db, lambda r: r.drift(ROUTE, like_window(), training))
    assert report["reference"] == {
        "kind": "registered",
        "dataset_id": training,
        "dataset_kind": "train",
        "created_at": report["reference"]["created_at"],
        "items": 250,
        "requests": 250,
        "champion": None,
    }
    assert report["current"]["requests"] == 200
    dims = by_dimension(report)
    assert set(dims) == {"tier", "_prompt_length", "_prompt_content"}
    assert all(d["psi"] < 0.1 for d in dims.values()), {k: d["psi"] for k, d in dims.items()}
    assert report["flagged"] == []
    content = report["content"]
    assert content["max_distance"] == 0.5
    assert content["max_distance_from"] == "default"
    assert content["held_out"]["prompts"] == 50  # one in five of the 250 held out
    assert content["reference_prompts"] == 200
    assert content["current"]["prompts"] == 200
    assert content["current"]["beyond"] == 0
    assert report["reference_agreement"] is None


def test_a_shift_from_the_training_set_is_flagged(clean_db: str, datasets: tuple[int, int]) -> None:
    training, _ = datasets
    report = run(clean_db, lambda r: r.drift(ROUTE, shift_window(), training))
    dims = by_dimension(report)
    assert report["flagged"] == ["tier", "_prompt_length", "_prompt_content"]
    gold = next(b for b in dims["tier"]["bins"] if b["value"] == "gold")
    assert (gold["reference"], gold["current"]) == (0, 67)  # a value training never had
    assert dims["_prompt_length"]["psi"] > 1
    content = report["content"]
    assert content["current"] == {
        "prompts": 200,
        "beyond": 200,
        "share": 1.0,
        "median_distance": content["current"]["median_distance"],
    }
    assert content["current"]["median_distance"] > 0.5
    assert content["held_out"]["beyond"] == 0
    # the route's scope gate sets the distance when it has one
    wider = routes()
    wider[0]["scope"] = {"novelty": {"reference": "train.jsonl", "max_distance": 0.95}}
    scoped = GatewayConfig.model_validate({"routes": wider})

    async def with_scope(engine_url: str) -> dict[str, Any]:
        engine = create_engine(engine_url, scoped.database)
        try:
            return await Reports(engine, scoped).drift(ROUTE, shift_window(), training)
        finally:
            await engine.dispose()

    wide = asyncio.run(with_scope(clean_db))["content"]
    assert (wide["max_distance"], wide["max_distance_from"]) == (
        0.95,
        "scope.novelty.max_distance",
    )
    assert wide["current"]["beyond"] == 0
    assert wide["flagged"] is False


def test_the_champions_training_set_and_requests_gone_from_the_log(
    clean_db: str, datasets: tuple[int, int]
) -> None:
    training, _ = datasets
    with pytest.raises(NoData, match="has no training dataset recorded"):
        run(clean_db, lambda r: r.drift(ROUTE, like_window(), "champion"))
    champion(clean_db, training)
    execute(clean_db, "DELETE FROM requests WHERE request_id IN ('train-0', 'train-1')")
    report = run(clean_db, lambda r: r.drift(ROUTE, like_window(), "champion"))
    assert report["reference"]["champion"] == "default"
    assert report["reference"]["dataset_id"] == training
    assert (report["reference"]["items"], report["reference"]["requests"]) == (250, 248)


def test_an_unknown_dataset_or_another_routes(clean_db: str, datasets: tuple[int, int]) -> None:
    _, other = datasets
    with pytest.raises(NoData, match="No dataset 987654") as unknown:
        run(clean_db, lambda r: r.drift(ROUTE, like_window(), 987654))
    assert unknown.value.code == "dataset_not_found"
    with pytest.raises(InvalidRequest, match=f"Dataset {other} holds route 'other'"):
        run(clean_db, lambda r: r.drift(ROUTE, like_window(), other))


# -- the monitor ----------------------------------------------------------------------------


def test_the_monitor_exports_the_training_set_under_reference_dataset(
    clean_db: str, datasets: tuple[int, int]
) -> None:
    training, _ = datasets
    champion(clean_db, training)
    gauge = Gauge(
        "shadow_gateway_drift_psi",
        "PSI",
        ["route", "dimension", "reference"],
        registry=CollectorRegistry(),
    )

    def samples() -> dict[tuple[str, str], float]:
        return {
            (s.labels["dimension"], s.labels["reference"]): s.value
            for m in gauge.collect()
            for s in m.samples
            if s.labels["route"] == ROUTE
        }

    async def go() -> list[dict[tuple[str, str], float]]:
        engine = create_engine(clean_db, CONFIG.database)
        seen = []
        try:
            # the last hour (the shifted rows) against the week before and the training set
            monitor = DriftMonitor(engine, CONFIG, gauge, current_s=3600)
            await monitor.refresh()
            seen.append(samples())
            # the dataset's side is kept: read once, not again each round
            await asyncio.to_thread(execute, clean_db, "DELETE FROM dataset_items")
            await monitor.refresh()
            seen.append(samples())
            # a champion without a training set: its dataset series go, and the kept dataset
            await asyncio.to_thread(champion, clean_db, None)
            await monitor.refresh()
            seen.append(samples())
            assert monitor._datasets == {}
        finally:
            await engine.dispose()
        return seen

    first, kept, without = asyncio.run(go())
    assert set(first) == {
        ("tier", "window"),
        ("_prompt_length", "window"),
        ("tier", "dataset"),
        ("_prompt_length", "dataset"),
        ("_prompt_content", "dataset"),
    }
    assert first[("tier", "dataset")] > 0.2
    assert first[("_prompt_content", "dataset")] > 0.2
    assert kept == first
    assert set(without) == {("tier", "window"), ("_prompt_length", "window")}


# -- the admin API --------------------------------------------------------------------------


@pytest.fixture
def api(
    tmp_path: Path,
    clean_db: str,
    datasets: tuple[int, int],
    app_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[GatewayServer]:
    monkeypatch.setenv("DATABASE_URL", clean_db)
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)
    server = GatewayServer(write_config(tmp_path / "gateway.yaml", routes(), auth={"keys": KEYS}))
    server.start()
    # At start-up the gateway moves the rows of ten days ago out of the default partition
    # into one of their own; a query planned while it attaches that one can miss them.
    wait_for(
        lambda: not fetch(clean_db, "SELECT 1 FROM ONLY requests_default LIMIT 1"),
        what="the start-up's partition maintenance",
    )
    yield server
    server.stop()


def drift(server: GatewayServer, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{server.url}/admin/reports/drift",
        params={"route": ROUTE, "since": "1h", **params},
        headers={"Authorization": f"Bearer {ANALYST}"},
        timeout=30,
    )


def test_api_drift_against_a_dataset(
    api: GatewayServer, clean_db: str, datasets: tuple[int, int]
) -> None:
    training, other = datasets
    found = drift(api, reference_dataset=str(training))
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["reference"]["kind"] == "registered"
    assert body["flagged"] == ["tier", "_prompt_length", "_prompt_content"]
    assert body["content"]["current"]["share"] == 1.0
    # the champion's training set: the gateway seeded the champion from the config
    missing = drift(api, reference_dataset="champion")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "dataset_not_found"
    execute(
        clean_db,
        f"UPDATE route_students SET train_dataset_id = {training} WHERE route = '{ROUTE}'",
    )
    chosen = drift(api, reference_dataset="champion")
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["reference"]["champion"] == "default"
    refused = [
        (drift(api, reference_dataset="987654"), 404, "dataset_not_found", "No dataset 987654"),
        (drift(api, reference_dataset=str(other)), 400, "invalid_value", "holds route 'other'"),
        (drift(api, reference_dataset="latest"), 400, "invalid_value", "not a dataset"),
        (
            drift(api, reference_dataset=str(training), reference_since="9d"),
            400,
            "invalid_value",
            "not both",
        ),
    ]
    for response, status, code, message in refused:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == (code, "reference_dataset")
        assert message in error["message"]


# -- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def shell(
    tmp_path: Path,
    clean_db: str,
    datasets: tuple[int, int],
    app_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setenv("DATABASE_URL", clean_db)
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


def test_cli_drift_against_a_dataset(
    shell: Callable[..., tuple[int, str, str]], datasets: tuple[int, int]
) -> None:
    training, other = datasets
    code, out, err = shell(
        "report", "drift", ROUTE, "--since", "1h", "--reference-dataset", str(training)
    )
    assert code == 0, err
    assert f"against dataset {training} (train, 250 of its 250 requests still logged)" in out
    assert "prompt content: 100.0% of 200 sampled prompts are farther than 0.5" in out
    assert "0.0% of 50 held-out reference prompts are" in out
    code, out, err = shell(
        "report", "drift", ROUTE, "--since", "1h", "--reference-dataset", str(training), "--json"
    )
    assert code == 0, err
    assert orjson.loads(out)["reference"]["dataset_id"] == training
    for args, status, message in (
        (["--reference-dataset", "987654"], 1, "No dataset 987654"),
        (["--reference-dataset", str(other)], 1, f"Dataset {other} holds route 'other'"),
        (["--reference-dataset", "champion"], 1, "has no training dataset recorded"),
        (["--reference-dataset", "x"], 2, "is not a dataset for --reference-dataset"),
        (["--reference-dataset", "1", "--reference-file", "x.jsonl"], 2, "give one reference"),
    ):
        code, out, err = shell("report", "drift", ROUTE, "--since", "1h", *args)
        assert code == status, out + err
        assert message in err
        assert "Traceback" not in err
