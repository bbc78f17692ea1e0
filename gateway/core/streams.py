"""Streamed answers read back: SSE reassembly.

:func:`summarise_stream` turns the SSE bytes of a relayed stream back into the answer the same
request would have got unstreamed, in exactly that endpoint's shape (every choice, tool calls,
refusal, logprobs, finish reasons, usage, model, ``system_fingerprint``), so the body readers of
:mod:`gateway.core.completions` and :mod:`gateway.core.outputs` work on both.
:func:`gateway.core.synthesis.answer_to_sse` is the inverse.

Contract: pure; :func:`summarise_stream` never raises, whatever the bytes (garbage lines and
events are skipped; a stream cut short gives what arrived).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.core.outputs import JSON, Endpoint, as_dict, as_int, as_list, as_str

_DONE = "[DONE]"


@dataclass
class StreamSummary:
    """A relayed stream, rebuilt: ``body`` in the non-streamed shape (None when no usable event
    arrived; chat and text bodies also carry ``stream_chunks``), the in-band ``error`` if one
    came, the number of JSON events, and whether the stream ended properly (``[DONE]``, or a
    Responses terminal event)."""

    body: JSON | None
    error: JSON | None = None
    chunks: int = 0
    done: bool = False


def _parse(data: bytes) -> object:
    if data.strip() == b"[DONE]":
        return _DONE
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _events(raw: bytes) -> Iterator[tuple[str | None, object]]:
    """``(event name, parsed data)`` per SSE event; ``data: [DONE]`` parses to ``_DONE``."""
    name: str | None = None
    data: list[bytes] = []
    for line in [*raw.splitlines(), b""]:
        if line:
            key, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if key == b"data":
                data.append(value)
            elif key == b"event":
                name = value.decode("utf-8", "replace").strip()
            continue
        if data:
            # One event is one JSON document, possibly over several ``data:`` lines; a stream
            # that left out the blank lines between events has one document a line instead.
            joined = _parse(b"\n".join(data))
            payloads: Iterable[object] = (
                [joined] if joined is not None or len(data) == 1 else map(_parse, data)
            )
            yield from ((name, payload) for payload in payloads if payload is not None)
        name, data = None, []


# ---------------------------------------------------------------- chat and text completions


@dataclass
class _Call:
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)

    def merge(self, delta: JSON) -> None:
        # OpenAI sends id, type and name once, on a call's first fragment; keep the first.
        function = as_dict(delta.get("function")) or delta
        self.id = self.id or as_str(delta.get("id"))
        self.type = self.type or as_str(delta.get("type"))
        self.name = self.name or as_str(function.get("name"))
        if isinstance(function.get("arguments"), str):
            self.arguments.append(function["arguments"])

    def function(self) -> JSON:
        return {"name": self.name or "", "arguments": "".join(self.arguments)}


@dataclass
class _Choice:
    role: str = "assistant"
    # text pieces by field ("content", "refusal"; "text"): a key once a delta had a string
    pieces: dict[str, list[str]] = field(default_factory=dict)
    calls: dict[int, _Call] = field(default_factory=dict)
    function_call: _Call | None = None
    logprobs: dict[str, list[Any] | None] | None = None  # set once a chunk had logprobs
    finish_reason: str | None = None

    def add_piece(self, key: str, piece: object) -> None:
        if isinstance(piece, str):
            self.pieces.setdefault(key, []).append(piece)

    def text(self, key: str) -> str | None:
        return "".join(self.pieces[key]) if key in self.pieces else None

    def add_call(self, delta: JSON) -> None:
        index = as_int(delta.get("index"))
        if index is None:  # servers that omit the index send each call whole, with its id
            call_id = as_str(delta.get("id"))
            same = [i for i, call in self.calls.items() if call_id and call.id == call_id]
            fresh = call_id is not None or not self.calls  # else: more of the last call
            index = same[0] if same else max(self.calls, default=-1) + int(fresh)
        self.calls.setdefault(index, _Call()).merge(delta)

    def add_logprobs(self, raw: JSON, keys: tuple[str, ...]) -> None:
        if self.logprobs is None:
            self.logprobs = dict.fromkeys(keys)
        for key in keys:
            if isinstance(raw.get(key), list):
                merged = self.logprobs[key]
                if merged is None:
                    self.logprobs[key] = merged = []
                merged.extend(raw[key])


_CHAT_LOGPROBS = ("content", "refusal")
_TEXT_LOGPROBS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


class _Completions:
    """Chunks of ``/v1/chat/completions`` or ``/v1/completions``, merged per choice index."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.chat = endpoint == "chat"
        self.head: JSON = {}
        self.choices: dict[int, _Choice] = {}
        self.error: JSON | None = None
        self.usable = False

    def add(self, event: JSON) -> None:
        if isinstance(event.get("error"), dict):
            self.error = event["error"]
            return
        self.usable = True
        for key in ("id", "created"):
            if self.head.get(key) is None:
                self.head[key] = event.get(key)
        for key in ("model", "system_fingerprint", "service_tier", "usage"):
            if event.get(key) is not None:
                self.head[key] = event[key]
        for raw in as_list(event.get("choices")):
            if isinstance(raw, dict):
                choice = self.choices.setdefault(as_int(raw.get("index")) or 0, _Choice())
                self._add_choice(choice, raw)

    def _add_choice(self, choice: _Choice, raw: JSON) -> None:
        if isinstance(raw.get("finish_reason"), str):
            choice.finish_reason = raw["finish_reason"]
        if isinstance(raw.get("logprobs"), dict):
            choice.add_logprobs(raw["logprobs"], _CHAT_LOGPROBS if self.chat else _TEXT_LOGPROBS)
        if not self.chat:
            choice.add_piece("text", raw.get("text"))
            return
        delta = as_dict(raw.get("delta"))
        choice.role = as_str(delta.get("role")) or choice.role
        choice.add_piece("content", delta.get("content"))
        choice.add_piece("refusal", delta.get("refusal"))
        for call in as_list(delta.get("tool_calls")):
            if isinstance(call, dict):
                choice.add_call(call)
        if isinstance(delta.get("function_call"), dict):  # the pre-tools single call
            choice.function_call = choice.function_call or _Call()
            choice.function_call.merge(delta["function_call"])

    def body(self, chunks: int) -> JSON | None:
        if not self.usable:
            return None
        body: JSON = {
            "id": self.head.get("id"),
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            "choices": [self._choice(i, self.choices[i]) for i in sorted(self.choices)],
        }
        for key in ("system_fingerprint", "service_tier", "usage"):
            if key in self.head:
                body[key] = self.head[key]
        body["stream_chunks"] = chunks
        return body

    def _choice(self, index: int, choice: _Choice) -> JSON:
        rebuilt: JSON = {"index": index}
        if self.chat:
            message: JSON = {"role": choice.role, "content": choice.text("content")}
            if "refusal" in choice.pieces:
                message["refusal"] = choice.text("refusal")
            if choice.calls:
                message["tool_calls"] = [
                    {"id": call.id, "type": call.type or "function", "function": call.function()}
                    for _, call in sorted(choice.calls.items())
                ]
            if choice.function_call is not None:
                message["function_call"] = choice.function_call.function()
            rebuilt["message"] = message
        else:
            rebuilt["text"] = choice.text("text") or ""
        if choice.logprobs is not None:
            rebuilt["logprobs"] = choice.logprobs
        rebuilt["finish_reason"] = choice.finish_reason
        return rebuilt


