"""Several worker processes: /metrics on any of them shows the whole server."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.integration.conftest import ROUTE
from tests.support.db import fetch
from tests.support.gateway import route, write_config
from tests.support.process import GatewayProcess
from tests.support.upstream import FakeOpenAI


def total_requests(metrics_text: str) -> float:
    return sum(
        float(value)
        for value in re.findall(
            r'^shadow_gateway_requests_total\{[^}]*route="support-bot"[^}]*\} (\S+)$',
            metrics_text,
            re.MULTILINE,
        )
    )


def test_metrics_add_up_across_workers(
    tmp_path: Path, clean_db: str, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI
) -> None:
    config = write_config(
        tmp_path / "gateway.yaml",
        [route(ROUTE, teacher.base_url, [student.base_url])],
        server={"workers": 2},
    )
    gateway = GatewayProcess(
        config, {"DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": app_key}, tmp_path / "gw.log"
    )
    try:
        gateway.wait_ready()
        with httpx.Client(headers={"Authorization": f"Bearer {app_key}"}) as client:
            for _ in range(30):  # new connections, so both workers get some
                response = httpx.post(
                    f"{gateway.url}/v1/chat/completions",
                    json={"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {app_key}"},
                )
                assert response.status_code == 200
            scrapes = [client.get(f"{gateway.url}/metrics").text for _ in range(4)]
        assert all(total_requests(text) == 30 for text in scrapes), gateway.output()
        assert "shadow_gateway_route_mode" in scrapes[0]
        assert gateway.terminate() == 0  # uvicorn's worker supervisor ends normally
    finally:
        gateway.kill()
    pids = {line for line in gateway.output().splitlines() if "Started server process" in line}
    assert len(pids) >= 2, gateway.output()  # the supervisor and its workers
    assert fetch(clean_db, "SELECT count(*) AS n FROM requests")[0]["n"] == 30
