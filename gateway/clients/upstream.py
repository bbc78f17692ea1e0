"""HTTP calls to the teacher and the student.

aiohttp is the transport: measured on this project's benchmark machine it costs a fraction of
httpx's default transport per request, and the upstream call dominates the gateway's own CPU
cost on the request path (see docs/benchmarks.md). Teacher and student each get their own
``ClientSession`` (own connection pool), so a slow student can never exhaust the teacher's
connections. aiohttp's exceptions stop here: callers see the gateway's own errors.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from gateway import tracing
from gateway.core.outputs import Endpoint
from gateway.errors import TeacherHTTPError, TeacherTimeout, TeacherUnreachable

if TYPE_CHECKING:
    from opentelemetry.trace import Span

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
# Where each endpoint lives below an upstream's base URL (``…/v1``).
ENDPOINT_PATHS: Mapping[Endpoint, str] = {
    "chat": "/chat/completions",
    "text": "/completions",
    "responses": "/responses",
}
# Headers of a teacher's error that tell the app when to retry; relayed so the app's client
# backs off on the teacher's timer. Nothing else is (never its cookies or auth challenges).
_RELAYED_ERROR_HEADERS = ("retry-after", "retry-after-ms")
_RELAYED_ERROR_PREFIX = "x-ratelimit-"


def relayed_error_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in headers.items()
        if name.lower() in _RELAYED_ERROR_HEADERS or name.lower().startswith(_RELAYED_ERROR_PREFIX)
    }


@dataclass(frozen=True)
class Upstream:
    """One upstream endpoint as the clients need it, resolved from config once."""

    url: str  # full URL of the endpoint, e.g. http://host/v1/chat/completions
    headers: Mapping[str, str]
    timeout: aiohttp.ClientTimeout
    stream_timeout: aiohttp.ClientTimeout


def make_upstream(
    base_url: str, path: str, api_key: str | None, timeout_s: float, connect_timeout_s: float
) -> Upstream:
    headers = dict(JSON_HEADERS)
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return Upstream(
        url=base_url.rstrip("/") + path,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s),
        # A stream may run long; what must not happen is a silence longer than timeout_s.
        stream_timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=timeout_s
        ),
    )


def new_session(max_connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300)
    # Upstreams are APIs, not browsers: no cookies carried from one app's request to another.
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


@dataclass(frozen=True)
class UpstreamReply:
    status: int
    body: bytes
    content_type: str | None


class TeacherStream:
    """An open SSE response from the teacher; iterate it to relay chunks as they arrive.

    With tracing on, the call's span ends with the stream (its end, its failure, or close()).
    """

    def __init__(self, response: aiohttp.ClientResponse, span: Span | None = None) -> None:
        self._response = response
        self._span = span
        self.content_type = response.headers.get("Content-Type", "text/event-stream")

    async def chunks(self) -> AsyncIterator[bytes]:
        error: BaseException | None = None
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            error = TeacherTimeout("the teacher stopped sending within its timeout")
            raise error from exc
        except (aiohttp.ClientError, OSError) as exc:
            error = TeacherUnreachable(f"the teacher's stream broke off: {exc}")
            raise error from exc
        except BaseException as exc:  # cancelled or closed: the app went away mid-stream
            error = exc
            raise
        finally:
            self._response.release()
            self._end_span(error)

    def close(self) -> None:
        self._response.close()
        self._end_span("the client went away mid-stream")

    def _end_span(self, error: BaseException | str | None) -> None:
        if self._span is not None:
            span, self._span = self._span, None
            tracing.end_call(span, self._response.status, error)


async def call_teacher(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> UpstreamReply:
    """POST ``body`` and read the whole answer; raise a GatewayError on any failure.
    ``headers`` replace the upstream's (its own plus a ``traceparent``)."""
    try:
        async with session.post(
            upstream.url, data=body, headers=headers or upstream.headers, timeout=upstream.timeout
        ) as response:
            payload = await response.read()
            content_type = response.headers.get("Content-Type")
    except TimeoutError as exc:
        raise TeacherTimeout(
            f"the teacher did not answer within {upstream.timeout.total:g} s"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TeacherUnreachable(f"cannot reach the teacher: {exc}") from exc
    if response.status >= 400:
        raise TeacherHTTPError(
            response.status, payload, content_type, relayed_error_headers(response.headers)
        )
    return UpstreamReply(response.status, payload, content_type)


async def open_teacher_stream(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    span: Span | None = None,
) -> TeacherStream:
    """POST a ``stream: true`` request and return once the status line and headers are in;
    ``span`` (the call's, when tracing) ends with the stream."""
    try:
        response = await session.post(
            upstream.url,
            data=body,
            headers=headers or upstream.headers,
            timeout=upstream.stream_timeout,
        )
    except TimeoutError as exc:
        raise TeacherTimeout("the teacher did not start its answer within its timeout") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TeacherUnreachable(f"cannot reach the teacher: {exc}") from exc
    if response.status >= 400:
        try:
            payload = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError):
            payload = b""
        finally:
            response.release()
        raise TeacherHTTPError(
            response.status,
            payload,
            response.headers.get("Content-Type"),
            relayed_error_headers(response.headers),
        )
    return TeacherStream(response, span)


@dataclass(frozen=True)
class StudentReply:
    """What the student said, or why it said nothing. Never raises: the student is optional."""

    outcome: str  # ok | timeout | unreachable | http_error | invalid_response
    status: int | None
    body: bytes
    latency_s: float
    error: str | None = None


async def call_student(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    body: bytes,
    timeout_s: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> StudentReply:
    """POST to the student; ``timeout_s`` (a rollout's latency budget) overrides the route's,
    ``headers`` the upstream's (its own plus a ``traceparent``)."""
    timeout = upstream.timeout
    if timeout_s is not None:
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=timeout.sock_connect)
    started = time.perf_counter()
    try:
        async with session.post(
            upstream.url, data=body, headers=headers or upstream.headers, timeout=timeout
        ) as response:
            payload = await response.read()
    except TimeoutError:
        return StudentReply(
            "timeout",
            None,
            b"",
            time.perf_counter() - started,
            f"no answer within {timeout.total:g} s",
        )
    except (aiohttp.ClientError, OSError) as exc:
        return StudentReply("unreachable", None, b"", time.perf_counter() - started, str(exc))
    latency = time.perf_counter() - started
    if response.status >= 400:
        return StudentReply(
            "http_error",
            response.status,
            payload,
            latency,
            f"HTTP {response.status}: {payload[:300].decode('utf-8', 'replace')}",
        )
    return StudentReply("ok", response.status, payload, latency)
