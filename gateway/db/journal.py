"""An append-only local journal for log records Postgres could not take.

Each process appends to its own file (``journal-<pid>-<random>.jsonl``) and holds an exclusive
``flock`` on it while alive. Any process may replay a file nobody holds, so records a killed
worker left behind are picked up by whichever worker runs next. Lines are written whole and
fsync'd per batch; a torn last line (power loss, SIGKILL mid-write) is skipped on replay and
counted, never fatal.

The format: one JSON object per line, one record (a row or a half of one), its columns by
name; timestamps as ISO 8601 strings (read back as ``datetime``). A line's table is named by
its ``"_table"`` key (:data:`TABLE_KEY`), which is not a column and is never inserted::

    {"request_id": "req_1", "created_at": "…", "route": "r", "teacher_output": "…"}
    {"request_id": "req_1", "student": "s1", "source": "live", "created_at": "…", …,
     "_table": "student_answers"}

A line without ``_table`` is a ``requests`` record: that is how every line was written before
``student_answers`` existed, so older journals replay unchanged. A line whose ``_table`` this
version does not know is replayed into ``rejected.jsonl``, not dropped; one that is not a JSON
object with a ``request_id`` (and, if any, a string ``_table``) counts as unreadable.

A journal the disk refuses (directory unwritable, disk full) is not fatal either: the journal
records the failure in ``error`` (None while writable), the caller keeps serving, and one line
is logged when it breaks and one when it recovers, not one per batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import DateTime

from gateway.db.tables import requests, student_answers

_log = logging.getLogger("shadow_gateway.journal")

Record = dict[str, Any]

TABLE_KEY = "_table"  # a record's table, where it is not ``requests``; never a column
# Read back as datetimes: asyncpg binds timestamptz from those, not from strings.
_DATETIME_COLUMNS = tuple(
    sorted(
        {
            column.name
            for table in (requests, student_answers)
            for column in table.columns
            if isinstance(column.type, DateTime)
        }
    )
)


def _decode(line: bytes) -> Record | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or "request_id" not in record:
        return None
    if not isinstance(record.get(TABLE_KEY, ""), str):
        return None
    for column in _DATETIME_COLUMNS:
        value = record.get(column)
        if isinstance(value, str):
            record[column] = datetime.fromisoformat(value)
    return record


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path: Path | None = None
        self._file: IO[bytes] | None = None
        self.records = 0  # records in this process's own file, not yet replayed
        self.error: str | None = None  # why the disk refused the last write; None = writable

    @property
    def writable(self) -> bool:
        return self.error is None

    def open(self) -> None:
        """Open this process's file; on failure, record it (``error``) and retry on append."""
        try:
            self._open()
        except OSError as exc:
            self._failed(exc)

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._path = self.directory / f"journal-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self._file = self._path.open("ab", buffering=0)  # written with os.write
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _failed(self, exc: OSError) -> None:
        error = f"{type(exc).__name__}: {exc.strerror or exc}"
        if self.writable:
            _log.error(
                "cannot write the journal in %s (%s): log records are kept in memory only "
                "until the disk or Postgres takes them",
                self.directory,
                error,
            )
        self.error = error

    def _recovered(self) -> None:
        if not self.writable:
            _log.warning("the journal in %s is writable again", self.directory)
        self.error = None

    def probe(self) -> bool:
        """Whether the disk takes a write in the journal's directory now (a small file written,
        fsync'd and removed); a journal that was refused is marked writable again if so. Lets
        health recover as soon as the disk does, without waiting for the next append."""
        try:
            if self._file is None:
                self._open()
            probe = self.directory / f".probe-{os.getpid()}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    probe.unlink()
        except OSError as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._path is not None and self.records == 0:
            self._path.unlink(missing_ok=True)

    def append(self, records: list[Record]) -> None:
        """Write ``records`` durably; raise OSError (after noting it) if the disk refuses.

        A write the disk refuses part-way is cut back, so the file never holds a torn line
        in the middle, and the flock is kept throughout (no other process may claim the file).
        """
        data = memoryview(b"".join(orjson.dumps(record) + b"\n" for record in records))
        try:
            if self._file is None:
                self._open()
            assert self._file is not None
            fd = self._file.fileno()
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        except OSError as exc:
            self._failed(exc)
            raise
        self.records += len(records)
        self._recovered()

    def orphans(self) -> list[Path]:
        """Journal files of processes that are gone (their lock is free)."""
        found = []
        for path in sorted(self.directory.glob("journal-*.jsonl")):
            if path == self._path:
                continue
            try:
                with path.open("rb") as handle:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            except BlockingIOError:
                continue  # a live process holds it
            except FileNotFoundError:
                continue  # another process replayed and removed it meanwhile
            found.append(path)
        return found

    def read_own(self) -> Iterator[Record]:
        if self._path is not None and self.records:
            yield from self.read(self._path)

    def read(self, path: Path) -> Iterator[Record]:
        torn = 0
        with path.open("rb") as handle:
            for line in handle:
                record = _decode(line)
                if record is None:
                    torn += 1
                    continue
                yield record
        if torn:
            _log.warning("journal %s: skipped %d unreadable line(s)", path.name, torn)

    def claim(self, path: Path) -> IO[bytes] | None:
        """Lock an orphan file for replay; None if someone else got it first."""
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def seal(self) -> tuple[Path, IO[bytes]] | None:
        """Hand over this process's file for replay, still locked (its handle), and start a
        new one at the next append: records appended while the sealed one is replayed go to
        the new file, never lost to a truncation. None when it holds nothing. Close the handle
        after deleting the replayed file; closed without deleting (Postgres went away), the
        file is an orphan that the next replay picks up."""
        if self._file is None or self._path is None or not self.records:
            return None
        sealed = (self._path, self._file)
        self._file, self._path, self.records = None, None, 0
        return sealed
