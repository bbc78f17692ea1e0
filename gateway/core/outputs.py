"""What an answer said, whatever its shape: text, tool calls, or a refusal.

Chat answers carry ``message.content``, ``message.tool_calls`` and ``message.refusal``; legacy
completions carry ``text``; Responses API answers carry ``output`` items (``message`` items with
``output_text``/``refusal`` parts, ``function_call`` items). :class:`Output` is the one shape the
gateway logs, compares and exports, read from the first choice (chat, text) or from the whole
``output`` list (Responses, which has no choices).

Pure and forgiving: bodies come from upstreams we do not control, so a shape that cannot be read
gives ``None``, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Endpoint = Literal["chat", "text", "responses"]
OutputKind = Literal["text", "tool_calls", "refusal"]
JSON = dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """One function call as the model wrote it; ``arguments`` is the raw JSON text."""

    name: str
    arguments: str
    id: str | None = None

    def column(self) -> JSON:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class Output:
    """One answer: its text (None when it has none), its tool calls, its refusal.

    The *kind* decides how two answers are compared: tool calls win (a model that called a
    tool acted, whatever text it wrote beside), then a refusal, else the text.
    """

    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None

    @property
    def kind(self) -> OutputKind:
        if self.tool_calls:
            return "tool_calls"
        if self.refusal is not None:
            return "refusal"
        return "text"

    def tool_calls_column(self) -> list[JSON] | None:
        return [call.column() for call in self.tool_calls] or None

    @classmethod
    def from_columns(cls, text: str | None, tool_calls: object, refusal: str | None) -> Output:
        """The answer as a row stores it (``*_output``, ``*_tool_calls``, ``*_refusal``)."""
        calls = tuple(
            ToolCall(str(call.get("name")), str(call.get("arguments") or ""), call.get("id"))
            for call in as_list(tool_calls)
            if isinstance(call, dict)
        )
        return cls(text, calls, refusal)

    def describe(self) -> str:
        """One readable line for reports and logs: the text, ``name(arguments)``, or the refusal."""
        if self.tool_calls:
            return "; ".join(f"{call.name}({call.arguments})" for call in self.tool_calls)
        if self.refusal is not None:
            return f"[refusal] {self.refusal}"
        return self.text or ""


# Readers that take whatever an upstream sent and give the type asked for, or its empty value.


def as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_dict(value: object) -> JSON:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _tool_calls(raw: object) -> tuple[ToolCall, ...]:
    """Chat ``tool_calls`` (and the legacy single ``function_call``) as :class:`ToolCall`s."""
    calls: list[ToolCall] = []
    for item in raw if isinstance(raw, list) else ():
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        arguments = function.get("arguments")
        calls.append(
            ToolCall(
                name=function["name"],
                arguments=arguments if isinstance(arguments, str) else "",
                id=as_str(item.get("id")),
            )
        )
    return tuple(calls)


def first_choice(body: object) -> JSON | None:
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def chat_message_output(message: Mapping[str, Any]) -> Output:
    calls = _tool_calls(message.get("tool_calls"))
    legacy = message.get("function_call")
    if not calls and isinstance(legacy, dict):
        calls = _tool_calls([{"function": legacy}])
    return Output(
        text=as_str(message.get("content")),
        tool_calls=calls,
        refusal=as_str(message.get("refusal")),
    )


def responses_output(items: Sequence[object]) -> Output:
    """A Responses API ``output`` list: message text joined, refusals, function calls."""
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[ToolCall] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call" and isinstance(item.get("name"), str):
            arguments = item.get("arguments")
            calls.append(
                ToolCall(
                    name=item["name"],
                    arguments=arguments if isinstance(arguments, str) else "",
                    id=as_str(item.get("call_id")),
                )
            )
        elif item.get("type") == "message":
            for part in item.get("content") or ():
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    refusals.append(part["refusal"])
    return Output(
        text="".join(texts) if texts else None,
        tool_calls=tuple(calls),
        refusal="".join(refusals) if refusals else None,
    )


def answer_output(endpoint: Endpoint, body: object) -> Output | None:
    """The answer in ``body`` (choice 0; the whole output for Responses), or None when
    ``body`` is not an answer of that endpoint."""
    if endpoint == "responses":
        items = body.get("output") if isinstance(body, dict) else None
        return responses_output(items) if isinstance(items, list) else None
    choice = first_choice(body)
    if choice is None:
        return None
    if endpoint == "text":
        text = choice.get("text")
        return Output(text=text) if isinstance(text, str) else None
    message = choice.get("message")
    return chat_message_output(message) if isinstance(message, dict) else None
