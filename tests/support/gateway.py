"""Run the real gateway app under uvicorn in a thread, on a loopback port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import yaml
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.config import load_settings
from gateway.demo.teacher import ThreadedServer
from gateway.metrics import Metrics

APP_KEY = "test-app-key"


def write_config(path: Path, routes: list[dict[str, Any]], **extra: Any) -> Path:
    config: dict[str, Any] = {
        "data_dir": str(path.parent / "data"),
        "auth": {"keys": [{"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]}]},
        "log_writer": {"flush_interval_s": 0.05, "retry_interval_s": 0.2},
        "routes": routes,
    }
    config.update(extra)
    path.write_text(yaml.safe_dump(config))
    return path


def route(
    name: str, teacher_url: str, student_urls: list[str] | None, **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "teacher": {"base_url": teacher_url, "model": "teacher-model", "timeout_s": 2},
    }
    if student_urls is not None:
        spec["student"] = {
            "base_urls": student_urls,
            "model": "student-model",
            "timeout_s": 1,
            "max_concurrency": 8,
        }
    spec.update(extra)
    return spec


class GatewayServer:
    """The real app in a thread (:class:`gateway.demo.teacher.ThreadedServer`)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.metrics = Metrics(CollectorRegistry())
        self.app = create_app(load_settings(config_path), self.metrics)
        self._server = ThreadedServer(self.app, name="gateway")
        self.clients: list[openai.OpenAI] = []

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def state(self) -> Any:
        return self.app.state.gateway

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def start(self) -> GatewayServer:
        self._server.start()
        return self

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self._server.stop()


def sdk(gateway: GatewayServer, key: str, **options: Any) -> openai.OpenAI:
    """The official OpenAI client pointed at the gateway; no retries unless asked for.

    The gateway closes it when it stops, so no socket is left for the garbage collector
    (an unclosed one is a ResourceWarning, an error under this suite's filterwarnings)."""
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=key, **{"max_retries": 0, **options}
    )
    gateway.clients.append(client)
    return client
