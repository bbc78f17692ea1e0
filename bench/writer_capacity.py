"""The log pipeline's own capacity: rows/s one real ``LogWriter`` sustains into one Postgres,
what each row costs Postgres, and the writer's COPY against the ``unnest`` statement before it.

    .venv/bin/python bench/writer_capacity.py [--rows 10000] [--database NAME] [--json FILE]

Makes and drops the database ``--database`` (default ``bench_writer_capacity``; the real
schema, by the migrations: partitioned ``requests``, ``student_answers``, the rollup triggers of
0015, lz4 on the large jsonb columns of 0016). Records are built by the gateway's own functions
(``teacher_half``, ``student_half`` with 160 tokens of logprobs, ``answer_row``): per request a
teacher half and a student half of its ``requests`` row and one ``student_answers`` row, so a
request is two rows in Postgres.

1. **Writer runs.** For each batch size, a real :class:`LogWriter` (``wal=False``: Postgres's
   side, not the local write-ahead log, is measured) is fed as fast as it takes records: the
   producer submits both halves of a request back to back (they merge in the pending map, as
   they do when the student answers within a flush) and its answer, and waits only while two
   batches are pending. Two writers alternate, which goes first changing each time: the
   writer as it is (``copy``: binary COPY into its TEMP batch table, then ``INSERT … SELECT``)
   with the columns' compression of 0016 (lz4), and the writer before it (``unnest``:
   :class:`UnnestWriter`, the same writer with the ``INSERT … SELECT FROM unnest(…)`` statement
   and JSON sent as text) with the server's default (pglz): before and after. Rows/s = rows
   counted in Postgres / time from the first submit to ``close()`` returning. CPU seconds:
   this process (the writer and the producer) and Postgres (the writer's backend plus the
   cluster's checkpointer, background writer and walwriter, read with psutil). WAL bytes per
   row: ``pg_current_wal_lsn()`` before and after (cluster-wide: other databases' writes at
   the same time are counted too). Bytes on disk per row: heap (TOAST included) and index size
   of every partition of both tables. The middle batch size is also run with each writer on
   the other compression, with the rollup triggers disabled (on this database only), with two
   writers (two connections, as two gateways would have), and with student halves that carry
   no logprobs (five times ``--rows`` of those, or the run is over in a second).
2. **A batch's steps.** The COPY writer's statements one at a time, on a connection prepared as
   the writer's: encoding the records (client), ``COPY`` into the batch table, the ``INSERT …
   SELECT … ON CONFLICT`` (new rows), ``COMMIT``; per table, ms per row.
3. **Postgres's share.** Server time per row of the largest value, the student's logprobs:
   parsed as jsonb or json, and inserted as jsonb with each TOAST compression.

Prints markdown tables; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import orjson
import psutil
from alembic.script import ScriptDirectory
from prometheus_client import CollectorRegistry
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from gateway.clients.upstream import StudentReply
from gateway.config.sections import LogWriterConfig
from gateway.core.confidence import confidence
from gateway.db.engine import plain_dsn
from gateway.db.migrate import alembic_config, upgrade
from gateway.db.writer import _ANSWERS, _JSON_NUL, _REQUESTS, LogWriter, _Target, merge
from gateway.metrics import Metrics
from gateway.shadow.answers import answer_row
from gateway.shadow.records import Reading, RowIdentity, student_half, teacher_half

DATABASE = "bench_writer_capacity"  # --database
TABLES = ("requests", "student_answers")
_BACKGROUND = ("checkpointer", "background writer", "walwriter")
Record = dict[str, Any]

# -- records ---------------------------------------------------------------------------------


def _completion(text: str, tokens: int, top: int) -> dict[str, Any]:
    content = [
        {
            "token": f" tok{t}",
            "logprob": -0.013 * t,
            "bytes": [32, 116, 111, 107],
            "top_logprobs": [
                {"token": f" alt{t}_{k}", "logprob": -0.5 * (k + 1), "bytes": [32, 97]}
                for k in range(top)
            ],
        }
        for t in range(tokens)
    ]
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1765000000,
        "model": "student-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": content} if tokens else None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 96, "completion_tokens": max(tokens, 90), "total_tokens": 256},
    }


class Records:
    """The three records of request ``n``; nested values are shared between requests (the
    writer never mutates them, and orjson encodes them anew each time, as in the gateway)."""

    def __init__(self, logprobs: int) -> None:
        text = "The invoice was sent on 2025-03-14 and is due within thirty days. " * 6
        identity = self._identity("template", datetime.now(UTC))
        payload = {
            "model": "support-bot",
            "messages": [{"role": "user", "content": text}],
            "logprobs": True,
            "top_logprobs": 5,
        }
        self.teacher = teacher_half(
            identity,
            payload=payload,
            teacher_model="teacher-model",
            stream=False,
            status_code=200,
            teacher_status=200,
            answer=Reading.of("chat", _completion(text, 0, 0)),
            teacher_latency_s=0.8125,
            overhead_s=0.0009,
            completed_at=datetime.now(UTC),
        )
        reply = StudentReply("ok", 200, orjson.dumps(_completion(text, logprobs, 5)), 0.2145)
        student, _ = student_half(
            identity,
            student_model="student-1",
            student_url="http://127.0.0.1:8000/v1",
            reply=reply,
            confidence=lambda tokens: confidence("mean_prob", tokens),
        )
        # the verdict, added to the half once the teacher's answer is known (dispatcher)
        student.update(agreement_score=0.93, agree=True, agreement_reason="exact")
        self.student = student
        self.answer = answer_row(student, "student-1")
        self.student_json_bytes = len(orjson.dumps(student, default=str))
        self.identity_keys = tuple(identity.columns())

    @staticmethod
    def _identity(request_id: str, created_at: datetime) -> RowIdentity:
        return RowIdentity(
            request_id=request_id,
            route="support-bot",
            endpoint="chat",
            created_at=created_at,
            mode="shadow",
            slices={"tier": "free", "length": "short"},
            sticky_bucket=0.4242,
        )

    def of(self, run: str, n: int, now: datetime) -> tuple[Record, Record, Record]:
        identity = self._identity(f"{run}-{n:012d}", now - timedelta(microseconds=n)).columns()
        return (
            {**self.teacher, **identity},
            {**self.student, **identity},
            {**self.answer, **identity},
        )


# -- Postgres --------------------------------------------------------------------------------


def _database_url(base: str, name: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + name


async def _admin(base: str, statement: str) -> None:
    connection = await asyncpg.connect(plain_dsn(_database_url(base, "postgres")))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _reset(connection: asyncpg.Connection) -> None:
    rollups = await connection.fetch(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'rollup\\_%'"
    )
    names = [*TABLES, *(row["tablename"] for row in rollups)]
    await connection.execute(f"TRUNCATE {', '.join(names)}")
    await connection.execute("VACUUM ANALYZE")


async def _set_triggers(connection: asyncpg.Connection, enabled: bool) -> None:
    for table in TABLES:
        verb = "ENABLE" if enabled else "DISABLE"
        await connection.execute(f"ALTER TABLE {table} {verb} TRIGGER USER")


async def _sizes(connection: asyncpg.Connection) -> dict[str, int]:
    """Heap (with TOAST) and index bytes of every partition of both tables."""
    row = await connection.fetchrow(
        "SELECT sum(pg_table_size(c.oid))::bigint AS heap, "
        "sum(pg_indexes_size(c.oid))::bigint AS indexes "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent IN ('requests'::regclass, 'student_answers'::regclass)"
    )
    return {"heap": int(row["heap"] or 0), "indexes": int(row["indexes"] or 0)}


async def _lsn(connection: asyncpg.Connection) -> str:
    return str(await connection.fetchval("SELECT pg_current_wal_lsn()::text"))


async def _wal_since(connection: asyncpg.Connection, lsn: str) -> int:
    return int(
        await connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", lsn
        )
    )


class PostgresCpu:
    """CPU seconds of some Postgres processes, sampled every 10 ms: the writer's backend exits
    in ``close()``, so its last reading is the one kept (≤ 10 ms of its work can be missed)."""

    def __init__(self, processes: list[psutil.Process]) -> None:
        self.processes = processes
        self.last = {p.pid: self._read(p) or 0.0 for p in processes}
        self.first = dict(self.last)
        self._task = asyncio.create_task(self._sample())

    @staticmethod
    def _read(process: psutil.Process) -> float | None:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return None
        return float(times.user + times.system)

    def _update(self) -> None:
        for process in self.processes:
            value = self._read(process)
            if value is not None:
                self.last[process.pid] = value

    async def _sample(self) -> None:
        while True:
            self._update()
            await asyncio.sleep(0.01)

    def stop(self) -> float:
        self._task.cancel()
        self._update()
        return sum(self.last.values()) - sum(self.first.values())


def _postgres_processes(backend_pids: list[int]) -> list[psutil.Process]:
    """The writers' backends and their cluster's background writers (not other sessions)."""
    processes = [psutil.Process(pid) for pid in backend_pids]
    postmaster = processes[0].parent()
    if postmaster is not None:
        for child in postmaster.children():
            with_name = " ".join(child.cmdline())
            if any(name in with_name for name in _BACKGROUND):
                processes.append(child)
    return processes


# -- 1. the real writer, and the one before it ----------------------------------------------


def _migration_0016() -> ModuleType:
    """Migration 0016, whose statement sets the large jsonb columns' compression."""
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
    return script.get_revision("0016").module


