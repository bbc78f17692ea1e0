"""The batched log writer: request path → memory → Postgres, or the journal when it is down.

It fills two tables the same way: ``requests`` (:meth:`LogWriter.submit`, one row per request,
written in halves) and ``student_answers`` (:meth:`LogWriter.submit_answer`, one row per
request, student and source). Neither call blocks or does I/O: each merges the record into one
pending map, keyed by the row's primary key less ``created_at`` (every half of a row carries
the same one): a bare request id for ``requests`` (the request path's key, as before answers
existed), ``("student_answers", (request_id, student, source))`` for answers, so the halves
of one row usually become one write. A single background task flushes on size or time; a
batch may hold both tables. Each table's rows are copied (binary ``COPY``, each JSON value
encoded once, by orjson, when its record is submitted: :func:`_encode_json`) into a TEMP
table of the writer's connection (``writer_batch_<table>``, made with the connection, again
by a batch that misses it, emptied at commit), then merged
with one ``INSERT … SELECT … ON CONFLICT DO UPDATE SET c = COALESCE(EXCLUDED.c, t.c)``, in one
transaction. Both statements are derived from the table's definition; the merge joins halves
already in the table, makes every write idempotent, routes rows to their partitions and fires
the tables' triggers as any ``INSERT`` does. The TEMP table compresses its values as the table
does, so TOAST compresses each value once.

When Postgres is unreachable, batches are appended to the local journal instead (an answer
record carries its table's name, see :mod:`gateway.db.journal`), and the task probes Postgres
every ``retry_interval_s``; once it answers, the journal (this process's file and any orphaned
files of dead processes) is replayed before new batches. A row Postgres or the driver rejects
for its content (not Postgres's availability) is retried alone and, if still refused, kept in
``rejected.jsonl`` next to the journal: it is never silently dropped. ``queue_max`` and
``memory_max`` count the records of both tables.

Observers (:meth:`LogWriter.observe`) see the ``requests`` records of every batch once it is in
Postgres, fresh or replayed, in the writer's own task: never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import operator
import re
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from gateway import tracing
from gateway.config import LogWriterConfig
from gateway.db.journal import TABLE_KEY, Journal, Record
from gateway.db.tables import requests, student_answers
from gateway.db.wal import WriteAheadLog
from gateway.metrics import Metrics

_log = logging.getLogger("shadow_gateway.writer")

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
# The partition key (migration 0006): part of each primary key, and the same on every half of
# a row (RowIdentity), so the pending map leaves it out of its keys and halves meet there.
_PARTITION_KEY = "created_at"
# Postgres text and jsonb cannot hold NUL; an escaped \u0000 (not an escaped backslash) is cut.
_JSON_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")
# jsonb's binary wire format: this version byte, then the JSON text.
_JSONB_VERSION = b"\x01"
# A column's TOAST compression (pg_attribute.attcompression), where the table sets one.
_COMPRESSION_OF = (
    "SELECT attrelid::regclass::text AS relation, attname, attcompression FROM pg_attribute "
    "WHERE attrelid IN (SELECT unnest($1::text[])::regclass) AND attnum > 0 "
    "AND NOT attisdropped AND attcompression <> ''"
)
_COMPRESSION_NAMES = {b"l": "lz4", b"p": "pglz"}


def batch_table(table: Table) -> str:
    """The writer connection's TEMP table that a batch of ``table``'s rows is copied into."""
    return f"writer_batch_{table.name}"


def batch_table_statement(table: Table, compression: Mapping[str, str] | None = None) -> str:
    """``CREATE TEMP TABLE IF NOT EXISTS`` for :func:`batch_table`: the table's columns and
    types, without its constraints (Postgres checks those on the merge, as on any insert),
    with the ``compression`` (column → method) the table's columns set, so TOAST compresses a
    value once and the merge copies it compressed. Emptied at every commit."""
    compression = compression or {}
    columns = ", ".join(
        f"{column.name} {column.type.compile(dialect=_DIALECT)}"
        + (f" COMPRESSION {compression[column.name]}" if column.name in compression else "")
        for column in table.columns
    )
    return f"CREATE TEMP TABLE IF NOT EXISTS {batch_table(table)} ({columns}) ON COMMIT DELETE ROWS"


def upsert_statement(table: Table, *, if_absent: bool = False) -> str:
    """``INSERT … SELECT … FROM`` the batch table ``ON CONFLICT (primary key) DO UPDATE …
    COALESCE``; with ``if_absent``, ``… DO NOTHING``: a row already there is left as it is.

    Built from our own table definition, never from input: no injection surface.
    """
    columns = ", ".join(column.name for column in table.columns)
    key = [column.name for column in table.primary_key.columns]
    insert = (
        f"INSERT INTO {table.name} ({columns}) "  # noqa: S608
        f"SELECT {columns} FROM {batch_table(table)} ON CONFLICT ({', '.join(key)}) DO "
    )
    if if_absent:
        return insert + "NOTHING"
    return (
        insert
        + "UPDATE SET "
        + ", ".join(
            f"{c.name} = COALESCE(EXCLUDED.{c.name}, {table.name}.{c.name})"
            for c in table.columns
            if c.name not in key
        )
    )


def _json(value: Any) -> bytes:
    """A jsonb value's text, encoded once: the connection's codec sends these bytes as they are."""
    dumped = orjson.dumps(value)
    if type(value) is orjson.Fragment:  # made by _encode_json at submit: its NULs are cut
        return dumped
    # The regex costs ~70 ns a byte (it is tried at every position): ~0.1 ms for an answer
    # with logprobs. Only the rare document holding an escaped NUL needs it.
    if b"\\u0000" in dumped:
        dumped = _JSON_NUL.sub(rb"\1", dumped)
    return dumped


def _encode_json(record: Record, columns: tuple[str, ...]) -> None:
    """Encode ``record``'s jsonb values once, in place, as orjson fragments: while they are still
    in the CPU's caches (the batch that writes them runs later, on values long out of them), and
    once for every copy of the record (the write-ahead log, a ``requests`` half's answer row,
    the COPY, a journal). A value orjson cannot encode is left as it is: the batch's encoding
    sets its record aside (``rejected.jsonl``)."""
    for column in columns:
        value = record.get(column)
        if value is not None and type(value) is not orjson.Fragment:
            with contextlib.suppress(TypeError):
                record[column] = orjson.Fragment(_json(value))


def _text(value: Any) -> Any:
    return value.replace("\x00", "") if isinstance(value, str) else value


def _jsonb_wire(value: bytes) -> bytes:
    return _JSONB_VERSION + value


def _jsonb_value(data: bytes) -> Any:
    return orjson.loads(data[1:])


@dataclass(frozen=True)
class _Target:
    """A table the writer fills: its batch table, its upserts, how to encode a record for the
    ``COPY``, a row's key."""

    table: Table
    upsert: str
    if_absent: str
    columns: tuple[str, ...]  # in the table's order
    # (position, encoder) of each column not left to the driver, applied to a value not None
    encoders: tuple[tuple[int, Callable[[Any], Any]], ...]
    json_columns: tuple[str, ...]  # encoded at submit (_encode_json)
    key: Callable[[Record], Hashable]  # the pending map's key of a record of this table

    @property
    def name(self) -> str:
        return str(self.table.name)

    @property
    def batch_table(self) -> str:
        return batch_table(self.table)

    @classmethod
    def of(cls, table: Table) -> _Target:
        names = tuple(column.name for column in table.columns)
        encoders: list[tuple[int, Callable[[Any], Any]]] = []
        for position, column in enumerate(table.columns):
            pg_type = column.type.compile(dialect=_DIALECT)
            if pg_type in ("JSONB", "TEXT"):
                encoders.append((position, _json if pg_type == "JSONB" else _text))
        get = operator.itemgetter(
            *(c.name for c in table.primary_key.columns if c.name != _PARTITION_KEY)
        )

        def named(record: Record) -> Hashable:  # a tuple with the table's name: never a str
            return (table.name, get(record))

        # requests: a bare request id, what submit() uses inline
        key: Callable[[Record], Hashable] = get if table is requests else named
        return cls(
            table,
            upsert_statement(table),
            upsert_statement(table, if_absent=True),
            names,
            tuple(encoders),
            tuple(names[position] for position, encode in encoders if encode is _json),
            key,
        )

    def row(self, record: Record) -> tuple[Any, ...]:
        """``record`` as the ``COPY`` sends it; raises TypeError or ValueError for a value
        that JSON cannot hold (orjson: an integer past 64 bits, a lone surrogate, …)."""
        values = list(map(record.get, self.columns))  # a loop in C: this runs for every row
        for position, encode in self.encoders:
            value = values[position]
            if value is not None:
                values[position] = encode(value)
        return tuple(values)


