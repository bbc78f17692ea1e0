"""Shared fixtures: the test database (real Postgres, migrated by Alembic) and upstreams."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import asyncpg
import pytest

from gateway.db.engine import plain_dsn
from gateway.db.migrate import upgrade
from tests.support.db import execute
from tests.support.upstream import FakeOpenAI

ADMIN_URL = os.environ.get("SGW_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin(sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(plain_dsn(ADMIN_URL), timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database on the machine's Postgres, migrated to head by Alembic."""
    name = f"sgw_test_{secrets.token_hex(4)}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except OSError as exc:
        pytest.fail(f"the test Postgres at {ADMIN_URL} is not reachable: {exc}")
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def clean_db(database_url: str) -> str:
    execute(
        database_url,
        "TRUNCATE requests, student_answers, route_state, route_students, route_events, "
        "route_slice_overrides, rollout_plans, api_keys, feedback, reviews, review_verdicts, "
        "datasets, dataset_items, distill_runs, "
        "teacher_versions",
    )
    return database_url


@pytest.fixture
def app_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SGW_TEST_APP_KEY", "test-app-key")
    return "test-app-key"


@pytest.fixture
def teacher() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI("teacher").start()
    yield server
    server.stop()


@pytest.fixture
def student() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI("student").start()
    yield server
    server.stop()