_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def _unnest_statement(table: Table) -> str:
    """The writer's statement before COPY: ``INSERT … SELECT FROM unnest(…) ON CONFLICT``."""
    columns = [column.name for column in table.columns]
    types = [column.type.compile(dialect=_DIALECT) for column in table.columns]
    key = [column.name for column in table.primary_key.columns]
    arrays = ", ".join(f"${i}::{pg_type}[]" for i, pg_type in enumerate(types, 1))
    merged = ", ".join(
        f"{c} = COALESCE(EXCLUDED.{c}, {table.name}.{c})" for c in columns if c not in key
    )
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT * FROM unnest({arrays}) ON CONFLICT ({', '.join(key)}) DO UPDATE SET {merged}"
    )


def _kinds(table: Table) -> list[tuple[str, str]]:
    """Each column's name and how the writer encoded it: "json", "text" or "" (the driver)."""
    kinds = []
    for column in table.columns:
        pg_type = column.type.compile(dialect=_DIALECT)
        kinds.append((column.name, {"JSONB": "json", "TEXT": "text"}.get(pg_type, "")))
    return kinds


def _unnest_arrays(kinds: list[tuple[str, str]], batch: list[Record]) -> list[list[Any]]:
    """Its parameters, as the writer made them: one array per column, JSON as text."""
    arrays = []
    for column, kind in kinds:
        values = [record.get(column) for record in batch]
        if kind == "json":
            values = [None if v is None else _json_text(v) for v in values]
        elif kind == "text":
            values = [v.replace("\x00", "") if isinstance(v, str) else v for v in values]
        arrays.append(values)
    return arrays