_REQUESTS = _Target.of(requests)
_ANSWERS = _Target.of(student_answers)
# A record's TABLE_KEY value → its table; no marker is a requests record (journals before
# student_answers existed hold only those).
_TARGETS: dict[str | None, _Target] = {
    None: _REQUESTS,
    _REQUESTS.name: _REQUESTS,
    _ANSWERS.name: _ANSWERS,
}

# A "shadow started" marker (LogWriter.started): in the write-ahead log only, never queued.
# Replayed from a dead process's segments, it fills the student half its call never wrote.
STARTED = "shadow_started"
# The champion's half of a requests row: filled only where no half was written.
_FILL_STUDENT_HALF = (
    "UPDATE requests AS r SET student_status = m.status, student_error = m.error "
    "FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[]) "
    "AS m(request_id, created_at, status, error) "
    "WHERE r.request_id = m.request_id AND r.created_at = m.created_at "
    "AND r.student_status IS NULL"
)
_ORPHAN_SCAN_INTERVAL_S = 60.0
# Replayed records per statement: small enough that building one batch's parameters on the
# event loop is a few milliseconds, even with logprobs (bench/replay_bench.py).
_REPLAY_BATCH = 100
_WRITTEN, _DOWN = object(), object()

_JOURNAL_BACKOFF_MAX_S = 10.0
# A pending record's write-ahead log segments (one entry per half merged into it). Never a
# column, never journaled: taken off before a batch is written or journaled.
WAL_KEY = "_wal"
_WAL_ROLL_S = 2.0  # a segment this old starts a new one, so written ones are deleted soon

