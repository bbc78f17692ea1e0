"""The auth audit: every /admin, /v1 and /console/api route refuses bad keys; secrets are never
kept or shown.

Routes are enumerated from the app itself (``app.routes``), so a route added later is audited
without touching this file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from gateway.config import DatabaseConfig
from gateway.db.engine import create_engine
from gateway.db.keys import create_key, revoke_key
from tests.integration.conftest import ROUTE, complete_row
from tests.integration.test_errors import assert_openai_error
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route
from tests.support.upstream import FakeOpenAI

SECRETS = {
    "SGW_TEST_APP_KEY": "test-app-key",
    "SGW_AUDIT_SRE_KEY": "sre-secret-key-1234",
    "SGW_AUDIT_ANALYST_KEY": "analyst-secret-key-5678",
    "SGW_AUDIT_TEACHER_KEY": "teacher-upstream-secret-9012",
    "SGW_AUDIT_STUDENT_KEY": "student-upstream-secret-3456",
}
APP, SRE, ANALYST = (SECRETS[k] for k in list(SECRETS)[:3])
PROTECTED = ("/admin", "/v1", "/console/api")
TABLES = ("requests", "route_state", "route_events", "api_keys", "rollout_plans")


@pytest.fixture
def audited(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> GatewayServer:
    caplog.set_level(logging.DEBUG)  # from start-up on: every gateway log line is checked
    for var, value in SECRETS.items():
        monkeypatch.setenv(var, value)
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["teacher"]["api_key_env"] = "SGW_AUDIT_TEACHER_KEY"
    spec["student"]["api_key_env"] = "SGW_AUDIT_STUDENT_KEY"
    return make_gateway(
        [spec],
        auth={
            "keys": [
                {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
                {"name": "sre", "key_env": "SGW_AUDIT_SRE_KEY", "scopes": ["sre"]},
                {"name": "analyst", "key_env": "SGW_AUDIT_ANALYST_KEY", "scopes": ["analyst"]},
            ]
        },
    )


def all_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, into included routers (FastAPI includes them lazily)."""
    for found in routes:
        included = getattr(found, "original_router", None)
        if included is not None:
            yield from all_routes(included.routes, prefix + found.include_context.prefix)
        elif isinstance(found, APIRoute | Route):
            yield prefix + found.path, set(found.methods or ())


def protected_routes(gateway: GatewayServer) -> Iterator[tuple[str, str]]:
    """(method, path) of every protected route, path parameters filled in."""
    for template, methods in all_routes(gateway.app.routes):
        if template.startswith(PROTECTED):
            path = re.sub(r"\{[^}]+\}", ROUTE, template)
            for method in sorted(methods - {"HEAD"}):
                yield method, path