def _json_text(value: Any) -> str:
    dumped = orjson.dumps(value)
    if b"\\u0000" in dumped:
        dumped = _JSON_NUL.sub(rb"\1", dumped)
    return dumped.decode()


_UNNEST = {t.name: (_unnest_statement(t.table), _kinds(t.table)) for t in (_REQUESTS, _ANSWERS)}


class UnnestWriter(LogWriter):
    """The writer before COPY: the same batching, merging and journaling, with one ``INSERT …
    SELECT FROM unnest(…)`` per table and batch (JSON sent as text, asyncpg's own jsonb codec)
    and no batch tables. An error ends the run (the bench's rows are all good)."""

    async def _prepare(self, connection: asyncpg.Connection) -> None:
        return None

    async def _write_rows(self, target: _Target, batch: list[Record]) -> bool:
        assert self._conn is not None
        statement, kinds = _UNNEST[target.name]
        await self._conn.execute(statement, *_unnest_arrays(kinds, batch), timeout=30)
        self._metrics.log_rows_written.inc(len(batch))
        return True


WRITERS: dict[str, type[LogWriter]] = {"unnest": UnnestWriter, "copy": LogWriter}


@dataclass(frozen=True)
class Run:
    batch_size: int
    writer: str = "copy"  # a key of WRITERS
    compression: str = "lz4"  # of the large jsonb columns (migration 0016's)
    triggers: bool = True
    writers: int = 1
    logprobs: int = 160


