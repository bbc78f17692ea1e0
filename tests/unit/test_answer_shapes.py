"""Answers that are not plain text, and the Responses API: reading them, the student's request,
server state, the export's examples and checks, and request validation."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from gateway.clients.upstream import StudentReply
from gateway.config import StudentConfig
from gateway.core import verify
from gateway.core.examples import (
    assistant_message,
    chat_tools,
    prompt_key,
    prompt_messages,
)
from gateway.core.outputs import Output, ToolCall, answer_output
from gateway.core.routing import server_state, student_may_answer
from gateway.core.slices import last_user_text
from gateway.errors import InvalidRequest
from gateway.protocol.openai import ResponsesRequest, validate_request
from gateway.shadow.dispatcher import student_request
from gateway.shadow.records import RowIdentity, read_answer, student_half

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def chat_body(message: dict[str, object], finish: str = "stop") -> dict[str, object]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


# --- reading answers ---------------------------------------------------------------------------


def test_chat_answers_of_every_kind() -> None:
    text = answer_output("chat", chat_body({"role": "assistant", "content": "hi"}))
    assert text == Output("hi")
    assert text.kind == "text"
    calls = answer_output("chat", chat_body({"content": None, "tool_calls": [CALL]}))
    assert calls == Output(None, (ToolCall("get_weather", '{"city": "Paris"}', "call_1"),))
    assert calls.kind == "tool_calls"
    assert calls.describe() == 'get_weather({"city": "Paris"})'
    refused = answer_output("chat", chat_body({"content": None, "refusal": "No."}))
    assert refused == Output(None, (), "No.")
    assert refused.describe() == "[refusal] No."
    legacy = answer_output("chat", chat_body({"function_call": {"name": "f", "arguments": "{}"}}))
    assert legacy is not None
    assert legacy.tool_calls == (ToolCall("f", "{}"),)


def test_responses_answers() -> None:
    body = {
        "output": [
            {"type": "reasoning", "summary": []},
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "Hello "},
                    {"type": "output_text", "text": "there"},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
        ]
    }
    found = answer_output("responses", body)
    assert found == Output("Hello there", (ToolCall("f", '{"a": 1}', "c1"),))
    refusal = {"output": [{"type": "message", "content": [{"type": "refusal", "refusal": "No"}]}]}
    assert answer_output("responses", refusal) == Output(None, (), "No")


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("chat", None),
        ("chat", {"choices": []}),
        ("chat", {"choices": [{"message": "x"}]}),
        ("text", {"choices": [{"text": 3}]}),
        ("responses", {"output": "x"}),
        ("responses", {"choices": [{"text": "a"}]}),
    ],
)
def test_bodies_that_are_not_answers(endpoint: str, body: object) -> None:
    assert answer_output(endpoint, body) is None  # type: ignore[arg-type]


def test_output_from_stored_columns() -> None:
    stored = [{"id": "c", "name": "f", "arguments": "{}"}, "junk"]
    assert Output.from_columns(None, stored, None) == Output(None, (ToolCall("f", "{}", "c"),))
    assert Output.from_columns("hi", None, None).describe() == "hi"
    assert Output.from_columns(None, None, None).describe() == ""


IDENTITY = RowIdentity(
    request_id="r1",
    route="bot",
    endpoint="chat",
    created_at=datetime(2026, 12, 7, tzinfo=UTC),
    mode="shadow",
    slices={},
)


def reply(body: object) -> StudentReply:
    return StudentReply("ok", 200, orjson.dumps(body), 0.01)


def no_confidence(logprobs: object) -> None:
    return None


def test_a_student_that_calls_tools_or_refuses_is_healthy() -> None:
    record, output = student_half(
        IDENTITY,
        student_model="s",
        student_url="u",
        reply=reply(chat_body({"content": None, "tool_calls": [CALL]}, "tool_calls")),
        confidence=no_confidence,
    )
    assert record["student_status"] == "ok"
    assert record["student_output"] is None
    assert record["student_tool_calls"] == [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]
    assert record["student_finish_reason"] == "tool_calls"
    assert output is not None
    record, _ = student_half(
        IDENTITY,
        student_model="s",
        student_url="u",
        reply=reply(chat_body({"refusal": "no"})),
        confidence=no_confidence,
    )
    assert record["student_status"] == "ok"
    assert record["student_refusal"] == "no"
    record, output = student_half(
        IDENTITY,
        student_model="s",
        student_url="u",
        reply=reply({"object": "error"}),
        confidence=no_confidence,
    )
    assert record["student_status"] == "invalid_response"
    assert output is None


def test_a_teacher_body_that_is_not_json_is_kept_short() -> None:
    read = read_answer("chat", b"<html>" + b"x" * 10_000)
    assert read.output is None
    assert read.body == {"unparsed": "<html>" + "x" * 4090}


# --- the student's request and server state ---------------------------------------------------


def test_the_students_responses_request_keeps_nothing_and_asks_for_logprobs() -> None:
    student = StudentConfig.model_validate(
        {"base_urls": ["http://s/v1"], "model": "small", "top_logprobs": 3}
    )
    body = {
        "model": "bot",
        "input": "hi",
        "stream": True,
        "background": True,
        "top_logprobs": 5,
        "include": ["reasoning.encrypted_content", "message.output_text.logprobs"],
    }
    sent = orjson.loads(student_request("responses", body, student))
    assert sent == {
        "model": "small",
        "input": "hi",
        "stream": False,
        "store": False,
        "top_logprobs": 5,
        "include": ["reasoning.encrypted_content", "message.output_text.logprobs"],
    }


def test_server_state_and_who_may_answer() -> None:
    assert server_state("responses", {"previous_response_id": "resp_1"}) == "previous_response_id"
    assert server_state("responses", {"conversation": {"id": "conv_1"}}) == "conversation"
    assert server_state("responses", {"background": False, "input": "x"}) is None
    assert server_state("chat", {"previous_response_id": "resp_1"}) is None
    assert student_may_answer("responses", {"store": False, "input": "x"})
    assert not student_may_answer("responses", {"input": "x"})  # stored by default
    assert not student_may_answer("responses", {"store": False, "previous_response_id": "r"})
    assert student_may_answer("chat", {"store": True})


# --- validation --------------------------------------------------------------------------------


def test_responses_requests_are_validated() -> None:
    ok = validate_request("responses", {"model": "bot", "input": "hi", "metadata": {"t": "a"}})
    assert isinstance(ok, ResponsesRequest)
    assert ok.metadata == {"t": "a"}
    for body, param in (
        ({"input": "hi"}, "model"),
        ({"model": "bot", "input": 5}, "input"),
        ({"model": "bot", "top_logprobs": 21}, "top_logprobs"),
        ({"model": "bot", "stream": "yes"}, "stream"),
        ({"model": "bot", "previous_response_id": ""}, "previous_response_id"),
    ):
        with pytest.raises(InvalidRequest) as raised:
            validate_request("responses", body)
        assert raised.value.param == param


# --- the export's examples and checks ----------------------------------------------------------


def test_responses_requests_become_chat_examples() -> None:
    payload = {
        "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "f", "parameters": {}}, {"type": "web_search"}],
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": '{"x": 1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": {"n": 2}},
        ],
    }
    assert prompt_messages("responses", payload) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"x": 1}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": '{"n":2}'},
    ]
    assert chat_tools("responses", payload) == [
        {"type": "function", "function": {"name": "f", "parameters": {}}}
    ]
    assert prompt_messages("responses", {"input": "plain"}) == [
        {"role": "user", "content": "plain"}
    ]
    image = {"type": "input_image", "image_url": "https://x"}
    assert prompt_messages("responses", {"input": [{"role": "user", "content": [image]}]}) is None
    assert prompt_messages("responses", {"input": [{"type": "reasoning"}]}) is None


def test_assistant_turns_and_prompt_keys() -> None:
    stored = [{"id": None, "name": "f", "arguments": "{}"}]
    assert assistant_message(None, stored, None) == {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    assert assistant_message(None, None, "No.") == {"role": "assistant", "content": "No."}
    asked = [{"role": "user", "content": "Weather?"}]
    assert prompt_key(asked) == prompt_key([{"role": "user", "content": "weather"}])
    assert prompt_key(asked) != prompt_key(asked, [WEATHER_TOOL])
    called = [*asked, {"role": "assistant", "tool_calls": [CALL]}]
    other = {**CALL, "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    assert prompt_key(called) != prompt_key([*asked, {"role": "assistant", "tool_calls": [other]}])


def test_tool_call_answers_are_checked_against_the_tools_offered() -> None:
    request = {"tools": [WEATHER_TOOL]}
    good = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert verify.tool_calls(good, request).ok
    assert verify.tool_calls(good, {}).ok  # no tools declared: any name goes
    unknown = verify.tool_calls([{"name": "rm", "arguments": "{}"}], request)
    assert unknown.check == "tool_call:unknown_function"
    broken = verify.tool_calls([{"name": "get_weather", "arguments": "{city"}], request)
    assert broken.check == "tool_call:invalid_json"
    wrong = verify.tool_calls([{"name": "get_weather", "arguments": '{"city": 3}'}], request)
    assert wrong.check == "tool_call:schema:properties.city.type"
    flat = {"tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "x"}}]}
    assert verify.tool_calls(good, flat).check == "tool_call:schema_error"


def test_slice_rules_read_the_responses_input() -> None:
    assert last_user_text({"input": "plain text"}) == "plain text"
    items = [
        {"role": "user", "content": "first"},
        {"type": "function_call_output", "call_id": "c", "output": "x"},
        {"role": "user", "content": [{"type": "input_text", "text": "last"}]},
        {"role": "assistant", "content": "reply"},
    ]
    assert last_user_text({"input": items}) == "last"
    assert last_user_text({"input": [{"type": "function_call_output"}]}) == ""
