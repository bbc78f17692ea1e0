"""A real OpenAI-compatible HTTP server on loopback, with knobs for the tests.

It answers ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/responses`` (plain and
SSE) with text built from the request, token logprobs when asked, and whatever failure the
test sets: latency, an error status (with headers, for the first N requests only if asked),
a hang, a reset connection, garbage, or a stream that breaks off. It can also answer with
tool calls, a refusal, ``n`` choices, a system fingerprint and another model name. The wire
shapes are built in ``tests/support/openai_wire.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support import openai_wire as wire

ToolCalls = list[tuple[str, dict[str, Any]]]


@dataclass
class Behavior:
    latency_s: float = 0.0
    status: int = 200
    error_body: bytes | None = None
    hang: bool = False
    garbage: bool = False
    prefix: str = ""
    # when set, the answer is answer(last message) instead of prefix + last message
    answer: Callable[[str], str] | None = None
    chunk_delay_s: float = 0.0
    linger_s: float = 0.0  # a stream stays open this long after its last event
    # a stream resets after this many token chunks (Responses: ``*.delta`` events)
    break_stream_after: int | None = None
    # when set, the answer is answer_body(whole request body); wins over ``answer``
    answer_body: Callable[[dict[str, Any]], str] | None = None
    # (function name, arguments) pairs, or a function of the request body giving them; used
    # on chat and Responses requests whether or not they carry ``tools``; [] = a text answer
    tool_calls: ToolCalls | Callable[[dict[str, Any]], ToolCalls] | None = None
    tool_call_text: str | None = None  # content text sent beside the tool calls
    refusal: str | None = None  # answer with this refusal (wins over tool_calls)
    system_fingerprint: str | None = None
    reported_model: str | None = None  # the ``model`` answers report (default: the request's)
    error_headers: dict[str, str] = field(default_factory=dict)  # on error answers only
    # when set, ``status`` >= 400 / ``garbage`` hit only the first fail_times requests
    fail_times: int | None = None
    failures: int = field(default=0, init=False)  # failures served under fail_times


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    arrived: float = field(default_factory=time.monotonic)  # time.monotonic() at arrival


def _answer_text(behavior: Behavior, body: dict[str, Any]) -> str:
    if behavior.answer_body:
        return behavior.answer_body(body)
    if "messages" in body:
        content = body["messages"][-1].get("content")
        last = content if isinstance(content, str) else json.dumps(content)
    else:
        prompt = body.get("prompt")
        last = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return behavior.answer(last) if behavior.answer else f"{behavior.prefix}{last}"


def _last_user_input(items: Any) -> str:
    """The text of the last user message of a Responses ``input``."""
    if isinstance(items, str):
        return items
    for item in reversed(items if isinstance(items, list) else []):
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            return content
        return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))
    return json.dumps(items)


def _responses_answer_text(behavior: Behavior, body: dict[str, Any]) -> str:
    if behavior.answer_body:
        return behavior.answer_body(body)
    last = _last_user_input(body.get("input"))
    return behavior.answer(last) if behavior.answer else f"{behavior.prefix}{last}"


def _requested_calls(behavior: Behavior, body: dict[str, Any]) -> ToolCalls:
    calls = behavior.tool_calls
    return list((calls(body) if callable(calls) else calls) or [])


def _choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 1 else 1


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def _chat_logprobs(tokens: list[str], top: int) -> dict[str, Any]:
    content = []
    for i, token in enumerate(tokens):
        logprob = math.log(0.9 - 0.1 * (i % 3))
        alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        alternatives += [
            {"token": f"alt{j}", "logprob": math.log(0.05 / (j + 1)), "bytes": None}
            for j in range(max(top - 1, 0))
        ]
        content.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode()),
                "top_logprobs": alternatives[:top],
            }
        )
    return {"content": content}


class FakeOpenAI:
    def __init__(self, name: str) -> None:
        self.name = name
        self.behavior = Behavior(prefix=f"{name}: ")
        self.received: list[Received] = []
        self.sent: list[bytes] = []  # bodies of complete (non-stream) successful answers
        self.responses: dict[str, dict[str, Any]] = {}  # Responses API answers, by id
        self.in_progress = 0
        self._release = threading.Event()
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._text, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
            ]
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset_behavior(self, **changes: Any) -> None:
        self.behavior = Behavior(prefix=f"{self.name}: ", **changes)

    def release_hangs(self) -> None:
        self._release.set()

    def _id(self, kind: str) -> str:
        return f"{kind}_{next(self._ids)}"

    async def _common(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        arrived = time.monotonic()
        body = json.loads(await request.body())
        self.received.append(Received(request.url.path, body, dict(request.headers), arrived))
        behavior = self.behavior
        self.in_progress += 1
        try:
            if behavior.hang:
                await asyncio.to_thread(self._release.wait)  # released by the test's thread
            if behavior.latency_s:
                await asyncio.sleep(behavior.latency_s)
        finally:
            self.in_progress -= 1
        failing = behavior.garbage or behavior.status >= 400
        if failing and behavior.fail_times is not None:
            failing = behavior.failures < behavior.fail_times
            behavior.failures += failing
        if failing and behavior.garbage:
            return body, Response(b"<html>not json", media_type="text/html")
        if failing:
            error = (
                behavior.error_body
                or json.dumps(
                    {
                        "error": {
                            "message": f"{self.name} failed",
                            "type": "server_error",
                            "param": None,
                            "code": "boom",
                        }
                    }
                ).encode()
            )
            return body, Response(
                error,
                status_code=behavior.status,
                media_type="application/json",
                headers=behavior.error_headers or None,
            )
        return body, None

    def _model(self, body: dict[str, Any]) -> dict[str, Any]:
        """The ``model`` (and ``system_fingerprint``) fields of an answer."""
        fields: dict[str, Any] = {"model": self.behavior.reported_model or body["model"]}
        if self.behavior.system_fingerprint is not None:
            fields["system_fingerprint"] = self.behavior.system_fingerprint
        return fields

    def _chat_choices(self, body: dict[str, Any]) -> list[wire.ChatChoice]:
        behavior = self.behavior
        logprobs, top = bool(body.get("logprobs")), body.get("top_logprobs") or 0
        calls = _requested_calls(behavior, body)
        text = _answer_text(behavior, body)
        choices = []
        for k in range(_choices(body)):
            if behavior.refusal is not None:
                tokens = _tokens(behavior.refusal)
                entries = _chat_logprobs(tokens, top)["content"] if logprobs else None
                choice = wire.ChatChoice(
                    k,
                    None,
                    [],
                    refusal=behavior.refusal,
                    refusal_tokens=tokens,
                    logprobs={"content": None, "refusal": entries} if logprobs else None,
                )
            elif calls:
                tool_calls = [
                    wire.ToolCall(self._id("call"), name, json.dumps(arguments))
                    for name, arguments in calls
                ]
                content = behavior.tool_call_text or None
                tokens = _tokens(content) if content else []
                pieces = [piece for call in tool_calls for piece in call.pieces]
                lp = _chat_logprobs(tokens + pieces, top) if logprobs else None
                choice = wire.ChatChoice(k, content, tokens, calls=tool_calls, logprobs=lp)
            else:
                own = text if k == 0 else f"{text} (choice {k})"
                tokens = _tokens(own)
                lp = _chat_logprobs(tokens, top) if logprobs else None
                choice = wire.ChatChoice(k, own, tokens, logprobs=lp)
            choices.append(choice)
        return choices

    async def _chat(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return early
        choices = self._chat_choices(body)
        completion_tokens = sum(choice.completion_tokens for choice in choices)
        if body.get("stream"):
            head = {
                "id": f"chatcmpl-{self.name}",
                "created": int(time.time()),
                **self._model(body),
                "object": "chat.completion.chunk",
            }
            deltas = wire.interleave([choice.stream_deltas() for choice in choices])
            finishing = [choice.finishing_chunk_entry() for choice in choices]
            return self._stream(body, head, deltas, finishing, completion_tokens)
        return self._json(
            {
                "id": f"chatcmpl-{self.name}",
                "object": "chat.completion",
                "created": int(time.time()),
                **self._model(body),
                "choices": [choice.body() for choice in choices],
                "usage": wire.usage(7, completion_tokens),
            }
        )

    async def _text(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return early
        text = _answer_text(self.behavior, body)
        texts = [text if k == 0 else f"{text} (choice {k})" for k in range(_choices(body))]
        tokens = [_tokens(own) for own in texts]
        completion_tokens = sum(len(own) for own in tokens)
        logprobs = bool(body.get("logprobs"))
        if body.get("stream"):
            head = {
                "id": f"chatcmpl-{self.name}",
                "created": int(time.time()),
                **self._model(body),
                "object": "text_completion",
            }
            deltas = wire.interleave(
                [wire.text_stream_entries(k, own, logprobs) for k, own in enumerate(tokens)]
            )
            finishing = [
                {"index": k, "text": "", "finish_reason": "stop"} for k in range(len(texts))
            ]
            return self._stream(body, head, deltas, finishing, completion_tokens)
        return self._json(
            {
                "id": f"cmpl-{self.name}",
                "object": "text_completion",
                "created": int(time.time()),
                **self._model(body),
                "choices": [
                    wire.text_choice(k, own, tokens[k], logprobs) for k, own in enumerate(texts)
                ],
                "usage": wire.usage(3, completion_tokens),
            }
        )

    def _response_items(self, body: dict[str, Any]) -> list[wire.OutputItem]:
        behavior = self.behavior
        if behavior.refusal is not None:
            tokens = _tokens(behavior.refusal)
            return [wire.MessageItem(self._id("msg"), None, behavior.refusal, tokens)]
        calls = _requested_calls(behavior, body)
        text = (
            (behavior.tool_call_text or None) if calls else _responses_answer_text(behavior, body)
        )
        items: list[wire.OutputItem] = []
        if text is not None:
            tokens = _tokens(text)
            logprobs = None
            if "message.output_text.logprobs" in (body.get("include") or []):
                entries = _chat_logprobs(tokens, body.get("top_logprobs") or 0)["content"]
                logprobs = wire.responses_logprobs(entries)
            items.append(wire.MessageItem(self._id("msg"), text, None, tokens, logprobs))
        for name, arguments in calls:
            n = next(self._ids)
            items.append(wire.FunctionCallItem(f"fc_{n}", f"call_{n}", name, json.dumps(arguments)))
        return items

    async def _responses(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return early
        response_id = self._id("resp")
        items = self._response_items(body)
        fields: dict[str, Any] = {
            "response_id": response_id,
            "created_at": int(time.time()),
            "model": self.behavior.reported_model or body.get("model", ""),
            "body": body,
            "items": items,
        }
        finished = wire.response_object(**fields, done=True)
        self.responses[finished["id"]] = finished
        if not body.get("stream"):
            return self._json(finished)
        events = wire.response_events(wire.response_object(**fields, done=False), finished, items)
        frames = [(wire.sse_event(event), event["type"].endswith(".delta")) for event in events]
        return self._frames(frames)

    def _json(self, payload: dict[str, Any]) -> Response:
        # Odd spacing on purpose: the gateway must relay these bytes, not re-serialise them.
        raw = json.dumps(payload, indent=1).encode()
        self.sent.append(raw)
        return Response(raw, media_type="application/json")

    def _stream(
        self,
        body: dict[str, Any],
        head: dict[str, Any],
        deltas: list[dict[str, Any]],
        finishing: list[dict[str, Any]],
        completion_tokens: int,
    ) -> StreamingResponse:
        """A chat/text stream: one chunk per choice entry, then the finishing ones."""
        frames = [(wire.sse({**head, "choices": [entry]}), True) for entry in deltas]
        frames += [(wire.sse({**head, "choices": [entry]}), False) for entry in finishing]
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = wire.usage(7, completion_tokens)
            frames.append((wire.sse({**head, "choices": [], "usage": usage}), False))
        frames.append((wire.DONE, False))
        return self._frames(frames)

    def _frames(self, frames: list[tuple[bytes, bool]]) -> StreamingResponse:
        """SSE frames; those marked True are token frames (break_stream_after, chunk_delay_s)."""
        behavior = self.behavior

        async def events() -> AsyncIterator[bytes]:
            sent = 0
            for frame, counts in frames:
                limit = behavior.break_stream_after
                if counts and limit is not None and sent >= limit:
                    raise ConnectionResetError("stream broken by test")
                yield frame
                if counts:
                    sent += 1
                    if behavior.chunk_delay_s:
                        await asyncio.sleep(behavior.chunk_delay_s)
            if behavior.linger_s:
                await asyncio.sleep(behavior.linger_s)

        return StreamingResponse(events(), media_type="text/event-stream")

    def start(self) -> FakeOpenAI:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name=self.name)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake upstream {self.name} did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


class ResettingServer:
    """An upstream that reads the request, then resets the connection (RST, no answer)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.resets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="resetting")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._sock.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                with contextlib.suppress(OSError):
                    connection.recv(65536)
                # Linger 0: close() sends RST instead of FIN.
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.resets += 1

    def start(self) -> ResettingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
