"""A real OpenAI-compatible HTTP server on loopback, with knobs for the tests.

It answers ``/v1/chat/completions`` and ``/v1/completions`` (plain and SSE) with text built
from the request, token logprobs when asked, and whatever failure the test sets: latency,
an error status, a hang, a reset connection, garbage, or a stream that breaks off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


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
    break_stream_after: int | None = None


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


def _answer_text(behavior: Behavior, body: dict[str, Any]) -> str:
    if "messages" in body:
        content = body["messages"][-1].get("content")
        last = content if isinstance(content, str) else json.dumps(content)
    else:
        prompt = body.get("prompt")
        last = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return behavior.answer(last) if behavior.answer else f"{behavior.prefix}{last}"


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
        self.in_progress = 0
        self._release = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._text, methods=["POST"]),
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

    async def _common(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        body = json.loads(await request.body())
        self.received.append(Received(request.url.path, body, dict(request.headers)))
        behavior = self.behavior
        self.in_progress += 1
        try:
            if behavior.hang:
                await asyncio.to_thread(self._release.wait)  # released by the test's thread
            if behavior.latency_s:
                await asyncio.sleep(behavior.latency_s)
        finally:
            self.in_progress -= 1
        if behavior.garbage:
            return body, Response(b"<html>not json", media_type="text/html")
        if behavior.status >= 400:
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
            return body, Response(error, status_code=behavior.status, media_type="application/json")
        return body, None

    async def _chat(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return early
        text = _answer_text(self.behavior, body)
        tokens = _tokens(text)
        if body.get("stream"):
            return self._stream(body, tokens, chat=True)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        if body.get("logprobs"):
            choice["logprobs"] = _chat_logprobs(tokens, body.get("top_logprobs") or 0)
        return self._json(
            {
                "id": f"chatcmpl-{self.name}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [choice],
                "usage": {
                    "prompt_tokens": 7,
                    "completion_tokens": len(tokens),
                    "total_tokens": 7 + len(tokens),
                },
            }
        )

    async def _text(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return early
        text = _answer_text(self.behavior, body)
        tokens = _tokens(text)
        if body.get("stream"):
            return self._stream(body, tokens, chat=False)
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop"}
        if body.get("logprobs"):
            values = [math.log(0.8)] * len(tokens)
            choice["logprobs"] = {
                "tokens": tokens,
                "token_logprobs": values,
                "top_logprobs": [
                    {t: v, "alt": math.log(0.1)} for t, v in zip(tokens, values, strict=True)
                ],
                "text_offset": list(range(len(tokens))),
            }
        return self._json(
            {
                "id": f"cmpl-{self.name}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [choice],
                "usage": {
                    "prompt_tokens": 3,
                    "completion_tokens": len(tokens),
                    "total_tokens": 3 + len(tokens),
                },
            }
        )

    def _json(self, payload: dict[str, Any]) -> Response:
        # Odd spacing on purpose: the gateway must relay these bytes, not re-serialise them.
        raw = json.dumps(payload, indent=1).encode()
        self.sent.append(raw)
        return Response(raw, media_type="application/json")

    def _stream(self, body: dict[str, Any], tokens: list[str], *, chat: bool) -> StreamingResponse:
        behavior = self.behavior
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            head = {
                "id": f"chatcmpl-{self.name}",
                "created": int(time.time()),
                "model": body["model"],
                "object": "chat.completion.chunk" if chat else "text_completion",
            }
            for i, token in enumerate(tokens):
                if behavior.break_stream_after is not None and i >= behavior.break_stream_after:
                    raise ConnectionResetError("stream broken by test")
                if chat:
                    delta = (
                        {"role": "assistant", "content": token} if i == 0 else {"content": token}
                    )
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
                else:
                    choice = {"index": 0, "text": token, "finish_reason": None}
                yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode()
                if behavior.chunk_delay_s:
                    await asyncio.sleep(behavior.chunk_delay_s)
            last: dict[str, Any] = (
                {"index": 0, "delta": {}, "finish_reason": "stop"}
                if chat
                else {"index": 0, "text": "", "finish_reason": "stop"}
            )
            yield f"data: {json.dumps({**head, 'choices': [last]})}\n\n".encode()
            if include_usage:
                usage = {
                    "prompt_tokens": 7,
                    "completion_tokens": len(tokens),
                    "total_tokens": 7 + len(tokens),
                }
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

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
