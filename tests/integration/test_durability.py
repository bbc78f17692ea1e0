"""No log record is lost: Postgres outages, orphaned journals, SIGTERM, the embedded default."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.db.embedded import EmbeddedPostgres
from tests.integration.conftest import ROUTE
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, write_config
from tests.support.process import GatewayProcess
from tests.support.upstream import FakeOpenAI

CHAT = {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]}


def count_complete(url: str) -> tuple[int, int, int]:
    row = fetch(
        url,
        "SELECT count(*) AS n, count(DISTINCT request_id) AS ids, "
        "count(*) FILTER (WHERE teacher_output IS NOT NULL AND student_status IS NOT NULL) "
        "AS complete FROM requests",
    )[0]
    return row["n"], row["ids"], row["complete"]


def test_postgres_outage_during_traffic_loses_nothing(
    tmp_path: Path,
    private_postgres: tuple[EmbeddedPostgres, str],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url = private_postgres
    monkeypatch.setenv("DATABASE_URL", url)
    config = write_config(
        tmp_path / "gateway.yaml", [route(ROUTE, teacher.base_url, [student.base_url])]
    )
    gateway = GatewayServer(config).start()
    statuses: list[int] = []
    ids: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {app_key}"}, timeout=10) as client:
            while not stop.is_set():
                response = client.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
                statuses.append(response.status_code)
                ids.append(response.headers["x-request-id"])

    sender = threading.Thread(target=traffic)
    try:
        sender.start()
        wait_for(lambda: len(statuses) >= 30, what="traffic before the outage")
        server.stop()
        before_outage = len(statuses)
        wait_for(lambda: len(statuses) >= before_outage + 30, what="traffic during the outage")
        wait_for(lambda: gateway.state.writer.journal.records > 0, what="records journaled")
        ready = httpx.get(f"{gateway.url}/readyz")
        # Still ready for traffic: every record goes to the journal meanwhile.
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["database"].startswith("unreachable")
        server.start()
        wait_for(lambda: len(statuses) >= before_outage + 60, what="traffic after the outage")
    finally:
        stop.set()
        sender.join(timeout=30)
    assert set(statuses) == {200}
    wait_for(
        lambda: count_complete(url) == (len(ids), len(ids), len(ids)),
        timeout_s=30,
        what=f"all {len(ids)} rows, once each, complete",
    )
    assert gateway.metric("shadow_gateway_journal_replayed_total") > 0
    wait_for(lambda: httpx.get(f"{gateway.url}/readyz").json()["status"] == "ready", what="ready")
    gateway.stop()
    assert gateway.state.writer.journal.records == 0


def test_gateway_starts_and_journals_when_postgres_is_down(
    tmp_path: Path,
    private_postgres: tuple[EmbeddedPostgres, str],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url = private_postgres
    server.stop()
    monkeypatch.setenv("DATABASE_URL", url)
    config = write_config(
        tmp_path / "gateway.yaml", [route(ROUTE, teacher.base_url, [student.base_url])]
    )
    gateway = GatewayServer(config).start()
    try:
        headers = {"Authorization": f"Bearer {app_key}"}
        for _ in range(5):
            response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 200
        wait_for(lambda: gateway.state.writer.journal.records >= 5, what="journaled records")
        server.start()
        wait_for(lambda: count_complete(url) == (5, 5, 5), timeout_s=30, what="5 replayed rows")
    finally:
        gateway.stop()


def orphan_journal(data_dir: Path, records: list[dict[str, Any]]) -> Path:
    """A journal file as a killed worker leaves it: unlocked, last line torn."""
    journal = data_dir / "journal"
    journal.mkdir(parents=True)
    path = journal / "journal-99999-deadbeef.jsonl"
    lines = b"".join(orjson.dumps(record) + b"\n" for record in records)
    path.write_bytes(lines + b'{"request_id": "torn-li')
    return path


def test_orphaned_journal_of_a_dead_process_is_replayed(
    tmp_path: Path,
    clean_db: str,
    app_key: str,
    teacher: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    half = {
        "request_id": "req_from_dead_worker",
        "route": ROUTE,
        "endpoint": "chat",
        "created_at": "2026-11-28T10:00:00+00:00",
        "mode": "shadow",
        "slices": {"tier": "free"},
    }
    teacher_half = {**half, "served_by": "teacher", "status_code": 200, "teacher_output": "t"}
    student_half = {**half, "student_status": "ok", "student_output": "s"}
    path = orphan_journal(tmp_path / "data", [teacher_half, student_half, teacher_half])
    monkeypatch.setenv("DATABASE_URL", clean_db)
    config = write_config(
        tmp_path / "gateway.yaml", [route(ROUTE, teacher.base_url, None, mode="teacher")]
    )
    gateway = GatewayServer(config).start()
    try:
        wait_for(lambda: not path.exists(), what="the orphan journal to be replayed")
        replayed = fetch(clean_db, "SELECT * FROM requests")
        assert len(replayed) == 1
        assert replayed[0]["teacher_output"] == "t"
        assert replayed[0]["student_output"] == "s"
    finally:
        gateway.stop()


def test_sigterm_drains_shadow_calls_and_the_log_queue(
    tmp_path: Path, clean_db: str, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI
) -> None:
    student.reset_behavior(latency_s=1.5)
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["student"]["timeout_s"] = 10
    config = write_config(
        tmp_path / "gateway.yaml",
        [spec],
        log_writer={"flush_interval_s": 5},  # nothing is flushed by time before SIGTERM
    )
    gateway = GatewayProcess(
        config, {"DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": app_key}, tmp_path / "gateway.log"
    )
    try:
        gateway.wait_ready()
        headers = {"Authorization": f"Bearer {app_key}"}
        for _ in range(10):
            response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 200
        assert student.in_progress > 0
        # uvicorn re-raises SIGTERM after its clean shutdown, so the exit is by that signal.
        assert gateway.terminate() in (0, -signal.SIGTERM), gateway.output()
    finally:
        gateway.kill()
    assert count_complete(clean_db) == (10, 10, 10), gateway.output()
    assert "log queue drained" in gateway.output()


def test_embedded_default_starts_migrates_and_serves(
    server_dir: Path, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI
) -> None:
    config = write_config(
        server_dir / "gateway.yaml", [route(ROUTE, teacher.base_url, [student.base_url])]
    )
    env = {"SGW_TEST_APP_KEY": app_key, "DATABASE_URL": ""}
    gateway = GatewayProcess(config, env, server_dir / "gateway.log")
    try:
        gateway.wait_ready()
        assert httpx.get(f"{gateway.url}/readyz").json()["database"] == "ok"
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {app_key}"},
        )
        assert response.status_code == 200
        assert gateway.terminate() in (0, -signal.SIGTERM)
    finally:
        gateway.kill()
    # The data lives next to the config; start it again to read what was logged.
    server = EmbeddedPostgres(server_dir / "data")
    url = server.start()
    try:
        assert count_complete(url) == (1, 1, 1)
    finally:
        server.stop()
