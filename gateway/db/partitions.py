"""Keeping ``requests``'s time partitions: created ahead, dropped past the retention.

:func:`maintain` reads the partitions that exist, asks :func:`gateway.core.partitions.plan`
what should change, and does it, each step in its own short transaction:

- *create* a partition as a plain table (``LIKE requests``), move into it any rows of its
  range that sit in ``requests_default``, then ``ATTACH PARTITION``. Attaching locks the parent
  only in SHARE UPDATE EXCLUSIVE mode, so the log writer and the reports carry on meanwhile;
  the brief ACCESS EXCLUSIVE lock is on the default partition, which stays small for this
  very reason (periods with rows in it get their own partition at the next run);
- *drop* a partition wholly older than ``retention_days`` (this one does lock the parent,
  briefly), and delete the default partition's rows older than that.

Every step waits at most ``lock_timeout_s`` for its locks; one that cannot have them is
reported and tried again at the next run, it never queues the writer behind it for long. Two
replicas (or a replica and the CLI) never work at once: the whole run holds a session-level
advisory lock, and the plan is made after taking it, from what is there then.

:class:`PartitionMaintainer` runs it in the gateway: at start-up, then every
``database.partitions.check_interval_s``.
"""

# ruff: noqa: S608  (identifiers below are partition names we make, quoted; values are bound)

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.background import BackgroundLoop, RecurringFailure
from gateway.config import PartitionsConfig
from gateway.core.partitions import DEFAULT_PARTITION, PARENT, Partition, Plan, Span, plan
from gateway.db.tables import requests

_log = logging.getLogger("shadow_gateway.partitions")

# pg_advisory_lock key: "sgw-part" as a 64-bit integer, shared by every replica and the CLI
ADVISORY_KEY = int.from_bytes(b"sgw-part", "big") & 0x7FFF_FFFF_FFFF_FFFF
_COLUMNS = ", ".join(column.name for column in requests.columns)
_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")
_NAME = re.compile(r"^[a-z0-9_]+$")
_RETRY_S = 60.0  # after a failed run, the next one comes this soon (or check_interval_s)

_KIND = text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:parent)")
_PARTITIONS = text(
    "SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound "
    "FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass(:parent) ORDER BY 1"
)
_STRAY_DAYS = text(f"SELECT DISTINCT date_trunc('day', created_at, 'UTC') FROM {DEFAULT_PARTITION}")


class PartitionError(Exception):
    """Partitions cannot be kept: the message says why and what to do."""


@dataclass
class Maintenance:
    """What a run planned and did (``dry_run``: planned only)."""

    plan: Plan
    dry_run: bool
    partitions: list[Partition] = field(default_factory=list)  # before the run
    has_default: bool = True  # whether requests_default exists
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved: int = 0  # rows moved from the default partition into new partitions
    expired: int = 0  # rows of the default partition deleted, past the retention
    default_rows: int = 0  # rows in the default partition (before the run)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (step, why)


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


async def _state(connection: AsyncConnection) -> tuple[list[Partition], bool]:
    """The range partitions of ``requests``, and whether it has a default partition."""
    await connection.execute(text("SET LOCAL TimeZone = 'UTC'"))
    kind = (await connection.execute(_KIND, {"parent": PARENT})).scalar()
    if kind is None:
        raise PartitionError("there is no requests table: run `shadow-gateway migrate`")
    if kind != "p":
        raise PartitionError(
            "the requests table is not partitioned: run `shadow-gateway migrate` (revision 0006)"
        )
    partitions, has_default = [], False
    for row in await connection.execute(_PARTITIONS, {"parent": PARENT}):
        span = parse_bound(row.bound)
        if span is None:
            has_default = True
        else:
            partitions.append(Partition(row.name, span))
    return partitions, has_default


async def _survey(
    connection: AsyncConnection, config: PartitionsConfig, now: datetime, dry_run: bool
) -> Maintenance:
    partitions, has_default = await _state(connection)
    strays: list[datetime] = []
    default_rows = 0
    if has_default:
        default_rows = int(
            (await connection.execute(text(f"SELECT count(*) FROM {DEFAULT_PARTITION}"))).scalar()
            or 0
        )
        if default_rows:
            strays = list((await connection.execute(_STRAY_DAYS)).scalars())
    found = plan(
        now,
        partitions,
        interval=config.interval,
        ahead=config.ahead,
        retention_days=config.retention_days,
        strays=strays,
    )
    result = Maintenance(found, dry_run, partitions, has_default, default_rows=default_rows)
    if dry_run and has_default:
        for span in found.create:
            result.moved += await _count_default(connection, span.start, span.end)
        if found.cutoff is not None:
            result.expired = await _count_default(connection, None, found.cutoff)
    return result


