"""Every error an app can get: OpenAI's shape, the right status, no half-written rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import ROUTE, closed_port_url, complete_row, rows
from tests.support.db import wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.upstream import FakeOpenAI

CHAT = {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.fixture
def post(gateway: GatewayServer, app_key: str) -> Callable[..., httpx.Response]:
    def send(
        body: Any = None,
        *,
        content: bytes | None = None,
        key: str | None = app_key,
        headers: dict[str, str] | None = None,
        path: str = "/v1/chat/completions",
    ) -> httpx.Response:
        sent_headers = {"Authorization": f"Bearer {key}"} if key else {}
        sent_headers.update(headers or {})
        if content is None and body is not None:
            return httpx.post(f"{gateway.url}{path}", json=body, headers=sent_headers, timeout=10)
        sent_headers.setdefault("Content-Type", "application/json")
        return httpx.post(f"{gateway.url}{path}", content=content, headers=sent_headers, timeout=10)

    return send


def test_missing_and_wrong_keys_get_401(post: Callable[..., httpx.Response]) -> None:
    assert_openai_error(post(CHAT, key=None), 401, "invalid_api_key")
    assert_openai_error(post(CHAT, key="not-the-key"), 401, "invalid_api_key")
    malformed = post(CHAT, key=None, headers={"Authorization": "Basic abc"})
    assert "Bearer" in assert_openai_error(malformed, 401)["message"]


def test_openai_sdk_sees_authentication_error(gateway: GatewayServer) -> None:
    client = sdk(gateway, "wrong")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=ROUTE, messages=[{"role": "user", "content": "x"}])


def test_malformed_json_is_400(post: Callable[..., httpx.Response]) -> None:
    assert_openai_error(post(content=b'{"model": "support-bot", '), 400, "invalid_json")
    assert_openai_error(post(content=b"\xff\xfe not utf-8"), 400, "invalid_json")
    assert_openai_error(post(content=b"[1, 2]"), 400, "invalid_json")
    assert_openai_error(post(content=b"[" * 5000 + b"]" * 5000), 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": ROUTE}, "messages"),
        ({"model": ROUTE, "messages": []}, "messages"),
        ({"model": ROUTE, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "metadata": {"tier": 5}}, "metadata.tier"),
    ],
)
def test_schema_violations_name_the_field(
    post: Callable[..., httpx.Response], body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(post(body), 400)
    assert error["param"] == param
    assert param.split("[")[0].split(".")[0] in error["message"]


def test_completions_schema(post: Callable[..., httpx.Response]) -> None:
    error = assert_openai_error(post({"model": ROUTE}, path="/v1/completions"), 400)
    assert error["param"] == "prompt"


def test_unknown_route_is_404_listing_routes(post: Callable[..., httpx.Response]) -> None:
    error = assert_openai_error(post({**CHAT, "model": "gpt-nope"}), 404, "model_not_found")
    assert ROUTE in error["message"]
    assert "slow-teacher" in error["message"]
    assert error["param"] == "model"


def test_oversized_body_is_413(post: Callable[..., httpx.Response]) -> None:
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    assert_openai_error(post(huge), 413, "request_too_large")


def test_wrong_content_type_is_415(post: Callable[..., httpx.Response]) -> None:
    response = post(
        content=b"model=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_openai_error(response, 415)


def test_unknown_path_and_method(gateway: GatewayServer) -> None:
    assert_openai_error(httpx.get(f"{gateway.url}/v1/nothing"), 404)
    assert_openai_error(httpx.get(f"{gateway.url}/v1/chat/completions"), 405)


def test_rejected_requests_leave_no_rows(
    post: Callable[..., httpx.Response], clean_db: str
) -> None:
    post(CHAT, key="bad")
    post(content=b"{")
    post({**CHAT, "model": "nope"})
    post(CHAT)  # one good request, so we know the writer has flushed
    wait_for(lambda: len(rows(clean_db)) == 1, what="the one good row")
    assert rows(clean_db)[0]["status_code"] == 200


def test_teacher_error_passes_through_with_its_status(
    post: Callable[..., httpx.Response], teacher: FakeOpenAI, clean_db: str
) -> None:
    teacher.reset_behavior(status=429)
    response = post(CHAT)
    error = assert_openai_error(response, 429, "boom")
    assert error["message"] == "teacher failed"
    row = complete_row(clean_db, response.headers["x-request-id"])
    assert row["status_code"] == 429
    assert row["teacher_status"] == 429
    assert row["error_type"] == "upstream_error"
    assert row["student_output"] == "student: hi"  # the shadow call still happened


def test_teacher_non_json_error_is_wrapped(
    post: Callable[..., httpx.Response], teacher: FakeOpenAI
) -> None:
    teacher.reset_behavior(status=503, error_body=b"upstream overloaded")
    error = assert_openai_error(post(CHAT), 503, "teacher_error")
    assert "upstream overloaded" in error["message"]


def test_teacher_timeout_is_504(
    make_gateway: Callable[..., GatewayServer], app_key: str, teacher: FakeOpenAI, clean_db: str
) -> None:
    gateway = make_gateway([route(ROUTE, teacher.base_url, None, mode="teacher")])
    teacher.reset_behavior(latency_s=3)  # route timeout_s is 2
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {app_key}"},
        timeout=10,
    )
    assert_openai_error(response, 504, "teacher_timeout")
    row = complete_row(clean_db, response.headers["x-request-id"])
    assert row["status_code"] == 504
    assert row["student_status"] == "disabled"


def test_teacher_unreachable_is_502(
    make_gateway: Callable[..., GatewayServer], app_key: str, clean_db: str
) -> None:
    gateway = make_gateway([route(ROUTE, closed_port_url(), None, mode="teacher")])
    for stream in (False, True):
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={**CHAT, "stream": stream},
            headers={"Authorization": f"Bearer {app_key}"},
            timeout=10,
        )
        assert_openai_error(response, 502, "teacher_unreachable")
        assert complete_row(clean_db, response.headers["x-request-id"])["status_code"] == 502


def test_stream_broken_mid_way_ends_with_an_error_event(
    post: Callable[..., httpx.Response], teacher: FakeOpenAI, clean_db: str
) -> None:
    teacher.reset_behavior(break_stream_after=1)
    response = post({**CHAT, "stream": True})
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("data:")]
    assert '"error"' in events[-1]
    row = complete_row(clean_db, response.headers["x-request-id"])
    assert row["error_type"] == "upstream_error"
    assert row["teacher_output"] == "teacher:"


def test_errors_are_counted(post: Callable[..., httpx.Response], gateway: GatewayServer) -> None:
    post(CHAT, key="bad")
    assert gateway.metric("shadow_gateway_rejected_total", reason="401") == 1
