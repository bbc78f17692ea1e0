"""Stream reassembly and synthesis (gateway.core.streams), checked against OpenAI's own SDK."""

from __future__ import annotations

import copy
import typing
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai._streaming import SSEDecoder
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.core.completions import finish_reason, token_logprobs, usage
from gateway.core.outputs import Endpoint, Output, ToolCall, answer_output
from gateway.core.streams import StreamSummary, summarise_stream
from gateway.core.synthesis import answer_to_sse

ENDPOINTS: tuple[Endpoint, ...] = ("chat", "text", "responses")
READERS: tuple[Callable[[Endpoint, object], object], ...] = (
    answer_output,
    finish_reason,
    token_logprobs,
    usage,
)
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

HEAD = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "gpt-4o-2024-08-06",
    "system_fingerprint": "fp_1",
    "service_tier": "default",
}
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 9,
    "total_tokens": 21,
    "completion_tokens_details": {"reasoning_tokens": 0},
}


def token(text: str, logprob: float, *alternatives: tuple[str, float]) -> dict[str, Any]:
    return {
        "token": text,
        "logprob": logprob,
        "bytes": list(text.encode()),
        "top_logprobs": [
            {"token": alt, "logprob": lp, "bytes": list(alt.encode())} for alt, lp in alternatives
        ],
    }


def sse(*events: object, done: bool = True) -> bytes:
    lines = b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events)
    return lines + (b"data: [DONE]\n\n" if done else b"")


def typed_sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        for event in events
    )


def chunk(index: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> Any:
    return {**HEAD, "choices": [{"index": index, "delta": delta, **extra, "finish_reason": finish}]}


def call_delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields}]}


# ---------------------------------------------------------------- chat


def test_chat_choices_interleaved_with_parallel_tool_calls_and_logprobs() -> None:
    raw = sse(
        chunk(1, {"role": "assistant", "content": ""}, logprobs={"content": [], "refusal": None}),
        chunk(
            0,
            {
                "role": "assistant",
                "content": None,
                **call_delta(0, id="call_a", type="function", function={"name": "weather"}),
            },
        ),
        chunk(0, call_delta(0, function={"arguments": '{"ci'})),
        chunk(1, {"content": "Hel"}, logprobs={"content": [token("Hel", -0.1)], "refusal": None}),
        chunk(0, call_delta(1, id="call_b", type="function", function={"name": "time"})),
        chunk(0, call_delta(0, function={"arguments": 'ty": "Paris"}'})),
        chunk(0, call_delta(1, function={"arguments": "{}"})),
        {**chunk(1, {"content": "lo"}, logprobs={"content": [token("lo", -0.2)]}), "model": "m2"},
        {**chunk(1, {}, "stop"), "system_fingerprint": None},
        chunk(0, {}, "tool_calls"),
        {**HEAD, "choices": [], "usage": USAGE},
    )
    summary = summarise_stream("chat", raw)
    assert summary.done
    assert summary.error is None
    assert summary.chunks == 11
    assert summary.body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",  # the last one reported
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "time", "arguments": "{}"},
                        },
                    ],
                },
                "finish_reason": "tool_calls",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "Hello"},
                "logprobs": {"content": [token("Hel", -0.1), token("lo", -0.2)], "refusal": None},
                "finish_reason": "stop",
            },
        ],
        "system_fingerprint": "fp_1",  # a later null does not erase it
        "service_tier": "default",
        "usage": USAGE,
        "stream_chunks": 11,
    }
    assert answer_output("chat", summary.body) == Output(
        tool_calls=(
            ToolCall("weather", '{"city": "Paris"}', "call_a"),
            ToolCall("time", "{}", "call_b"),
        )
    )
    assert finish_reason("chat", summary.body) == "tool_calls"
    assert usage("chat", summary.body).completion_tokens == 9
    ChatCompletion.model_validate(summary.body)


