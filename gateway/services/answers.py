"""What the request path hands back to the HTTP layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.core.outputs import Endpoint


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    endpoint: Endpoint
    started: float  # time.perf_counter() at arrival
    created_at: datetime
    headers: list[tuple[str, str]]
    client_request_id: str | None = None  # the app's own X-Request-Id, when sane

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass
class Answer:
    """A complete answer; ``after`` runs once it has been sent (logging, background calls),
    told whether the client had gone before it could be (then it was not sent)."""

    status: int
    body: bytes
    content_type: str
    after: Callable[[bool], Awaitable[None]]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamAnswer:
    chunks: AsyncIterator[bytes]
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
