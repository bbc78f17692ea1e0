"""The demo teacher: :func:`gateway.demo.task.teacher_answer` behind an OpenAI-shaped server.

It answers ``/v1/chat/completions`` (the last user message is the prompt) and
``/v1/completions`` (the prompt), streamed or not, and lists its one model on ``/v1/models``,
like any OpenAI-compatible upstream: the gateway cannot tell it from a hosted model. Its
answers are exact except for the documented bug in relative dates (see
:mod:`gateway.demo.task`). ``latency_s`` makes it as slow as a remote model would be, so the
demo's latency figures for the teacher and the student mean something.

``python -m gateway.demo.teacher --port 8101`` serves it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.core.slices import last_user_text
from gateway.demo.task import teacher_answer

TEACHER_MODEL = "demo-teacher"
_ids = itertools.count(1)


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
    return JSONResponse(body, status_code=status)


def _usage(prompt: str, answer: str) -> dict[str, int]:
    # One token a character, like the student's tokenizer: rough, but honest about size.
    return {
        "prompt_tokens": len(prompt),
        "completion_tokens": len(answer),
        "total_tokens": len(prompt) + len(answer),
    }


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def create_teacher_app(model: str = TEACHER_MODEL, latency_s: float = 0.0) -> Starlette:
    async def models(request: Request) -> Response:
        entry = {"id": model, "object": "model", "created": 0, "owned_by": "shadow-gateway-demo"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def read(request: Request) -> dict[str, Any] | Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "The body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "The body must be a JSON object.")
        if body.get("model") != model:
            return _error(404, f"The model '{body.get('model')}' does not exist.", "model")
        if latency_s:
            await asyncio.sleep(latency_s)
        return body

    async def chat(request: Request) -> Response:
        body = await read(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty list.", "messages")
        prompt = last_user_text(body)
        answer = teacher_answer(prompt)
        ident, created = f"chatcmpl-demo-{next(_ids)}", int(time.time())
        if body.get("stream"):
            head = {"id": ident, "object": "chat.completion.chunk", "created": created}
            head["model"] = model

            async def events() -> AsyncIterator[bytes]:
                yield _sse({**head, "choices": [_delta({"role": "assistant", "content": ""})]})
                yield _sse({**head, "choices": [_delta({"content": answer})]})
                yield _sse({**head, "choices": [_delta({}, "stop")]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield _sse({**head, "choices": [], "usage": _usage(prompt, answer)})
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": answer},
            "logprobs": None,
            "finish_reason": "stop",
        }
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": _usage(prompt, answer),
            }
        )

    async def completions(request: Request) -> Response:
        body = await read(request)
        if isinstance(body, Response):
            return body
        prompt = last_user_text(body)
        answer = teacher_answer(prompt)
        ident, created = f"cmpl-demo-{next(_ids)}", int(time.time())
        head = {"id": ident, "object": "text_completion", "created": created, "model": model}
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                yield _sse({**head, "choices": [_text(answer, None)]})
                yield _sse({**head, "choices": [_text("", "stop")]})
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(
            {**head, "choices": [_text(answer, "stop")], "usage": _usage(prompt, answer)}
        )

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _text(text: str, finish: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


class ThreadedServer:
    """An ASGI app under uvicorn in a daemon thread, on a loopback port (0: any free one)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, name: str = "") -> None:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True, name=name or None)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m gateway.demo.teacher")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--model", default=TEACHER_MODEL)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    app = create_teacher_app(args.model, args.latency_ms / 1000)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
