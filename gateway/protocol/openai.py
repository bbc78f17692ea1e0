"""OpenAI request models, validated on the way in.

Only the fields the gateway reads or that would hurt an upstream if malformed are declared;
everything else passes through untouched (``extra="allow"``), so new OpenAI parameters keep
working without a gateway release. The request forwarded upstream is the client's own JSON,
not a re-serialisation of these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gateway.errors import InvalidRequest


class _OpenAIModel(BaseModel):
    # strict: JSON has real booleans and numbers; "yes" is not true and "5" is not 5.
    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_OpenAIModel):
    include_usage: bool | None = None


# Token counts past int32 are nobody's real request, and some upstreams overflow on them.
MAX_TOKENS = 2**31 - 1
Metadata = dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]]


class _CommonRequest(_OpenAIModel):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    user: str | None = Field(default=None, max_length=512)
    metadata: Metadata | None = Field(default=None, max_length=16)


class ChatCompletionRequest(_CommonRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_CommonRequest):
    prompt: Prompt
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = None


class ResponsesRequest(_OpenAIModel):
    """OpenAI's Responses API. ``input`` is a string or a list of items (messages, function
    calls and their outputs, …), passed through as sent; it may be absent when the request
    continues a stored response or conversation."""

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    stream: bool | None = False
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    conversation: str | dict[str, Any] | None = None
    include: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = Field(default=None, max_length=512)
    metadata: Metadata | None = Field(default=None, max_length=16)


Request = ChatCompletionRequest | CompletionRequest | ResponsesRequest

_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "chat": TypeAdapter(ChatCompletionRequest),
    "text": TypeAdapter(CompletionRequest),
    "responses": TypeAdapter(ResponsesRequest),
}


def validate_request(endpoint: str, body: dict[str, Any]) -> Request:
    """Validate ``body``; raise :class:`InvalidRequest` naming the first offending field."""
    try:
        validated: Request = _ADAPTERS[endpoint].validate_python(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    return validated


def _invalid(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    param = _param_path(first["loc"])
    return InvalidRequest(
        f"Invalid value for '{param}': {first['msg']}" if param else first["msg"],
        param=param or None,
        code="invalid_value" if first["type"] != "missing" else "missing_required_parameter",
    )


def _param_path(loc: tuple[int | str, ...]) -> str:
    """``('messages', 0, 'role')`` → ``messages[0].role``, the way OpenAI names params."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or part in {"str", "list[str]", "list[int]", "list[list[int]]"}:
            continue  # pydantic's union-member tags are not field names
        else:
            path += f".{part}" if path else part
    return path


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: what the app says of an answer it was given. At least one of
    score, correct, label, comment or corrected_output."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(min_length=1, max_length=128)
    score: float | None = Field(default=None, ge=0, le=1)
    correct: bool | None = None
    label: str | None = Field(default=None, min_length=1, max_length=200)
    comment: str | None = Field(default=None, max_length=10_000)
    corrected_output: str | None = Field(default=None, min_length=1)
    source: str | None = Field(default=None, min_length=1, max_length=200)

    def judges_something(self) -> bool:
        fields = (self.score, self.correct, self.label, self.comment, self.corrected_output)
        return any(value is not None for value in fields)


M = TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], body: dict[str, Any]) -> M:
    """Validate ``body`` as ``model``; raise :class:`InvalidRequest` naming the first field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
