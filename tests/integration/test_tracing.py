"""OpenTelemetry spans of the real gateway, caught by the SDK's in-memory exporter.

A request's server span continues the app's ``traceparent``; the teacher call and the
student's shadow call are its children, and each upstream receives a ``traceparent`` naming
its own call's span; the log writer's batches have spans of their own. Skipped without the
``otel`` extra.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from gateway import tracing
from gateway.logs import RequestFields
from tests.integration.conftest import ROUTE
from tests.support.db import wait_for
from tests.support.gateway import GatewayServer, route
from tests.support.upstream import FakeOpenAI

CHAT = {"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]}
APP_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    yield exporter
    tracing.configure(None)
    provider.shutdown()


@pytest.fixture
def traced(
    exporter: InMemorySpanExporter,
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
) -> GatewayServer:
    return make_gateway([route(ROUTE, teacher.base_url, [student.base_url])])


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def _wait_for_span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    wait_for(lambda: bool(_named(exporter, name)), what=f"a {name!r} span")
    return _named(exporter, name)[-1]


def _ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def _parent(span: ReadableSpan) -> str | None:
    return None if span.parent is None else format(span.parent.span_id, "016x")


def _post(gateway: GatewayServer, app_key: str, **headers: str) -> httpx.Response:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {app_key}", **headers},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response


def test_a_request_continues_the_apps_trace_to_teacher_and_student(
    traced: GatewayServer,
    app_key: str,
    exporter: InMemorySpanExporter,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
) -> None:
    response = _post(traced, app_key, traceparent=f"00-{APP_TRACE}-{APP_SPAN}-01")
    request_id = response.headers["x-request-id"]
    server = _wait_for_span(exporter, "POST /v1/chat/completions")
    teacher_call = _wait_for_span(exporter, "teacher chat")
    student_call = _wait_for_span(exporter, "student chat")

    # the app's trace, continued: same trace id, the app's span as the parent
    trace_id, server_id = _ids(server)
    assert trace_id == APP_TRACE
    assert _parent(server) == APP_SPAN
    assert server.kind == SpanKind.SERVER
    attributes = dict(server.attributes or {})
    assert attributes["shadow_gateway.request_id"] == request_id
    assert attributes["shadow_gateway.route"] == ROUTE
    assert attributes["shadow_gateway.served_by"] == "teacher"
    assert attributes["shadow_gateway.status"] == 200
    assert attributes["http.response.status_code"] == 200

    # the upstream calls: children of the request's span, each sending its own traceparent
    for call, upstream in ((teacher_call, teacher), (student_call, student)):
        call_trace, call_id = _ids(call)
        assert (call_trace, _parent(call), call.kind) == (trace_id, server_id, SpanKind.CLIENT)
        sent = upstream.received[-1].headers["traceparent"]
        assert sent == f"00-{trace_id}-{call_id}-01", (call.name, sent)
    assert dict(teacher_call.attributes or {})["shadow_gateway.route"] == ROUTE
    assert dict(teacher_call.attributes or {})["http.response.status_code"] == 200
    student_attributes = dict(student_call.attributes or {})
    assert student_attributes["shadow_gateway.student"] == "default"
    assert student_attributes["shadow_gateway.outcome"] == "ok"

    # the log writer's batch: a span of its own, written to Postgres
    write = _wait_for_span(exporter, "log write")
    write_attributes = dict(write.attributes or {})
    assert write_attributes["shadow_gateway.destination"] == "postgres"
    assert int(write_attributes["shadow_gateway.records"]) >= 1  # type: ignore[arg-type]


def test_without_a_traceparent_the_request_starts_a_trace(
    traced: GatewayServer, app_key: str, exporter: InMemorySpanExporter, teacher: FakeOpenAI
) -> None:
    _post(traced, app_key)
    server = _wait_for_span(exporter, "POST /v1/chat/completions")
    trace_id, _ = _ids(server)
    assert server.parent is None
    assert trace_id != APP_TRACE
    assert teacher.received[-1].headers["traceparent"].split("-")[1] == trace_id


def test_a_streamed_request_span_ends_with_its_stream(
    traced: GatewayServer, app_key: str, exporter: InMemorySpanExporter, teacher: FakeOpenAI
) -> None:
    with httpx.stream(
        "POST",
        f"{traced.url}/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {app_key}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    assert b"[DONE]" in body
    server = _wait_for_span(exporter, "POST /v1/chat/completions")
    teacher_call = _wait_for_span(exporter, "teacher chat")
    assert _parent(teacher_call) == _ids(server)[1]
    assert server.end_time is not None
    assert teacher_call.end_time is not None
    assert server.end_time >= teacher_call.end_time  # the request's span outlasts the relay


def test_an_upstream_failure_marks_its_span(
    traced: GatewayServer, app_key: str, exporter: InMemorySpanExporter, teacher: FakeOpenAI
) -> None:
    teacher.reset_behavior(status=500)
    response = httpx.post(
        f"{traced.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {app_key}"},
        timeout=10,
    )
    assert response.status_code == 500
    server = _wait_for_span(exporter, "POST /v1/chat/completions")
    teacher_call = _wait_for_span(exporter, "teacher chat")
    assert teacher_call.status.status_code == StatusCode.ERROR
    assert dict(teacher_call.attributes or {})["http.response.status_code"] == 500
    assert server.status.status_code == StatusCode.ERROR
    assert dict(server.attributes or {})["shadow_gateway.status"] == 500


def test_log_lines_carry_the_trace_of_their_request(
    exporter: InMemorySpanExporter,
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="shadow_gateway.shadow")
    caplog.handler.addFilter(RequestFields())
    spec = route(ROUTE, teacher.base_url, [student.base_url])
    spec["student"].update(breaker_failures=1, breaker_cooldown_s=60)
    student.reset_behavior(status=503)
    gateway = make_gateway([spec])
    response = _post(gateway, app_key, traceparent=f"00-{APP_TRACE}-{APP_SPAN}-01")

    def opened() -> list[Any]:
        return [r for r in caplog.records if "failed 1 calls in a row" in r.getMessage()]

    wait_for(lambda: bool(opened()), what="the circuit's warning")
    [record] = opened()
    student_call = _wait_for_span(exporter, "student chat")
    assert record.request_id == response.headers["x-request-id"]
    assert (record.route, record.student, record.served_by) == (ROUTE, "default", "teacher")
    assert record.trace_id == APP_TRACE
    # logged in the shadow call's task, under the request's span (the call's own has ended)
    assert record.span_id == _parent(student_call)
