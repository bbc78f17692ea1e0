"""The batched log writer: request path → memory → Postgres, or the journal when it is down.

``submit`` never blocks and never does I/O: it merges the record into a pending map keyed by
request id (so the two halves of one row usually become one write). A single background task
flushes on size or time with one ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE``
statement per batch, which merges halves already in the table and makes every write idempotent.

When Postgres is unreachable, batches are appended to the local journal instead, and the task
probes Postgres every ``retry_interval_s``; once it answers, the journal (this process's file
and any orphaned files of dead processes) is replayed before new batches. A row Postgres
rejects for its content (not its availability) is retried alone and, if still refused, kept
in ``rejected.jsonl`` next to the journal: it is never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from sqlalchemy.dialects import postgresql

from gateway.config import LogWriterConfig
from gateway.db.journal import Journal, Record
from gateway.db.tables import requests
from gateway.metrics import Metrics

_log = logging.getLogger("shadow_gateway.writer")

_COLUMNS = [column.name for column in requests.columns]
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
_TYPES = {column.name: column.type.compile(dialect=_DIALECT) for column in requests.columns}
_JSON_COLUMNS = {name for name, pg_type in _TYPES.items() if pg_type == "JSONB"}
# The primary key (request_id, created_at): created_at is the partition key (migration 0006).
# Every half of a row carries the request's one created_at (RowIdentity), so halves meet here.
_KEY = [column.name for column in requests.primary_key.columns]
# Built from our own table definition, never from input: no injection surface.
_UPSERT = (
    f"INSERT INTO requests ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"SELECT * FROM unnest({', '.join(f'${i}::{_TYPES[c]}[]' for i, c in enumerate(_COLUMNS, 1))}) "
    f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = COALESCE(EXCLUDED.{c}, requests.{c})" for c in _COLUMNS if c not in _KEY)
)
# Postgres text and jsonb cannot hold NUL; an escaped \u0000 (not an escaped backslash) is cut.
_JSON_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")

_ORPHAN_SCAN_INTERVAL_S = 60.0
_WRITTEN, _DOWN = object(), object()

DB_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
)


def _json(value: Any) -> str | None:
    if value is None:
        return None
    dumped = orjson.dumps(value)
    # The regex costs ~70 ns a byte (it is tried at every position): ~0.1 ms for an answer
    # with logprobs. Only the rare document holding an escaped NUL needs it.
    if b"\\u0000" in dumped:
        dumped = _JSON_NUL.sub(rb"\1", dumped)
    return dumped.decode()


def _column_arrays(batch: list[Record]) -> list[list[Any]]:
    arrays = []
    for column in _COLUMNS:
        values = [record.get(column) for record in batch]
        if column in _JSON_COLUMNS:
            values = [_json(value) for value in values]
        elif _TYPES[column] == "TEXT":
            values = [v.replace("\x00", "") if isinstance(v, str) else v for v in values]
        arrays.append(values)
    return arrays


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
        self._rejected_path = journal_dir / "rejected.jsonl"
        self._pending: dict[str, Record] = {}
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_probe = 0.0
        self._next_orphan_scan = 0.0  # journals of dead processes: at start, then every minute
        self.database_up = False
        self._reported_down = False
        self._shedding = False

    # -- request path -----------------------------------------------------------------------

    def submit(self, record: Record) -> None:
        pending = self._pending.get(record["request_id"])
        if pending is not None:
            merge(pending, record)
        else:
            self._pending[record["request_id"]] = record
        size = len(self._pending)
        if size >= self._config.batch_size:
            self._wake.set()
        if size >= self._config.queue_max and self.journal.writable:
            # Postgres is not keeping up: move the backlog to disk rather than grow memory.
            # (A journal the disk refuses is retried by the writer's cycle, not per request.)
            self._spill(self._take(size))

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

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
        if not self.database_up and time.monotonic() >= self._next_probe:
            await self._connect()
        if self.database_up and (
            self.journal.records or time.monotonic() >= self._next_orphan_scan
        ):
            await self._replay()
        while self._pending:
            before = len(self._pending)
            await self._flush(self._take(self._config.batch_size))
            if len(self._pending) < self._config.batch_size or len(self._pending) >= before:
                break  # caught up, or neither Postgres nor the disk takes records now
        self._shed_overflow()
        self._metrics.log_queue_depth.set(len(self._pending))

    def _shed_overflow(self) -> None:
        """Bound memory when neither Postgres nor the disk takes records: drop the oldest.

        Only reachable with Postgres down *and* the journal unwritable; counted in
        ``shadow_gateway_log_records_dropped_total`` and logged once per episode.
        """
        excess = len(self._pending) - self._config.memory_max
        if excess <= 0:
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
        except (*DB_UNAVAILABLE, asyncpg.PostgresError) as exc:
            self._set_database_up(False, exc)
            return
        self._set_database_up(True)

    def _set_database_up(self, up: bool, exc: BaseException | None = None) -> None:
        """Record Postgres's state; one log line per change, not one per failed probe."""
        if up and not self.database_up:
            _log.info("log writer connected to Postgres")
            self._next_orphan_scan = 0.0  # a reconnect is a good moment to look for orphans
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
        if self.database_up and await self._write(batch):
            return
        self._spill(batch)

    def _spill(self, batch: list[Record]) -> None:
        try:
            self.journal.append(batch)
        except OSError:
            # Disk refused too (the journal logs that once): keep the records in memory, merged
            # with any half that arrived meanwhile; the next cycle tries again.
            for record in batch:
                pending = self._pending.get(record["request_id"])
                if pending is None:
                    self._pending[record["request_id"]] = record
                else:
                    merge(pending, record)
        finally:
            self._metrics.journal_writable.set(1 if self.journal.writable else 0)
            self._metrics.journal_records.set(self.journal.records)

    async def _write(self, batch: list[Record]) -> bool:
        """Upsert ``batch``; False (and Postgres marked down) if it could not be written."""
        outcome = await self._upsert(batch)
        if outcome is _WRITTEN:
            return True
        if outcome is _DOWN:
            return False
        self._metrics.db_write_errors.labels("rejected").inc()
        _log.warning(
            "Postgres refused a batch of %d (%s); writing rows one by one", len(batch), outcome
        )
        refused: list[Record] = []
        for record in batch:
            outcome = await self._upsert([record])
            if outcome is _DOWN:
                return False  # the caller journals the whole batch; upserts make that safe
            if outcome is not _WRITTEN:
                refused.append({**record, "_rejected_because": str(outcome)})
        if refused:
            self._keep_rejected(refused)
        return True

    async def _upsert(self, batch: list[Record]) -> object:
        """``_WRITTEN``, ``_DOWN``, or the error with which Postgres refused the content."""
        assert self._conn is not None
        try:
            await self._conn.execute(_UPSERT, *_column_arrays(batch), timeout=30)
        except ValueError as exc:  # refused by the driver before sending (out of range, …)
            return exc
        except DB_UNAVAILABLE as exc:
            self._metrics.db_write_errors.labels("unavailable").inc()
            self._set_database_up(False, exc)
            return _DOWN
        except asyncpg.PostgresError as exc:
            return exc
        except Exception as exc:
            # Anything else (a driver left in a bad state, say) is handled as an outage: the
            # batch goes to the journal and the connection is replaced; it is never dropped.
            _log.exception("unexpected error writing to Postgres")
            self._metrics.db_write_errors.labels("unavailable").inc()
            self._set_database_up(False, exc)
            return _DOWN
        self._metrics.log_rows_written.inc(len(batch))
        return _WRITTEN

    def _keep_rejected(self, records: Iterable[Record]) -> None:
        records = list(records)
        _log.error("Postgres refused %d record(s); kept in %s", len(records), self._rejected_path)
        with self._rejected_path.open("ab") as handle:
            handle.write(b"".join(orjson.dumps(r) + b"\n" for r in records))

    async def _replay(self) -> None:
        self._next_orphan_scan = time.monotonic() + _ORPHAN_SCAN_INTERVAL_S
        replayed = 0
        if self.journal.records:
            written = await self._replay_records(self.journal.read_own())
            if written is None:
                return
            # No await since the file's end was read, so nothing was appended unread.
            self.journal.truncate_own()
            replayed += written
        for path in self.journal.orphans():
            handle = self.journal.claim(path)
            if handle is None:
                continue
            try:
                written = await self._replay_records(self.journal.read(path))
                if written is None:
                    return
                path.unlink()
                replayed += written
            finally:
                handle.close()
        if replayed:
            self._metrics.journal_replayed.inc(replayed)
            self._metrics.journal_records.set(self.journal.records)
            _log.info("replayed %d journaled record(s) into Postgres", replayed)

    async def _replay_records(self, records: Iterator[Record]) -> int | None:
        """Write a journal's records a batch at a time, as they are read: memory holds one
        batch, and requests are served between batches (a long outage's journal may hold
        hundreds of thousands). The count written, or None if Postgres went away meanwhile
        (the file is kept whole; upserts make writing its first batches again harmless)."""
        written = 0
        while batch := list(itertools.islice(records, self._config.batch_size)):
            if not await self._write(_dedupe(batch)):
                return None
            written += len(batch)
        return written


def _dedupe(records: list[Record]) -> list[Record]:
    """One entry per request id, halves merged: one upsert may not touch a row twice."""
    merged: dict[str, Record] = {}
    for record in records:
        existing = merged.get(record["request_id"])
        if existing is None:
            merged[record["request_id"]] = dict(record)
        else:
            merge(existing, record)
    return list(merged.values())
