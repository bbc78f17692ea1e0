"""Keeping the time partitions of ``requests`` and ``student_answers``: created ahead,
dropped past the retention.

Both tables are kept alike (:data:`PARTITIONED`): the same ``database.partitions`` interval,
ahead-count and retention, in one run under one advisory lock, so a request and its students'
answers (which carry the request's ``created_at``) live and go together. For each table in
turn, :func:`maintain` reads the partitions that exist, asks
:func:`gateway.core.partitions.plan` what should change, and does it, each step in its own
short transaction:

- *create* a partition as a plain table (``LIKE requests``), move into it any rows of its
  range that sit in the default partition (``requests_default``), then ``ATTACH PARTITION``.
  Attaching locks the parent only in SHARE UPDATE EXCLUSIVE mode, so the log writer and the
  reports carry on meanwhile; the brief ACCESS EXCLUSIVE lock is on the default partition,
  which stays small for this very reason (periods with rows in it get their own partition at
  the next run);
- *drop* a partition wholly older than ``retention_days`` (this one does lock the parent,
  briefly), and delete the default partition's rows older than that;
- *drop the rollups* (migration 0015) of every hour wholly older than that, with their
  buckets and dirty marks: a report then reads whatever raw rows of those hours a partition
  not yet wholly past the retention still holds (gateway.services.reports.rollup).

Every step waits at most ``lock_timeout_s`` for its locks; one that cannot have them is
reported and tried again at the next run, it never queues the writer behind it for long. Two
replicas (or a replica and the CLI) never work at once: the whole run holds a session-level
advisory lock, and the plan is made after taking it, from what is there then.

:class:`PartitionMaintainer` runs it in the gateway: at start-up, then every
``database.partitions.check_interval_s``.
"""

# ruff: noqa: S608  (identifiers below are table and partition names we made, quoted; values bound)

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.background import BackgroundLoop, RecurringFailure
from gateway.config import PartitionsConfig
from gateway.core.partitions import Partition, Plan, Span, default_partition, plan
from gateway.db.tables import requests, student_answers

_log = logging.getLogger("shadow_gateway.partitions")

# The partitioned tables, kept alike and in this order; with the migration that made each one
# partitioned, for the error that asks for it.
PARTITIONED: tuple[Table, ...] = (requests, student_answers)
# Dropped by the hour with the retention (migration 0015).
ROLLUP_TABLES = (
    "rollup_requests",
    "rollup_confidence",
    "rollup_prompt_lengths",
    "rollup_answers",
    "rollup_answer_pairs",
    "rollup_answer_latency",
    "rollup_buckets",
    "rollup_dirty",
)
_MIGRATION = {requests.name: "0006", student_answers.name: "0009"}

# pg_advisory_lock key: "sgw-part" as a 64-bit integer, shared by every replica and the CLI
ADVISORY_KEY = int.from_bytes(b"sgw-part", "big") & 0x7FFF_FFFF_FFFF_FFFF
_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")
_NAME = re.compile(r"^[a-z0-9_]+$")
_RETRY_S = 60.0  # after a failed run, the next one comes this soon (or check_interval_s)

_KIND = text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:parent)")
_PARTITIONS = text(
    "SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound "
    "FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass(:parent) ORDER BY 1"
)


class PartitionError(Exception):
    """Partitions cannot be kept: the message says why and what to do."""


@dataclass
class TableMaintenance:
    """What a run planned and did for one partitioned table."""

    table: str
    plan: Plan
    partitions: list[Partition] = field(default_factory=list)  # before the run
    has_default: bool = True  # whether the table's default partition exists
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved: int = 0  # rows moved from the default partition into new partitions
    expired: int = 0  # rows of the default partition deleted, past the retention
    default_rows: int = 0  # rows in the default partition (before the run)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (step, why)

    @property
    def default_partition(self) -> str:
        return default_partition(self.table)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.dropped or self.moved or self.expired)


@dataclass
class Maintenance:
    """What a run planned and did (``dry_run``: planned only), table by table in the order
    of :data:`PARTITIONED`; ``maintenance["requests"]`` is one table's part."""

    dry_run: bool
    tables: list[TableMaintenance] = field(default_factory=list)
    rollup_rows_dropped: int = 0  # rows of the rollup tables past the retention

    def __getitem__(self, table: str) -> TableMaintenance:
        for found in self.tables:
            if found.table == table:
                return found
        raise KeyError(table)

    @property
    def cutoff(self) -> datetime | None:
        """Rows before it are past the retention (the same for every table; None: keep all)."""
        return self.tables[0].plan.cutoff if self.tables else None

    @property
    def created(self) -> list[str]:
        return [name for table in self.tables for name in table.created]

    @property
    def dropped(self) -> list[str]:
        return [name for table in self.tables for name in table.dropped]

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [step for table in self.tables for step in table.failed]


def _moment(bound: str) -> datetime:
    if bound == "MINVALUE":
        return datetime.min.replace(tzinfo=UTC)
    if bound == "MAXVALUE":
        return datetime.max.replace(tzinfo=UTC)
    return datetime.fromisoformat(bound.strip("'")).astimezone(UTC)