# ---------------------------------------------------------------- Responses API

_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_SNAPSHOTS = ("response.created", "response.in_progress", "response.queued")
# Events that write a content part: the part's type, and the .done event's whole-text field.
_WRITES = {
    "response.output_text.delta": ("output_text", None),
    "response.output_text.done": ("output_text", "text"),
    "response.refusal.delta": ("refusal", None),
    "response.refusal.done": ("refusal", "refusal"),
}
_Slot = tuple[int, int]  # (output_index, content_index)


class _Responses:
    """Typed events of ``/v1/responses``: the terminal event's response, or a rebuild."""

    def __init__(self) -> None:
        self.snapshot: JSON | None = None
        self.terminal: JSON | None = None
        self.error: JSON | None = None
        self.added: dict[int, JSON] = {}
        self.finished: dict[int, JSON] = {}
        self.arguments: dict[int, list[str]] = {}
        self.parts: dict[_Slot, JSON] = {}  # as added (or as a delta implied them)
        self.finished_parts: dict[_Slot, JSON] = {}
        self.texts: dict[_Slot, list[str]] = {}  # a part's text or refusal, in pieces
        self.logprobs: dict[_Slot, list[Any]] = {}

    def add(self, name: str | None, event: JSON) -> bool:
        """Take one event; True when it ended the response."""
        kind = as_str(event.get("type")) or name
        response = event.get("response")
        if kind in _TERMINAL and isinstance(response, dict):
            self.terminal = response
            if kind == "response.failed" and isinstance(response.get("error"), dict):
                self.error = response["error"]
            return True
        if kind in _SNAPSHOTS and isinstance(response, dict):
            self.snapshot = response
        elif kind == "error":
            drop = ("type", "sequence_number")
            self.error = {key: value for key, value in event.items() if key not in drop}
        elif kind is None and isinstance(event.get("error"), dict):  # a chat-style error
            self.error = event["error"]
        elif kind is not None and as_int(event.get("output_index")) is not None:
            self._add_item_event(kind, event["output_index"], event)
        return False

    def _add_item_event(self, kind: str, output: int, event: JSON) -> None:
        item, delta, arguments = (
            event.get("item"),
            as_str(event.get("delta")),
            event.get("arguments"),
        )
        if kind == "response.output_item.added" and isinstance(item, dict):
            self.added[output] = item
        elif kind == "response.output_item.done" and isinstance(item, dict):
            self.finished[output] = item
        elif kind == "response.function_call_arguments.delta" and delta is not None:
            self.arguments.setdefault(output, []).append(delta)
        elif kind == "response.function_call_arguments.done" and isinstance(arguments, str):
            self.arguments[output] = [arguments]
        content = as_int(event.get("content_index"))
        if content is None:
            return
        slot, part = (output, content), event.get("part")
        if kind == "response.content_part.added" and isinstance(part, dict):
            self.parts[slot] = part
        elif kind == "response.content_part.done" and isinstance(part, dict):
            self.finished_parts[slot] = part
        elif kind in _WRITES:
            part_type, whole_field = _WRITES[kind]
            self.parts.setdefault(slot, {"type": part_type})
            whole = event.get(whole_field) if whole_field else None
            if isinstance(whole, str):
                self.texts[slot] = [whole]
            elif delta is not None:
                self.texts.setdefault(slot, []).append(delta)
                self.logprobs.setdefault(slot, []).extend(as_list(event.get("logprobs")))

    def body(self) -> JSON | None:
        if self.terminal is not None:
            if isinstance(self.terminal.get("output"), list):
                return self.terminal
            # Lifecycle events may leave ``output`` out; the finished items are the output.
            return {**self.terminal, "output": self._items()}
        if self.snapshot is None and not self.added and not self.finished:
            return None
        return {**(self.snapshot or {}), "output": self._items()}

    def _items(self) -> list[JSON]:
        indexes = sorted(self.added.keys() | self.finished.keys())
        return [self.finished[i] if i in self.finished else self._unfinished(i) for i in indexes]

    def _unfinished(self, output: int) -> JSON:
        """An item the stream broke off in: what its deltas said so far."""
        item = self.added[output]
        if item.get("type") == "function_call" and output in self.arguments:
            return {**item, "arguments": "".join(self.arguments[output])}
        if item.get("type") != "message":
            return item
        parts: dict[int, Any] = dict(enumerate(as_list(item.get("content"))))
        parts.update(
            {slot[1]: part for slot, part in self.finished_parts.items() if slot[0] == output}
        )
        for slot in sorted(self.parts.keys() - self.finished_parts.keys()):
            if slot[0] == output:
                part = {**self.parts[slot]}
                text_field = "refusal" if part.get("type") == "refusal" else "text"
                part[text_field] = "".join(self.texts.get(slot, ()))
                if self.logprobs.get(slot):
                    part["logprobs"] = self.logprobs[slot]
                parts[slot[1]] = part
        return {**item, "content": [parts[i] for i in sorted(parts)]}


def summarise_stream(endpoint: Endpoint, raw: bytes) -> StreamSummary:
    """Rebuild the answer a relayed SSE stream carried (see the module docstring)."""
    chunks, done = 0, False
    completions = _Completions(endpoint)
    responses = _Responses()
    for name, event in _events(raw):
        if event == _DONE:
            done = True
        elif isinstance(event, dict):
            chunks += 1
            if endpoint != "responses":
                completions.add(event)
            elif responses.add(name, event):
                done = True
    if endpoint == "responses":
        return StreamSummary(responses.body(), responses.error, chunks, done)
    return StreamSummary(completions.body(chunks), completions.error, chunks, done)
