"""No log record is lost: Postgres outages, orphaned journals, SIGTERM, the embedded default."""

from __future__ import annotations

import asyncio
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import LogWriterConfig
from gateway.db.embedded import EmbeddedPostgres
from gateway.db.engine import plain_dsn
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics
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
    rival: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two students (a champion and a candidate): every request's row and both answer rows."""
    server, url = private_postgres
    monkeypatch.setenv("DATABASE_URL", url)
    spec = route(ROUTE, teacher.base_url, None)
    spec["students"] = [
        {"name": name, "base_urls": [upstream.base_url], "model": f"{name}-model"}
        for name, upstream in (("champ", student), ("cand", rival))
    ]
    spec["champion"] = "champ"
    gateway = GatewayServer(write_config(tmp_path / "gateway.yaml", [spec])).start()
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
    wait_for(
        lambda: (
            fetch(
                url,
                "SELECT student, count(*) AS n, count(DISTINCT request_id) AS ids, "
                "count(agree) AS compared FROM student_answers GROUP BY student ORDER BY student",
            )
            == [
                {"student": name, "n": len(ids), "ids": len(ids), "compared": len(ids)}
                for name in ("cand", "champ")
            ]
        ),
        timeout_s=30,
        what=f"both students' {len(ids)} answers, once each, compared",
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


def test_an_outage_journals_both_tables_and_the_replay_completes_them_once(
    tmp_path: Path, private_postgres: tuple[EmbeddedPostgres, str]
) -> None:
    """Requests and student answers, halves written before, during and after an outage."""
    server, url = private_postgres
    created = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    ids = [f"req_{n}" for n in range(40)]
    students = ("champion", "candidate")

    def request_half(request_id: str, **columns: object) -> dict[str, object]:
        identity = {"route": ROUTE, "endpoint": "chat", "created_at": created, "mode": "shadow"}
        return {"request_id": request_id, **identity, "slices": {}, **columns}

    def answer(request_id: str, student: str, **columns: object) -> dict[str, object]:
        return {
            "request_id": request_id,
            "student": student,
            "source": "live",
            "created_at": created,
            "route": ROUTE,
            "endpoint": "chat",
            "slices": {},  # NOT NULL, so on every half, as route and endpoint
            **columns,
        }

    registry = CollectorRegistry()

    async def run() -> LogWriter:
        config = LogWriterConfig(batch_size=16, flush_interval_s=0.05, retry_interval_s=0.2)
        log = LogWriter(plain_dsn(url), tmp_path / "journal", config, Metrics(registry))
        await log.start()
        for request_id in ids[:10]:  # written while Postgres is up
            log.submit(request_half(request_id, teacher_output="t"))
            log.submit_answer(answer(request_id, "champion", student_output="s"))
        await wait_async(lambda: log.queue_depth == 0, "the first records written")
        await asyncio.to_thread(server.stop)
        for request_id in ids:  # the outage: every other half, journaled
            if request_id not in ids[:10]:
                log.submit(request_half(request_id, teacher_output="t"))
            log.submit(request_half(request_id, student_output="s", student_status="ok"))
            for student in students:
                log.submit_answer(answer(request_id, student, student_output="s"))
        await wait_async(lambda: log.journal.records > 0 and log.queue_depth == 0, "journaled")
        await asyncio.to_thread(server.start)
        for request_id in ids:  # the verdicts come after the outage
            for student in students:
                log.submit_answer(answer(request_id, student, agree=True))
        await wait_async(lambda: log.journal.records == 0, "the journal replayed")
        await log.close()
        return log

    log = asyncio.run(run())
    assert not (tmp_path / "journal" / "rejected.jsonl").exists()
    assert log.journal.records == 0
    assert (registry.get_sample_value("shadow_gateway_journal_replayed_total") or 0) > 0
    requests_rows = fetch(
        url,
        "SELECT count(*) AS n, count(DISTINCT request_id) AS ids, count(*) FILTER "
        "(WHERE teacher_output IS NOT NULL AND student_status IS NOT NULL) AS complete "
        "FROM requests",
    )
    assert requests_rows == [{"n": 40, "ids": 40, "complete": 40}]
    answers_rows = fetch(
        url,
        "SELECT student, count(*) AS n, count(DISTINCT request_id) AS ids, count(*) FILTER "
        "(WHERE student_output IS NOT NULL AND agree) AS complete "
        "FROM student_answers GROUP BY student ORDER BY student",
    )
    assert answers_rows == [
        {"student": "candidate", "n": 40, "ids": 40, "complete": 40},
        {"student": "champion", "n": 40, "ids": 40, "complete": 40},
    ]


async def wait_async(predicate: Any, what: str, timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


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
        # after its clean shutdown the process ends with SIGTERM's status, 128 + 15
        assert gateway.terminate() == 128 + signal.SIGTERM, gateway.output()
    finally:
        gateway.kill()
    assert count_complete(clean_db) == (10, 10, 10), gateway.output()
    assert "log queue drained" in gateway.output()


def embedded_postmasters(data_dir: Path) -> list[int]:
    """Postgres server processes running on this data directory."""
    pgdata = str(data_dir / "postgres")
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("postgres") and pgdata in cmdline:
            found.append(process.info["pid"])
    return found


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
        # SIGTERM (systemd, Docker, Kubernetes): drained, and the embedded server stopped too
        assert gateway.terminate() == 128 + signal.SIGTERM
    finally:
        gateway.kill()
    assert embedded_postmasters(server_dir / "data") == []
    # The data lives next to the config; start it again to read what was logged.
    server = EmbeddedPostgres(server_dir / "data")
    url = server.start()
    try:
        assert count_complete(url) == (1, 1, 1)
    finally:
        server.stop()


def test_a_killed_embedded_serve_leaves_no_server_behind_the_next_one(
    server_dir: Path, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI
) -> None:
    """SIGKILL leaves the server running and the dead pid in its handle list; the next
    serve adopts the server, forgets the dead holder, and stops the server at its own exit."""
    config = write_config(
        server_dir / "gateway.yaml", [route(ROUTE, teacher.base_url, [student.base_url])]
    )
    env = {"SGW_TEST_APP_KEY": app_key, "DATABASE_URL": ""}
    killed = GatewayProcess(config, env, server_dir / "killed.log")
    try:
        killed.wait_ready()
    finally:
        killed.kill()
    [postmaster] = embedded_postmasters(server_dir / "data")
    gateway = GatewayProcess(config, env, server_dir / "gateway.log")
    try:
        gateway.wait_ready()
        assert embedded_postmasters(server_dir / "data") == [postmaster]  # adopted, not twice
        assert gateway.terminate() == 128 + signal.SIGTERM
    finally:
        gateway.kill()
    assert embedded_postmasters(server_dir / "data") == []


def test_ctrl_c_stops_the_embedded_serve_and_its_postgres_quietly(
    server_dir: Path, app_key: str, teacher: FakeOpenAI
) -> None:
    """SIGINT (Ctrl-C in a terminal) drains like SIGTERM, stops the embedded PostgreSQL, and
    ends normally (uvicorn handles the signal as a request to stop), with no traceback."""
    config = write_config(
        server_dir / "gateway.yaml", [route(ROUTE, teacher.base_url, None, mode="teacher")]
    )
    env = {"SGW_TEST_APP_KEY": app_key, "DATABASE_URL": ""}
    gateway = GatewayProcess(config, env, server_dir / "gateway.log")
    try:
        gateway.wait_ready()
        assert gateway.terminate(signum=signal.SIGINT) == 0, gateway.output()
    finally:
        gateway.kill()
    assert embedded_postmasters(server_dir / "data") == []
    assert "Traceback" not in gateway.output()


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_a_streams_row_is_submitted_before_the_app_reads_its_last_event(
    tmp_path: Path,
    clean_db: str,
    app_key: str,
    teacher: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
) -> None:
    """The teacher keeps the stream open after its last event ([DONE], or the Responses
    API's response.completed): the row is written while it does, not once the stream ends,
    so a process killed after the app read the answer has the row on disk."""
    monkeypatch.setenv("DATABASE_URL", clean_db)
    teacher.reset_behavior(linger_s=30)
    spec = route(ROUTE, teacher.base_url, None, mode="teacher")
    spec["teacher"]["timeout_s"] = 60  # (a teacher timeout would end the stream early)
    config = write_config(
        tmp_path / "gateway.yaml",
        [spec],
        log_writer={"flush_interval_s": 0.05},
    )
    gateway = GatewayServer(config).start()
    path, body, last = {
        "chat": ("/v1/chat/completions", CHAT, "data: [DONE]"),
        "responses": (
            "/v1/responses",
            {"model": ROUTE, "input": "hi"},
            "event: response.completed",
        ),
    }[endpoint]
    try:
        headers = {"Authorization": f"Bearer {app_key}"}
        with httpx.stream(
            "POST", gateway.url + path, json={**body, "stream": True}, headers=headers
        ) as response:
            lines = response.iter_lines()
            while next(lines) != last:
                pass
            # the last event read, the stream (the app's connection) still open
            wait_for(
                lambda: bool(fetch(clean_db, "SELECT 1 FROM requests WHERE teacher_output <> ''")),
                timeout_s=10,
                what="the row, while the stream is still open",
            )
    finally:
        gateway.stop()
