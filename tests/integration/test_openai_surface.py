"""Everything the OpenAI API carries, through the gateway with real clients, and into the row.

Tool calls (plain, streamed, parallel), structured outputs, refusals, ``n`` > 1, streamed
logprobs, the teacher's rate-limit headers, a client that gives up, the app's own request id,
and the Responses API. Each scenario asserts what the client received and what the row holds
(the teacher's answer, the student half's status, the agreement). Teacher and student are real
loopback servers (:mod:`tests.support.upstream`); clients are the official ``openai`` SDK and
``langchain-openai``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest

from tests.integration.conftest import ROUTE, complete_row, rows
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.process import BIN
from tests.support.upstream import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "weather and time in Paris?"}]
PARIS_CALLS = [("get_weather", {"city": "Paris", "unit": "C"}), ("get_time", {"zone": "CET"})]


def jsonb(value: Any) -> Any:
    """A jsonb column as asyncpg returns it (text), parsed."""
    return json.loads(value) if isinstance(value, str) else value


def calls_of(row: dict[str, Any], side: str) -> list[tuple[str, Any]]:
    return [(c["name"], json.loads(c["arguments"])) for c in jsonb(row[f"{side}_tool_calls"])]


@pytest.fixture
def shadowed(
    make_gateway: Callable[..., GatewayServer], teacher: FakeOpenAI, student: FakeOpenAI
) -> GatewayServer:
    return make_gateway([route(ROUTE, teacher.base_url, [student.base_url])])


# --- tool calls -------------------------------------------------------------------------------


def test_parallel_tool_calls_are_relayed_logged_and_agree_in_any_order(
    shadowed: GatewayServer, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI, clean_db: str
) -> None:
    teacher.reset_behavior(tool_calls=PARIS_CALLS)
    # the student makes the same calls, the other way round, its JSON keys in another order
    student.reset_behavior(
        tool_calls=[("get_time", {"zone": "CET"}), ("get_weather", {"unit": "C", "city": "Paris"})]
    )
    raw = sdk(shadowed, app_key).chat.completions.with_raw_response.create(
        model=ROUTE, messages=ASK, tools=[WEATHER, TIME]
    )
    message = raw.parse().choices[0].message
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "C"}),
        ("get_time", {"zone": "CET"}),
    ]
    assert raw.parse().choices[0].finish_reason == "tool_calls"
    row = complete_row(clean_db, raw.headers["x-request-id"])
    assert row["teacher_output"] is None
    assert calls_of(row, "teacher") == [tuple(call) for call in PARIS_CALLS]
    assert row["teacher_finish_reason"] == "tool_calls"
    assert row["student_status"] == "ok"
    assert len(calls_of(row, "student")) == 2
    assert row["agree"] is True
    assert row["agreement_score"] == 1.0
    # the student's logprobs cover its tool-call tokens, so it has a confidence
    assert row["student_confidence"] is not None
    # the student was asked with the app's tools
    assert student.received[-1].body["tools"] == [WEATHER, TIME]


def test_streamed_parallel_tool_calls_are_reassembled_in_the_row(
    shadowed: GatewayServer, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI, clean_db: str
) -> None:
    teacher.reset_behavior(tool_calls=PARIS_CALLS, system_fingerprint="fp_teacher_1")
    student.reset_behavior(tool_calls=[("get_weather", {"city": "London", "unit": "C"})])
    client = sdk(shadowed, app_key)
    with client.chat.completions.with_streaming_response.create(
        model=ROUTE, messages=ASK, tools=[WEATHER, TIME], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    received: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            call = received.setdefault(delta.index, {"name": "", "arguments": ""})
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert [(c["name"], json.loads(c["arguments"])) for c in received.values()] == [
        tuple(call) for call in PARIS_CALLS
    ]
    row = complete_row(clean_db, request_id)
    assert row["stream"] is True
    assert calls_of(row, "teacher") == [tuple(call) for call in PARIS_CALLS]
    response_body = jsonb(row["teacher_response"])
    assert response_body["system_fingerprint"] == "fp_teacher_1"
    assert response_body["choices"][0]["finish_reason"] == "tool_calls"
    assert row["teacher_fingerprint"] == "fp_teacher_1"
    # one call missing, the other with another city: a disagreement that says where
    assert row["agree"] is False
    assert row["agreement_score"] == 0.0
    assert row["agreement_reason"] == "tool_name_mismatch"
    detail = jsonb(row["agreement_detail"])
    assert detail["missing"] == ["get_time"]
    [weather] = detail["calls"]
    assert weather["arguments"]["city"] == {"teacher": "Paris", "student": "London", "agree": False}


def test_text_against_tool_calls_is_a_disagreement_with_a_reason(
    shadowed: GatewayServer, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI, clean_db: str
) -> None:
    teacher.reset_behavior(tool_calls=PARIS_CALLS)
    raw = sdk(shadowed, app_key).chat.completions.with_raw_response.create(
        model=ROUTE, messages=ASK, tools=[WEATHER, TIME]
    )
    row = complete_row(clean_db, raw.headers["x-request-id"])
    assert row["student_output"] == "student: weather and time in Paris?"
    assert row["agree"] is False
    assert row["agreement_reason"] == "answer_kind_mismatch"
    assert jsonb(row["agreement_detail"]) == {"teacher": "tool_calls", "student": "text"}


def test_a_student_that_only_calls_tools_never_opens_the_breaker(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["student"]["breaker_failures"] = 3
    gateway = make_gateway([spec])
    student.reset_behavior(tool_calls=[("get_weather", {"city": "Paris"})])
    client = sdk(gateway, app_key)
    for _ in range(50):
        client.chat.completions.create(model=ROUTE, messages=ASK, tools=[WEATHER])
    wait_for(lambda: len(rows(clean_db, "student_status IS NOT NULL")) == 50, what="50 rows")
    assert {row["student_status"] for row in rows(clean_db)} == {"ok"}
    student = {"route": ROUTE, "student": "default"}
    assert gateway.metric("shadow_gateway_student_circuit_open", **student) == 0
    assert gateway.metric("shadow_gateway_circuit_skipped_total", **student) == 0
    # and text requests after them are still shadowed
    client.chat.completions.create(model=ROUTE, messages=[{"role": "user", "content": "hi"}])
    wait_for(lambda: len(rows(clean_db, "student_status = 'ok'")) == 51, what="51st shadow")


def test_langchain_tool_calls_round_trip(
    shadowed: GatewayServer, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI, clean_db: str
) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    teacher.reset_behavior(
        tool_calls=lambda body: (
            [] if body["messages"][-1]["role"] == "tool" else [("get_weather", {"city": "Paris"})]
        ),
        answer_body=lambda body: f"It is {body['messages'][-1]['content']} in Paris.",
    )
    student.reset_behavior(
        tool_calls=lambda body: (
            [] if body["messages"][-1]["role"] == "tool" else [("get_weather", {"city": "Paris"})]
        ),
        answer_body=lambda body: f"It is {body['messages'][-1]['content']} in Paris.",
    )
    llm = ChatOpenAI(
        model=ROUTE, base_url=f"{shadowed.url}/v1", api_key=app_key, max_retries=0
    ).bind_tools([WEATHER])
    first = llm.invoke([HumanMessage("weather in Paris?")])
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    history = [
        HumanMessage("weather in Paris?"),
        first,
        ToolMessage("21 C", tool_call_id=first.tool_calls[0]["id"]),
    ]
    second = llm.invoke(history)
    assert second.content == "It is 21 C in Paris."
    wait_for(lambda: len(rows(clean_db, "agree IS NOT NULL")) == 2, what="two compared rows")
    calling, answering = rows(clean_db)
    assert calls_of(calling, "teacher") == [("get_weather", {"city": "Paris"})]
    assert calling["agree"] is True
    # the round trip: the stored request holds the assistant's call and the tool's result
    messages = jsonb(answering["request_payload"])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert answering["teacher_output"] == "It is 21 C in Paris."
    assert answering["agree"] is True


# --- structured outputs, refusals, n > 1, logprobs --------------------------------------------


class Weather(pydantic.BaseModel):
    city: str
    celsius: float


def test_structured_output_parse_and_refusal(
    shadowed: GatewayServer, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI, clean_db: str
) -> None:
    answer = json.dumps({"city": "Paris", "celsius": 21.5})
    teacher.reset_behavior(answer=lambda _: answer)
    student.reset_behavior(answer=lambda _: answer)
    client = sdk(shadowed, app_key)
    parsed = client.chat.completions.with_raw_response.parse(
        model=ROUTE, messages=ASK, response_format=Weather
    )
    assert parsed.parse().choices[0].message.parsed == Weather(city="Paris", celsius=21.5)
    row = complete_row(clean_db, parsed.headers["x-request-id"])
    assert json.loads(row["teacher_output"]) == {"city": "Paris", "celsius": 21.5}
    assert jsonb(row["request_payload"])["response_format"]["type"] == "json_schema"
    assert row["agree"] is True

    teacher.reset_behavior(refusal="I can't help with that.")
    student.reset_behavior(refusal="Sorry, I cannot do that.")
    refused = client.chat.completions.with_raw_response.parse(
        model=ROUTE, messages=ASK, response_format=Weather
    )
    message = refused.parse().choices[0].message
    assert message.refusal == "I can't help with that."
    assert message.parsed is None
    row = complete_row(clean_db, refused.headers["x-request-id"])
    assert row["teacher_refusal"] == "I can't help with that."
    assert row["teacher_output"] is None
    assert row["student_status"] == "ok"
    assert row["student_refusal"] == "Sorry, I cannot do that."
    assert row["agree"] is True  # both declined

    student.reset_behavior(answer=lambda _: answer)
    mixed = client.chat.completions.with_raw_response.create(model=ROUTE, messages=ASK)
    row = complete_row(clean_db, mixed.headers["x-request-id"])
    assert row["agreement_reason"] == "answer_kind_mismatch"


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_are_all_logged(
    shadowed: GatewayServer, app_key: str, clean_db: str, stream: bool
) -> None:
    client = sdk(shadowed, app_key)
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model=ROUTE, messages=ASK, n=2, stream=True
        ) as response:
            request_id = response.headers["x-request-id"]
            texts = ["", ""]
            for chunk in response.parse():
                for choice in chunk.choices:
                    texts[choice.index] += choice.delta.content or ""
    else:
        raw = client.chat.completions.with_raw_response.create(model=ROUTE, messages=ASK, n=2)
        request_id = raw.headers["x-request-id"]
        texts = [choice.message.content or "" for choice in raw.parse().choices]
    first = "teacher: weather and time in Paris?"
    assert texts == [first, first + " (choice 1)"]
    row = complete_row(clean_db, request_id)
    choices = jsonb(row["teacher_response"])["choices"]
    assert [c["message"]["content"] for c in choices] == texts
    assert [c["index"] for c in choices] == [0, 1]
    # agreement and confidence are on choice 0
    assert row["teacher_output"] == first
    assert row["student_output"] == "student: weather and time in Paris?"


def test_streamed_logprobs_reach_the_client_and_the_row(
    shadowed: GatewayServer, app_key: str, clean_db: str
) -> None:
    client = sdk(shadowed, app_key)
    with client.chat.completions.with_streaming_response.create(
        model=ROUTE,
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        logprobs=True,
        top_logprobs=2,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    tokens = [
        entry.token
        for chunk in chunks
        for choice in chunk.choices
        for entry in (choice.logprobs.content or [] if choice.logprobs else [])
    ]
    assert "".join(tokens) == "teacher: one two three"
    assert chunks[-1].usage is not None
    row = complete_row(clean_db, request_id)
    body = jsonb(row["teacher_response"])
    logged = body["choices"][0]["logprobs"]["content"]
    assert [entry["token"] for entry in logged] == tokens
    assert all(len(entry["top_logprobs"]) == 2 for entry in logged)
    assert body["usage"]["completion_tokens"] == len(tokens)
    assert row["teacher_completion_tokens"] == len(tokens)


# --- errors, disconnects, ids ------------------------------------------------------------------


def test_a_rate_limited_teacher_sets_the_sdks_retry_timer(
    shadowed: GatewayServer, app_key: str, teacher: FakeOpenAI, clean_db: str
) -> None:
    teacher.reset_behavior(
        status=429,
        fail_times=1,
        error_headers={
            "retry-after-ms": "700",
            "retry-after": "1",
            "x-ratelimit-remaining-requests": "0",
            "set-cookie": "session=secret",
            "www-authenticate": "Bearer",
        },
    )
    raw = httpx.post(
        f"{shadowed.url}/v1/chat/completions",
        json={"model": ROUTE, "messages": ASK},
        headers={"Authorization": f"Bearer {app_key}"},
    )
    assert raw.status_code == 429
    assert raw.headers["retry-after-ms"] == "700"
    assert raw.headers["retry-after"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert "set-cookie" not in raw.headers
    assert "www-authenticate" not in raw.headers

    teacher.reset_behavior(status=429, fail_times=1, error_headers={"retry-after-ms": "700"})
    completion = sdk(shadowed, app_key, max_retries=1).chat.completions.create(
        model=ROUTE, messages=ASK
    )
    assert completion.choices[0].message.content == "teacher: weather and time in Paris?"
    first, second = teacher.received[-2:]
    assert second.arrived - first.arrived >= 0.65  # the SDK waited the teacher's 700 ms
    wait_for(lambda: len(rows(clean_db, "status_code = 429")) == 2, what="both 429 rows")
    wait_for(lambda: len(rows(clean_db, "status_code = 200")) == 1, what="the retried row")


def test_a_client_that_gave_up_is_logged_as_disconnected(
    shadowed: GatewayServer, app_key: str, teacher: FakeOpenAI, clean_db: str
) -> None:
    teacher.reset_behavior(latency_s=1.5)
    with pytest.raises(openai.APITimeoutError):
        sdk(shadowed, app_key, timeout=0.5).chat.completions.create(model=ROUTE, messages=ASK)
    wait_for(lambda: bool(rows(clean_db, "student_status IS NOT NULL")), what="the row")
    [row] = rows(clean_db)
    assert row["error_type"] == "client_disconnected"
    assert "before the answer was sent" in row["error_message"]
    assert row["teacher_output"] == "teacher: weather and time in Paris?"
    assert row["agree"] is not None  # the teacher's whole answer is still compared

    teacher.reset_behavior()
    raw = sdk(shadowed, app_key).chat.completions.with_raw_response.create(
        model=ROUTE, messages=ASK
    )
    assert complete_row(clean_db, raw.headers["x-request-id"])["error_type"] is None


def test_the_apps_request_id_is_kept_and_echoed(
    shadowed: GatewayServer, app_key: str, clean_db: str
) -> None:
    client = sdk(shadowed, app_key)
    raw = client.chat.completions.with_raw_response.create(
        model=ROUTE, messages=ASK, extra_headers={"X-Request-Id": "app-7f3a:42"}
    )
    assert raw.headers["x-client-request-id"] == "app-7f3a:42"
    assert raw.headers["x-request-id"].startswith("req_")
    row = complete_row(clean_db, raw.headers["x-request-id"])
    assert row["client_request_id"] == "app-7f3a:42"

    odd = client.chat.completions.with_raw_response.create(
        model=ROUTE, messages=ASK, extra_headers={"X-Request-Id": "has spaces; and <html>"}
    )
    assert "x-client-request-id" not in odd.headers
    assert complete_row(clean_db, odd.headers["x-request-id"])["client_request_id"] is None

    failed = httpx.post(
        f"{shadowed.url}/v1/chat/completions",
        json={"model": "nope", "messages": ASK},
        headers={"Authorization": f"Bearer {app_key}", "X-Client-Request-Id": "app-9"},
    )
    assert failed.status_code == 404
    assert failed.headers["x-client-request-id"] == "app-9"


# --- the Responses API -------------------------------------------------------------------------


def test_responses_plain_and_streamed_are_relayed_logged_and_compared(
    shadowed: GatewayServer, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI, clean_db: str
) -> None:
    teacher.reset_behavior(answer=lambda text: text.upper())
    student.reset_behavior(answer=lambda text: text.upper())
    client = sdk(shadowed, app_key)
    raw = client.responses.with_raw_response.create(
        model=ROUTE, input="hello there", instructions="shout", metadata={"tier": "gold"}
    )
    assert raw.parse().output_text == "HELLO THERE"
    row = complete_row(clean_db, raw.headers["x-request-id"])
    assert row["endpoint"] == "responses"
    assert row["teacher_output"] == "HELLO THERE"
    assert row["teacher_prompt_tokens"] == 7
    assert jsonb(row["slices"]) == {"tier": "gold"}
    assert row["student_status"] == "ok"
    assert row["agree"] is True
    assert row["student_confidence"] is not None  # from the output_text logprobs
    asked = student.received[-1].body
    assert asked["store"] is False
    assert "message.output_text.logprobs" in asked["include"]
    assert asked["stream"] is False

    with client.responses.stream(model=ROUTE, input="streamed words") as stream:
        events = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "STREAMED WORDS"
    assert events[0] == "response.created"
    assert events[-1] == "response.completed"
    wait_for(lambda: bool(rows(clean_db, "stream AND agree IS NOT NULL")), what="streamed row")
    [row] = rows(clean_db, "stream")
    assert row["teacher_output"] == "STREAMED WORDS"
    assert jsonb(row["teacher_response"])["status"] == "completed"
    assert row["teacher_finish_reason"] == "stop"
    assert row["agree"] is True


def test_responses_function_calls_and_server_state(
    shadowed: GatewayServer, app_key: str, teacher: FakeOpenAI, student: FakeOpenAI, clean_db: str
) -> None:
    tool = {"type": "function", **WEATHER["function"]}
    teacher.reset_behavior(tool_calls=[("get_weather", {"city": "Paris"})])
    student.reset_behavior(tool_calls=[("get_weather", {"city": "Paris"})])
    client = sdk(shadowed, app_key)
    raw = client.responses.with_raw_response.create(
        model=ROUTE, input="weather in Paris?", tools=[tool]
    )
    [call] = [item for item in raw.parse().output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    row = complete_row(clean_db, raw.headers["x-request-id"])
    assert calls_of(row, "teacher") == [("get_weather", {"city": "Paris"})]
    assert row["teacher_finish_reason"] == "tool_calls"
    assert row["agree"] is True

    # a follow-up that leans on the teacher's stored response: served, logged, not shadowed
    teacher.reset_behavior()
    shadowed_before = len(student.received)
    follow = client.responses.with_raw_response.create(
        model=ROUTE,
        previous_response_id=raw.parse().id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}],
    )
    assert follow.parse().output_text
    row = complete_row(clean_db, follow.headers["x-request-id"])
    assert row["student_status"] == "server_state"
    assert "previous_response_id" in row["student_error"]
    assert len(student.received) == shadowed_before


def rollout(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    audit_sample: float,
) -> GatewayServer:
    """A gateway whose route serves the student to everyone, whatever its confidence."""
    spec = route(ROUTE, teacher.base_url, [student.base_url], mode="rollout")
    spec["rollout"] = {"percent": 100, "threshold": 0.0, "audit_sample": audit_sample}
    return make_gateway([spec])


def test_responses_rollout_serves_the_student_only_without_server_state(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    gateway = rollout(make_gateway, teacher, student, audit_sample=0.0)
    client = sdk(gateway, app_key)

    served = client.responses.with_raw_response.create(model=ROUTE, input="hi", store=False)
    assert served.headers["x-served-by"] == "student"
    assert served.parse().output_text == "student: hi"
    # the app did not ask for logprobs, so the student's are not passed on
    assert all(not part.logprobs for part in served.parse().output[0].content)

    with client.responses.stream(model=ROUTE, input="streamed", store=False) as stream:
        final = stream.get_final_response()
    assert final.output_text == "student: streamed"

    stored = client.responses.with_raw_response.create(model=ROUTE, input="hi")
    assert stored.headers["x-served-by"] == "teacher"
    assert stored.headers["x-fallback-reason"] == "server_state"
    row = complete_row(clean_db, stored.headers["x-request-id"])
    assert row["fallback_reason"] == "server_state"
    assert row["student_status"] == "ok"  # still shadowed
    fallbacks = {"route": ROUTE, "student": "default", "reason": "server_state"}
    assert gateway.metric("shadow_gateway_fallbacks_total", **fallbacks) == 1


def test_rollout_serves_student_tool_calls_to_a_streaming_client(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    gateway = rollout(make_gateway, teacher, student, audit_sample=1.0)
    student.reset_behavior(tool_calls=PARIS_CALLS)
    teacher.reset_behavior(tool_calls=PARIS_CALLS)
    client = sdk(gateway, app_key)
    strict = [{**tool, "function": {**tool["function"], "strict": True}} for tool in (WEATHER,)]
    with client.chat.completions.stream(model=ROUTE, messages=ASK, tools=strict) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        tuple(call) for call in PARIS_CALLS
    ]
    wait_for(lambda: bool(rows(clean_db, "agree IS NOT NULL")), what="the audited row")
    [row] = rows(clean_db)
    assert row["served_by"] == "student"
    assert calls_of(row, "student") == [tuple(call) for call in PARIS_CALLS]
    assert calls_of(row, "teacher") == [tuple(call) for call in PARIS_CALLS]
    assert row["agree"] is True


# --- what the export and the reports make of these rows ----------------------------------------


def test_tool_call_rows_are_exported_and_reported(
    shadowed: GatewayServer,
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    tmp_path: Path,
) -> None:
    client = sdk(shadowed, app_key)
    teacher.reset_behavior(tool_calls=[("get_weather", {"city": "Paris", "unit": "C"})])
    student.reset_behavior(tool_calls=[("get_weather", {"city": "Lyon", "unit": "C"})])
    client.chat.completions.create(model=ROUTE, messages=ASK, tools=[WEATHER])
    # a call to a function the request never offered, and one whose arguments break its schema
    teacher.reset_behavior(tool_calls=[("get_stock", {"ticker": "ACME"})])
    client.chat.completions.create(
        model=ROUTE, messages=[{"role": "user", "content": "stock?"}], tools=[WEATHER]
    )
    teacher.reset_behavior(tool_calls=[("get_weather", {"town": "Paris"})])
    client.chat.completions.create(
        model=ROUTE, messages=[{"role": "user", "content": "town?"}], tools=[WEATHER]
    )
    # the Responses API: instructions, a function call and its result, and the final answer
    teacher.reset_behavior(answer=lambda _: "It is 21 C.")
    tool = {"type": "function", **WEATHER["function"]}
    client.responses.create(
        model=ROUTE,
        instructions="Be brief.",
        tools=[tool],
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {
                "type": "function_call",
                "call_id": "call_a",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_a", "output": "21 C"},
        ],
    )
    teacher.reset_behavior(refusal="No.")
    client.chat.completions.create(model=ROUTE, messages=[{"role": "user", "content": "hack?"}])
    wait_for(lambda: len(rows(clean_db, "student_status IS NOT NULL")) == 5, what="five rows")

    output = tmp_path / "train.jsonl"
    done = run_cli(shadowed, "export", "--route", ROUTE, "--output", str(output))
    assert done.returncode == 0, done.stderr
    examples = [json.loads(line) for line in output.read_text().splitlines()]
    manifest = json.loads(output.with_name("train.jsonl.manifest.json").read_text())
    assert manifest["dropped_by_check"] == {
        "tool_call:unknown_function": 1,
        "tool_call:schema:required": 1,
    }
    calling, responses, refusal = examples
    assert calling["tools"] == [WEATHER]
    assert calling["messages"][-1] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": calling["messages"][-1]["tool_calls"][0]["id"],
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
            }
        ],
    }
    assert [m["role"] for m in responses["messages"]] == [
        "system", "user", "assistant", "tool", "assistant"
    ]  # fmt: skip
    assert responses["messages"][1]["content"] == "weather?"
    assert responses["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert responses["messages"][3] == {"role": "tool", "tool_call_id": "call_a", "content": "21 C"}
    assert responses["messages"][-1] == {"role": "assistant", "content": "It is 21 C."}
    assert responses["tools"] == [WEATHER]
    assert refusal["messages"][-1] == {"role": "assistant", "content": "No."}

    report = run_cli(shadowed, "report", "disagreements", ROUTE, "--json")
    assert report.returncode == 0, report.stderr
    by_answer = {
        item["teacher_answer"]: item for item in json.loads(report.stdout)["disagreements"]
    }
    lyon = by_answer['get_weather({"city": "Paris", "unit": "C"})']
    assert lyon["student_answer"] == 'get_weather({"city": "Lyon", "unit": "C"})'
    assert lyon["agreement_reason"] == "tool_arguments_mismatch"
    assert by_answer["[refusal] No."]["agreement_reason"] == "answer_kind_mismatch"
    # the prompt of a Responses request is its last user input, in the report and the view
    assert by_answer["It is 21 C."]["prompt"] == "weather?"
    [view] = fetch(clean_db, "SELECT prompt FROM disagreements WHERE endpoint = 'responses'")
    assert view["prompt"] == "weather?"


def run_cli(gateway: GatewayServer, *args: str) -> subprocess.CompletedProcess[str]:
    """A command of the CLI against the gateway's config and database."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [str(BIN / "shadow-gateway"), *args, "--config", str(gateway.config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
