"""Building fine-tuning examples from logged requests: pure, no I/O (see services.export)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.core.agreement import normalize_text


def prompt_messages(endpoint: str, payload: object) -> list[Any] | None:
    """The conversation the teacher answered, in chat form; None when the app's body was not
    stored, or holds something the chat format cannot say (a Responses API item other than a
    message, a function call or its output)."""
    if not isinstance(payload, dict):
        return None
    if endpoint == "text":
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0]  # the first choice answers the first prompt
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else None
    if endpoint == "responses":
        return _responses_messages(payload)
    messages = payload.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        return messages
    return None


def _responses_messages(payload: Mapping[str, Any]) -> list[Any] | None:
    """A Responses API request as chat messages: ``instructions`` as the system message, each
    input message as itself (its text parts joined), function calls as an assistant message's
    ``tool_calls`` and their outputs as ``tool`` messages."""
    messages: list[dict[str, Any]] = []
    if isinstance(payload.get("instructions"), str):
        messages.append({"role": "system", "content": payload["instructions"]})
    items = payload.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        return None
    for item in items:
        if not isinstance(item, dict):
            return None
        kind = item.get("type", "message")
        if kind == "message" and isinstance(item.get("role"), str):
            content = _responses_text(item.get("content"))
            if content is None:
                return None
            messages.append({"role": item["role"], "content": content})
        elif kind == "function_call" and isinstance(item.get("name"), str):
            call = chat_tool_call(item.get("call_id"), item["name"], item.get("arguments"))
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        else:
            return None
    return messages


def _responses_text(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        if texts and all(isinstance(text, str) for text in texts):
            return "".join(text for text in texts if isinstance(text, str))
    return None  # images, files, audio: not text the chat format carries as a string


def chat_tool_call(call_id: object, name: str, arguments: object) -> dict[str, Any]:
    return {
        "id": call_id if isinstance(call_id, str) else None,
        "type": "function",
        "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else ""},
    }


def chat_tools(endpoint: str, payload: object) -> list[Any] | None:
    """The function tools the request offered, in the chat format (the Responses API's flat
    ``{type, name, parameters}`` nested under ``function``); None when it offered none."""
    tools = payload.get("tools") if isinstance(payload, dict) else None
    if not isinstance(tools, list):
        return None
    found = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        if endpoint != "responses":
            found.append(tool)
            continue
        function = {k: v for k, v in tool.items() if k in ("name", "description", "parameters")}
        found.append({"type": "function", "function": function})
    return found or None


def assistant_message(
    text: str | None, tool_calls: Sequence[Mapping[str, Any]] | None, refusal: str | None
) -> dict[str, Any]:
    """The teacher's answer as the assistant turn of a fine-tuning example: its text, its tool
    calls (OpenAI's function-calling format), or its refusal, said as the text."""
    message: dict[str, Any] = {"role": "assistant"}
    if tool_calls:
        if text:
            message["content"] = text
        message["tool_calls"] = [
            chat_tool_call(
                call.get("id") or f"call_{i}", str(call.get("name")), call.get("arguments")
            )
            for i, call in enumerate(tool_calls)
        ]
        return message
    message["content"] = text if text else refusal
    return message


def _content_key(content: object) -> str:
    if isinstance(content, str):
        return normalize_text(content)
    if isinstance(content, list):  # content parts: text normalised, images & co. verbatim
        return " ".join(
            normalize_text(part["text"])
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else orjson.dumps(part, option=orjson.OPT_SORT_KEYS).decode()
            for part in content
        )
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()


def _message_key(message: Mapping[str, Any]) -> str:
    key = f"{message.get('role')}\x1f{_content_key(message.get('content'))}"
    calls = message.get("tool_calls")
    if calls:  # a tool-calling turn is also what it called, with which arguments
        key += "\x1f" + orjson.dumps(calls, option=orjson.OPT_SORT_KEYS).decode()
    return key


def prompt_canonical(messages: Sequence[Mapping[str, Any]], tools: object = None) -> str:
    """The normalised conversation as one string: who said what (and called which tool), case,
    punctuation and spacing aside, and the tools it was offered. Equal strings, equal prompts."""
    canonical = "\x1e".join(_message_key(message) for message in messages)
    if tools:
        canonical += "\x1d" + orjson.dumps(tools, option=orjson.OPT_SORT_KEYS).decode()
    return canonical


def prompt_digest(messages: Sequence[Mapping[str, Any]], tools: object = None) -> bytes:
    """SHA-256 of :func:`prompt_canonical`: a dataset item's ``prompt_key`` is its hex form."""
    return hashlib.sha256(prompt_canonical(messages, tools).encode("utf-8", "replace")).digest()


def short_key(digest: bytes) -> int:
    """A digest's first 64 bits: what the export's dedupe and exclusion sets hold per prompt."""
    return int.from_bytes(digest[:8], "big")


def prompt_key(messages: Sequence[Mapping[str, Any]], tools: object = None) -> int:
    """64 bits of the normalised conversation (:func:`prompt_canonical`)."""
    return short_key(prompt_digest(messages, tools))


def allocate(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` in proportion to ``weights`` by largest remainders (ties by key)."""
    weight_sum = sum(weights.values())
    if weight_sum <= 0:
        return dict.fromkeys(weights, 0)
    exact = {key: total * weight / weight_sum for key, weight in weights.items()}
    quotas = {key: math.floor(value) for key, value in exact.items()}
    by_remainder = sorted(exact, key=lambda key: (quotas[key] - exact[key], key))
    for key in by_remainder[: total - sum(quotas.values())]:
        quotas[key] += 1
    return quotas
