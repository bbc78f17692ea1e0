"""OpenTelemetry tracing: an optional extra (``pip install 'shadow-gateway[otel]'``).

On only where the SDK is installed and the standard variables ask for it: an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or
``OTEL_TRACES_EXPORTER`` (``otlp``, over HTTP/protobuf, or ``console``; ``none`` is off);
``OTEL_SDK_DISABLED=true`` wins over both. The SDK reads the rest itself: ``OTEL_SERVICE_NAME``
(``shadow-gateway`` here unless set), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_PROPAGATORS`` (W3C ``traceparent``
and baggage by default). Each worker process builds its provider in the app's lifespan
(:func:`from_environment`, :func:`configure`) and flushes it at shutdown. The provider is the
gateway's own, not OpenTelemetry's global one, which other instrumentation would act on too.

The spans (docs/observability.md):

- ``POST /v1/…`` (server): one per ``/v1`` request, continuing the app's ``traceparent``;
  attributes: the request's log fields (request id, route, served_by, student, status). It
  ends when the answer is sent (a stream: when it ends).
- ``teacher <endpoint>`` and ``student <endpoint>`` (client): each upstream call, children of
  the request's span (the shadow calls too, though they run in the background, after it);
  each sends its own ``traceparent``.
- ``log write`` (internal): one per batch the log writer writes (or journals), in a trace of
  its own.

Off, the request path pays one check of the module's :data:`enabled` flag at each of these
points, and imports nothing of OpenTelemetry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

_log = logging.getLogger("shadow_gateway.tracing")
Chunk = TypeVar("Chunk")

SERVICE_NAME = "shadow-gateway"
ATTRIBUTE_PREFIX = "shadow_gateway."
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

# Checked before any span work: False unless configure() was given a provider.
enabled = False
_tracer: Tracer | None = None


def configure(provider: TracerProvider | None) -> None:
    """Trace into ``provider`` from now on (None: stop tracing)."""
    global enabled, _tracer
    if provider is None:
        enabled, _tracer = False, None
        return
    from gateway import __version__

    _tracer = provider.get_tracer("shadow_gateway", __version__)
    enabled = True


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name) for name in _ENDPOINT_VARIABLES)


def from_environment(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """A tracer provider with the exporter the ``OTEL_*`` variables ask for; None when they
    ask for none, or the ``otel`` extra is not installed (said once in the log)."""
    if not wanted(environ):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        _log.warning(
            "OTEL_* variables ask for traces, but the otel extra is not installed "
            "(pip install 'shadow-gateway[otel]'); tracing is off"
        )
        return None
    exporters = [
        name.strip().lower()
        for name in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")
        if name.strip()
    ]
    chosen: list[SpanExporter] = []
    for name in exporters:
        if name == "otlp":
            chosen.append(_otlp_exporter(environ))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            chosen.append(ConsoleSpanExporter())
        elif name != "none":
            _log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console)", name)
    if not chosen:
        return None
    from gateway import __version__

    resource = Resource.create(
        {
            "service.name": environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME,
            "service.version": __version__,
        }
    )
    provider = TracerProvider(resource=resource)
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        _log.warning("OTLP protocol %s is not installed; exporting over http/protobuf", protocol)
    return OTLPSpanExporter()


# -- the request's span -----------------------------------------------------------------------


def start_request(method: str, path: str, headers: Mapping[str, str]) -> Span:
    """The server span of a ``/v1`` request, continuing the ``traceparent`` in ``headers``;
    made current for the rest of the request's task and the tasks it spawns."""
    from opentelemetry import context, propagate, trace

    assert _tracer is not None
    parent = propagate.extract(headers)
    span = _tracer.start_span(
        f"{method} {path}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": path, "url.path": path},
    )
    # Not detached: the request's task (uvicorn runs one per request) ends with the request,
    # and background work it spawned keeps the span as its parent.
    context.attach(trace.set_span_in_context(span, parent))
    return span


def end_request(span: Span, fields: Mapping[str, object] | None) -> None:
    """Record the request's log fields on its span and end it."""
    _describe(span, fields)
    span.end()


def fail_request(span: Span, fields: Mapping[str, object] | None, error: BaseException) -> None:
    """An unexpected exception escaped the handler (a 500): record it and end the span."""
    from opentelemetry.trace import StatusCode

    _describe(span, fields)
    span.record_exception(error)
    span.set_status(StatusCode.ERROR, type(error).__name__)
    span.end()


async def until_done(
    chunks: AsyncIterable[Chunk], span: Span, fields: Mapping[str, object] | None
) -> AsyncIterator[Chunk]:
    """Relay a stream's ``chunks``; the request's span ends with the stream."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        close = getattr(chunks, "aclose", None)
        try:
            if close is not None:
                await close()  # as if the server had closed ``chunks`` itself
        finally:
            end_request(span, fields)


def _describe(span: Span, fields: Mapping[str, object] | None) -> None:
    if not fields:
        return
    for key, value in fields.items():
        if isinstance(value, str | int | float | bool):
            span.set_attribute(ATTRIBUTE_PREFIX + key, value)
    status = fields.get("status")
    if isinstance(status, int):
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            from opentelemetry.trace import StatusCode

            span.set_status(StatusCode.ERROR)


# -- upstream calls ---------------------------------------------------------------------------


def start_call(
    name: str, url: str, headers: Mapping[str, str], attributes: Mapping[str, str]
) -> tuple[Span, dict[str, str]]:
    """A client span for one upstream call (a child of the current span) and the call's
    headers: ``headers`` plus the span's ``traceparent``."""
    from opentelemetry import propagate, trace

    assert _tracer is not None
    span = _tracer.start_span(
        name,
        kind=trace.SpanKind.CLIENT,
        attributes={
            "http.request.method": "POST",
            "url.full": url,
            **{ATTRIBUTE_PREFIX + key: value for key, value in attributes.items()},
        },
    )
    sent = dict(headers)
    propagate.inject(sent, context=trace.set_span_in_context(span))
    return span, sent


def end_call(
    span: Span,
    status: int | None = None,
    error: BaseException | str | None = None,
    outcome: str | None = None,
) -> None:
    """End an upstream call's span: its HTTP status, its failure (an exception or words)."""
    from opentelemetry.trace import StatusCode

    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if outcome is not None:
        span.set_attribute(ATTRIBUTE_PREFIX + "outcome", outcome)
    if isinstance(error, BaseException):
        span.record_exception(error)
        span.set_status(StatusCode.ERROR, type(error).__name__)
    elif error is not None:
        span.set_status(StatusCode.ERROR, error[:200])
    span.end()


# -- other spans, and the log's trace ids -----------------------------------------------------


def start_span(name: str, attributes: Mapping[str, str | int]) -> Span:
    """An internal span (the log writer's batches): a child of the current span, if any."""
    assert _tracer is not None
    return _tracer.start_span(
        name, attributes={ATTRIBUTE_PREFIX + key: value for key, value in attributes.items()}
    )


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids (hex), for a log line; None outside a span."""
    from opentelemetry import trace

    found = trace.get_current_span().get_span_context()
    if not found.is_valid:
        return None
    return format(found.trace_id, "032x"), format(found.span_id, "016x")
