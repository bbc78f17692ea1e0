"""What the rollups' dirty-marking triggers cost the log writer: its own statements (COPY into
its batch table, then the merge),
batches of ``--batch`` realistic rows (both halves of each request, and two students' answers),
with the triggers on and off, alternating, on the same database.

    .venv/bin/python bench/rollup_write_bench.py [--batches 200] [--batch 200]

Makes and drops the database ``bench_rollups_write``. Prints rows/s and ms per batch each
way; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway.db.engine import plain_dsn
from gateway.db.migrate import upgrade
from gateway.db.writer import (  # the writer's own statements and encoding
    _ANSWERS,
    _REQUESTS,
    _jsonb_value,
    _jsonb_wire,
    _Target,
    batch_table_statement,
)

DATABASE = "bench_rollups_write"
TRIGGERS = ("requests", "student_answers")


Rows = list[tuple[Any, ...]]


def batch(first: int, size: int, now: datetime) -> tuple[Rows, Rows, Rows]:
    """A teacher half and a student half of ``size`` requests, and two answers each."""
    teacher, student, answers = [], [], []
    for n in range(first, first + size):
        key = {"request_id": f"w-{n}", "created_at": now - timedelta(milliseconds=n)}
        common = {"route": "support-bot", "endpoint": "chat", "slices": {"tier": "gold"}}
        teacher.append(
            {
                **key,
                **common,
                "mode": "shadow",
                "served_by": "teacher",
                "request_payload": {"messages": [{"role": "user", "content": "x" * 300}]},
                "teacher_output": "an answer " * 20,
                "teacher_latency_ms": 350.0,
            }
        )
        student.append(
            {
                **key,
                **common,
                "mode": "shadow",
                "student_output": "an answer " * 20,
                "student_confidence": 0.8,
                "student_logprobs": {"content": [{"token": "a", "logprob": -0.1}] * 40},
                "agree": n % 3 > 0,
            }
        )
        for name in ("default", "rival"):
            answers.append({**key, **common, "student": name, "source": "live", "agree": True})
    return (
        [_REQUESTS.row(record) for record in teacher],
        [_REQUESTS.row(record) for record in student],
        [_ANSWERS.row(record) for record in answers],
    )


async def write(connection: asyncpg.Connection, target: _Target, rows: Rows) -> None:
    """One batch as the log writer writes it: COPY into the batch table, merge, commit."""
    async with connection.transaction():
        await connection.execute(batch_table_statement(target.table))
        await connection.copy_records_to_table(
            target.batch_table, records=rows, columns=target.columns
        )
        await connection.execute(target.upsert)


async def run(url: str, batches: int, size: int) -> None:
    connection = await asyncpg.connect(plain_dsn(url))
    await connection.set_type_codec(
        "jsonb", schema="pg_catalog", format="binary", encoder=_jsonb_wire, decoder=_jsonb_value
    )
    now = datetime.now(UTC)
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for index in range(batches):
            on = index % 2 == 0
            for table in TRIGGERS:
                state = "ENABLE" if on else "DISABLE"
                await connection.execute(f"ALTER TABLE {table} {state} TRIGGER USER")
            teacher, student, answers = batch(index * size, size, now)
            started = time.perf_counter()
            await write(connection, _REQUESTS, teacher)
            await write(connection, _REQUESTS, student)
            await write(connection, _ANSWERS, answers)
            times[on].append(time.perf_counter() - started)
    finally:
        await connection.close()
    for on in (False, True):
        median = statistics.median(times[on])
        rows = 4 * size  # two request halves and two answers per request
        print(
            f"triggers {'on ' if on else 'off'}: {median * 1000:.1f} ms per batch of {size} "
            f"requests (median of {len(times[on])}), {rows / median:,.0f} row writes/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    url = args.admin_url.rsplit("/", 1)[0] + f"/{DATABASE}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(plain_dsn(args.admin_url))
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f"DROP DATABASE IF EXISTS {DATABASE}"))
    asyncio.run(admin(f"CREATE DATABASE {DATABASE}"))
    try:
        upgrade(url)
        asyncio.run(run(url, args.batches, args.batch))
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))


if __name__ == "__main__":
    main()
