"""SQL-looking strings in every filter of the analyst API and CLI: a clear 4xx or a literal.

Real processes: the gateway on loopback with FakeOpenAI upstreams, the machine's Postgres.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from gateway import cli
from tests.integration.conftest import ROUTE, complete_row
from tests.integration.test_errors import CHAT, assert_openai_error
from tests.support.db import fetch
from tests.support.gateway import GatewayServer, route
from tests.support.upstream import FakeOpenAI

# -- SQL-looking strings in every analyst filter ----------------------------------------------

SQL_STRINGS = [
    "'; DROP TABLE requests; --",
    "x' OR '1'='1",
    "tier=a' OR 1=1 --",
    '1"; DELETE FROM requests; --',
    "0 UNION SELECT key_sha256 FROM api_keys --",
    "1; SELECT pg_sleep(30)",
]
REPORT_PARAMS = {
    "slices": ["route", "since", "until", "dimension"],
    "disagreements": [
        "route",
        "since",
        "until",
        "slice",
        "served_by",
        "cursor",
        "min_score",
        "max_confidence",
        "limit",
    ],
    "thresholds": ["route", "since", "until", "thresholds", "dimension", "conservative"],
    "drift": [
        "route",
        "since",
        "until",
        "reference_since",
        "reference_until",
        "reference_dataset",
        "dimension",
        "psi_threshold",
        "min_rows",
    ],
}


@pytest.fixture
def analyst_gateway(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> GatewayServer:
    monkeypatch.setenv("SGW_ANALYST_KEY", "analyst-key")
    gateway = make_gateway(
        [route(ROUTE, teacher.base_url, [student.base_url])],
        auth={
            "keys": [
                {"name": "tests", "key_env": "SGW_TEST_APP_KEY"},
                {"name": "analyst", "key_env": "SGW_ANALYST_KEY", "scopes": ["sre", "analyst"]},
            ]
        },
    )
    for i in range(4):
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {app_key}", "X-Slice-Tier": f"t{i % 2}"},
            timeout=10,
        )
        complete_row(clean_db, response.headers["x-request-id"])
    return gateway


def _counts(url: str) -> dict[str, int]:
    return {
        table: fetch(url, f"SELECT count(*) AS n FROM {table}")[0]["n"]
        for table in ("requests", "api_keys", "route_events", "route_state", "rollout_plans")
    }


def test_sql_in_every_report_filter_is_a_clear_4xx_or_a_literal(
    analyst_gateway: GatewayServer, clean_db: str
) -> None:
    gateway = analyst_gateway
    before = _counts(clean_db)
    headers = {"Authorization": "Bearer analyst-key"}
    checked = 0
    for report, params in REPORT_PARAMS.items():
        for param in params:
            for sql in SQL_STRINGS:
                query = {"route": ROUTE, param: sql}
                response = httpx.get(
                    f"{gateway.url}/admin/reports/{report}", params=query, headers=headers
                )
                assert response.status_code < 500, (report, param, sql, response.text)
                if response.status_code >= 400:
                    assert_openai_error(response, response.status_code)
                checked += 1
    for param in ("route", "name", "dimension", "since"):
        for sql in SQL_STRINGS:
            response = httpx.post(
                f"{gateway.url}/admin/reports/drift",
                params={"route": ROUTE, param: sql},
                content=json.dumps({"prompt": sql, "slices": {"tier": sql}}).encode() + b"\n",
                headers=headers,
                timeout=30,
            )
            assert response.status_code < 500, (param, sql, response.text)
    for sql in SQL_STRINGS:
        for path in (f"/admin/routes/{sql}", f"/admin/routes/{sql}/events"):
            response = httpx.get(f"{gateway.url}{path}", headers=headers)
            assert response.status_code in (400, 404), (path, response.text)
            assert_openai_error(response, response.status_code)
        response = httpx.get(
            f"{gateway.url}/admin/routes/{ROUTE}/events", params={"limit": sql}, headers=headers
        )
        assert_openai_error(response, 400)
    assert checked == sum(len(p) for p in REPORT_PARAMS.values()) * len(SQL_STRINGS)
    assert _counts(clean_db) == before
    assert before["requests"] == 4
    assert (
        httpx.get(
            f"{gateway.url}/admin/reports/slices", params={"route": ROUTE}, headers=headers
        ).status_code
        == 200
    )


def test_sql_in_every_cli_report_filter_is_a_plain_error_or_a_literal(
    analyst_gateway: GatewayServer, clean_db: str, tmp_path: Path
) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text(
        yaml.safe_dump(
            {"routes": [route(ROUTE, "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])]}
        )
    )
    options = {
        "slices": ["--since", "--until", "--dimension"],
        "disagreements": ["--since", "--until", "--slice", "--cursor", "--min-score"],
        "thresholds": ["--since", "--until", "--thresholds", "--dimension"],
        "drift": [
            "--since",
            "--until",
            "--reference-since",
            "--reference-until",
            "--reference-dataset",
            "--dimension",
        ],
    }
    before = _counts(clean_db)
    for report, flags in options.items():
        for sql in SQL_STRINGS:
            for args in ([sql], *([ROUTE, flag, sql] for flag in flags)):
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    try:
                        code = cli.main(["report", report, *args, "--config", str(config)])
                    except SystemExit as exc:  # argparse's own usage errors
                        code = int(exc.code or 0)
                assert "Traceback" not in err.getvalue(), (report, args, err.getvalue())
                if code != 0:
                    assert err.getvalue().strip(), (report, args)
    assert _counts(clean_db) == before
