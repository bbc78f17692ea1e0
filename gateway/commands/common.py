"""What every command shares: errors, finding (or starting) the database, and output.

Every command that prints a result takes ``--json`` (:func:`add_json_option`) and then prints
one JSON document on stdout (:func:`print_json`); its notes and warnings stay on stderr.

SQLAlchemy and the config models are imported where a command first needs them, not here:
``--help`` and argument errors need neither (docs/benchmarks.md, "The CLI's start-up").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from gateway.errors import GatewayError, InvalidRequest
from gateway.logs import LOG_FORMAT_ENV, default_log_format, parse_log_format

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.config import Settings

T = TypeVar("T")


class CommandError(Exception):
    """A command cannot go on; the message says why and what to do."""


def database_url(settings: Settings) -> tuple[str, bool]:
    """The database to use and whether it is the embedded one (started here if so)."""
    if settings.database_url:
        return settings.database_url, False
    from gateway.db.embedded import EmbeddedPostgres

    try:
        url = EmbeddedPostgres(settings.data_dir).start()
    except (RuntimeError, OSError) as exc:
        raise CommandError(f"cannot start the embedded PostgreSQL: {exc}") from exc
    return url, True


def migrate(url: str) -> None:
    from sqlalchemy.exc import DBAPIError, OperationalError

    from gateway.db.migrate import upgrade

    try:
        upgrade(url)
    except (OSError, OperationalError, DBAPIError) as exc:
        first_line = str(exc).splitlines()[0]
        raise CommandError(f"cannot migrate the database: {first_line}") from exc


def common_options(config: bool = True) -> argparse.ArgumentParser:
    """``--config`` (unless the command makes its own), ``--log-level`` and ``--log-format``."""
    parent = argparse.ArgumentParser(add_help=False)
    if config:
        parent.add_argument(
            "--config",
            help="config file (default: $SHADOW_GATEWAY_CONFIG, else ./shadow-gateway.yaml)",
        )
    parent.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much the command logs on stderr (default: INFO)",
    )
    parent.add_argument(
        "--log-format",
        type=parse_log_format,
        default=default_log_format(),
        metavar="{json,text}",
        help=f"log lines on stderr as JSON objects or plain text (default: ${LOG_FORMAT_ENV}, "
        "else text on a terminal, JSON otherwise)",
    )
    return parent


Handler = Callable[[argparse.Namespace], int]


def arguments_checked(command: str, subcommand: str) -> Callable[[Handler], Handler]:
    """Arguments a parser type cannot judge alone (since < until, a slice, a range): a
    handler's InvalidRequest is one line on stderr, naming the command, and exit status 2."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except InvalidRequest as exc:
                name = f"{command} {getattr(args, subcommand)}"
                print(f"shadow-gateway {name}: {exc.message}", file=sys.stderr)
                return 2

        return run

    return decorate


def add_json_option(parser: argparse.ArgumentParser, what: str = "JSON instead of text") -> None:
    """``--json``: the command's result as one JSON document on stdout."""
    parser.add_argument("--json", action="store_true", help=what)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (what ``--json`` prints)."""
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Rows of text as aligned columns under a header (the CLI's tables)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def default_actor() -> str:
    """Who a CLI change is recorded as, when ``--actor``/``--by`` is not given."""
    return os.environ.get("USER") or "cli"


def with_engine(settings: Settings, operation: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``operation`` on the configured database; its failures become CommandErrors."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from gateway.db.engine import create_engine

    url, embedded = database_url(settings)
    if embedded:  # the gateway's own database: brought up to date as `serve` would
        migrate(url)
    try:
        engine = create_engine(url, settings.config.database)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc

    async def run() -> T:
        try:
            return await operation(engine)
        finally:
            await engine.dispose()

    from gateway.db.keys import KeyStoreError

    try:
        return asyncio.run(run())
    except GatewayError as exc:
        raise CommandError(exc.message) from exc
    except KeyStoreError as exc:  # the key store words its own errors for people
        raise CommandError(str(exc)) from exc
    except (OSError, OperationalError, DBAPIError) as exc:
        if "does not exist" in str(exc) and "relation" in str(exc):
            raise CommandError(
                "the database is not migrated: run `shadow-gateway migrate`"
            ) from exc
        raise CommandError(f"cannot use Postgres: {str(exc).splitlines()[0]}") from exc


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def bounded(low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse type: a number from ``low`` to ``high``; ``what`` names it in errors."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be from {low:g} to {high:g}, not {text}")
        return value

    return parse


def reason_text(text: str) -> str:
    """An argparse type: a reason for the audit log, not blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the reason must not be empty")
    return text
