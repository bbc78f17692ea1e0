"""Apply and inspect Alembic migrations from code (the CLI and start-up use these)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from gateway.db.engine import plain_dsn


def migrations_dir() -> Path:
    """``migrations/`` beside the package (a checkout) or inside it (an installed wheel)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "migrations", package / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("cannot find the Alembic migrations directory")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()


async def current_revision(database_url: str, timeout_s: float = 5.0) -> str | None:
    """The database's Alembic revision (None if never migrated); raises if unreachable."""
    connection = await asyncpg.connect(plain_dsn(database_url), timeout=timeout_s)
    try:
        if await connection.fetchval("SELECT to_regclass('alembic_version')") is None:
            return None
        revision: str | None = await connection.fetchval("SELECT version_num FROM alembic_version")
        return revision
    finally:
        await connection.close()
