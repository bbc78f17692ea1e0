"""Fixtures for tests that run the real gateway against loopback upstreams and Postgres."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrate import upgrade
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, sdk, write_config
from tests.support.upstream import FakeOpenAI

ROUTE = "support-bot"


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def make_gateway(
    tmp_path: Path, clean_db: str, app_key: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., GatewayServer]]:
    monkeypatch.setenv("DATABASE_URL", clean_db)
    started: list[GatewayServer] = []

    def make(routes: list[dict[str, Any]], **extra: Any) -> GatewayServer:
        config = write_config(tmp_path / "gateway.yaml", routes, **extra)
        server = GatewayServer(config).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def gateway(
    make_gateway: Callable[..., GatewayServer], teacher: FakeOpenAI, student: FakeOpenAI
) -> GatewayServer:
    return make_gateway(
        [
            route(ROUTE, teacher.base_url, [student.base_url]),
            route("slow-teacher", teacher.base_url, [student.base_url]),
        ]
    )


@pytest.fixture
def rival() -> Iterator[FakeOpenAI]:
    """A third loopback upstream: a second student beside ``student``."""
    server = FakeOpenAI("rival").start()
    yield server
    server.stop()


@pytest.fixture
def client(gateway: GatewayServer, app_key: str) -> openai.OpenAI:
    return sdk(gateway, app_key)


def rows(url: str, where: str = "TRUE") -> list[dict[str, Any]]:
    return fetch(url, f"SELECT * FROM requests WHERE {where} ORDER BY created_at")


def complete_row(url: str, request_id: str) -> dict[str, Any]:
    """Wait until both halves of the request's row are in, and return it."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = rows(url, f"request_id = '{request_id}'")
        return (
            bool(found)
            and found[0]["teacher_model"] is not None
            and (found[0]["student_status"] is not None)
        )

    wait_for(ready, what=f"the row of {request_id}")
    return found[0]


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A folder for an embedded Postgres's data, outside pytest's tmp_path.

    pytest makes ``/tmp/pytest-of-<user>`` private (0700) at every session start; a second
    pytest run on the machine would then shut the server's own user out of its data.
    """
    folder = Path(tempfile.mkdtemp(prefix="sgw-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def private_postgres(server_dir: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A Postgres of the test's own (embedded, migrated), to stop and start at will."""
    server = EmbeddedPostgres(server_dir)
    url = server.start()
    upgrade(url)
    yield server, url
    server.stop()
