"""The admin API's OpenAPI document, as a client generator reads it from a running gateway.

Every ``/admin`` operation: a schema for its success body (a model with properties, never
``{}``), the bearer scheme, its errors in OpenAI's shape (401 and 403 always; 400 wherever a
query parameter, a typed path parameter or a body can be wrong) and no FastAPI 422, which the
gateway never answers (``gateway.api.errors.validation_error_handler`` makes it a 400).
The real answers against these schemas: tests/integration/test_openapi_responses.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROUTE
from tests.support.gateway import GatewayServer, route
from tests.support.upstream import FakeOpenAI

ERROR = "#/components/schemas/OpenAIError"
# Operations whose only parameters are plain strings in the path and that take no body: no
# input of theirs can be malformed, so they never answer 400.
NO_BAD_INPUT = {
    ("get", "/admin/routes"),
    ("get", "/admin/routes/{name}"),
    ("get", "/admin/routes/{name}/slices"),
    ("get", "/admin/routes/{name}/students"),
    ("get", "/admin/routes/{name}/teacher-versions"),
    ("get", "/admin/reviews/routes"),
}


@pytest.fixture
def spec(
    make_gateway: Callable[..., GatewayServer], teacher: FakeOpenAI, student: FakeOpenAI
) -> dict[str, Any]:
    gateway = make_gateway([route(ROUTE, teacher.base_url, [student.base_url])])
    response = httpx.get(f"{gateway.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


def admin_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in spec["paths"].items():
        if path.startswith("/admin"):
            for method, operation in operations.items():
                yield method, path, operation


def component(spec: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    found: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def test_every_admin_success_body_has_a_schema(spec: dict[str, Any]) -> None:
    operations = list(admin_operations(spec))
    assert len(operations) >= 30  # routes, slices, students, ramps, calibration, reports, reviews
    for method, path, operation in operations:
        success = [status for status in operation["responses"] if status.startswith("2")]
        assert len(success) == 1, (method, path, success)
        schema = operation["responses"][success[0]]["content"]["application/json"]["schema"]
        model = component(spec, schema["$ref"])
        assert model["type"] == "object", (method, path)
        assert model["properties"], (method, path)
        assert model["required"], (method, path)


def test_every_admin_operation_declares_the_bearer_scheme(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for method, path, operation in admin_operations(spec):
        assert operation["security"] == [{"bearer": []}], (method, path)


def test_admin_errors_are_documented_in_the_openai_shape_and_never_422(
    spec: dict[str, Any],
) -> None:
    for method, path, operation in admin_operations(spec):
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        expected = {"401", "403", "default"}
        if (method, path) not in NO_BAD_INPUT:
            expected.add("400")
        assert expected <= set(responses), (method, path, sorted(responses))
        for status, response in responses.items():
            if not status.startswith("2"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR}, (method, path, status)
                assert response["description"], (method, path, status)
    error = spec["components"]["schemas"]["OpenAIError"]
    assert set(error["properties"]["error"]["required"]) == {"message", "type", "param", "code"}
    # no operation of the admin API refers to FastAPI's validation error
    assert "HTTPValidationError" not in str(list(admin_operations(spec)))


def test_report_parameters_come_from_one_shared_dependency(spec: dict[str, Any]) -> None:
    """route, since, until (and dimension, teacher_version where taken) read alike."""
    described: dict[str, set[str]] = {}
    for method, path, operation in admin_operations(spec):
        if not path.startswith("/admin/reports/"):
            continue
        names = [parameter["name"] for parameter in operation["parameters"]]
        assert {"route", "since", "until"} <= set(names), (method, path)
        for parameter in operation["parameters"]:
            if parameter["name"] in ("route", "since", "until", "dimension", "teacher_version"):
                described.setdefault(parameter["name"], set()).add(parameter["description"])
    assert {name: len(texts) for name, texts in described.items()} == {
        "route": 1,
        "since": 1,
        "until": 1,
        "dimension": 1,
        "teacher_version": 1,
    }
    assert "7d" in next(iter(described["since"]))
