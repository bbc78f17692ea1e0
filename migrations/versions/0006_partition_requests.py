"""Partition ``requests`` by time: native RANGE partitioning on ``created_at``.

The table is rebuilt as a partitioned one and every row is moved, in this migration's one
transaction: a new parent (same columns, defaults and comments), one partition per UTC
calendar month that holds rows plus the current month, a DEFAULT partition (a row outside
every range lands there and is never refused), the rows copied, the old table dropped and the
new one renamed to ``requests``; then the indexes of 0001 and 0005 and the 0005 views are made
again on it. Writes wait (``LOCK … IN EXCLUSIVE MODE``) while it runs, so none is copied too
early; reads go on. From here on the gateway (and ``shadow-gateway partitions``) creates the
partitions ahead and drops those past the retention (``database.partitions``): months here,
the configured interval after them.

The primary key becomes ``(request_id, created_at)``: a unique key on a partitioned table must
hold the partition key. Both halves of a row carry the same ``created_at`` (the request's
start), so the log writer's upsert on that key still merges them into one row.

Downgrade rebuilds a plain table with the old primary key ``(request_id)``. It refuses, and
changes nothing, if a request id is on more than one row (possible only now that the key has
two columns), rather than drop any.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import importlib.util
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("fallbacks_daily", "agreement_daily", "disagreements")  # dependents first
LIKE = "LIKE requests INCLUDING DEFAULTS INCLUDING COMMENTS INCLUDING STORAGE INCLUDING COMPRESSION"
TABLE_COMMENT = (
    "One row per request (teacher and student halves). Partitioned by created_at (UTC): "
    "requests_pYYYYMM / requests_pYYYYMMDD, plus requests_default for rows outside them; "
    "the gateway creates partitions ahead and drops those past database.partitions.retention_days"
)


def _analyst_views() -> ModuleType:
    """Migration 0005, whose indexes and views are made again on the rebuilt table."""
    path = Path(__file__).with_name("0005_analyst_views.py")
    spec = importlib.util.spec_from_file_location("_shadow_gateway_migration_0005", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _columns() -> str:
    names = op.get_bind().execute(
        sa.text(
            "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = 'requests'::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        )
    )
    return ", ".join(names.scalars())


def _indexes() -> None:
    """The indexes of 0001, then 0005's indexes, views and their comments."""
    op.create_index("ix_requests_route_created_at", "requests", ["route", "created_at"])
    op.create_index("ix_requests_created_at", "requests", ["created_at"])
    _analyst_views().upgrade()


def _next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def upgrade() -> None:
    bind = op.get_bind()
    op.execute("SET LOCAL TimeZone = 'UTC'")
    op.execute("LOCK TABLE requests IN EXCLUSIVE MODE")  # writers wait; readers go on
    for view in VIEWS:
        op.execute(f"DROP VIEW {view}")
    columns = _columns()
    op.execute(f"CREATE TABLE requests_partitioned ({LIKE}) PARTITION BY RANGE (created_at)")
    op.execute(
        "ALTER TABLE requests_partitioned "
        "ADD CONSTRAINT requests_partitioned_pkey PRIMARY KEY (request_id, created_at)"
    )
    months = set(
        bind.execute(
            sa.text(
                "SELECT DISTINCT date_trunc('month', created_at, 'UTC') FROM requests "
                "UNION SELECT date_trunc('month', now(), 'UTC')"
            )
        ).scalars()
    )
    for start in sorted(months):
        end = _next_month(start)
        op.execute(
            f"CREATE TABLE requests_p{start:%Y%m} PARTITION OF requests_partitioned "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    op.execute("CREATE TABLE requests_default PARTITION OF requests_partitioned DEFAULT")
    # column names from the catalog, quoted by quote_ident
    op.execute(f"INSERT INTO requests_partitioned ({columns}) SELECT {columns} FROM requests")  # noqa: S608
    op.execute("DROP TABLE requests")
    op.execute("ALTER TABLE requests_partitioned RENAME TO requests")
    op.execute("ALTER TABLE requests RENAME CONSTRAINT requests_partitioned_pkey TO requests_pkey")
    quoted = TABLE_COMMENT.replace("'", "''")
    op.execute(f"COMMENT ON TABLE requests IS '{quoted}'")
    _indexes()
    op.execute("ANALYZE requests")  # autovacuum analyzes the partitions, never the parent


def downgrade() -> None:
    bind = op.get_bind()
    op.execute("LOCK TABLE requests IN EXCLUSIVE MODE")
    shared = bind.execute(
        sa.text(
            "SELECT request_id FROM requests GROUP BY request_id HAVING count(*) > 1 "
            "ORDER BY request_id LIMIT 5"
        )
    ).scalars()
    if ids := list(shared):
        raise RuntimeError(
            "cannot downgrade: the unpartitioned table keys rows by request_id alone, and "
            f"these request ids are on more than one row: {', '.join(ids)}. Delete or re-key "
            "the extra rows first; nothing was changed."
        )
    for view in VIEWS:
        op.execute(f"DROP VIEW {view}")
    columns = _columns()
    op.execute(f"CREATE TABLE requests_plain ({LIKE})")
    op.execute(f"INSERT INTO requests_plain ({columns}) SELECT {columns} FROM requests")  # noqa: S608
    op.execute("DROP TABLE requests")  # and its partitions
    op.execute("ALTER TABLE requests_plain RENAME TO requests")
    op.execute("COMMENT ON TABLE requests IS NULL")
    op.execute("ALTER TABLE requests ADD CONSTRAINT requests_pkey PRIMARY KEY (request_id)")
    _indexes()