def test_chat_refusal_with_its_logprobs() -> None:
    raw = sse(
        chunk(0, {"role": "assistant", "content": None, "refusal": ""}),
        chunk(0, {"refusal": "I can't"}, logprobs={"content": None, "refusal": [token("I", -0.5)]}),
        chunk(0, {"refusal": " help"}, logprobs={"content": None, "refusal": [token(" help", -1)]}),
        chunk(0, {}, "stop"),
    )
    body = summarise_stream("chat", raw).body
    assert body is not None
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": "I can't help",
    }
    assert body["choices"][0]["logprobs"] == {
        "content": None,
        "refusal": [token("I", -0.5), token(" help", -1)],
    }
    assert answer_output("chat", body) == Output(refusal="I can't help")
    assert [t["token"] for t in token_logprobs("chat", body) or []] == ["I", " help"]


def test_chat_content_none_versus_empty() -> None:
    empty = summarise_stream("chat", sse(chunk(0, {"role": "assistant", "content": ""})))
    assert empty.body is not None
    assert empty.body["choices"][0]["message"] == {"role": "assistant", "content": ""}
    silent = summarise_stream("chat", sse(chunk(0, {"content": None}, "length")))
    assert silent.body is not None
    assert silent.body["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": None},
        "finish_reason": "length",
    }


def test_chat_tool_calls_without_index_and_legacy_function_call() -> None:
    whole = {"type": "function", "function": {"name": "a", "arguments": "{}"}}
    raw = sse(
        chunk(0, {"tool_calls": [{"id": "c1", **whole}]}),
        chunk(0, {"tool_calls": [{"id": "c2", **whole}]}),
        chunk(0, {"tool_calls": [{"function": {"arguments": " "}}]}),  # continues the last
        chunk(1, {"function_call": {"name": "f", "arguments": "{"}}),
        chunk(1, {"function_call": {"arguments": "}"}}, "function_call"),
    )
    body = summarise_stream("chat", raw).body
    assert body is not None
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("c1", "{}"), ("c2", "{} ")]
    assert body["choices"][1]["message"]["function_call"] == {"name": "f", "arguments": "{}"}


def test_stream_error_event_is_kept() -> None:
    summary = summarise_stream("chat", sse(chunk(0, {"content": "a"}), {"error": {"message": "x"}}))
    assert summary.error == {"message": "x"}
    assert summary.body is not None
    assert summary.body["choices"][0]["message"]["content"] == "a"
    only_error = summarise_stream("chat", sse({"error": {"message": "overloaded"}}, done=False))
    assert only_error == StreamSummary(body=None, error={"message": "overloaded"}, chunks=1)


# ---------------------------------------------------------------- text


def test_text_choices_and_logprobs_are_merged() -> None:
    head = {"id": "cmpl-1", "object": "text_completion", "created": 3, "model": "m"}

    def piece(index: int, text: str, offset: int, finish: str | None = None) -> Any:
        logprobs = {
            "tokens": [text],
            "token_logprobs": [-0.5],
            "top_logprobs": [{text: -0.5}],
            "text_offset": [offset],
        }
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "choices": [choice]}

    raw = sse(
        piece(0, "Hel", 10),
        piece(1, "Bye", 10, "stop"),
        piece(0, "lo", 13),
        {
            **head,
            "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
        },
        {**head, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}},
    )
    body = summarise_stream("text", raw).body
    assert body is not None
    assert body["object"] == "text_completion"
    assert body["choices"][0] == {
        "index": 0,
        "text": "Hello",
        "logprobs": {
            "tokens": ["Hel", "lo"],
            "token_logprobs": [-0.5, -0.5],
            "top_logprobs": [{"Hel": -0.5}, {"lo": -0.5}],
            "text_offset": [10, 13],
        },
        "finish_reason": "length",
    }
    assert body["choices"][1]["text"] == "Bye"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3}
    assert [t["token"] for t in token_logprobs("text", body) or []] == ["Hel", "lo"]


# ---------------------------------------------------------------- responses

