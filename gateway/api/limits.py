"""Slow bodies (slow-loris): a deadline for reading each request's body, 408 past it.

uvicorn times out idle keep-alive connections but has no limit on how long a request body may
take to arrive, so a client sending one byte every few seconds would hold a worker's
connection (and the buffers of a half-read request) for as long as it liked. This pure ASGI
middleware gives every body ``timeout_s`` plus one second per ``min_rate`` bytes received (the
Apache ``mod_reqtimeout`` rule: a large upload at a decent rate is never cut off, a trickle
is). Past the deadline the app's ``receive`` raises :class:`RequestTimeout`; whatever the
handler answers, the client gets a 408 in OpenAI's shape and the connection is closed.

Once the body is complete, ``receive`` is passed through untouched (a streaming response
waits on it for the client's disconnect, which must never time out).

Headers never reach the app; :class:`HeaderTimeoutProtocol` gives them a deadline at the
server (``server.header_timeout_s``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import RequestTimeout


class BodyDeadline:
    def __init__(self, app: ASGIApp, *, timeout_s: float, min_rate: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.min_rate = float(min_rate)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = _Watch(receive, send, self.timeout_s, self.min_rate)
        try:
            await self.app(scope, watch.receive, watch.send)
        except RequestTimeout as exc:  # nothing handled it: answer it here
            if not watch.replaced:
                watch.replaced = True
                await _send_timeout(send, exc)
        finally:
            watch.stop()


class _Watch:
    """One request's body deadline: one timer, which cancels only a wait for the body.

    A timer rather than ``asyncio.timeout`` around each ``receive``: a 1-2 us handle per
    request instead of a context manager per call, on the hot path. When the timer fires while
    the app waits for body bytes, that wait is cancelled and turned into
    :class:`RequestTimeout`; when it fires at any other moment, the next wait for the body
    raises it at once (the app is never cancelled elsewhere, nor once the body is complete).
    """

    __slots__ = (
        "_deadline",
        "_handle",
        "_loop",
        "_min_rate",
        "_receive",
        "_send",
        "_waiting",
        "error",
        "fired",
        "replaced",
    )

    def __init__(self, receive: Receive, send: Send, timeout_s: float, min_rate: float) -> None:
        self._receive = receive
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._min_rate = min_rate
        self._deadline = self._loop.time() + timeout_s
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self._deadline, self._fire)
        self._waiting: asyncio.Task[object] | None = None
        self.fired = False
        self.replaced = False
        self.error: RequestTimeout | None = None

    def _fire(self) -> None:
        self._handle = None
        self.fired = True
        if self._waiting is not None:
            self._waiting.cancel()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _timeout(self) -> RequestTimeout:
        self.error = RequestTimeout(
            "The request body did not arrive in time; send it at a normal rate."
        )
        return self.error

    async def receive(self) -> Message:
        if self._handle is None and not self.fired:  # the body is complete
            return await self._receive()
        if self.fired:
            raise self._timeout()
        task = asyncio.current_task()
        self._waiting = task
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if self.fired and task is not None and task.uncancel() == 0:
                raise self._timeout() from None
            raise
        finally:
            self._waiting = None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.stop()
        elif self._handle is not None:  # a chunk of a longer body: it earns time
            self._handle.cancel()
            self._deadline += len(message.get("body", b"")) / self._min_rate
            self._handle = self._loop.call_at(self._deadline, self._fire)
        return message

    async def send(self, message: Message) -> None:
        if self.error is None:
            await self._send(message)
            return
        if not self.replaced and message["type"] == "http.response.start":
            self.replaced = True
            await _send_timeout(self._send, self.error)
        # anything else is the handler's own answer to the timeout: dropped


async def _send_timeout(send: Send, error: RequestTimeout) -> None:
    body = error.to_body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 408, "headers": headers})
    await send({"type": "http.response.body", "body": body})


HEADER_TIMEOUT_ENV = "SHADOW_GATEWAY_HEADER_TIMEOUT_S"
DEFAULT_HEADER_TIMEOUT_S = 10.0


def header_timeout_s() -> float:
    """The header deadline: ``serve`` passes ``server.header_timeout_s`` to every worker in
    the environment (workers are spawned processes; a class attribute would not reach them)."""
    try:
        value = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S))
    except ValueError:
        return DEFAULT_HEADER_TIMEOUT_S
    return value if value > 0 else DEFAULT_HEADER_TIMEOUT_S


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for each request's headers.

    uvicorn times out idle keep-alive connections, but not a connection that never sends a
    byte, nor one that trickles its headers (the classic slow-loris): neither reaches the ASGI
    app, so no middleware can see them. This protocol arms a timer when the connection opens
    and when each request's first byte arrives, and disarms it when the headers are complete;
    if it fires first, the client gets a 408 and the connection is closed. For ``uvicorn
    --http`` / ``uvicorn.run(http=...)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s()
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # a response is still going out: judge the next request later
            return
        body = RequestTimeout("The request headers did not arrive in time.").to_body()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.close()
