"""What every command shares: errors, and finding (or starting) the database."""

from __future__ import annotations

import argparse

from gateway.config import Settings


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
    from gateway.db.migrate import upgrade

    try:
        upgrade(url)
    except OSError as exc:
        raise CommandError(f"cannot reach Postgres to migrate it: {exc}") from exc


def common_options() -> argparse.ArgumentParser:
    """``--config`` and ``--log-level``, for every subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        help="config file (default: $SHADOW_GATEWAY_CONFIG, else ./shadow-gateway.yaml)",
    )
    parent.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parent