MESSAGE: dict[str, Any] = {
    "type": "message",
    "id": "msg_1",
    "status": "completed",
    "role": "assistant",
    "content": [
        {
            "type": "output_text",
            "text": "Hello",
            "annotations": [],
            "logprobs": [token("Hel", -0.1, ("Hel", -0.1)), token("lo", -0.2, ("lo", -0.2))],
        }
    ],
}
FUNCTION_CALL: dict[str, Any] = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "weather",
    "arguments": '{"city": "Paris"}',
    "status": "completed",
}
REFUSAL: dict[str, Any] = {
    "type": "message",
    "id": "msg_2",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "refusal", "refusal": "No."}],
}
RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1700000000,
    "status": "completed",
    "completed_at": 1700000001,
    "model": "gpt-4.1-2025-04-14",
    "output": [MESSAGE, {"type": "reasoning", "id": "rs_1", "summary": []}, FUNCTION_CALL, REFUSAL],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "top_logprobs": 1,
    "error": None,
    "incomplete_details": None,
    "usage": {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    },
}


def test_responses_terminal_event_is_the_body() -> None:
    started = {**RESPONSE, "status": "in_progress", "output": [], "usage": None}
    raw = b": ping\r\n" + typed_sse(
        {"type": "response.created", "sequence_number": 0, "response": started},
        {"type": "response.output_text.delta", "sequence_number": 1, "output_index": 0,
         "content_index": 0, "item_id": "msg_1", "delta": "ignored", "logprobs": []},
        {"type": "response.completed", "sequence_number": 2, "response": RESPONSE},
    ).replace(b"\n", b"\r\n")  # fmt: skip
    summary = summarise_stream("responses", raw)
    assert summary == StreamSummary(body=RESPONSE, chunks=3, done=True)
    assert "stream_chunks" not in RESPONSE
    assert answer_output("responses", summary.body) == Output(
        text="Hello",
        tool_calls=(ToolCall("weather", '{"city": "Paris"}', "call_1"),),
        refusal="No.",
    )
    assert finish_reason("responses", summary.body) == "tool_calls"
    assert usage("responses", summary.body).prompt_tokens == 10


def test_responses_terminal_event_without_output_uses_finished_items() -> None:
    terminal = {key: value for key, value in RESPONSE.items() if key != "output"}
    raw = typed_sse(
        {"type": "response.output_item.done", "output_index": 1, "item": FUNCTION_CALL},
        {"type": "response.output_item.done", "output_index": 0, "item": MESSAGE},
        {"type": "response.incomplete", "response": {**terminal, "status": "incomplete"}},
    )
    body = summarise_stream("responses", raw).body
    assert body is not None
    assert body["output"] == [MESSAGE, FUNCTION_CALL]
    assert body["status"] == "incomplete"


def test_responses_stream_broken_off_is_rebuilt_from_deltas() -> None:
    started = {**RESPONSE, "status": "in_progress", "output": [], "usage": None}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    raw = typed_sse(
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": {**started, "model": "later"}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**MESSAGE, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where,
         "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}},
        {"type": "response.output_text.delta", **where, "delta": "Hel",
         "logprobs": [token("Hel", -0.1)]},
        {"type": "response.output_text.delta", **where, "delta": "lo",
         "logprobs": [token("lo", -0.2)]},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {**FUNCTION_CALL, "status": "in_progress", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "item_id": "fc_1",
         "delta": '{"ci'},
        {"type": "response.output_item.added", "output_index": 2,
         "item": {**REFUSAL, "status": "in_progress", "content": []}},
        {"type": "response.refusal.delta", "item_id": "msg_2", "output_index": 2,
         "content_index": 0, "delta": "No"},
    ) + b"event: response.refusal.delta\ndata: {\"type\": \"respo"  # fmt: skip
    summary = summarise_stream("responses", raw)
    assert not summary.done
    assert summary.body is not None
    assert summary.body["model"] == "later"
    assert summary.body["status"] == "in_progress"
    assert summary.body["output"] == [
        {
            **MESSAGE,
            "status": "in_progress",
            "content": [
                {
                    "type": "output_text",
                    "text": "Hello",
                    "annotations": [],
                    "logprobs": [token("Hel", -0.1), token("lo", -0.2)],
                }
            ],
        },
        {**FUNCTION_CALL, "status": "in_progress", "arguments": '{"ci'},
        {**REFUSAL, "status": "in_progress", "content": [{"type": "refusal", "refusal": "No"}]},
    ]
    assert finish_reason("responses", summary.body) is None
    assert [t["token"] for t in token_logprobs("responses", summary.body) or []] == ["Hel", "lo"]


