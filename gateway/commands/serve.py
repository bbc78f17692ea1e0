"""``serve`` and ``migrate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from gateway.api.limits import HEADER_TIMEOUT_ENV, HeaderTimeoutProtocol
from gateway.commands.common import CommandError, database_url, migrate
from gateway.config import load_settings
from gateway.logs import logging_config
from gateway.metrics import MULTIPROC_ENV

_log = logging.getLogger("shadow_gateway.cli")


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


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    # Numerical work on the request path (the scope gate's novelty search) runs on the
    # worker's own core: BLAS threads would only fight the other workers for the CPUs
    # (measured: 0.33 ms a search single-threaded, 1.1 ms with two threads on two cores).
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

    settings = load_settings(args.config)
    server = settings.config.server
    # uvicorn drains on SIGTERM, then raises the signal again with the default action, which
    # kills the process before exit handlers run: the embedded PostgreSQL's stop among them.
    # As an exception the same signal ends the process normally, with the same status (143).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    url, embedded = database_url(settings)
    if embedded or settings.config.database.auto_migrate:
        migrate(url)
    else:
        _check_schema(url)
    # Workers are separate processes: they read the same config and database from the env.
    os.environ["DATABASE_URL"] = url
    os.environ["SHADOW_GATEWAY_CONFIG"] = str(settings.config_path)
    os.environ[HEADER_TIMEOUT_ENV] = str(server.header_timeout_s)  # read by every worker
    workers = args.workers or server.workers
    common = {
        "host": args.host or server.host,
        "port": args.port if args.port is not None else server.port,
        "loop": "uvloop",
        "http": HeaderTimeoutProtocol,  # httptools, plus a deadline for request headers
        "access_log": args.access_log,
        "timeout_graceful_shutdown": int(server.drain_timeout_s),
        "log_level": args.log_level.lower(),
        # applied by uvicorn here and in every worker: its own lines in the same format
        "log_config": logging_config(args.log_level, args.log_format),
    }
    if workers == 1:
        from gateway.app import create_app

        os.environ.pop(MULTIPROC_ENV, None)
        uvicorn.run(create_app(load_settings(settings.config_path)), **common)
    else:
        from gateway.shadow.analysis import build_analyses

        # a bad comparator or scope reference reported here, not in every worker
        build_analyses(settings.config, settings.config_path.parent)
        os.environ[MULTIPROC_ENV] = str(_fresh_dir(settings.data_dir / "prometheus"))
        uvicorn.run("gateway.app:create_app_from_env", factory=True, workers=workers, **common)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.db.migrate import head_revision

    settings = load_settings(args.config)
    url, embedded = database_url(settings)
    migrate(url)
    where = "the embedded database" if embedded else "DATABASE_URL"
    print(f"{where} is at revision {head_revision()}")
    return 0


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[parent],
        help="Run the gateway (embedded PostgreSQL when DATABASE_URL is unset).",
        description="Run the gateway (embedded PostgreSQL when DATABASE_URL is unset).",
    )
    serve.add_argument("--host", help="bind address (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (uvicorn's access line; /v1 ones with the request's fields)",
    )
    serve.set_defaults(handler=cmd_serve)

    migrate_parser = commands.add_parser(
        "migrate",
        parents=[parent],
        help="Apply the database migrations (Alembic) up to the latest.",
        description="Apply the database migrations (Alembic) up to the latest.",
    )
    migrate_parser.set_defaults(handler=cmd_migrate)