DB_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
)


def merge(into: Record, update: Record) -> None:
    """Fold a later half into a pending record: set values win over missing ones."""
    for key, value in update.items():
        if value is not None:
            into[key] = value


class LogWriter:
    def __init__(
        self,
        dsn: str,
        journal_dir: Path,
        config: LogWriterConfig,
        metrics: Metrics,
        *,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._config = config
        self._metrics = metrics
        self._connect_timeout_s = connect_timeout_s
        self.journal = Journal(journal_dir)
        self.wal = WriteAheadLog(journal_dir) if config.wal else None
        self._next_wal_sync = 0.0
        self._rejected_path = journal_dir / "rejected.jsonl"
        # One map for both tables, in arrival order; see the module docstring for its keys.
        self._pending: dict[Hashable, Record] = {}
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_probe = 0.0
        self._next_orphan_scan = 0.0  # journals of dead processes: at start, then every minute
        self.database_up = False
        self._reported_down = False
        self._shedding = False
        # A journal the disk refused is tried again no sooner than this (monotonic), backing
        # off from retry_interval_s to _JOURNAL_BACKOFF_MAX_S: never once per request.
        self._journal_retry_at = 0.0
        self._journal_backoff_s = 0.0
        self._observers: list[Callable[[list[Record]], None]] = []
        # Each table's "BEGIN; CREATE TEMP TABLE IF NOT EXISTS <batch table>" (_prepare)
        self._begin: dict[str, str] = {}

    # -- request path -----------------------------------------------------------------------

    def submit(self, record: Record) -> None:
        """Queue a ``requests`` row, or a half of one; the writer owns ``record`` from here.
        It is in the write-ahead log (on disk, in the page cache) when this returns."""
        # _enqueue's body, inlined: this runs on the request path, twice per request.
        _encode_json(record, _REQUESTS.json_columns)
        segment = self.wal.append(record) if self.wal is not None else None
        key = record["request_id"]
        pending = self._pending.get(key)
        if pending is not None:
            merge(pending, record)
            if segment is not None:
                pending.setdefault(WAL_KEY, []).append(segment)
        else:
            if segment is not None:
                record[WAL_KEY] = [segment]
            self._pending[key] = record
        size = len(self._pending)
        if size >= self._config.batch_size or size >= self._config.queue_max:
            self._queued(size)

    def submit_answer(self, record: Record) -> None:
        """Queue a ``student_answers`` row, or a half of one; ``record`` is copied.

        As with ``requests``, every half carries the row's whole key (``request_id``,
        ``student``, ``source``, the request's ``created_at``) and its NOT NULL columns
        (``route``, ``endpoint``, ``slices``): Postgres checks those before it merges, and
        refuses (into ``rejected.jsonl``) a half without them.
        """
        record = {**record, TABLE_KEY: _ANSWERS.name}
        _encode_json(record, _ANSWERS.json_columns)
        self._enqueue(_ANSWERS.key(record), record)

    def _enqueue(self, key: Hashable, record: Record) -> None:
        segment = self.wal.append(record) if self.wal is not None else None
        pending = self._pending.get(key)
        if pending is not None:
            merge(pending, record)
            if segment is not None:
                pending.setdefault(WAL_KEY, []).append(segment)
        else:
            if segment is not None:
                record[WAL_KEY] = [segment]
            self._pending[key] = record
        size = len(self._pending)
        if size >= self._config.batch_size or size >= self._config.queue_max:
            self._queued(size)

    def started(self, marker: Record) -> int | None:
        """A student call is under way: ``marker``, the ``student_answers`` row it would leave
        if cut short (and ``champion``: whether it also completes the ``requests`` row), goes
        to the write-ahead log only. Pass what this returns to :meth:`finished` once the call's
        own half is submitted. A process killed in between leaves the marker on disk; its
        replay marks the call ``shutdown`` instead of leaving its half empty."""
        if self.wal is None:
            return None
        return self.wal.append({**marker, TABLE_KEY: STARTED})

    def finished(self, segment: int | None) -> None:
        """The call :meth:`started` announced has submitted its half: the marker is spent."""
        if segment is not None and self.wal is not None:
            self.wal.done((segment,))

    def _queued(self, size: int) -> None:
        """A batch is ready: wake the writer; past ``queue_max``, journal the backlog now."""
        if size >= self._config.batch_size and (self.database_up or self.journal.writable):
            self._wake.set()  # (with neither taking records, the writer's cycle retries)
        if size >= self._config.queue_max and self.journal.writable:
            # Postgres is not keeping up: move the backlog to disk rather than grow memory.
            # (A journal the disk refuses is retried by the writer's cycle, not per request.)
            self._spill(self._take(size))

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def observe(self, observer: Callable[[list[Record]], None]) -> None:
        """Call ``observer`` with the ``requests`` records (row halves) of each batch written
        to Postgres, in the writer's task, after the write: it must be quick and must not
        block; an error it raises is logged, never the writer's."""
        self._observers.append(observer)

    def _tell_observers(self, written: list[Record]) -> None:
        for observer in self._observers:
            try:
                observer(written)
            except Exception:
                _log.exception("a log writer observer failed")

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.journal.open()  # a journal the disk refuses is reported, not fatal
        self._metrics.journal_writable.set(1 if self.journal.writable else 0)
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="log-writer")

    async def close(self) -> None:
        """Write everything still pending (to Postgres, else the journal) and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        while self._pending:
            before = len(self._pending)
            await self._flush(self._take(self._config.batch_size))
            if len(self._pending) >= before:  # neither Postgres nor the disk took them
                _log.critical("exiting with %d log records unwritten", len(self._pending))
                break
        if self._conn is not None:
            with contextlib.suppress(*DB_UNAVAILABLE, asyncpg.PostgresError):
                await asyncio.wait_for(self._conn.close(), 2)
        self.journal.close()
        if self.wal is not None:
            self.wal.close()

    async def _run(self) -> None:
        interval = self._config.flush_interval_s
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self._cycle()
            except Exception:  # the writer must outlive any single bad cycle
                _log.exception("log writer cycle failed; will retry")

    async def _cycle(self) -> None:
        if self.wal is not None:
            await self._keep_wal()
        if not self.database_up and time.monotonic() >= self._next_probe:
            await self._connect()
        if not self.journal.writable and time.monotonic() >= self._journal_retry_at:
            self._probe_journal()
        if self.database_up and (
            self.journal.records or time.monotonic() >= self._next_orphan_scan
        ):
            await self._replay()
        while self._pending and (self.database_up or self.journal.writable):
            before = len(self._pending)
            await self._flush(self._take(self._config.batch_size))
            if len(self._pending) < self._config.batch_size or len(self._pending) >= before:
                break  # caught up, or neither Postgres nor the disk takes records now
        self._shed_overflow()
        self._metrics.log_queue_depth.set(len(self._pending))

    async def _keep_wal(self) -> None:
        """Start a new WAL segment now and then (written ones are deleted only once they are
        not the current one), and fsync it every ``wal_fsync_interval_s``, in a thread."""
        assert self.wal is not None
        self.wal.roll_if_older(_WAL_ROLL_S)
        now = time.monotonic()
        if now >= self._next_wal_sync:
            self._next_wal_sync = now + self._config.wal_fsync_interval_s
            await asyncio.to_thread(self.wal.sync)

    def _shed_overflow(self) -> None:
        """Bound memory when neither Postgres nor the disk takes records: drop the oldest.

        Only reachable with Postgres down *and* the journal unwritable; counted in
        ``shadow_gateway_log_records_dropped_total`` and logged once per episode.
        """
        excess = len(self._pending) - self._config.memory_max
        if excess <= 0:
            # The episode ends when records have somewhere to go again, not when the backlog
            # dips under the bound for a moment (that would log the line again and again).
            if self.database_up or self.journal.writable:
                self._shedding = False
            return
        for key in list(itertools.islice(self._pending, excess)):
            del self._pending[key]
        self._metrics.log_records_dropped.inc(excess)
        if not self._shedding:
            _log.critical(
                "neither Postgres nor the journal takes log records; dropping the oldest to "
                "stay within log_writer.memory_max (%d)",
                self._config.memory_max,
            )
        self._shedding = True

    # -- internals --------------------------------------------------------------------------

    def _take(self, count: int) -> list[Record]:
        keys = list(itertools.islice(self._pending, count))
        return [self._pending.pop(key) for key in keys]

    async def _connect(self) -> None:
        self._next_probe = time.monotonic() + self._config.retry_interval_s
        try:
            self._conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s)
            await asyncio.wait_for(self._prepare(self._conn), self._config.write_timeout_s)
        except (*DB_UNAVAILABLE, asyncpg.PostgresError) as exc:
            # a connection without its batch tables (the tables not migrated yet, say) takes
            # no batch: journaled, and probed again like an outage
            self._set_database_up(False, exc)
            return
        self._set_database_up(True)

    async def _prepare(self, connection: asyncpg.Connection) -> None:
        """What a connection's batches need, made on each new one (a TEMP table lives as long
        as its session): jsonb sent as the bytes :func:`_json` made, and the batch tables.
        Each batch's transaction makes its table again if it is missing (``IF NOT EXISTS``):
        behind a pool in transaction mode (PgBouncer), a transaction may run on a server
        connection other than the one that made them here."""
        await connection.set_type_codec(
            "jsonb",
            schema="pg_catalog",
            format="binary",
            encoder=_jsonb_wire,
            decoder=_jsonb_value,
        )
        targets = (_REQUESTS, _ANSWERS)
        compression: dict[str, dict[str, str]] = {}
        for row in await connection.fetch(_COMPRESSION_OF, [t.name for t in targets]):
            method = _COMPRESSION_NAMES.get(row["attcompression"])
            if method is not None:
                compression.setdefault(row["relation"], {})[row["attname"]] = method
        made = {t.name: batch_table_statement(t.table, compression.get(t.name)) for t in targets}
        await connection.execute("; ".join(made.values()))
        self._begin = {name: f"BEGIN; {statement}" for name, statement in made.items()}

    def _set_database_up(self, up: bool, exc: BaseException | None = None) -> None:
        """Record Postgres's state; one log line per change, not one per failed probe."""
        if up and not self.database_up:
            _log.info("log writer connected to Postgres")
            self._next_orphan_scan = 0.0  # a reconnect is a good moment to look for orphans
        elif not up and isinstance(exc, asyncpg.InsufficientPrivilegeError):
            if self.database_up or not self._reported_down:
                _log.error(
                    "Postgres refused the log writer (%s): grant its user what docs/deploy.md "
                    "lists (TEMPORARY on the database for the batch tables, INSERT and UPDATE "
                    "on the log tables); journaling log records to %s until then",
                    exc,
                    self.journal.directory,
                )
        elif not up and (self.database_up or not self._reported_down):
            _log.error(
                "Postgres unreachable (%s); journaling log records to %s until it returns",
                exc,
                self.journal.directory,
            )
        self._reported_down = not up
        if not up and self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self.database_up = up
        self._metrics.database_up.set(1 if up else 0)

    async def _flush(self, batch: list[Record]) -> None:
        if not batch:
            return
        if tracing.enabled:
            await self._traced_flush(batch)
        elif not (self.database_up and await self._write(batch)):
            self._spill(batch)

    async def _traced_flush(self, batch: list[Record]) -> None:
        """:meth:`_flush` in a span of its own: one per batch (see :mod:`gateway.tracing`)."""
        span = tracing.start_span("log write", {"records": len(batch)})
        written = False
        try:
            written = self.database_up and await self._write(batch)
            if not written:
                self._spill(batch)
        finally:
            span.set_attribute("db.system.name", "postgresql")
            span.set_attribute(
                tracing.ATTRIBUTE_PREFIX + "destination", "postgres" if written else "journal"
            )
            span.end()

    def _probe_journal(self) -> None:
        """Try a refused journal's disk again; back off while it keeps refusing."""
        if self.journal.probe():
            self._journal_backoff_s = 0.0
        else:
            self._back_off_journal()
        self._metrics.journal_writable.set(1 if self.journal.writable else 0)

    def _back_off_journal(self) -> None:
        self._metrics.journal_write_errors.inc()
        self._journal_backoff_s = min(
            _JOURNAL_BACKOFF_MAX_S,
            max(self._config.retry_interval_s, 2 * self._journal_backoff_s),
        )
        self._journal_retry_at = time.monotonic() + self._journal_backoff_s

    def _spill(self, batch: list[Record]) -> None:
        segments = _take_segments(batch)
        try:
            self.journal.append(batch)
        except OSError:
            self._back_off_journal()
            # Disk refused too (the journal logs that once): keep the records in memory, merged
            # with any half that arrived meanwhile; the next cycle tries again.
            for record, own in zip(batch, segments, strict=True):
                key = _pending_key(record)
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = record
                else:
                    merge(pending, record)
                if own:
                    pending.setdefault(WAL_KEY, []).extend(own)
        else:
            self._written(segments)
        finally:
            self._metrics.journal_writable.set(1 if self.journal.writable else 0)
            self._metrics.journal_records.set(self.journal.records)

    def _written(self, segments: list[list[int] | None]) -> None:
        """The records of a batch are in Postgres or the journal: their WAL lines are done."""
        if self.wal is not None:
            self.wal.done(segment for own in segments if own for segment in own)

    async def _write(self, batch: list[Record]) -> bool:
        """Upsert ``batch``, one statement per table; False (and Postgres marked down) if it
        could not all be written (the caller journals it whole: upserts make that safe)."""
        segments = _take_segments(batch)
        if not await self._upsert_batch(batch):
            for record, own in zip(batch, segments, strict=True):
                if own:  # back with the records, for the journal (or the next try)
                    record[WAL_KEY] = own
            return False
        self._written(segments)
        return True

    async def _upsert_batch(self, batch: list[Record]) -> bool:
        by_table: dict[str | None, list[Record]] = {}
        for record in batch:
            marker = record.get(TABLE_KEY)
            rows = by_table.get(marker)
            if rows is None:
                by_table[marker] = [record]
            else:
                rows.append(record)
        unknown: list[Record] = []
        for marker, rows in by_table.items():
            target = _TARGETS.get(marker)
            if target is None:  # a journal line of a table this version does not know
                unknown.extend({**r, "_rejected_because": "unknown table"} for r in rows)
            elif not await self._write_rows(target, rows):
                return False
        if unknown:  # last: a batch journaled again (Postgres gone meanwhile) sets none aside
            self._keep_rejected(unknown)
        if self._observers:
            self._tell_observers(
                [
                    record
                    for marker, rows in by_table.items()
                    if _TARGETS.get(marker) is _REQUESTS
                    for record in rows
                ]
            )
        return True

    async def _write_rows(self, target: _Target, batch: list[Record]) -> bool:
        rows: list[tuple[Any, ...] | None] = []  # each record encoded once, None if it cannot be
        refused: list[Record] = []
        for record in batch:
            try:
                rows.append(target.row(record))
            except (TypeError, ValueError) as exc:
                rows.append(None)
                refused.append({**record, "_rejected_because": str(exc)})
        encoded = [row for row in rows if row is not None]
        outcome = await self._upsert(target, target.upsert, encoded) if encoded else _WRITTEN
        if outcome is _WRITTEN:
            self._metrics.log_rows_written.inc(len(encoded))
        elif outcome is _DOWN:
            return False
        else:
            self._metrics.db_write_errors.labels("rejected").inc()
            _log.warning(
                "Postgres refused a batch of %d (%s); writing rows one by one", len(batch), outcome
            )
            for record, row in zip(batch, rows, strict=True):
                if row is None:
                    continue
                outcome = await self._upsert(target, target.upsert, [row])
                if outcome is _WRITTEN:
                    self._metrics.log_rows_written.inc()
                elif outcome is _DOWN:
                    return False  # the caller journals the whole batch; upserts make that safe
                else:
                    refused.append({**record, "_rejected_because": str(outcome)})
        if refused:
            self._keep_rejected(refused)
        return True

    async def _upsert(self, target: _Target, statement: str, rows: list[tuple[Any, ...]]) -> object:
        """Copy ``rows`` into ``target``'s batch table and run ``statement`` (one of its
        upserts) on them, in one transaction of at most ``write_timeout_s``: ``_WRITTEN``,
        ``_DOWN``, or the error with which the driver or Postgres refused the content."""
        connection = self._conn
        assert connection is not None
        timeout = self._config.write_timeout_s
        deadline = time.monotonic() + timeout
        try:
            await connection.execute(self._begin[target.name], timeout=_left(deadline))
        except Exception as exc:
            # No batch table (the TEMP privilege revoked, say): not the rows' fault, so not
            # rejected; journaled as in an outage (the dropped connection ends the transaction)
            return self._down(exc)
        try:
            await connection.copy_records_to_table(
                target.batch_table, records=rows, columns=target.columns, timeout=_left(deadline)
            )
            await connection.execute(statement, timeout=_left(deadline))
        except Exception as exc:
            if _refused_content(exc):
                return await self._roll_back(connection, exc)
            return self._failed(exc)
        try:
            await connection.execute("COMMIT", timeout=_left(deadline))
        except Exception as exc:
            return self._failed(exc)
        return _WRITTEN

    async def _roll_back(self, connection: asyncpg.Connection, refused: Exception) -> object:
        """End a refused batch's transaction (aborted: left open, the connection would refuse
        every later batch): ``refused``, or ``_DOWN`` if even that fails."""
        try:
            await connection.execute("ROLLBACK", timeout=self._config.write_timeout_s)
        except Exception as exc:
            return self._down(exc)
        return refused

    async def _execute(self, statement: str, args: Iterable[Any]) -> object:
        """Run one statement: ``_WRITTEN``, ``_DOWN``, or the error with which Postgres refused
        the content."""
        assert self._conn is not None
        try:
            await self._conn.execute(statement, *args, timeout=self._config.write_timeout_s)
        except Exception as exc:
            return self._failed(exc)
        return _WRITTEN

    def _failed(self, exc: Exception) -> object:
        """A write's error: the content refused (returned as it is), else ``_DOWN`` (Postgres
        marked down, its connection dropped)."""
        if _refused_content(exc):
            return exc
        if not isinstance(exc, DB_UNAVAILABLE):
            # Anything else (a driver left in a bad state, say) is handled as an outage: the
            # batch goes to the journal and the connection is replaced; it is never dropped.
            _log.error("unexpected error writing to Postgres", exc_info=exc)
        return self._down(exc)

    def _down(self, exc: Exception) -> object:
        self._metrics.db_write_errors.labels("unavailable").inc()
        self._set_database_up(False, exc)
        return _DOWN

    def _keep_rejected(self, records: Iterable[Record]) -> None:
        records = list(records)
        _log.error("Postgres refused %d record(s); kept in %s", len(records), self._rejected_path)
        with self._rejected_path.open("ab") as handle:
            handle.write(b"".join(_rejected_line(r) for r in records))

    async def _replay(self) -> None:
        self._next_orphan_scan = time.monotonic() + _ORPHAN_SCAN_INTERVAL_S
        replayed = 0
        sealed = self.journal.seal()  # appends meanwhile go to a new file
        if sealed is not None:
            own, held = sealed
            try:
                written = await self._replay_records(self.journal.read(own), [])
                if written is None:
                    return  # closed below, not deleted: an orphan for the next replay
                own.unlink()
                replayed += written
            finally:
                held.close()
        # Markers of student calls a dead process never finished, applied once every orphan's
        # records are written (a call's half may lie in a later segment than its marker); the
        # files holding them are deleted only after that.
        markers: list[Record] = []
        marked: list[Path] = []
        for path in self.journal.orphans():
            handle = self.journal.claim(path)
            if handle is None:
                continue
            try:
                before = len(markers)
                written = await self._replay_records(self.journal.read(path), markers)
                if written is None:
                    return
                if len(markers) > before:
                    marked.append(path)
                else:
                    path.unlink()
                replayed += written
            finally:
                handle.close()
        if markers:
            if not await self._apply_markers(markers):
                return  # the marked files are kept: replayed again, harmlessly, next time
            for path in marked:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if replayed:
            self._metrics.journal_replayed.inc(replayed)
            self._metrics.journal_records.set(self.journal.records)
            _log.info("replayed %d journaled record(s) into Postgres", replayed)

    async def _replay_records(self, records: Iterator[Record], markers: list[Record]) -> int | None:
        """Write a journal's records a batch at a time, as they are read: memory holds one
        batch, and requests are served between batches (a long outage's journal may hold
        hundreds of thousands). Lines are read and decoded in a thread, in batches of at most
        ``_REPLAY_BATCH``, so the event loop never stalls long on a big journal. Markers
        (:meth:`started`) are set aside in ``markers``. The count written, or None if Postgres
        went away meanwhile (the file is kept whole; upserts make writing its first batches
        again harmless)."""
        written = 0
        size = min(self._config.batch_size, _REPLAY_BATCH)
        while True:
            started = time.perf_counter()
            batch, found = await asyncio.to_thread(_read_batch, records, size)
            markers.extend(found)
            if not batch:
                if found:
                    continue  # a run of markers only: read on
                return written
            if not await self._write(batch):
                return None
            written += len(batch)
            # Paced: as long again idle as the batch took, so a backlog's replay takes at most
            # half of the process's (and Postgres's) time from the requests being served.
            await asyncio.sleep(time.perf_counter() - started)

    async def _apply_markers(self, markers: list[Record]) -> bool:
        """Write the student halves that the calls behind ``markers`` never wrote (as their
        markers have them: ``shutdown``); each fills only a half that is still empty (a call
        that finished wrote its own)."""
        rows = _dedupe([{**marker, TABLE_KEY: _ANSWERS.name} for marker in markers])
        for start in range(0, len(rows), _REPLAY_BATCH):
            chunk = rows[start : start + _REPLAY_BATCH]
            champions = [row for row in chunk if row.get("champion")]
            fill = [
                [row.get(column) for row in champions]
                for column in ("request_id", "created_at", "student_status", "student_error")
            ]
            outcome = await self._execute(_FILL_STUDENT_HALF, fill)
            if outcome is _WRITTEN:
                try:
                    encoded = [_ANSWERS.row(row) for row in chunk]
                except (TypeError, ValueError) as exc:
                    outcome = exc
                else:
                    outcome = await self._upsert(_ANSWERS, _ANSWERS.if_absent, encoded)
            if outcome is _DOWN:
                return False  # the marked files are kept for the next replay
            if outcome is not _WRITTEN:  # refused for its content: set aside, not retried
                self._keep_rejected({**row, "_rejected_because": str(outcome)} for row in chunk)
        _log.warning(
            "%d student call(s) were in flight when their process ended; each row without "
            "its student half now says so",
            len(rows),
        )
        return True