def parse_bound(bound: str) -> Span | None:
    """The span of ``pg_get_expr(relpartbound)`` read with TimeZone UTC; None for DEFAULT."""
    found = _BOUND.fullmatch(bound)
    if found is None:
        return None
    return Span(_moment(found.group(1)), _moment(found.group(2)))


def _quoted(name: str) -> str:
    if not _NAME.match(name):  # only names we made, or Postgres's own: never input
        raise PartitionError(f"unexpected partition name {name!r}")
    return f'"{name}"'


def _columns(table: Table) -> str:
    return ", ".join(_quoted(column.name) for column in table.columns)


async def _state(connection: AsyncConnection, parent: str) -> tuple[list[Partition], bool]:
    """The range partitions of ``parent``, and whether it has a default partition."""
    await connection.execute(text("SET LOCAL TimeZone = 'UTC'"))
    kind = (await connection.execute(_KIND, {"parent": parent})).scalar()
    if kind is None:
        raise PartitionError(f"there is no {parent} table: run `shadow-gateway migrate`")
    if kind != "p":
        raise PartitionError(
            f"the {parent} table is not partitioned: run `shadow-gateway migrate` "
            f"(revision {_MIGRATION[parent]})"
        )
    partitions, has_default = [], False
    for row in await connection.execute(_PARTITIONS, {"parent": parent}):
        span = parse_bound(row.bound)
        if span is None:
            has_default = True
        else:
            partitions.append(Partition(row.name, span))
    return partitions, has_default


async def _survey(
    connection: AsyncConnection,
    table: Table,
    config: PartitionsConfig,
    now: datetime,
    dry_run: bool,
) -> TableMaintenance:
    partitions, has_default = await _state(connection, table.name)
    default = _quoted(default_partition(table.name))
    strays: list[datetime] = []
    default_rows = 0
    if has_default:
        default_rows = int(
            (await connection.execute(text(f"SELECT count(*) FROM {default}"))).scalar() or 0
        )
        if default_rows:
            strays = list(
                (
                    await connection.execute(
                        text(f"SELECT DISTINCT date_trunc('day', created_at, 'UTC') FROM {default}")
                    )
                ).scalars()
            )
    found = plan(
        now,
        partitions,
        parent=table.name,
        interval=config.interval,
        ahead=config.ahead,
        retention_days=config.retention_days,
        strays=strays,
    )
    # str(): Table.name is a str subclass, which orjson takes for no dict key
    result = TableMaintenance(
        str(table.name), found, partitions, has_default, default_rows=default_rows
    )
    if dry_run and has_default:
        for partition in found.create:
            result.moved += await _count_default(
                connection, default, partition.span.start, partition.span.end
            )
        if found.cutoff is not None:
            result.expired = await _count_default(connection, default, None, found.cutoff)
    return result


async def _count_default(
    connection: AsyncConnection, default: str, start: datetime | None, end: datetime
) -> int:
    query = text(
        f"SELECT count(*) FROM {default} "
        "WHERE created_at >= coalesce(CAST(:start AS timestamptz), '-infinity') "
        "AND created_at < :end"
    )
    return int((await connection.execute(query, {"start": start, "end": end})).scalar() or 0)


async def _create(
    connection: AsyncConnection,
    table: Table,
    partition: Partition,
    has_default: bool,
    lock_timeout_s: float,
) -> int:
    """Make ``partition`` of ``table``, with the default partition's rows of its range."""
    parent, name, span = _quoted(table.name), _quoted(partition.name), partition.span
    bounds = {"start": span.start, "end": span.end}
    async with connection.begin():
        await _lock_timeout(connection, lock_timeout_s)
        await connection.execute(
            text(
                f"CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                "INCLUDING STORAGE INCLUDING COMPRESSION)"
            )
        )
        moved = 0
        if has_default:
            default, columns = _quoted(default_partition(table.name)), _columns(table)
            result = await connection.execute(
                text(
                    f"WITH moved AS (DELETE FROM {default} "
                    f"WHERE created_at >= :start AND created_at < :end RETURNING {columns}) "
                    f"INSERT INTO {name} ({columns}) SELECT {columns} FROM moved"
                ),
                bounds,
            )
            moved = result.rowcount
        # the bounds as literals: ATTACH takes no parameters; both are datetimes we computed
        await connection.execute(
            text(
                f"ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES "
                f"FROM ('{span.start.isoformat()}') TO ('{span.end.isoformat()}')"
            )
        )
    return moved


async def _drop(connection: AsyncConnection, partition: Partition, lock_timeout_s: float) -> None:
    async with connection.begin():
        await _lock_timeout(connection, lock_timeout_s)
        await connection.execute(text(f"DROP TABLE {_quoted(partition.name)}"))


async def _expire(
    connection: AsyncConnection, parent: str, cutoff: datetime, lock_timeout_s: float
) -> int:
    async with connection.begin():
        await _lock_timeout(connection, lock_timeout_s)
        result = await connection.execute(
            text(f"DELETE FROM {_quoted(default_partition(parent))} WHERE created_at < :cutoff"),
            {"cutoff": cutoff},
        )
    return result.rowcount


