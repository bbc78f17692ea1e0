"""The fake upstream itself, driven by the official ``openai`` SDK (no gateway in between).

Gateway tests lean on ``tests/support/upstream.py`` for tool calls, refusals, ``n`` choices,
stream logprobs, rate-limit headers and the Responses API; these tests check that what the
fake sends is what the SDK accepts and understands.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)
from openai.types.responses import FunctionToolParam, Response, ResponseOutputText
from pydantic import BaseModel

from tests.support.upstream import FakeOpenAI, Received

MODEL = "fake-model"
WEATHER = {"city": "Paris", "unit": "celsius"}
TIME = {"zone": "Europe/Paris"}
CALLS = [("get_weather", WEATHER), ("get_time", TIME)]


def tool(name: str, *properties: str) -> ChatCompletionFunctionToolParam:
    return {
        "type": "function",
        "function": {
            "name": name,
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {p: {"type": "string"} for p in properties},
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


TOOLS = [tool("get_weather", "city", "unit"), tool("get_time", "zone")]
RESPONSE_TOOLS: list[FunctionToolParam] = [
    {
        "type": "function",
        "name": t["function"]["name"],
        "strict": True,
        "parameters": t["function"].get("parameters"),
    }
    for t in TOOLS
]


class Invoice(BaseModel):
    name: str
    amount: float


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI("fake").start()
    yield server
    server.stop()


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as sdk:
        yield sdk


def ask(text: str = "what is up") -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = message.tool_calls or []
    assert all(isinstance(call, ChatCompletionMessageFunctionToolCall) for call in calls)
    return [call for call in calls if isinstance(call, ChatCompletionMessageFunctionToolCall)]


def output_text_part(response: Response) -> ResponseOutputText:
    message = response.output[0]
    assert message.type == "message"
    part = message.content[0]
    assert isinstance(part, ResponseOutputText)
    return part


def expected_logprob(i: int) -> float:
    return math.log(0.9 - 0.1 * (i % 3))


# --- chat: tool calls -----------------------------------------------------------------------


def test_chat_parallel_tool_calls(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(tool_calls=CALLS)
    completion = client.chat.completions.create(model=MODEL, messages=ask(), tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = function_calls(choice.message)
    assert [(c.type, c.function.name) for c in calls] == [
        ("function", "get_weather"),
        ("function", "get_time"),
    ]
    assert [json.loads(c.function.arguments) for c in calls] == [WEATHER, TIME]
    assert all(c.id.startswith("call_") for c in calls)
    assert len({c.id for c in calls}) == 2
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_chat_tool_calls_from_the_request_body(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(tool_calls=lambda body: [("echo", {"n": len(body.get("tools") or [])})])
    with_tools = client.chat.completions.create(model=MODEL, messages=ask(), tools=TOOLS)
    calls = function_calls(with_tools.choices[0].message)
    assert json.loads(calls[0].function.arguments) == {"n": 2}
    # a callable that returns no calls gives the usual text answer
    fake.reset_behavior(tool_calls=lambda body: [("t", {})] if body.get("tools") else [])
    plain = client.chat.completions.create(model=MODEL, messages=ask("hi"))
    assert plain.choices[0].message.content == "fake: hi"
    assert plain.choices[0].finish_reason == "stop"


def test_chat_tool_calls_streamed_like_openai(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(tool_calls=CALLS)
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=ask(), tools=TOOLS, stream=True)
    )
    first = chunks[0].choices[0].delta
    assert (first.role, first.content, first.tool_calls) == ("assistant", None, None)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    for index, (name, arguments) in enumerate(CALLS):
        deltas = [
            call
            for chunk in chunks
            for call in chunk.choices[0].delta.tool_calls or []
            if call.index == index
        ]
        head, fragments = deltas[0], deltas[1:]
        assert head.id is not None
        assert head.type == "function"
        assert head.function is not None
        assert (head.function.name, head.function.arguments) == (name, "")
        assert 2 <= len(fragments) <= 4
        assert all(f.id is None and f.function and f.function.name is None for f in fragments)
        text = "".join(f.function.arguments or "" for f in fragments if f.function)
        assert json.loads(text) == arguments


def test_chat_stream_helper_assembles_tool_calls(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(tool_calls=CALLS)
    with client.chat.completions.stream(model=MODEL, messages=ask(), tools=TOOLS) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [(e.name, e.parsed_arguments) for e in done] == CALLS
    calls = final.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == CALLS
    assert [c.function.parsed_arguments for c in calls] == [WEATHER, TIME]
    assert final.choices[0].finish_reason == "tool_calls"


def test_chat_tool_calls_with_text_and_logprobs(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(tool_calls=CALLS[:1], tool_call_text="Let me look.")
    completion = client.chat.completions.create(
        model=MODEL, messages=ask(), tools=TOOLS, logprobs=True, top_logprobs=2
    )
    message = completion.choices[0].message
    assert message.content == "Let me look."
    arguments = function_calls(message)[0].function.arguments
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    tokens = [entry.token for entry in logprobs.content]
    assert "".join(tokens) == "Let me look." + arguments
    expected = [expected_logprob(i) for i in range(len(tokens))]
    assert [e.logprob for e in logprobs.content] == expected
    assert all(len(entry.top_logprobs) == 2 for entry in logprobs.content)
    # streamed, the same entries ride on the content and argument chunks
    with client.chat.completions.stream(
        model=MODEL, messages=ask(), tools=TOOLS, logprobs=True, top_logprobs=2
    ) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].logprobs
    assert streamed is not None
    assert streamed.content == logprobs.content


# --- chat: refusals and structured outputs --------------------------------------------------


def test_chat_refusal(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(refusal="I can't help with that.")
    choice = client.chat.completions.create(model=MODEL, messages=ask()).choices[0]
    assert choice.message.refusal == "I can't help with that."
    assert choice.message.content is None
    assert choice.finish_reason == "stop"


def test_chat_refusal_streamed(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(refusal="I can't help with that.")
    with client.chat.completions.stream(model=MODEL, messages=ask(), logprobs=True) as stream:
        deltas = [e.delta for e in stream if e.type == "refusal.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1
    assert "".join(deltas) == "I can't help with that."
    message = final.choices[0].message
    assert (message.refusal, message.content) == ("I can't help with that.", None)
    logprobs = final.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.refusal is not None
    assert "".join(e.token for e in logprobs.refusal) == "I can't help with that."


def test_parse_gives_the_refusal(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(refusal="No invoices today.")
    completion = client.chat.completions.parse(model=MODEL, messages=ask(), response_format=Invoice)
    message = completion.choices[0].message
    assert message.refusal == "No invoices today."
    assert message.parsed is None
    sent = fake.received[-1].body["response_format"]
    assert sent["type"] == "json_schema"


def test_parse_gives_the_parsed_object(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(answer=lambda _: '{"name": "Ada", "amount": 12.5}')
    completion = client.chat.completions.parse(model=MODEL, messages=ask(), response_format=Invoice)
    assert completion.choices[0].message.parsed == Invoice(name="Ada", amount=12.5)


def test_answer_body_sees_the_whole_request(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(answer_body=lambda body: f"{len(body['messages'])} {body['model']}")
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": "be brief"}, *ask()]
    completion = client.chat.completions.create(model=MODEL, messages=messages)
    assert completion.choices[0].message.content == f"2 {MODEL}"


# --- n > 1, logprobs in streams, model and fingerprint --------------------------------------


def test_n_choices_plain(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model=MODEL, messages=ask("a b"), n=2)
    assert [c.message.content for c in chat.choices] == ["fake: a b", "fake: a b (choice 1)"]
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 3 + 5
    text = client.completions.create(model=MODEL, prompt="a b", n=3)
    assert [c.text for c in text.choices] == [
        "fake: a b",
        "fake: a b (choice 1)",
        "fake: a b (choice 2)",
    ]
    assert text.usage is not None
    assert text.usage.completion_tokens == 3 + 5 + 5


def test_n_choices_streamed_interleaved(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=ask("a b"),
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    indexes = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.content]
    assert indexes == [0, 1, 0, 1, 0, 1, 1, 1]
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == ["fake: a b", "fake: a b (choice 1)"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    with client.chat.completions.stream(model=MODEL, messages=ask("a b"), n=2) as stream:
        final = stream.get_final_completion()
    assert [c.message.content for c in final.choices] == texts
    assert [c.finish_reason for c in final.choices] == ["stop", "stop"]
    text_chunks = list(client.completions.create(model=MODEL, prompt="x", n=2, stream=True))
    streamed = ["", ""]
    for piece in text_chunks:
        for text_choice in piece.choices:
            streamed[text_choice.index] += text_choice.text
    assert streamed == ["fake: x", "fake: x (choice 1)"]


def test_chat_logprobs_streamed(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model=MODEL, messages=ask("one two three"), logprobs=True, top_logprobs=3
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ask("one two three"), logprobs=True, top_logprobs=3, stream=True
        )
    )
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    entries = []
    for chunk in content_chunks:
        logprobs = chunk.choices[0].logprobs
        assert logprobs is not None
        assert logprobs.refusal is None
        assert logprobs.content is not None
        assert len(logprobs.content) == 1
        assert logprobs.content[0].token == chunk.choices[0].delta.content
        entries += logprobs.content
    assert plain.choices[0].logprobs is not None
    assert entries == plain.choices[0].logprobs.content
    assert all(len(e.top_logprobs) == 3 for e in entries)


def test_text_logprobs_streamed(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=MODEL, prompt="p q", logprobs=1, stream=True))
    token_chunks = [c for c in chunks if c.choices[0].text]
    assert [c.choices[0].text for c in token_chunks] == ["fake:", " p", " q"]
    for offset, chunk in enumerate(token_chunks):
        logprobs = chunk.choices[0].logprobs
        assert logprobs is not None
        assert logprobs.tokens == [chunk.choices[0].text]
        assert logprobs.token_logprobs == [math.log(0.8)]
        assert logprobs.text_offset == [offset]


def test_fingerprint_and_reported_model(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(system_fingerprint="fp_test", reported_model="served-model-2025")
    chat = client.chat.completions.create(model=MODEL, messages=ask())
    assert (chat.model, chat.system_fingerprint) == ("served-model-2025", "fp_test")
    chunks = list(client.chat.completions.create(model=MODEL, messages=ask(), stream=True))
    assert {(c.model, c.system_fingerprint) for c in chunks} == {("served-model-2025", "fp_test")}
    text = client.completions.create(model=MODEL, prompt="x")
    assert (text.model, text.system_fingerprint) == ("served-model-2025", "fp_test")
    response = client.responses.create(model=MODEL, input="x")
    assert response.model == "served-model-2025"


# --- errors with headers, retries -----------------------------------------------------------


RATE_LIMIT_HEADERS = {
    "retry-after": "1",
    "retry-after-ms": "400",
    "x-ratelimit-remaining-requests": "0",
    "set-cookie": "upstream_session=secret; Path=/",
    "www-authenticate": 'Bearer realm="upstream"',
}


def test_error_headers_are_served(fake: FakeOpenAI) -> None:
    fake.reset_behavior(status=429, error_headers=RATE_LIMIT_HEADERS)
    for path in ("/chat/completions", "/completions", "/responses"):
        answer = httpx.post(f"{fake.base_url}{path}", json={"model": MODEL, "input": "x"})
        assert answer.status_code == 429
        for name, value in RATE_LIMIT_HEADERS.items():
            assert answer.headers[name] == value
        assert answer.json()["error"]["code"] == "boom"


def test_sdk_retry_honours_retry_after(fake: FakeOpenAI) -> None:
    fake.reset_behavior(status=429, fail_times=1, error_headers=RATE_LIMIT_HEADERS)
    with openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=1) as sdk:
        completion = sdk.chat.completions.create(model=MODEL, messages=ask("again"))
    assert completion.choices[0].message.content == "fake: again"
    first, second = fake.received
    assert second.arrived - first.arrived >= 0.35  # retry-after-ms: 400
    with openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as sdk:
        sdk.chat.completions.create(model=MODEL, messages=ask())  # fail_times used up


def test_errors_stay_without_fail_times(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(status=429, error_headers={"x-ratelimit-remaining-requests": "0"})
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            client.responses.create(model=MODEL, input="x")
        assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_received_keeps_its_old_constructor() -> None:
    received = Received("/v1/chat/completions", {}, {})
    assert received.arrived > 0


# --- the Responses API ----------------------------------------------------------------------


def test_responses_plain(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hello there", instructions="be kind")
    assert response.output_text == "fake: hello there"
    assert response.id.startswith("resp_")
    assert (response.object, response.status, response.model) == ("response", "completed", MODEL)
    assert response.instructions == "be kind"
    message = response.output[0]
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert (message.role, message.status) == ("assistant", "completed")
    assert message.content[0].type == "output_text"
    assert message.content[0].annotations == []
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 3)
    assert response.usage.total_tokens == 10
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert fake.responses[response.id]["output"][0]["id"] == message.id


def test_responses_input_items(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ],
        store=False,
    )
    assert response.output_text == "fake: second"


def test_responses_streamed(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="one two three") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == "fake: one two three"
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types.count("response.output_text.delta") == 4
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    raw = list(client.responses.create(model=MODEL, input="x", stream=True))
    assert raw[-1].type == "response.completed"
    assert raw[-1].response.output_text == "fake: x"


def test_responses_function_calls(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(tool_calls=CALLS)
    response = client.responses.create(model=MODEL, input="weather?", tools=RESPONSE_TOOLS)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == CALLS
    assert all(c.call_id.startswith("call_") and (c.id or "").startswith("fc_") for c in calls)
    assert all(c.status == "completed" for c in calls)
    assert response.output_text == ""
    with client.responses.stream(model=MODEL, input="weather?", tools=RESPONSE_TOOLS) as stream:
        deltas = [e for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert len(deltas) >= 4
    streamed = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in streamed] == CALLS
    # the next turn sends the outputs back; the answer is text again
    fake.reset_behavior()
    follow_up = client.responses.create(
        model=MODEL,
        previous_response_id=response.id,
        input=[
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
            {"role": "user", "content": "thanks"},
        ],
    )
    assert follow_up.output_text == "fake: thanks"
    assert follow_up.previous_response_id == response.id


def test_responses_refusal(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(refusal="Not that.")
    response = client.responses.create(model=MODEL, input="x")
    message = response.output[0]
    assert message.type == "message"
    assert message.content[0].type == "refusal"
    assert message.content[0].refusal == "Not that."
    with client.responses.stream(model=MODEL, input="x") as stream:
        deltas = [e.delta for e in stream if e.type == "response.refusal.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Not that."
    assert final.output[0].type == "message"
    assert final.output[0].content[0].type == "refusal"


def test_responses_logprobs_with_include(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL, messages=ask("a b c"), logprobs=True, top_logprobs=2
    )
    response = client.responses.create(
        model=MODEL,
        input="a b c",
        top_logprobs=2,
        include=["message.output_text.logprobs"],
    )
    part = output_text_part(response)
    assert part.logprobs is not None
    assert chat.choices[0].logprobs is not None
    chat_entries = chat.choices[0].logprobs.content or []
    assert [(e.token, e.logprob) for e in part.logprobs] == [
        (e.token, e.logprob) for e in chat_entries
    ]
    assert all(len(e.top_logprobs) == 2 for e in part.logprobs)
    with client.responses.stream(
        model=MODEL, input="a b c", top_logprobs=2, include=["message.output_text.logprobs"]
    ) as stream:
        deltas = [e for e in stream if e.type == "response.output_text.delta"]
    assert [(d.delta, d.logprobs[0].logprob) for d in deltas] == [
        (e.token, e.logprob) for e in chat_entries
    ]
    plain = client.responses.create(model=MODEL, input="a b c")
    assert output_text_part(plain).logprobs == []


def test_responses_stream_breaks(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.reset_behavior(break_stream_after=1)
    seen: list[str] = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):  # noqa: PT012
        for event in client.responses.create(model=MODEL, input="a b c", stream=True):
            seen.append(event.type)
    assert seen.count("response.output_text.delta") == 1
    assert "response.completed" not in seen
