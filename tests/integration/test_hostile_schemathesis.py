"""Schemathesis fuzzes the public API from its own OpenAPI document: no 5xx, server still up.

The document covers the FastAPI routes (admin, reports, health) and the raw hot-path routes
(/v1/chat/completions, /v1/completions, /v1/models), which ``gateway.api.openai`` adds to it.
Bounded and derandomized for CI: a few dozen examples per operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.integration.conftest import ROUTE
from tests.support.gateway import GatewayServer, route
from tests.support.upstream import FakeOpenAI

KEY = "fuzz-all-scopes-key"


@pytest.fixture
def fuzzed_gateway(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> GatewayServer:
    monkeypatch.setenv("SGW_FUZZ_KEY", KEY)
    return make_gateway(
        [route(ROUTE, teacher.base_url, [student.base_url])],
        auth={
            "keys": [
                {"name": "fuzz", "key_env": "SGW_FUZZ_KEY", "scopes": ["app", "sre", "analyst"]}
            ]
        },
    )


def test_the_spec_documents_the_hot_path(fuzzed_gateway: GatewayServer) -> None:
    spec = httpx.get(f"{fuzzed_gateway.url}/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model}"):
        assert path in spec["paths"]
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatCompletionRequest"
    )
    assert "messages" in spec["components"]["schemas"]["ChatCompletionRequest"]["required"]
    assert "/admin/reports/slices" in spec["paths"]


FUZZ = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def _fuzz(operation: Any, mode: GenerationMode, called: list[str]) -> None:
    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = case.call(headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        case.validate_response(response, checks=[not_a_server_error])
        if 400 <= response.status_code < 500 and response.status_code != 405:
            # every 4xx is an OpenAI-shaped error
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        called.append(operation.label)

    fuzz()


def test_no_input_makes_a_5xx(fuzzed_gateway: GatewayServer) -> None:
    # POST /admin/reports/drift reads its JSONL body as lines of text
    schemathesis.serializer.alias("application/jsonl", "text/plain")
    api = schemathesis.openapi.from_url(f"{fuzzed_gateway.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models"} <= labels
    called: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, called)
            except Unsatisfiable:
                # no parameters or body to get wrong (GET /healthz): no negative cases exist
                assert mode == GenerationMode.NEGATIVE, operation.label
    assert set(called) == labels
    # and the server is still there, serving
    response = httpx.post(
        f"{fuzzed_gateway.url}/v1/chat/completions",
        json={"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert response.status_code == 200
    assert httpx.get(f"{fuzzed_gateway.url}/healthz").status_code == 200