async def _set_compression(connection: asyncpg.Connection, method: str) -> None:
    await connection.execute(_migration_0016()._set_compression(method))


async def writer_run(
    url: str, connection: asyncpg.Connection, plan: Run, *, requests: int, name: str
) -> dict[str, Any]:
    await _reset(connection)
    await _set_compression(connection, plan.compression)
    await _set_triggers(connection, plan.triggers)
    records = Records(plan.logprobs)
    now = datetime.now(UTC)
    items = [records.of(name, n, now) for n in range(requests)]
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as directory:
        config = LogWriterConfig(
            wal=False,
            batch_size=plan.batch_size,
            queue_max=plan.batch_size * 8,
            memory_max=plan.batch_size * 8,
            write_timeout_s=30,
        )
        writers = []
        for k in range(plan.writers):
            journal = Path(directory) / str(k)
            journal.mkdir()
            writer = WRITERS[plan.writer](
                plain_dsn(url), journal, config, Metrics(CollectorRegistry())
            )
            await writer.start()
            writers.append(writer)
        backends = [w._conn.get_server_pid() for w in writers if w._conn is not None]
        processes = _postgres_processes(backends)
        lsn = await _lsn(connection)
        postgres_cpu = PostgresCpu(processes)
        own_cpu = time.process_time()
        started = time.perf_counter()
        high = 2 * plan.batch_size
        for n, (teacher, student, answer) in enumerate(items):
            writer = writers[n % plan.writers]  # a request's halves go to one writer
            writer.submit(teacher)
            writer.submit(student)
            writer.submit_answer(answer)
            # the writer has no "drained" event to wait on; polling every ms is enough
            while writer.queue_depth >= high:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        await asyncio.gather(*(w.close() for w in writers))
        elapsed = time.perf_counter() - started
        own_cpu = time.process_time() - own_cpu
        postgres_s = postgres_cpu.stop()
        wal = await _wal_since(connection, lsn)
        journaled = sum(w.journal.records for w in writers)
        rejected = list(Path(directory).glob("*/rejected.jsonl"))  # noqa: ASYNC240 (untimed)
    counts = await connection.fetchrow(
        "SELECT (SELECT count(*) FROM requests) AS r, (SELECT count(*) FROM student_answers) AS a"
    )
    rows = int(counts["r"]) + int(counts["a"])
    if rows != 2 * requests or journaled or rejected:
        raise SystemExit(f"run {name}: {rows} rows of {2 * requests}, journal {journaled}")
    stored = await connection.fetchval(
        "SELECT pg_column_compression(student_logprobs) FROM student_answers LIMIT 1"
    )
    await connection.execute("CHECKPOINT")  # sizes after the dirty pages are on disk
    sizes = await _sizes(connection)
    await _set_triggers(connection, True)
    return {
        **asdict(plan),
        "stored_compression": stored,
        "student_half_json_bytes": records.student_json_bytes,
        "rows": rows,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "writer_cpu_s": own_cpu,
        "postgres_cpu_s": postgres_s,
        "wal_bytes_per_row": wal / rows,
        "heap_bytes_per_row": sizes["heap"] / rows,
        "index_bytes_per_row": sizes["indexes"] / rows,
    }