def test_responses_error_and_failed_events() -> None:
    error = {"type": "error", "sequence_number": 4, "code": "rate_limit", "message": "slow down",
             "param": None}  # fmt: skip
    summary = summarise_stream("responses", typed_sse(error))
    assert summary == StreamSummary(
        body=None, error={"code": "rate_limit", "message": "slow down", "param": None}, chunks=1
    )
    failed = {**RESPONSE, "status": "failed", "error": {"code": "server_error", "message": "boom"}}
    summary = summarise_stream(
        "responses", typed_sse({"type": "response.failed", "response": failed})
    )
    assert summary.done
    assert summary.error == {"code": "server_error", "message": "boom"}
    assert finish_reason("responses", summary.body) == "error"
    # a chat-style error object, as some proxies send it
    chat_style = summarise_stream("responses", sse({"error": {"message": "x"}}, done=False))
    assert chat_style.error == {"message": "x"}


# ---------------------------------------------------------------- odd input


ODD = [
    b"",
    b"data: [DONE]",
    b"data:[DONE]\r\n\r\n",
    b'garbage\n\n\xff\xfe\ndata: \xff\n\ndata: {"choices": [1, null, "x"]}\n\n',
    b'data: []\n\ndata: 3\n\ndata: null\n\ndata: "s"\n\n',
    b'data: {"choices": [{"index": "1", "delta": []}]}\n\n',
    b'data: {"choices": [{"index": true, "delta": {"tool_calls": [1, {"index": null}]}}]}\n\n',
    b'data: {"choices": {"a": 1}, "usage": 5, "error": "text"}\n\n',
    b'data: {"type": "response.completed", "response": "x"}\n\n',
    b'data: {"type": "response.output_item.done", "output_index": 0, "item": {}}\n\n',
    b'data: {"type": "response.output_text.delta", "output_index": 0, "content_index": 0}\n\n',
    b'data: {"type": 5, "output_index": true}\n\ndata: {"type": "response.created"}\n\n',
    b'data: {"type": "response.output_item.added", "output_index": 0, "item": {"type": '
    b'"message", "content": "x"}}\n\ndata: {"type": "response.output_text.delta", '
    b'"output_index": 0, "content_index": 2, "delta": "a", "logprobs": 5}\n\n',
    b'data: {"choices": [{"delta": {"content": "a"}}]}\ndata: {"choices": [{"delta": '
    b'{"content": "b"}}]}\n\n',  # no blank line between events
    b'data: {"choices": [{"delta":\ndata:  {"content": "joined"}}]}\n\n',  # one event, two lines
    b"data: " + b"[" * 5000 + b"\n\n",
    b'data: {"a": 123456789012345678901234567890}\n\n',
]


@pytest.mark.parametrize("raw", ODD)
@pytest.mark.parametrize("endpoint", ["chat", "text", "responses"])
def test_odd_streams_never_raise(endpoint: Any, raw: bytes) -> None:
    summary = summarise_stream(endpoint, raw)
    assert summary.body is None or isinstance(summary.body, dict)
    for read in READERS:
        read(endpoint, summary.body)


def test_events_without_blank_lines_and_over_several_lines() -> None:
    separate = summarise_stream("chat", ODD[-4]).body
    assert separate is not None
    assert separate["choices"][0]["message"]["content"] == "ab"
    joined = summarise_stream("chat", ODD[-3]).body
    assert joined is not None
    assert joined["choices"][0]["message"]["content"] == "joined"


KEYS = ["type", "choices", "delta", "index", "tool_calls", "function", "name", "arguments", "id",
        "content", "refusal", "logprobs", "text", "usage", "error", "output_index",
        "content_index", "item", "part", "response", "output", "finish_reason"]  # fmt: skip
TYPES = ["response.created", "response.completed", "response.failed", "error",
         "response.output_item.added", "response.output_item.done", "response.content_part.added",
         "response.content_part.done", "response.output_text.delta", "response.output_text.done",
         "response.refusal.delta", "response.refusal.done",
         "response.function_call_arguments.delta", "response.function_call_arguments.done",
         "message", "function_call", "output_text", "refusal"]  # fmt: skip
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(TYPES) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=25,
)


