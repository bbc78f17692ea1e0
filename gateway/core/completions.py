"""Reading OpenAI completion bodies: text, usage, token logprobs, and streamed chunks.

Works on parsed JSON (plain dicts) for both endpoints:
``chat`` (``/v1/chat/completions``) and ``text`` (``/v1/completions``).
Malformed or unexpected shapes give ``None``/empty results rather than exceptions, since these
bodies come from upstreams we do not control.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Endpoint = Literal["chat", "text"]
JSON = dict[str, Any]


def _first_choice(body: object) -> JSON | None:
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def response_text(endpoint: Endpoint, body: object) -> str | None:
    """The text of the first choice."""
    choice = _first_choice(body)
    if choice is None:
        return None
    if endpoint == "chat":
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else None


def finish_reason(body: object) -> str | None:
    choice = _first_choice(body)
    reason = choice.get("finish_reason") if choice else None
    return reason if isinstance(reason, str) else None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def usage(body: object) -> Usage:
    raw = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(raw, dict):
        return Usage()

    def count(key: str) -> int | None:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return Usage(count("prompt_tokens"), count("completion_tokens"))


def _float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def token_logprobs(endpoint: Endpoint, body: object) -> list[JSON] | None:
    """The first choice's tokens as ``[{token, logprob, top_logprobs: [{token, logprob}]}]``.

    Chat bodies carry ``logprobs.content`` (already this shape, plus ``bytes``); legacy
    completion bodies carry parallel lists ``tokens``/``token_logprobs``/``top_logprobs``
    (the last a list of ``{token: logprob}`` maps). Both are normalised to one shape.
    """
    choice = _first_choice(body)
    logprobs = choice.get("logprobs") if choice else None
    if not isinstance(logprobs, dict):
        return None
    if endpoint == "chat":
        content = logprobs.get("content")
        if not isinstance(content, list):
            return None
        return [
            {
                "token": item.get("token"),
                "logprob": _float(item.get("logprob")),
                "top_logprobs": [
                    {"token": top.get("token"), "logprob": _float(top.get("logprob"))}
                    for top in item.get("top_logprobs") or []
                    if isinstance(top, dict)
                ],
            }
            for item in content
            if isinstance(item, dict)
        ]
    tokens = logprobs.get("tokens")
    values = logprobs.get("token_logprobs")
    tops = logprobs.get("top_logprobs") or []
    if not isinstance(tokens, list) or not isinstance(values, list):
        return None
    normalised: list[JSON] = []
    for index, (token, value) in enumerate(zip(tokens, values, strict=False)):
        top = tops[index] if index < len(tops) and isinstance(tops[index], dict) else {}
        normalised.append(
            {
                "token": token,
                "logprob": _float(value),
                "top_logprobs": [
                    {"token": name, "logprob": _float(lp)} for name, lp in top.items()
                ],
            }
        )
    return normalised


def strip_logprobs(body: JSON) -> JSON:
    """A shallow copy of ``body`` whose choices carry no ``logprobs`` (stored separately)."""
    choices = body.get("choices")
    if not isinstance(choices, list):
        return body
    stripped = dict(body)
    stripped["choices"] = [
        {key: value for key, value in choice.items() if key != "logprobs"}
        if isinstance(choice, dict)
        else choice
        for choice in choices
    ]
    return stripped


@dataclass
class StreamSummary:
    """What a relayed SSE stream said, rebuilt as one completion object for the log."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    error: JSON | None = None
    chunks: int = 0
    done: bool = False
    body: JSON = field(default_factory=dict)


def summarise_stream(endpoint: Endpoint, raw: bytes) -> StreamSummary:
    """Parse the SSE bytes of a completion stream (``data: {...}`` events, ``data: [DONE]``)."""
    summary = StreamSummary()
    parts: list[str] = []
    first: JSON | None = None
    for line in raw.splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            summary.done = True
            continue
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        summary.chunks += 1
        if isinstance(event.get("error"), dict):
            summary.error = event["error"]
            continue
        first = first or event
        if isinstance(event.get("usage"), dict):
            summary.usage = usage(event)
        choice = _first_choice(event)
        if choice is None or choice.get("index", 0) != 0:
            continue
        if endpoint == "chat":
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else None
        else:
            piece = choice.get("text")
        if isinstance(piece, str):
            parts.append(piece)
        if isinstance(choice.get("finish_reason"), str):
            summary.finish_reason = choice["finish_reason"]
    summary.text = "".join(parts)
    summary.body = _rebuild(endpoint, first, summary)
    return summary


def _rebuild(endpoint: Endpoint, first: JSON | None, summary: StreamSummary) -> JSON:
    head = first or {}
    choice: JSON = {"index": 0, "finish_reason": summary.finish_reason}
    if endpoint == "chat":
        choice["message"] = {"role": "assistant", "content": summary.text}
    else:
        choice["text"] = summary.text
    body: JSON = {
        "id": head.get("id"),
        "object": "chat.completion" if endpoint == "chat" else "text_completion",
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": [choice],
        "stream_chunks": summary.chunks,
    }
    if summary.usage != Usage():
        body["usage"] = {
            "prompt_tokens": summary.usage.prompt_tokens,
            "completion_tokens": summary.usage.completion_tokens,
        }
    return body


def completion_to_sse(endpoint: Endpoint, body: JSON, include_usage: bool) -> bytes:
    """A complete completion, re-emitted as the SSE stream an app asked for.

    Used when the student answers a streamed request: its answer is judged whole, then sent
    as chunk events (the text as one delta), a finishing chunk, the usage chunk if the app
    asked for it, and ``data: [DONE]``, the same shape OpenAI streams.
    """
    head = {
        "id": body.get("id"),
        "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
        "created": body.get("created"),
        "model": body.get("model"),
    }
    events: list[JSON] = []
    choices = body.get("choices") if isinstance(body.get("choices"), list) else []
    for choice in choices or []:
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        if endpoint == "chat":
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            delta = {"role": "assistant", "content": content or ""}
            events.append(
                {**head, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
            )
            events.append(
                {
                    **head,
                    "choices": [
                        {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
                    ],
                }
            )
        else:
            events.append(
                {
                    **head,
                    "choices": [
                        {"index": index, "text": choice.get("text") or "", "finish_reason": None}
                    ],
                }
            )
            events.append(
                {
                    **head,
                    "choices": [
                        {"index": index, "text": "", "finish_reason": choice.get("finish_reason")}
                    ],
                }
            )
    if include_usage and isinstance(body.get("usage"), dict):
        events.append({**head, "choices": [], "usage": body["usage"]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
