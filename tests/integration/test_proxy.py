"""The request path end to end: the openai SDK → gateway → loopback teacher/student → Postgres."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import ROUTE, complete_row
from tests.support.gateway import GatewayServer
from tests.support.upstream import FakeOpenAI


def test_chat_completion_through_openai_sdk(
    client: openai.OpenAI, clean_db: str, teacher: FakeOpenAI, student: FakeOpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=ROUTE,
        messages=[{"role": "user", "content": "where is my invoice?"}],
        metadata={"tier": "enterprise"},
        extra_headers={"X-Slice-Category": "billing"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "teacher: where is my invoice?"
    assert raw.headers["x-served-by"] == "teacher"
    request_id = raw.headers["x-request-id"]

    assert teacher.received[-1].body["model"] == "teacher-model"
    row = complete_row(clean_db, request_id)
    assert row["route"] == ROUTE
    assert row["served_by"] == "teacher"
    assert row["status_code"] == 200
    assert row["teacher_output"] == "teacher: where is my invoice?"
    assert row["student_output"] == "student: where is my invoice?"
    assert row["student_status"] == "ok"
    assert row["slices"] == '{"tier": "enterprise", "category": "billing"}'
    assert row["teacher_model"] == "teacher-model"
    assert row["student_model"] == "student-model"
    assert row["teacher_prompt_tokens"] == 7
    assert row["teacher_latency_ms"] > 0
    assert row["student_latency_ms"] > 0
    assert row["gateway_overhead_ms"] >= 0
    assert 0 <= row["sticky_bucket"] < 100

    shadow_call = student.received[-1]
    assert shadow_call.body["model"] == "student-model"
    assert shadow_call.body["stream"] is False
    assert shadow_call.body["logprobs"] is True
    assert shadow_call.body["top_logprobs"] == 5
    assert '"top_logprobs"' in row["student_logprobs"]
    assert '"logprobs"' not in row["student_response"]  # stored once, in student_logprobs


def test_teacher_body_is_relayed_byte_for_byte(
    gateway: GatewayServer, app_key: str, teacher: FakeOpenAI
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {app_key}"},
        json={"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "seed": 7},
    )
    assert response.status_code == 200
    assert response.content == teacher.sent[-1]
    assert teacher.received[-1].body["seed"] == 7  # unknown fields pass through


def test_streamed_chat_completion(
    client: openai.OpenAI, clean_db: str, teacher: FakeOpenAI
) -> None:
    teacher.behavior.chunk_delay_s = 0.01
    with client.chat.completions.with_streaming_response.create(
        model=ROUTE,
        messages=[{"role": "user", "content": "tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        assert response.headers["x-served-by"] == "teacher"
        assert response.headers["content-type"].startswith("text/event-stream")
        pieces = [
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        ]
    assert len(pieces) > 1
    assert "".join(pieces) == "teacher: tell me a story"
    assert teacher.received[-1].body["stream"] is True

    row = complete_row(clean_db, request_id)
    assert row["stream"] is True
    assert row["teacher_output"] == "teacher: tell me a story"
    assert row["teacher_finish_reason"] == "stop"
    assert row["teacher_completion_tokens"] == 5
    assert row["student_output"] == "student: tell me a story"  # shadowed without streaming


def test_legacy_completions_endpoint(
    client: openai.OpenAI, clean_db: str, student: FakeOpenAI
) -> None:
    raw = client.completions.with_raw_response.create(model=ROUTE, prompt="2+2=")
    assert raw.parse().choices[0].text == "teacher: 2+2="
    row = complete_row(clean_db, raw.headers["x-request-id"])
    assert row["endpoint"] == "text"
    assert row["student_output"] == "student: 2+2="
    assert student.received[-1].body["logprobs"] == 5
    assert '"token": " 2+2="' in row["student_logprobs"]


def test_models_lists_routes(client: openai.OpenAI) -> None:
    assert sorted(model.id for model in client.models.list()) == ["slow-teacher", ROUTE]
    assert client.models.retrieve(ROUTE).id == ROUTE
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_health_and_readiness(gateway: GatewayServer) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] == "ok"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert "shadow_gateway_requests_total" in metrics
