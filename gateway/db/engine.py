"""Database URLs and the SQLAlchemy engine."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.config import DatabaseConfig


def plain_dsn(url: str) -> str:
    """``postgresql+asyncpg://…`` or ``postgres://…`` → ``postgresql://…`` (for asyncpg)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL must be a PostgreSQL URL, not {parsed.drivername!r}")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def create_engine(url: str, config: DatabaseConfig) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=config.pool_size,
        max_overflow=config.pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"timeout": config.connect_timeout_s, "command_timeout": 30},
    )
