"""Reading OpenAI answer bodies: finish reason, usage, token logprobs, and logprob trimming.

Works on parsed JSON (plain dicts) for three endpoints: ``chat`` (``/v1/chat/completions``),
``text`` (``/v1/completions``) and ``responses`` (``/v1/responses``). What the answer *said*
(text, tool calls, refusal) is read by :func:`gateway.core.outputs.answer_output`; streamed
answers are first rebuilt into these same shapes by :mod:`gateway.core.streams`.

Contract: malformed or unexpected shapes give ``None``/empty results rather than exceptions,
since these bodies come from upstreams we do not control; functions returning a body return a
new one and never mutate their argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.outputs import JSON, Endpoint, as_list, first_choice


def _output_items(body: object) -> list[Any]:
    return as_list(body.get("output")) if isinstance(body, dict) else []


def _output_text_parts(body: object) -> list[JSON]:
    """The ``output_text`` parts of a Responses body's ``message`` items, in order."""
    return [
        part
        for item in _output_items(body)
        if isinstance(item, dict) and item.get("type") == "message"
        for part in as_list(item.get("content"))
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]


# Responses has no finish reason, only a status (and why it stopped early); logged in chat's
# vocabulary so one column compares teacher and student whatever the endpoint.
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def finish_reason(endpoint: Endpoint, body: object) -> str | None:
    """Why the answer ended: choice 0's ``finish_reason``, or a Responses status mapped to it."""
    if endpoint != "responses":
        choice = first_choice(body)
        reason = choice.get("finish_reason") if choice else None
        return reason if isinstance(reason, str) else None
    if not isinstance(body, dict):
        return None
    status = body.get("status")
    if status == "completed":
        called = any(
            isinstance(item, dict) and item.get("type") == "function_call"
            for item in _output_items(body)
        )
        return "tool_calls" if called else "stop"
    if status == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return _INCOMPLETE_REASONS.get(reason, reason) if isinstance(reason, str) else None
    if status == "failed":
        return "error"
    return None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def usage(endpoint: Endpoint, body: object) -> Usage:
    """Token counts; Responses calls them ``input_tokens``/``output_tokens``."""
    raw = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(raw, dict):
        return Usage()

    def count(key: str) -> int | None:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    if endpoint == "responses":
        return Usage(count("input_tokens"), count("output_tokens"))
    return Usage(count("prompt_tokens"), count("completion_tokens"))


def _float(value: object) -> float | None:
    if type(value) is float:  # what JSON's numbers almost always are: checked first
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _normalise(items: list[Any]) -> list[JSON]:
    """Chat-shaped token entries (``token``, ``logprob``, ``bytes``, ``top_logprobs``)."""
    return [
        {
            "token": item.get("token"),
            "logprob": _float(item.get("logprob")),
            "top_logprobs": [
                {"token": top.get("token"), "logprob": _float(top.get("logprob"))}
                for top in (item.get("top_logprobs") or [])
                if isinstance(top, dict)
            ],
        }
        for item in items
        if isinstance(item, dict)
    ]


def token_logprobs(endpoint: Endpoint, body: object) -> list[JSON] | None:
    """The answer's tokens as ``[{token, logprob, top_logprobs: [{token, logprob}]}]``.

    Chat bodies carry ``logprobs.content`` (this shape plus ``bytes``; ``logprobs.refusal`` when
    the model refused); Responses bodies carry the same shape per ``output_text`` part; legacy
    completion bodies carry parallel lists ``tokens``/``token_logprobs``/``top_logprobs`` (the
    last a list of ``{token: logprob}`` maps). All are normalised to one shape.
    """
    if endpoint == "responses":
        entries = [
            entry
            for part in _output_text_parts(body)
            if isinstance(part.get("logprobs"), list)
            for entry in part["logprobs"]
        ]
        return _normalise(entries) or None
    choice = first_choice(body)
    logprobs = choice.get("logprobs") if choice else None
    if not isinstance(logprobs, dict):
        return None
    if endpoint == "chat":
        content = logprobs.get("content")
        if content is None and isinstance(logprobs.get("refusal"), list):
            content = logprobs["refusal"]
        return _normalise(content) if isinstance(content, list) else None
    tokens = logprobs.get("tokens")
    values = logprobs.get("token_logprobs")
    tops = logprobs.get("top_logprobs") or []
    if not isinstance(tokens, list) or not isinstance(values, list) or not isinstance(tops, list):
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


def _map_choices(body: JSON, change: Callable[[JSON], JSON]) -> JSON:
    choices = body.get("choices")
    if not isinstance(choices, list):
        return body
    return {
        **body,
        "choices": [change(choice) if isinstance(choice, dict) else choice for choice in choices],
    }


def _map_output_text(body: JSON, change: Callable[[JSON], JSON]) -> JSON:
    """A copy of a Responses body with ``change`` applied to every ``output_text`` part."""
    items = body.get("output")
    if not isinstance(items, list):
        return body

    def item_copy(item: object) -> object:
        if not isinstance(item, dict) or item.get("type") != "message":
            return item
        content = item.get("content")
        if not isinstance(content, list):
            return item
        return {
            **item,
            "content": [
                change(part)
                if isinstance(part, dict) and part.get("type") == "output_text"
                else part
                for part in content
            ],
        }

    return {**body, "output": [item_copy(item) for item in items]}


def strip_logprobs(endpoint: Endpoint, body: JSON) -> JSON:
    """A copy of ``body`` with no token logprobs (they are stored separately).

    Responses keep their top-level ``top_logprobs``: that is the request's setting, not data.
    """
    if endpoint == "responses":
        return _map_output_text(
            body, lambda part: {k: v for k, v in part.items() if k != "logprobs"}
        )
    return _map_choices(body, lambda choice: {k: v for k, v in choice.items() if k != "logprobs"})


def _trim(tokens: object, top: int) -> object:
    if not isinstance(tokens, list):
        return tokens
    return [
        {**token, "top_logprobs": token["top_logprobs"][:top]}
        if isinstance(token, dict) and isinstance(token.get("top_logprobs"), list)
        else token
        for token in tokens
    ]


def keep_top_logprobs(endpoint: Endpoint, body: JSON, top: int) -> JSON:
    """``body`` with at most ``top`` alternatives a token, as many as the app asked for.

    The student is asked for its configured ``top_logprobs`` (the margin method needs them);
    an app that asked for fewer (none, by default) must not get the gateway's extra ones.
    Legacy completions are returned as they are: their ``logprobs`` is a count the app's own
    request set, so the upstream already sent what it asked for.
    """
    top = max(top, 0)
    if endpoint == "text":
        return body
    if endpoint == "responses":

        def trim_part(part: JSON) -> JSON:
            if not isinstance(part.get("logprobs"), list):
                return part
            return {**part, "logprobs": _trim(part["logprobs"], top)}

        return _map_output_text(body, trim_part)

    def trim_choice(choice: JSON) -> JSON:
        logprobs = choice.get("logprobs")
        if not isinstance(logprobs, dict):
            return choice
        kept = {
            key: _trim(value, top) if key in ("content", "refusal") else value
            for key, value in logprobs.items()
        }
        return {**choice, "logprobs": kept}

    return _map_choices(body, trim_choice)