@FUZZ
@given(events=st.lists(JSONISH, max_size=8), tail=st.binary(max_size=40))
def test_fuzzed_events_never_raise(events: list[Any], tail: bytes) -> None:
    raw = typed_sse(*({"type": "x", **e} if isinstance(e, dict) else {"type": "x"} for e in events))
    raw = sse(*events, done=False) + raw + tail
    for endpoint in ENDPOINTS:
        summary = summarise_stream(endpoint, raw)
        for read in READERS:
            read(endpoint, summary.body)


# ---------------------------------------------------------------- round trip, and the SDK

CHAT_BODY: dict[str, Any] = {
    "id": "chatcmpl-9",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "student-1",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "time", "arguments": "{}"}},
                ],
            },
            "finish_reason": "tool_calls",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Hello"},
            "logprobs": {"content": [token("Hello", -0.1, ("Hello", -0.1))], "refusal": None},
            "finish_reason": "stop",
        },
        {
            "index": 2,
            "message": {"role": "assistant", "content": None, "refusal": "No."},
            "logprobs": {"content": None, "refusal": [token("No.", -0.3)]},
            "finish_reason": "stop",
        },
        {"index": 3, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"},
    ],
    "system_fingerprint": "fp_9",
    "service_tier": "default",
    "usage": USAGE,
}  # fmt: skip
TEXT_BODY: dict[str, Any] = {
    "id": "cmpl-9",
    "object": "text_completion",
    "created": 1700000000,
    "model": "student-1",
    "choices": [
        {
            "index": 0,
            "text": "Hello",
            "logprobs": {
                "tokens": ["Hel", "lo"],
                "token_logprobs": [-0.1, -0.2],
                "top_logprobs": None,
                "text_offset": [0, 3],
            },
            "finish_reason": "length",
        },
        {"index": 1, "text": "", "finish_reason": "stop"},
    ],
    "system_fingerprint": "fp_9",
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}
BODIES: dict[str, dict[str, Any]] = {"chat": CHAT_BODY, "text": TEXT_BODY, "responses": RESPONSE}


@pytest.mark.parametrize("endpoint", ["chat", "text", "responses"])
def test_round_trip(endpoint: Any) -> None:
    body = BODIES[endpoint]
    original = copy.deepcopy(body)
    raw = answer_to_sse(endpoint, body, include_usage=True)
    assert body == original
    summary = summarise_stream(endpoint, raw)
    assert summary.done
    assert summary.body is not None
    rebuilt = {key: value for key, value in summary.body.items() if key != "stream_chunks"}
    assert rebuilt == body
    assert answer_output(endpoint, summary.body) == answer_output(endpoint, body)
    assert token_logprobs(endpoint, summary.body) == token_logprobs(endpoint, body)


def test_round_trip_of_a_body_as_openai_writes_it() -> None:
    """Null fields a stream never carries (``refusal``, ``annotations``, ``logprobs``) are left
    out of the rebuilt body; what the answer said is the same."""
    body = copy.deepcopy(CHAT_BODY)
    for choice in body["choices"]:
        choice.setdefault("logprobs", None)
        choice["message"] = {"refusal": None, "annotations": [], **choice["message"]}
    ChatCompletion.model_validate(body)
    rebuilt = summarise_stream("chat", answer_to_sse("chat", body, include_usage=True)).body
    assert rebuilt is not None
    for read in READERS:
        assert read("chat", rebuilt) == read("chat", body)
    assert [c.get("logprobs") for c in rebuilt["choices"]] == [
        c["logprobs"] for c in body["choices"]
    ]
    assert "annotations" not in rebuilt["choices"][0]["message"]


def test_usage_only_when_asked() -> None:
    for endpoint in ENDPOINTS[:2]:
        raw = answer_to_sse(endpoint, BODIES[endpoint], include_usage=False)
        rebuilt = summarise_stream(endpoint, raw).body
        assert rebuilt is not None
        assert "usage" not in rebuilt
        assert raw.endswith(b"data: [DONE]\n\n")


