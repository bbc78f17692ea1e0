"""Fixtures for tests that run the real gateway against loopback upstreams and Postgres."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, write_config
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
def client(gateway: GatewayServer, app_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=app_key, max_retries=0)


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