async def _drop_rollups(connection: AsyncConnection, cutoff: datetime) -> int:
    """Delete the rollups of the hours wholly before ``cutoff`` (small tables: one DELETE
    each, by their (route, hour) index), in one transaction."""
    dropped = 0
    async with connection.begin():
        for table in ROLLUP_TABLES:
            result = await connection.execute(
                text(f"DELETE FROM {table} WHERE hour <= :last"),
                {"last": cutoff - timedelta(hours=1)},
            )
            dropped += result.rowcount
    return dropped


async def _lock_timeout(connection: AsyncConnection, seconds: float) -> None:
    await connection.execute(text(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'"))


def _why(exc: DBAPIError) -> str:
    return str(exc.orig or exc).splitlines()[0]


async def maintain(
    engine: AsyncEngine,
    config: PartitionsConfig,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    lock_timeout_s: float = 5.0,
) -> Maintenance:
    """Create the partitions ``config`` asks for ahead and drop those past its retention, in
    every table of :data:`PARTITIONED`.

    Raises :class:`PartitionError` when one of them is missing or not partitioned (before
    changing anything), or when another run holds the advisory lock for longer than
    ``lock_timeout_s``.
    """
    now = now or datetime.now(UTC)
    async with engine.connect() as connection:
        if dry_run:
            async with connection.begin():
                return await _survey_all(connection, config, now, dry_run=True)
        await _advisory_lock(connection, lock_timeout_s)
        try:
            async with connection.begin():
                result = await _survey_all(connection, config, now, dry_run=False)
            for table, done in zip(PARTITIONED, result.tables, strict=True):
                await _apply(connection, table, done, lock_timeout_s)
            if result.cutoff is not None:
                result.rollup_rows_dropped = await _drop_rollups(connection, result.cutoff)
        finally:
            async with connection.begin():
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY}
                )
    return result


async def _survey_all(
    connection: AsyncConnection, config: PartitionsConfig, now: datetime, dry_run: bool
) -> Maintenance:
    tables = [await _survey(connection, table, config, now, dry_run) for table in PARTITIONED]
    return Maintenance(dry_run, tables)


async def _advisory_lock(connection: AsyncConnection, lock_timeout_s: float) -> None:
    try:
        async with connection.begin():
            await _lock_timeout(connection, lock_timeout_s)
            await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_KEY})
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
            raise PartitionError(
                f"another replica (or `shadow-gateway partitions`) has been keeping the "
                f"partitions for over {lock_timeout_s:g}s; try again later"
            ) from exc
        raise


async def _apply(
    connection: AsyncConnection, table: Table, result: TableMaintenance, lock_timeout_s: float
) -> None:
    has_default = result.has_default
    for partition in result.plan.create:
        try:
            result.moved += await _create(connection, table, partition, has_default, lock_timeout_s)
        except DBAPIError as exc:
            result.failed.append((f"create {partition.name}", _why(exc)))
            _log.warning("cannot create partition %s: %s", partition.name, _why(exc))
        else:
            result.created.append(partition.name)
    for partition in result.plan.drop:
        try:
            await _drop(connection, partition, lock_timeout_s)
        except DBAPIError as exc:
            result.failed.append((f"drop {partition.name}", _why(exc)))
            _log.warning("cannot drop partition %s: %s", partition.name, _why(exc))
        else:
            result.dropped.append(partition.name)
    if result.plan.cutoff is not None and has_default:
        try:
            result.expired = await _expire(
                connection, table.name, result.plan.cutoff, lock_timeout_s
            )
        except DBAPIError as exc:
            result.failed.append((f"expire {result.default_partition} rows", _why(exc)))


class PartitionMaintainer(BackgroundLoop):
    """Runs :func:`maintain` at start-up and then every ``config.check_interval_s`` (within a
    minute after a run that failed: Postgres down at start-up, a lock not granted)."""

    task_name = "partition-maintainer"

    def __init__(self, engine: AsyncEngine, config: PartitionsConfig) -> None:
        super().__init__()
        self._engine = engine
        self._config = config
        self._failure = RecurringFailure(_log, "partition upkeep")

    async def _run(self) -> None:
        while True:
            pause = self._config.check_interval_s
            try:
                done = await maintain(self._engine, self._config)
            except Exception as exc:  # Postgres down, or another replica busy: soon again
                pause = min(pause, _RETRY_S)
                self._failure.failed(exc, f"retrying every {pause:g}s")
            else:
                self._failure.succeeded()
                if done.failed:  # a lock not granted in time: the next round finishes it
                    pause = min(pause, _RETRY_S)
                for table in done.tables:
                    if table.changed:
                        _log.info(
                            "partitions of %s: created %s, dropped %s; %d row(s) moved out of "
                            "%s, %d expired",
                            table.table,
                            ", ".join(table.created) or "none",
                            ", ".join(table.dropped) or "none",
                            table.moved,
                            table.default_partition,
                            table.expired,
                        )
            await asyncio.sleep(pause)