def decoded(raw: bytes) -> list[Any]:
    """The stream as the SDK's own SSE decoder reads it: (event name, JSON)."""
    events = SSEDecoder().iter_bytes(iter([raw]))
    return [(e.event, e.data if e.data == "[DONE]" else e.json()) for e in events]


def test_synthesised_chat_stream_parses_with_the_sdk() -> None:
    raw = answer_to_sse("chat", CHAT_BODY, include_usage=True)
    events = decoded(raw)
    assert events.pop() == (None, "[DONE]")
    state = ChatCompletionStreamState()
    for _, data in events:
        parsed = ChatCompletionChunk.model_validate(data)
        assert "usage" not in data or not parsed.choices
        list(state.handle_chunk(parsed))
    final = state.get_final_completion()
    assert final.system_fingerprint == "fp_9"
    assert final.usage is not None
    assert final.usage.completion_tokens == 9
    first, second, third, fourth = final.choices
    assert [
        (c.id, c.function.name, c.function.arguments) for c in first.message.tool_calls or []
    ] == [
        ("call_a", "weather", '{"city": "Paris"}'),
        ("call_b", "time", "{}"),
    ]
    assert first.finish_reason == "tool_calls"
    assert second.message.content == "Hello"
    assert second.logprobs is not None
    assert [t.token for t in second.logprobs.content or []] == ["Hello"]
    assert third.message.refusal == "No."
    assert third.logprobs is not None
    assert [t.token for t in third.logprobs.refusal or []] == ["No."]
    assert fourth.message.content == ""


EVENT_CLASSES = {
    typing.get_args(cls.model_fields["type"].annotation)[0]: cls
    for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}


def test_synthesised_responses_stream_parses_with_the_sdk() -> None:
    Response.model_validate(RESPONSE)  # the fixture is a real Responses body
    raw = answer_to_sse("responses", RESPONSE, include_usage=False)
    assert b"[DONE]" not in raw
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    seen: list[Any] = []
    for number, (name, data) in enumerate(decoded(raw)):
        assert name == data["type"]
        assert data["sequence_number"] == number
        EVENT_CLASSES[data["type"]].model_validate(data)  # strict: every required field there
        adapter.validate_python(data)
        seen.extend(state.handle_event(construct_type(type_=ResponseStreamEvent, value=data)))  # type: ignore[arg-type]
    kinds = [event.type for event in seen]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    text_deltas = [event for event in seen if event.type == "response.output_text.delta"]
    assert [(e.delta, e.snapshot) for e in text_deltas] == [("Hello", "Hello")]
    assert [t.token for t in text_deltas[0].logprobs] == ["Hel", "lo"]
    completed = seen[-1].response
    assert completed.output_text == "Hello"
    calls = [item for item in completed.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_1", "weather", '{"city": "Paris"}')
    ]


def test_synthesised_responses_end_as_the_status_says() -> None:
    incomplete = {**RESPONSE, "status": "incomplete",
                  "incomplete_details": {"reason": "max_output_tokens"}}  # fmt: skip
    raw = answer_to_sse("responses", incomplete, include_usage=True)
    names = [name for name, _ in decoded(raw)]
    assert names[-1] == "response.incomplete"
    summary = summarise_stream("responses", raw)
    assert summary.body == incomplete
    assert finish_reason("responses", summary.body) == "length"
    # created announces an empty, unfinished response
    created = decoded(raw)[0][1]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)


def test_synthesised_responses_cut_short_rebuild_what_was_sent() -> None:
    raw = answer_to_sse("responses", RESPONSE, include_usage=True)
    events = raw.split(b"\n\n")
    without_end = b"\n\n".join(events[:-2]) + b"\n\n"
    summary = summarise_stream("responses", without_end)
    assert not summary.done
    assert summary.body is not None
    assert summary.body["output"] == RESPONSE["output"]
    assert summary.body["status"] == "in_progress"
    mid = next(i for i, e in enumerate(events) if b"response.output_text.delta" in e)
    partial = summarise_stream("responses", b"\n\n".join(events[: mid + 1]) + b"\n\n").body
    assert partial is not None
    assert answer_output("responses", partial) == Output(text="Hello")