def _left(deadline: float) -> float:
    """The seconds to ``deadline`` (monotonic), as a timeout: never 0, which means "none"."""
    return max(deadline - time.monotonic(), 0.001)


def _refused_content(exc: Exception) -> bool:
    """Whether ``exc`` refuses a write's content rather than says Postgres is unavailable: the
    driver's encoding errors (a value its column cannot hold: TypeError, OverflowError,
    ValueError), or an error Postgres answered with that is not about the connection."""
    if isinstance(exc, TypeError | ArithmeticError | ValueError):
        return True
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, DB_UNAVAILABLE)


def _rejected_line(record: Record) -> bytes:
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError:  # a value orjson cannot encode (the reason it was refused, perhaps)
        return json.dumps(record, default=_plain).encode() + b"\n"


def _plain(value: Any) -> Any:
    """What ``json`` writes of a value it cannot: a fragment's JSON as its value, else text."""
    return orjson.loads(orjson.dumps(value)) if type(value) is orjson.Fragment else str(value)


def _read_batch(records: Iterator[Record], size: int) -> tuple[list[Record], list[Record]]:
    """The next ``size`` lines of a journal: its records, halves of a row merged, and its
    "shadow started" markers (run in a thread)."""
    lines = list(itertools.islice(records, size))
    markers = [line for line in lines if line.get(TABLE_KEY) == STARTED]
    if markers:
        lines = [line for line in lines if line.get(TABLE_KEY) != STARTED]
    return _dedupe(lines), markers


def _take_segments(batch: list[Record]) -> list[list[int] | None]:
    """Each record's WAL segments, taken off it (the key is never written anywhere)."""
    return [record.pop(WAL_KEY, None) for record in batch]


def _pending_key(record: Record) -> Hashable:
    return _TARGETS[record.get(TABLE_KEY)].key(record)


def _dedupe(records: list[Record]) -> list[Record]:
    """One entry per row, halves merged: one upsert may not touch a row twice."""
    merged: dict[Hashable, Record] = {}
    for index, record in enumerate(records):
        try:
            key = _pending_key(record)
            hash(key)
        except (KeyError, TypeError):
            # A journal line of an unknown table, or without its key: kept as it is, for
            # _write to set aside (Postgres refuses a row without its primary key).
            key = ("unkeyed", index)
        existing = merged.get(key)
        if existing is None:
            merged[key] = dict(record)
        else:
            merge(existing, record)
    return list(merged.values())
