"""OpenAI wire shapes for the fake upstream (``tests/support/upstream.py``).

Pure builders: they take the answer already decided (text, tokens, logprob entries, tool
calls) and return the JSON objects and SSE frames the official API would send. The shapes
follow the ``openai`` SDK's types (``types/chat``, ``types/completion*``, ``types/responses``).
Token splitting and logprob numbers stay in ``upstream.py`` (a tool there swaps them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    """A chat/text stream frame (``data:`` only)."""
    return f"data: {json.dumps(payload)}\n\n".encode()


def sse_event(payload: dict[str, Any]) -> bytes:
    """A Responses stream frame: ``event: <type>`` then the data."""
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def argument_pieces(arguments: str) -> list[str]:
    """A tool call's arguments text cut into up to 3 fragments (its "tokens")."""
    count = max(min(3, len(arguments)), 1)
    bounds = [len(arguments) * i // count for i in range(count + 1)]
    return [arguments[bounds[i] : bounds[i + 1]] for i in range(count)]


def interleave(sequences: Sequence[Sequence[Any]]) -> list[Any]:
    """Item i of every sequence before item i + 1 of any (n > 1 streams)."""
    longest = max((len(s) for s in sequences), default=0)
    return [s[i] for i in range(longest) for s in sequences if i < len(s)]


# --- chat completions ---------------------------------------------------------------------


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text

    @property
    def pieces(self) -> list[str]:
        return argument_pieces(self.arguments)

    def message_entry(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ChatChoice:
    """One choice's answer: text, a refusal, or tool calls (with optional text)."""

    index: int
    text: str | None
    tokens: list[str]  # of the text (empty when there is none)
    refusal: str | None = None
    refusal_tokens: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    # the non-streamed ``logprobs`` object, when the request asked for logprobs
    logprobs: dict[str, Any] | None = None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.calls else "stop"

    @property
    def completion_tokens(self) -> int:
        pieces = sum(len(call.pieces) for call in self.calls)
        return len(self.tokens) + len(self.refusal_tokens) + pieces

    def message(self) -> dict[str, Any]:
        if self.refusal is not None:
            return {"role": "assistant", "content": None, "refusal": self.refusal}
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.calls:
            message["tool_calls"] = [call.message_entry() for call in self.calls]
        return message

    def body(self) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": self.index,
            "message": self.message(),
            "finish_reason": self.finish_reason,
        }
        if self.logprobs is not None:
            choice["logprobs"] = self.logprobs
        return choice

    def stream_deltas(self) -> list[dict[str, Any]]:
        """The choice's chunk entries up to (not including) the finishing one."""
        # logged tokens (content tokens, refusal tokens, argument pieces) take entries in order
        key = "refusal" if self.refusal is not None else "content"
        entries = iter((self.logprobs or {}).get(key) or [])
        out: list[dict[str, Any]] = []

        def add(delta: dict[str, Any], logged: str | None = None) -> None:
            choice: dict[str, Any] = {"index": self.index, "delta": delta}
            if logged is not None and self.logprobs is not None:
                entry = next(entries, None)
                these = [entry] if entry is not None else []
                choice["logprobs"] = {
                    "content": None if logged == "refusal" else these,
                    "refusal": these if logged == "refusal" else None,
                }
            choice["finish_reason"] = None
            out.append(choice)

        if self.refusal is not None:
            add({"role": "assistant", "content": None, "refusal": ""})
            for token in self.refusal_tokens:
                add({"refusal": token}, "refusal")
            return out
        for i, token in enumerate(self.tokens):
            add(
                {"role": "assistant", "content": token} if i == 0 else {"content": token}, "content"
            )
        if self.calls and not self.tokens:
            add({"role": "assistant", "content": None})
        for index, call in enumerate(self.calls):
            head = {"index": index, "id": call.id, "type": "function"}
            add({"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]})
            for piece in call.pieces:
                add({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, "content")
        return out

    def finishing_chunk_entry(self) -> dict[str, Any]:
        return {"index": self.index, "delta": {}, "finish_reason": self.finish_reason}


# --- legacy text completions --------------------------------------------------------------


def legacy_logprobs(tokens: list[str], start: int = 0) -> dict[str, Any]:
    values = [math.log(0.8)] * len(tokens)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": [{t: v, "alt": math.log(0.1)} for t, v in zip(tokens, values, strict=True)],
        "text_offset": list(range(start, start + len(tokens))),
    }


def text_choice(index: int, text: str, tokens: list[str], logprobs: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "text": text, "finish_reason": "stop"}
    if logprobs:
        choice["logprobs"] = legacy_logprobs(tokens)
    return choice


def text_stream_entries(index: int, tokens: list[str], logprobs: bool) -> list[dict[str, Any]]:
    out = []
    for i, token in enumerate(tokens):
        choice: dict[str, Any] = {"index": index, "text": token}
        if logprobs:
            choice["logprobs"] = legacy_logprobs([token], i)
        choice["finish_reason"] = None
        out.append(choice)
    return out


# --- Responses API ------------------------------------------------------------------------


def responses_logprobs(chat_entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat logprob entries as Responses ``output_text`` logprobs (same numbers)."""
    return [
        {
            "token": entry["token"],
            "logprob": entry["logprob"],
            "bytes": entry["bytes"],
            "top_logprobs": [
                {
                    "token": alt["token"],
                    "logprob": alt["logprob"],
                    "bytes": alt["bytes"]
                    if alt["bytes"] is not None
                    else list(alt["token"].encode()),
                }
                for alt in entry["top_logprobs"]
            ],
        }
        for entry in chat_entries
    ]


@dataclass
class MessageItem:
    id: str
    text: str | None  # an output_text part, or
    refusal: str | None  # a refusal part
    tokens: list[str]  # of the text or the refusal
    logprobs: list[dict[str, Any]] | None = None  # Responses-shaped, one per token

    def part(self, done: bool) -> dict[str, Any]:
        if self.refusal is not None:
            return {"type": "refusal", "refusal": self.refusal if done else ""}
        return {
            "type": "output_text",
            "text": self.text if done else "",
            "annotations": [],
            "logprobs": (self.logprobs or []) if done else [],
        }

    def item(self, done: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "status": "completed" if done else "in_progress",
            "content": [self.part(done)] if done else [],
        }


@dataclass
class FunctionCallItem:
    id: str
    call_id: str
    name: str
    arguments: str

    @property
    def tokens(self) -> list[str]:
        return argument_pieces(self.arguments)

    def item(self, done: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function_call",
            "status": "completed" if done else "in_progress",
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.arguments if done else "",
        }


OutputItem = MessageItem | FunctionCallItem


def responses_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    *,
    response_id: str,
    created_at: int,
    model: str,
    body: dict[str, Any],
    items: list[OutputItem],
    done: bool,
    input_tokens: int = 7,
) -> dict[str, Any]:
    output_tokens = sum(len(item.tokens) for item in items)
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "completed" if done else "in_progress",
        "completed_at": created_at if done else None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": model,
        "output": [item.item(done=True) for item in items] if done else [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": responses_usage(input_tokens, output_tokens) if done else None,
        "user": body.get("user"),
    }


def response_events(
    started: dict[str, Any], finished: dict[str, Any], items: list[OutputItem]
) -> list[dict[str, Any]]:
    """The typed events of a streamed response, numbered; ``*.delta`` events carry tokens."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for output_index, item in enumerate(items):
        at = {"item_id": item.id, "output_index": output_index}
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": output_index,
                "item": item.item(False),
            }
        )
        if isinstance(item, FunctionCallItem):
            for piece in item.tokens:
                events.append(
                    {"type": "response.function_call_arguments.delta", **at, "delta": piece}
                )
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    **at,
                    "name": item.name,
                    "arguments": item.arguments,
                }
            )
        else:
            part = {**at, "content_index": 0}
            events.append({"type": "response.content_part.added", **part, "part": item.part(False)})
            if item.refusal is not None:
                for token in item.tokens:
                    events.append({"type": "response.refusal.delta", **part, "delta": token})
                events.append({"type": "response.refusal.done", **part, "refusal": item.refusal})
            else:
                logprobs = item.logprobs or []
                for i, token in enumerate(item.tokens):
                    events.append(
                        {
                            "type": "response.output_text.delta",
                            **part,
                            "delta": token,
                            "logprobs": logprobs[i : i + 1],
                        }
                    )
                events.append(
                    {
                        "type": "response.output_text.done",
                        **part,
                        "text": item.text,
                        "logprobs": logprobs,
                    }
                )
            events.append({"type": "response.content_part.done", **part, "part": item.part(True)})
        events.append(
            {
                "type": "response.output_item.done",
                "output_index": output_index,
                "item": item.item(True),
            }
        )
    events.append({"type": "response.completed", "response": finished})
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]