async def _count_default(connection: AsyncConnection, start: datetime | None, end: datetime) -> int:
    query = text(
        f"SELECT count(*) FROM {DEFAULT_PARTITION} "
        "WHERE created_at >= coalesce(CAST(:start AS timestamptz), '-infinity') "
        "AND created_at < :end"
    )
    return int((await connection.execute(query, {"start": start, "end": end})).scalar() or 0)


async def _create(
    connection: AsyncConnection, span: Span, has_default: bool, lock_timeout_s: float
) -> int:
    """Make the partition for ``span``, with the default partition's rows of that range."""
    name = _quoted(span.name)
    bounds = {"start": span.start, "end": span.end}
    async with connection.begin():
        await _lock_timeout(connection, lock_timeout_s)
        await connection.execute(
            text(
                f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                "INCLUDING STORAGE INCLUDING COMPRESSION)"
            )
        )
        moved = 0
        if has_default:
            result = await connection.execute(
                text(
                    f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "
                    f"WHERE created_at >= :start AND created_at < :end RETURNING {_COLUMNS}) "
                    f"INSERT INTO {name} ({_COLUMNS}) SELECT {_COLUMNS} FROM moved"
                ),
                bounds,
            )
            moved = result.rowcount
        # the bounds as literals: ATTACH takes no parameters; both are datetimes we computed
        await connection.execute(
            text(
                f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES "
                f"FROM ('{span.start.isoformat()}') TO ('{span.end.isoformat()}')"
            )
        )
    return moved


async def _drop(connection: AsyncConnection, partition: Partition, lock_timeout_s: float) -> None:
    async with connection.begin():
        await _lock_timeout(connection, lock_timeout_s)
        await connection.execute(text(f"DROP TABLE {_quoted(partition.name)}"))


async def _expire(connection: AsyncConnection, cutoff: datetime, lock_timeout_s: float) -> int:
    async with connection.begin():
        await _lock_timeout(connection, lock_timeout_s)
        result = await connection.execute(
            text(f"DELETE FROM {DEFAULT_PARTITION} WHERE created_at < :cutoff"),
            {"cutoff": cutoff},
        )
    return result.rowcount


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
    """Create the partitions ``config`` asks for ahead and drop those past its retention.

    Raises :class:`PartitionError` when ``requests`` is missing or not partitioned, or when
    another run holds the advisory lock for longer than ``lock_timeout_s``.
    """
    now = now or datetime.now(UTC)
    async with engine.connect() as connection:
        if dry_run:
            async with connection.begin():
                return await _survey(connection, config, now, dry_run=True)
        await _advisory_lock(connection, lock_timeout_s)
        try:
            async with connection.begin():
                result = await _survey(connection, config, now, dry_run=False)
            await _apply(connection, result, lock_timeout_s)
        finally:
            async with connection.begin():
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY}
                )
    return result


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


async def _apply(connection: AsyncConnection, result: Maintenance, lock_timeout_s: float) -> None:
    has_default = result.has_default
    for span in result.plan.create:
        try:
            result.moved += await _create(connection, span, has_default, lock_timeout_s)
        except DBAPIError as exc:
            result.failed.append((f"create {span.name}", _why(exc)))
            _log.warning("cannot create partition %s: %s", span.name, _why(exc))
        else:
            result.created.append(span.name)
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
            result.expired = await _expire(connection, result.plan.cutoff, lock_timeout_s)
        except DBAPIError as exc:
            result.failed.append(("expire default rows", _why(exc)))


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
                if done.created or done.dropped or done.moved or done.expired:
                    _log.info(
                        "partitions: created %s, dropped %s; %d row(s) moved out of the "
                        "default partition, %d expired",
                        ", ".join(done.created) or "none",
                        ", ".join(done.dropped) or "none",
                        done.moved,
                        done.expired,
                    )
            await asyncio.sleep(pause)