def plan_runs(batches: list[int], logprobs: int) -> list[Run]:
    """Before (unnest, pglz) and after (copy, lz4) at each batch size, in turns; then, at the
    middle size, each writer on the other compression, and the variants of the writer."""
    middle = batches[len(batches) // 2]
    before = {"writer": "unnest", "compression": "pglz", "logprobs": logprobs}
    after = {"writer": "copy", "compression": "lz4", "logprobs": logprobs}
    plan = []
    for i, size in enumerate(batches):
        pair = [Run(size, **before), Run(size, **after)]  # type: ignore[arg-type]
        plan += pair if i % 2 == 0 else pair[::-1]
    plan += [
        Run(middle, writer="copy", compression="pglz", logprobs=logprobs),
        Run(middle, writer="unnest", compression="lz4", logprobs=logprobs),
        Run(middle, triggers=False, logprobs=logprobs),
        Run(middle, writers=2, logprobs=logprobs),
        Run(middle, writer="unnest", compression="pglz", logprobs=0),
        Run(middle, logprobs=0),
    ]
    return plan


# -- 2. a COPY batch's steps -----------------------------------------------------------------


def _merged(records: Records, run: str, requests: int) -> tuple[list[Record], list[Record]]:
    """One record per row, as the pending map makes them."""
    now = datetime.now(UTC)
    rows, answers = [], []
    for n in range(requests):
        teacher, student, answer = records.of(run, n, now)
        merge(teacher, student)
        rows.append(teacher)
        answers.append(answer)
    return rows, answers


async def batch_steps(
    url: str, connection: asyncpg.Connection, records: Records, *, batch: int, rounds: int
) -> list[dict[str, Any]]:
    """Each step of the writer's batch, timed alone, on new rows; medians of ``rounds`` after
    one warm-up. Server steps are wall time on the client (Postgres on the same machine)."""
    await _reset(connection)
    await _set_compression(connection, "lz4")
    writer = await asyncpg.connect(plain_dsn(url))
    # a writer never started (its journal is never opened): its set-up of ``writer`` only
    prepared = LogWriter("", Path.cwd(), LogWriterConfig(wal=False), Metrics())
    try:
        await prepared._prepare(writer)
        timings: dict[tuple[str, str], list[float]] = {}
        for round_ in range(rounds + 1):
            rows, answers = _merged(records, f"steps{round_}", batch)
            for target, chunk in ((_REQUESTS, rows), (_ANSWERS, answers)):
                steps: dict[str, float] = {}
                started = time.perf_counter()
                encoded = [target.row(record) for record in chunk]
                steps["encode (client)"] = time.perf_counter() - started
                await writer.execute(prepared._begin[target.name])  # BEGIN; CREATE … IF NOT …
                started = time.perf_counter()
                await writer.copy_records_to_table(
                    target.batch_table, records=encoded, columns=target.columns
                )
                steps["COPY into the batch table"] = time.perf_counter() - started
                started = time.perf_counter()
                await writer.execute(target.upsert)
                steps["INSERT … SELECT … ON CONFLICT"] = time.perf_counter() - started
                started = time.perf_counter()
                await writer.execute("COMMIT")
                steps["COMMIT"] = time.perf_counter() - started
                if round_:
                    for step, seconds in steps.items():
                        timings.setdefault((target.name, step), []).append(seconds)
    finally:
        await writer.close()
    return [
        {"table": table, "step": step, "ms_per_row": statistics.median(t) * 1000 / batch}
        for (table, step), t in timings.items()
    ]


# -- 3. where Postgres's time goes -----------------------------------------------------------


async def postgres_share(
    connection: asyncpg.Connection, records: Records, *, rows: int = 1000, rounds: int = 5
) -> list[dict[str, Any]]:
    """Server time per row of the biggest value a row carries, the student's logprobs as JSON
    text, read from an uncompressed TEMP table: parsed as jsonb, as json, and inserted as
    jsonb (TOAST-compressed with pglz, then lz4). Best of ``rounds``."""
    document = orjson.dumps(records.student["student_logprobs"]).decode()
    await connection.execute("CREATE TEMP TABLE share_text (x text)")
    await connection.execute("ALTER TABLE share_text ALTER x SET STORAGE EXTERNAL")
    await connection.executemany("INSERT INTO share_text VALUES ($1)", [(document,)] * rows)
    steps = {
        "read the text": ("", "SELECT count(length(x)) FROM share_text"),
        "parse as jsonb": ("", "SELECT count(x::jsonb) FROM share_text"),
        "parse as json": ("", "SELECT count(x::json) FROM share_text"),
        "insert as jsonb, pglz": (
            "pglz",
            "INSERT INTO share_jsonb SELECT x::jsonb FROM share_text",
        ),
        "insert as jsonb, lz4": ("lz4", "INSERT INTO share_jsonb SELECT x::jsonb FROM share_text"),
    }
    results = []
    for step, (compression, statement) in steps.items():
        times = []
        for _ in range(rounds):
            if compression:
                await connection.execute(f"SET default_toast_compression = {compression}")
                await connection.execute("DROP TABLE IF EXISTS share_jsonb")
                await connection.execute("CREATE TEMP TABLE share_jsonb (y jsonb)")
            started = time.perf_counter()
            await connection.execute(statement)
            times.append(time.perf_counter() - started)
        results.append(
            {"step": step, "json_bytes": len(document), "ms_per_row": min(times) * 1000 / rows}
        )
    await connection.execute("RESET default_toast_compression")
    return results


# -- the whole run ---------------------------------------------------------------------------


def _print(
    runs: list[dict[str, Any]], steps: list[dict[str, Any]], share: list[dict[str, Any]]
) -> None:
    print()
    print(
        "| writer | TOAST | batch | writers | student logprobs | rollup triggers | rows | s "
        "| rows/s | writer CPU ms/row | Postgres CPU ms/row | WAL B/row | heap B/row "
        "| index B/row |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['writer']} | {r['stored_compression'] or r['compression']} "
            f"| {r['batch_size']} | {r['writers']} | {r['logprobs']} tokens "
            f"| {'on' if r['triggers'] else 'off'} | {r['rows']:,} "
            f"| {r['seconds']:.2f} | {r['rows_per_s']:,.0f} "
            f"| {r['writer_cpu_s'] * 1000 / r['rows']:.3f} "
            f"| {r['postgres_cpu_s'] * 1000 / r['rows']:.3f} | {r['wal_bytes_per_row']:,.0f} "
            f"| {r['heap_bytes_per_row']:,.0f} | {r['index_bytes_per_row']:,.0f} |"
        )
    print()
    print("A COPY batch's steps (lz4), ms per row, medians:")
    print()
    print("| table | step | ms per row |")
    print("|---|---|---|")
    for r in steps:
        print(f"| {r['table']} | {r['step']} | {r['ms_per_row']:.3f} |")
    print()
    print(f"Postgres's share: the student's logprobs ({share[0]['json_bytes']:,} bytes of JSON)")
    print()
    print("| step | server ms per row |")
    print("|---|---|")
    for r in share:
        print(f"| {r['step']} | {r['ms_per_row']:.3f} |")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    database = args.database
    url = _database_url(args.database_url, database)
    await _admin(args.database_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    await _admin(args.database_url, f"CREATE DATABASE {database}")
    try:
        await asyncio.to_thread(upgrade, url)
        records = Records(args.logprobs)
        print(f"student half: {records.student_json_bytes:,} bytes of JSON", flush=True)
        connection = await asyncpg.connect(plain_dsn(url))
        try:
            runs = []
            for i, item in enumerate(plan_runs(args.batches, args.logprobs)):
                print(f"writer run: {item}", flush=True)
                # rows without logprobs are written in about a second: five times as many
                rows = args.rows * (1 if item.logprobs else 5)
                runs.append(
                    await writer_run(url, connection, item, requests=rows // 2, name=f"w{i}")
                )
            print("a batch's steps", flush=True)
            steps = await batch_steps(
                url, connection, records, batch=args.steps_batch, rounds=args.steps_rounds
            )
            print("Postgres's share", flush=True)
            share = await postgres_share(connection, records)
        finally:
            await connection.close()
    finally:
        if not args.keep_database:
            await _admin(args.database_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    _print(runs, steps, share)
    return {
        "at": datetime.now(UTC).isoformat(),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "rows_per_run": args.rows,
        "student_half_json_bytes": records.student_json_bytes,
        "writer_runs": runs,
        "batch_steps": steps,
        "postgres_share": share,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows per run with logprobs")
    parser.add_argument(
        "--batches",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[200, 500, 1000],
        help="writer batch sizes (the 2nd also runs the variants)",
    )
    parser.add_argument("--logprobs", type=int, default=160, help="student tokens")
    parser.add_argument("--steps-batch", type=int, default=500, help="rows per timed batch")
    parser.add_argument("--steps-rounds", type=int, default=6, help="timed batches (+1 warm-up)")
    parser.add_argument("--database", default=DATABASE, help="made and dropped by the run")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    result = asyncio.run(run(args))
    print(f"\nload average at the end: {os.getloadavg()}")
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
