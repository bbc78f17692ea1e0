"""Property-based fuzzing of everything that parses what an app sends (hypothesis).

Whatever the bytes, JSON, headers or content type: a valid parse, or one of our 4xx errors in
OpenAI's shape; never any other exception. Runs are derandomized and bounded for CI.
"""

from __future__ import annotations

import asyncio
import string
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from gateway.api.openai import parse_json_object, read_json_body
from gateway.core.redact import Redactor
from gateway.core.slices import MAX_VALUE_LENGTH, slice_labels
from gateway.errors import GatewayError, InvalidRequest
from gateway.protocol.openai import ChatCompletionRequest, CompletionRequest, validate_request

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # derandomized: nothing to remember between runs
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


def _assert_param(error: InvalidRequest) -> None:
    assert error.param is None or isinstance(error.param, str)


def _assert_openai_error(error: GatewayError) -> None:
    assert 400 <= error.http_status < 500
    body = orjson.loads(error.to_body())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_invalid_request(raw: bytes) -> None:
    try:
        body = parse_json_object(raw)
    except InvalidRequest as error:
        _assert_openai_error(error)
    else:
        assert isinstance(body, dict)


@FUZZ
@given(json_values)
def test_any_json_parses_or_invalid_request(value: Any) -> None:
    try:
        body = parse_json_object(orjson.dumps(value))
    except InvalidRequest as error:
        assert not isinstance(value, dict)
        _assert_openai_error(error)
    else:
        assert body == value


# Fields the gateway declares, with values of the right and the wrong kinds.
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "wizard", ""]) | json_values},
        optional={"content": st.text(max_size=20) | json_values},
    )
    | json_values,
    max_size=3,
)
request_fields = {
    "model": st.text(max_size=10) | json_values,
    "messages": messages | json_values,
    "prompt": st.text(max_size=10) | st.lists(st.integers()) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_values}),
    "n": st.integers() | json_values,
    "max_tokens": st.integers(min_value=-10, max_value=2**70) | json_values,
    "max_completion_tokens": st.integers(min_value=-10, max_value=2**70),
    "temperature": st.floats(allow_nan=False) | json_values,
    "top_p": st.floats(allow_nan=False),
    "logprobs": st.booleans() | st.integers() | json_values,
    "top_logprobs": st.integers() | json_values,
    "user": st.text(max_size=600) | json_values,
    "metadata": st.dictionaries(st.text(max_size=70), st.text(max_size=20) | json_values)
    | json_values,
    "echo": st.booleans() | json_values,
    "extra_field": json_values,
}
requests = st.fixed_dictionaries({}, optional=request_fields)


@FUZZ
@given(st.sampled_from(["chat", "text"]), requests)
def test_request_models_accept_or_name_the_field(endpoint: str, body: dict[str, Any]) -> None:
    try:
        validated = validate_request(endpoint, body)
    except InvalidRequest as error:
        _assert_openai_error(error)
        _assert_param(error)
    else:
        assert isinstance(validated, ChatCompletionRequest | CompletionRequest)
        assert validated.model == body["model"]


def _request(content_type: str | None, chunks: list[bytes]) -> Request:
    headers = [(b"content-type", content_type.encode("latin-1"))] if content_type else []
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or [b""])
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive)


@FUZZ
@given(
    st.none() | st.text(alphabet=string.printable, max_size=40) | st.just("application/json"),
    st.lists(st.binary(max_size=600), max_size=4),
)
def test_raw_body_reading_only_raises_our_4xx(
    content_type: str | None, chunks: list[bytes]
) -> None:
    try:
        body = asyncio.run(read_json_body(_request(content_type, chunks), limit=1024))
    except GatewayError as error:
        _assert_openai_error(error)
    else:
        assert isinstance(body, dict)


header_text = st.text(alphabet=st.characters(max_codepoint=255), max_size=300)


@FUZZ
@given(
    st.dictionaries(st.text(max_size=70), json_values, max_size=20) | st.none(),
    st.lists(st.tuples(st.just("x-slice-") | st.text(max_size=12), header_text), max_size=20),
)
def test_slice_labels_are_always_clean(
    metadata: dict[str, Any] | None, headers: list[tuple[str, str]]
) -> None:
    labels = slice_labels(metadata, [(name + "x", value) for name, value in headers])
    assert len(labels) <= 16
    for name, value in labels.items():
        assert name.isascii()
        assert name == name.lower()
        assert len(name) <= 63
        assert 0 < len(value) <= MAX_VALUE_LENGTH
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in value)


@FUZZ
@given(json_values)
def test_redaction_never_fails_and_is_idempotent(value: Any) -> None:
    redactor = Redactor(emails=True, phones=True, cards=True)
    once = redactor.value(value)
    assert redactor.value(once) == once
