"""The log formats, the request fields, ``--log-format``, and when tracing is on."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys

import pytest

from gateway import logs, tracing
from gateway.cli import build_parser


def _record(
    message: str = "hello %s", *args: object, name: str = "shadow_gateway.x"
) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, args or ("there",), None)


def _with_fields(record: logging.LogRecord) -> logging.LogRecord:
    assert logs.RequestFields().filter(record)
    return record


def test_the_filter_copies_the_requests_fields_and_only_within_it() -> None:
    async def request() -> tuple[logging.LogRecord, logging.LogRecord, logging.LogRecord]:
        logs.start_request("req_1", "app-1")
        logs.note("route", "bot")

        async def shadow_call() -> logging.LogRecord:
            logs.note_in_task("student", "small")  # its own lines only
            return _with_fields(_record())

        background = asyncio.create_task(shadow_call())  # copies the request's context
        in_background = await background
        logs.note("status", 200)  # later fields reach the request's own lines
        return _with_fields(_record()), in_background, _with_fields(_record())

    outside = _with_fields(_record())
    own, background, later = asyncio.run(request())
    assert "request_id" not in outside.__dict__
    assert (own.request_id, own.client_request_id, own.route) == ("req_1", "app-1", "bot")
    assert "student" not in own.__dict__
    assert (background.request_id, background.student) == ("req_1", "small")
    assert later.status == 200
    logs.note("route", "nowhere")  # outside a request: nothing to add to, no error


def test_json_lines() -> None:
    record = _record()
    record.__dict__.update(request_id="req_1", route="bot", status=200)
    record.custom = {"k": 1}  # an `extra=` field
    line = json.loads(logs.formatter("json").format(record))
    assert line["time"].endswith("Z")
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING",
        "shadow_gateway.x",
        "hello there",
    )
    assert (line["request_id"], line["route"], line["status"]) == ("req_1", "bot", 200)
    assert line["custom"] == {"k": 1}
    assert "levelname" not in line
    assert "args" not in line


def test_json_lines_keep_the_traceback_and_split_uvicorns_access_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = _record()
        failed.exc_info = sys.exc_info()
    line = json.loads(logs.formatter("json").format(failed))
    assert "ValueError: boom" in line["exc_info"]

    access = _record(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "POST",
        "/v1/chat/completions",
        "1.1",
        200,
        name="uvicorn.access",
    )
    access.color_message = "coloured"  # uvicorn's, left out
    line = json.loads(logs.formatter("json").format(access))
    assert line["message"] == '127.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200'
    assert (line["method"], line["path"], line["status_code"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert "color_message" not in line


def test_text_lines_end_with_the_fields_before_any_traceback() -> None:
    record = _record()
    record.__dict__.update(request_id="req_1", route="a bot", status=502)
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    first, *rest = logs.formatter("text").format(record).splitlines()
    assert first.endswith(
        ' WARNING shadow_gateway.x: hello there request_id=req_1 route="a bot" status=502'
    )
    assert rest[-1] == "ValueError: boom"
    plain = logs.formatter("text").format(_record())
    assert plain.endswith("shadow_gateway.x: hello there")


def test_the_log_format_option_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(logs.LOG_FORMAT_ENV, raising=False)
    assert build_parser().parse_args(["migrate"]).log_format is None  # decided at start
    assert build_parser().parse_args(["migrate", "--log-format", "json"]).log_format == "json"
    monkeypatch.setenv(logs.LOG_FORMAT_ENV, "TEXT")
    assert build_parser().parse_args(["migrate"]).log_format == "text"
    assert build_parser().parse_args(["migrate", "--log-format", "json"]).log_format == "json"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["migrate", "--log-format", "xml"])
    assert logs.resolve_log_format("text") == "text"


class _Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_without_a_choice_a_terminal_gets_text_and_the_rest_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stderr", _Stderr(tty=True))
    assert logs.resolve_log_format(None) == "text"
    monkeypatch.setattr(sys, "stderr", _Stderr(tty=False))  # a container's, a file, a pipe
    assert logs.resolve_log_format(None) == "json"


def test_the_logging_config_sends_uvicorns_lines_through_the_same_handler() -> None:
    config = logs.logging_config("INFO", "json")
    assert config["disable_existing_loggers"] is False
    assert config["root"] == {"level": "INFO", "handlers": ["stderr"]}
    assert config["handlers"]["stderr"]["filters"] == ["request"]
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert config["loggers"][name]["handlers"] == []
        assert config["loggers"][name]["propagate"] is True


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SERVICE_NAME": "gw"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(
    environ: dict[str, str], wanted: bool
) -> None:
    assert tracing.wanted(environ) is wanted
    if not wanted:
        assert tracing.from_environment(environ) is None


def test_a_provider_from_the_environment() -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    provider = tracing.from_environment(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "gw-test"}
    )
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "gw-test"
    finally:
        provider.shutdown()
    named = tracing.from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert named is not None
    try:
        assert named.resource.attributes["service.name"] == "shadow-gateway"
    finally:
        named.shutdown()
    assert not tracing.enabled  # building one does not switch tracing on: configure() does
