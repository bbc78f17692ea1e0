"""Log lines of a real ``shadow-gateway serve``: JSON or text, with the request's fields.

The gateway runs as a process (the CLI's option, uvicorn's log config, its worker processes),
a student fails so that a background shadow call logs a warning (its circuit opens at the
first failure), and the lines on the gateway's stderr are read back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROUTE
from tests.support.gateway import route, write_config
from tests.support.process import BIN, free_port
from tests.support.upstream import FakeOpenAI

CHAT = {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]}
OPENED = "failed 1 calls in a row"  # the shadow dispatcher's warning as the circuit opens


class Served:
    """``shadow-gateway serve`` with its stderr in a file of its own."""

    def __init__(self, config: Path, env: dict[str, str], stderr: Path, *args: str) -> None:
        self.port = free_port()
        self.stderr = stderr
        self._handle = stderr.open("wb")
        self.proc = subprocess.Popen(
            [
                str(BIN / "shadow-gateway"),
                "serve",
                "--config",
                str(config),
                "--port",
                str(self.port),
                *args,
            ],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=self._handle,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        if not self._handle.closed:
            self._handle.flush()
        return self.stderr.read_text(errors="replace")

    def wait_for(self, what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited early:\n{self.text()}")
            if what in self.text():
                return
            time.sleep(0.1)
        raise AssertionError(f"no {what!r} in the gateway's log:\n{self.text()}")

    def wait_ready(self, workers: int = 1) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited early:\n{self.text()}")
            # every worker ready (each logs it), not only the first to answer
            if self.text().count("ready: 1 route(s)") >= workers:
                return
            time.sleep(0.1)
        raise AssertionError(f"the gateway did not come up:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._handle.close()


@pytest.fixture
def failing_student_config(tmp_path: Path, teacher: FakeOpenAI, student: FakeOpenAI) -> Path:
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["student"].update(breaker_failures=1, breaker_cooldown_s=60)
    student.reset_behavior(status=503)
    return write_config(tmp_path / "gateway.yaml", [spec])


@pytest.fixture
def serve(
    tmp_path: Path, clean_db: str, app_key: str, failing_student_config: Path
) -> Iterator[Any]:
    started: list[Served] = []

    def start(*args: str, env: dict[str, str] | None = None, workers: int = 1) -> Served:
        served = Served(
            failing_student_config,
            {"DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": app_key, **(env or {})},
            tmp_path / f"stderr-{len(started)}.log",
            *args,
        )
        started.append(served)
        served.wait_ready(workers)
        return served

    yield start
    for served in started:
        served.stop()


def _ask(served: Served, app_key: str) -> httpx.Response:
    response = httpx.post(
        f"{served.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {app_key}", "X-Request-Id": "app-7"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response


@pytest.mark.slow
def test_json_lines_carry_the_request_fields_in_every_worker(serve: Any, app_key: str) -> None:
    served = serve("--log-format", "json", "--access-log", "--workers", "2", workers=2)
    response = _ask(served, app_key)
    served.wait_for(OPENED)
    served.stop()  # every line written, shutdown's too

    lines = [line for line in served.text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line of stderr is one JSON object
    for entry in parsed:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry
    # both workers logged through the same config: the app's lines and uvicorn's own
    assert sum("ready: 1 route(s)" in e["message"] for e in parsed) == 2
    assert sum(e["logger"] == "uvicorn.error" for e in parsed) >= 2

    request_id = response.headers["x-request-id"]
    [warning] = [e for e in parsed if OPENED in e["message"]]
    assert warning["level"] == "WARNING"
    assert warning["logger"] == "shadow_gateway.shadow"
    # a background shadow call's line: the request's fields, its own student
    assert warning["request_id"] == request_id
    assert warning["client_request_id"] == "app-7"
    assert warning["route"] == ROUTE
    assert warning["student"] == "default"
    assert warning["served_by"] == "teacher"
    assert warning["status"] == 200

    # uvicorn's access line, with the same fields and its own parts
    [access] = [e for e in parsed if e["logger"] == "uvicorn.access"]
    assert access["request_id"] == request_id
    assert (access["method"], access["path"], access["status_code"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert (access["route"], access["served_by"], access["status"]) == (ROUTE, "teacher", 200)
    # lines outside a request carry no request's fields
    ready = next(e for e in parsed if "ready: 1 route(s)" in e["message"])
    assert "request_id" not in ready


@pytest.mark.slow
def test_text_lines_end_with_the_request_fields(serve: Any, app_key: str) -> None:
    # the format from the environment (what a container sets), on a stderr that is no terminal
    served = serve(env={"SHADOW_GATEWAY_LOG_FORMAT": "text"})
    response = _ask(served, app_key)
    served.wait_for(OPENED)
    served.stop()

    text = served.text()
    assert not any(line.startswith("{") for line in text.splitlines())
    [warning] = [line for line in text.splitlines() if OPENED in line]
    assert re.match(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING shadow_gateway\.shadow: ", warning
    )
    fields = (
        f"request_id={response.headers['x-request-id']} client_request_id=app-7 "
        f"route={ROUTE} served_by=teacher student=default status=200"
    )
    assert warning.endswith(fields), warning
    ready = next(line for line in text.splitlines() if "ready: 1 route(s)" in line)
    assert "request_id=" not in ready


def test_a_bad_log_format_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "SHADOW_GATEWAY_LOG_FORMAT": "xml"}
    result = subprocess.run(
        [str(BIN / "shadow-gateway"), "rollout", "status", "--config", str(tmp_path / "x.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "must be json or text, not 'xml'" in result.stderr
    assert "Traceback" not in result.stderr
