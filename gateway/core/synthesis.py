"""Streamed answers written out: a whole answer re-emitted as the SSE stream an app asked for.

Used when the student's answer, judged whole, is served to a streaming app: the events have
the shapes OpenAI's own SDK parses (its chunk accumulator and Responses stream state accept
them), and :func:`gateway.core.streams.summarise_stream` reads them back into the same answer.

Contract: pure; the answer given is never mutated.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from gateway.core.outputs import JSON, Endpoint, as_dict, as_int, as_list, as_str


def _choices(body: JSON) -> Iterator[tuple[int, JSON]]:
    for position, choice in enumerate(as_list(body.get("choices"))):
        if isinstance(choice, dict):
            index = as_int(choice.get("index"))
            yield (position if index is None else index), choice


def _chat_chunks(head: JSON, body: JSON) -> Iterator[JSON]:
    """Per choice, in OpenAI's order: an opening delta (role, empty content), the content, the
    refusal, one chunk per tool call, then the finish reason."""

    def chunk(index: int, delta: JSON, finish: object = None, logprobs: object = None) -> JSON:
        streamed: JSON = {"index": index, "delta": delta}
        if isinstance(logprobs, dict):
            streamed["logprobs"] = logprobs
        return {**head, "choices": [{**streamed, "finish_reason": finish}]}

    for index, choice in _choices(body):
        message, sent = as_dict(choice.get("message")), choice.get("logprobs")
        logprobs = as_dict(sent)
        calls = [call for call in as_list(message.get("tool_calls")) if isinstance(call, dict)]
        legacy, refusal = message.get("function_call"), as_str(message.get("refusal"))
        content = as_str(message.get("content"))
        texts = {"content": content or None, "refusal": refusal}
        # OpenAI opens with null content only beside calls and refusals, and with empty
        # logprobs: the SDK's accumulator counts the opening logprobs of a later choice twice.
        acted = calls or isinstance(legacy, dict) or refusal is not None
        opened = content is not None or not acted
        first = {"role": message.get("role") or "assistant", "content": "" if opened else None}
        opening = {
            key: [] if isinstance(value, list) and texts.get(key) is not None else value
            for key, value in logprobs.items()
        }
        yield chunk(index, first, logprobs=opening if isinstance(sent, dict) else None)
        for key, text in texts.items():
            if text is not None:
                own = {name: value if name == key else None for name, value in logprobs.items()}
                yield chunk(index, {key: text}, logprobs=own or None)
        for number, call in enumerate(calls):
            function = as_dict(call.get("function"))
            streamed = {
                "index": number,
                "id": call.get("id"),
                "type": call.get("type") or "function",
                "function": {
                    "name": function.get("name"),
                    "arguments": as_str(function.get("arguments")) or "",
                },
            }
            yield chunk(index, {"tool_calls": [streamed]})
        if isinstance(legacy, dict):
            yield chunk(index, {"function_call": legacy})
        yield chunk(index, {}, choice.get("finish_reason"))


def _text_chunks(head: JSON, body: JSON) -> Iterator[JSON]:
    for index, choice in _choices(body):
        text, logprobs = as_str(choice.get("text")) or "", choice.get("logprobs")
        yield {**head, "choices": [_text_choice(index, text, logprobs, None)]}
        yield {**head, "choices": [_text_choice(index, "", None, choice.get("finish_reason"))]}


def _text_choice(index: int, text: str, logprobs: object, finish: object) -> JSON:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def _completions_sse(endpoint: Endpoint, body: JSON, include_usage: bool) -> bytes:
    head: JSON = {
        "id": body.get("id"),
        "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
        "created": body.get("created"),
        "model": body.get("model"),
    }
    for key in ("system_fingerprint", "service_tier"):
        if body.get(key) is not None:
            head[key] = body[key]
    chunks = list(_chat_chunks(head, body) if endpoint == "chat" else _text_chunks(head, body))
    if include_usage and isinstance(body.get("usage"), dict):
        # As OpenAI does: the usage rides alone on a last chunk with no choices.
        chunks.append({**head, "choices": [], "usage": body["usage"]})
    events = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks)
    return events + b"data: [DONE]\n\n"


def _item_events(output: int, item: JSON) -> Iterator[tuple[str, JSON]]:
    """The events that write one output item, between its ``added`` and ``done``."""
    item_id = as_str(item.get("id"))
    if item.get("type") == "function_call":
        where = {"item_id": item_id or as_str(item.get("call_id")) or "", "output_index": output}
        arguments = as_str(item.get("arguments")) or ""
        name = {"name": item["name"]} if isinstance(item.get("name"), str) else {}
        yield "response.function_call_arguments.delta", {**where, "delta": arguments}
        yield "response.function_call_arguments.done", {**where, "arguments": arguments, **name}
        return
    if item.get("type") != "message":
        return
    for number, part in enumerate(as_list(item.get("content"))):
        if not isinstance(part, dict):
            continue
        where = {"item_id": item_id or "", "output_index": output, "content_index": number}
        if part.get("type") == "output_text":
            text, logprobs = as_str(part.get("text")) or "", as_list(part.get("logprobs"))
            empty = {**part, "text": "", "annotations": []}
            if "logprobs" in part:
                empty["logprobs"] = []
            yield "response.content_part.added", {**where, "part": empty}
            yield "response.output_text.delta", {**where, "delta": text, "logprobs": logprobs}
            yield "response.output_text.done", {**where, "text": text, "logprobs": logprobs}
        elif part.get("type") == "refusal":
            refusal = as_str(part.get("refusal")) or ""
            yield "response.content_part.added", {**where, "part": {**part, "refusal": ""}}
            yield "response.refusal.delta", {**where, "delta": refusal}
            yield "response.refusal.done", {**where, "refusal": refusal}
        else:
            yield "response.content_part.added", {**where, "part": part}
        yield "response.content_part.done", {**where, "part": part}


_ENDINGS = {"incomplete": "response.incomplete", "failed": "response.failed"}
# What ``response.output_item.added`` shows of an item: nothing written yet.
_UNWRITTEN: dict[object, JSON] = {"message": {"content": []}, "function_call": {"arguments": ""}}


def _responses_events(body: JSON) -> Iterator[tuple[str, JSON]]:
    started = {**body, "status": "in_progress", "output": []}
    for key in ("usage", "completed_at", "incomplete_details", "error"):
        if key in body:
            started[key] = None
    yield "response.created", {"response": started}
    yield "response.in_progress", {"response": started}
    for output, item in enumerate(as_list(body.get("output"))):
        if isinstance(item, dict):
            unwritten = _UNWRITTEN.get(item.get("type"))
            added = {**item, "status": "in_progress", **unwritten} if unwritten else item
            yield "response.output_item.added", {"output_index": output, "item": added}
            yield from _item_events(output, item)
            yield "response.output_item.done", {"output_index": output, "item": item}
    yield _ENDINGS.get(str(body.get("status")), "response.completed"), {"response": body}


def answer_to_sse(endpoint: Endpoint, body: JSON, *, include_usage: bool) -> bytes:
    """A whole answer re-emitted as the SSE stream an app asked for.

    Used when the student's answer, judged whole, is served to a streaming app. Chat and text
    end with ``data: [DONE]`` (after a usage chunk when ``include_usage``); Responses are typed
    events (``event:`` lines, ``sequence_number`` from 0) ending with the terminal event that
    matches the body's status (``response.completed`` unless incomplete or failed), and no
    ``[DONE]``, as OpenAI sends them; their usage is inside the response, so always sent.
    """
    if endpoint != "responses":
        return _completions_sse(endpoint, body, include_usage)
    return b"".join(
        b"event: %s\ndata: %s\n\n"
        % (kind.encode(), orjson.dumps({"type": kind, **fields, "sequence_number": number}))
        for number, (kind, fields) in enumerate(_responses_events(body))
    )