def _call(gateway: GatewayServer, method: str, path: str, **headers: str) -> httpx.Response:
    body = b"{}" if method in ("POST", "PATCH", "PUT") else None
    return httpx.request(
        method,
        f"{gateway.url}{path}",
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _with_engine(url: str, work: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        engine = create_engine(url, DatabaseConfig())
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_every_route_refuses_missing_wrong_revoked_and_wrong_scope_keys(
    audited: GatewayServer, clean_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = audited
    routes = list(protected_routes(gateway))
    paths = {path for _, path in routes}
    # the audit covers what it must (a renamed prefix would silently audit nothing)
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= paths
    assert any(p.startswith("/admin/routes") for p in paths)
    assert any(p.startswith("/admin/reports") for p in paths)

    # a database key with every scope, proven to work, then revoked
    revoked = _with_engine(
        clean_db, lambda engine: create_key(engine, "gone", ["app", "sre", "analyst"], "audit")
    )
    wait_for(
        lambda: _call(gateway, "GET", "/admin/routes", **_bearer(revoked)).status_code == 200,
        what="the new key to work",
    )
    _with_engine(clean_db, lambda engine: revoke_key(engine, "gone", "audit"))
    wait_for(
        lambda: _call(gateway, "GET", "/admin/routes", **_bearer(revoked)).status_code == 401,
        what="the revoked key to stop working",
    )

    refused = 0
    for method, path in routes:
        what = f"{method} {path}"
        for headers in (
            {},
            _bearer("sk-not-a-key"),
            _bearer(revoked),
            {"Authorization": f"Basic {APP}"},
            {"Authorization": "Bearer"},
        ):
            response = _call(gateway, method, path, **headers)
            assert response.status_code == 401, (what, headers, response.text)
            error = assert_openai_error(response, 401, "invalid_api_key")
            assert "sk-not-a-key" not in error["message"]
            assert revoked not in error["message"]
            refused += 1
        # a genuine key of the wrong job: 403
        wrong = [ANALYST, SRE] if path.startswith("/v1") else [APP]
        if path.startswith("/admin") and method != "GET" and "/reports/" not in path:
            wrong.append(ANALYST)  # analysts read (reports too); only SREs change things
        for key in wrong:
            response = _call(gateway, method, path, **_bearer(key))
            assert response.status_code == 403, (what, key, response.text)
            assert_openai_error(response, 403, "insufficient_scope")
            assert key not in response.text
            refused += 1
    assert refused >= 6 * len(routes)
    # nothing refused reached an upstream or left a row
    assert fetch(clean_db, "SELECT count(*) AS n FROM requests")[0]["n"] == 0
    _assert_no_secret_in_logs(caplog, revoked)


def test_keys_are_stored_only_as_hashes(audited: GatewayServer, clean_db: str) -> None:
    key = _with_engine(clean_db, lambda engine: create_key(engine, "hashed", ["sre"], "audit"))
    stored = fetch(clean_db, "SELECT * FROM api_keys WHERE name = 'hashed'")[0]
    assert bytes(stored["key_sha256"]) == hashlib.sha256(key.encode()).digest()
    assert key not in json.dumps(stored, default=str)
    assert key.encode() not in _dump(clean_db)


def test_secrets_never_reach_logs_rows_errors_or_the_wrong_upstream(
    audited: GatewayServer,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = audited
    chat = {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]}
    ok = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=_bearer(APP))
    assert ok.status_code == 200
    complete_row(clean_db, ok.headers["x-request-id"])
    # errors of every kind, with secrets in the places a careless gateway would echo them
    teacher.reset_behavior(status=500)
    httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=_bearer(APP))
    teacher.reset_behavior()
    # errors of every kind: none echoes the key it was sent with (nor any other secret)
    for response in (
        httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=_bearer(SRE)),
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={**chat, "model": "nope"},
            headers=_bearer(APP),
        ),
        httpx.post(
            f"{gateway.url}/v1/chat/completions", content=b"{not json", headers=_bearer(APP)
        ),
        httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=_bearer(APP + "x")),
        httpx.get(f"{gateway.url}/admin/routes", headers=_bearer(APP)),
        httpx.get(
            f"{gateway.url}/admin/reports/slices",
            params={"route": ROUTE, "since": "yesterday-ish"},
            headers=_bearer(ANALYST),
        ),
    ):
        assert response.status_code in (400, 401, 403, 404), response.text
        for secret in SECRETS.values():
            assert secret not in response.text
            assert secret not in str(response.headers)
    # each upstream got its own key, never the app's
    assert (
        teacher.received[0].headers["authorization"] == f"Bearer {SECRETS['SGW_AUDIT_TEACHER_KEY']}"
    )
    wait_for(lambda: bool(student.received), what="the shadow call")
    assert (
        student.received[0].headers["authorization"] == f"Bearer {SECRETS['SGW_AUDIT_STUDENT_KEY']}"
    )
    wait_for(
        lambda: fetch(clean_db, "SELECT count(*) AS n FROM requests")[0]["n"] >= 2,
        what="the rows",
    )
    dump = _dump(clean_db)
    for secret in SECRETS.values():
        assert secret.encode() not in dump
    _assert_no_secret_in_logs(caplog)


def _dump(url: str) -> bytes:
    """Every row of every table, as text."""
    out = b""
    for table in TABLES:
        for row in fetch(url, f"SELECT row_to_json(t)::text AS j FROM {table} t"):
            out += row["j"].encode() + b"\n"
    return out


def _assert_no_secret_in_logs(caplog: pytest.LogCaptureFixture, *more: str) -> None:
    records = caplog.get_records("setup") + caplog.records
    text = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''} {record.args!r}"
        for record in records
        if not record.name.startswith(("httpx", "httpcore"))  # the test's own client
    )
    assert "shadow_gateway" in {record.name.split(".")[0] for record in records}
    for secret in (*SECRETS.values(), *more):
        assert secret not in text
    assert "authorization" not in text.lower() or "Bearer" not in text
