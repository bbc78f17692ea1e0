"""The migrations and the table definitions in gateway.db.tables describe the same schema."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db.engine import sqlalchemy_url
from gateway.db.migrate import current_revision, head_revision
from gateway.db.tables import metadata


def test_database_is_at_head(database_url: str) -> None:
    assert asyncio.run(current_revision(database_url)) == head_revision()


def test_tables_module_matches_migrations(database_url: str) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        changes = []
        for change in compare_metadata(context, metadata):
            # column changes come grouped in lists; comments live in the migration only
            for step in change if isinstance(change, list) else [change]:
                if step[0] not in ("modify_comment", "remove_table_comment"):
                    changes.append(step)
        return changes

    async def run() -> list[object]:
        engine = create_async_engine(sqlalchemy_url(database_url))
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(diff)
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == []
