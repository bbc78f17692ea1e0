"""How long the event loop stalls while the log writer replays a journal into Postgres.

    .venv/bin/python bench/replay_bench.py [--records 20000] [--admin-url URL]

After an outage, the journal (or a killed process's write-ahead log) is replayed into
Postgres while the process keeps serving. Every stall of the event loop is latency an app sees.
This writes a journal of realistic records (each request a teacher half and a student half
with 160 tokens of logprobs), starts a log writer on a fresh database, and measures the event
loop's lag with a ticker that sleeps 1 ms at a time, during the replay and, for comparison,
while idle: percentiles and the worst stall, and the replay's rows per second.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from bench.wal_bench import record
from gateway.config.sections import LogWriterConfig
from gateway.db.engine import plain_dsn
from gateway.db.journal import Journal
from gateway.db.migrate import upgrade
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics

DATABASE = "shadow_gateway_replay_bench"


async def lag(stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        samples.append((time.perf_counter() - started - 0.001) * 1000)


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return f"p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, worst {ordered[-1]:.1f} ms"


def write_journal(directory: Path, records: int) -> None:
    """A journal as an outage leaves it: each request's teacher half and student half."""
    journal = Journal(directory)
    journal.open()
    for start in range(0, records, 1000):
        halves = []
        for i in range(start, min(records, start + 1000)):
            teacher = record(i, 0)
            student = {
                k: teacher[k] for k in ("request_id", "route", "endpoint", "created_at", "mode")
            }
            student.update(
                student_output=teacher["teacher_output"],
                student_response=record(i, 160)["teacher_response"],
                student_status="ok",
            )
            halves += [teacher, student]
        journal.append(halves)
    journal.close()
    size = sum(p.stat().st_size for p in directory.glob("journal-*.jsonl"))
    print(f"journal: {2 * records:,} records, {size / 1e6:.0f} MB")


async def run(url: str, directory: Path, records: int) -> None:
    idle: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(lag(stop, idle))
    await asyncio.sleep(2)
    stop.set()
    await ticker

    gc.freeze()  # as the gateway does after start-up: its long-lived heap out of the GC's scans
    writer = LogWriter(
        plain_dsn(url), directory, LogWriterConfig(wal=False), Metrics(CollectorRegistry())
    )
    replaying: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(lag(stop, replaying))
    started = time.perf_counter()
    await writer.start()
    connection = await asyncpg.connect(plain_dsn(url))
    try:
        # polling the table is the measurement's end, not a wait on our own event
        while (await connection.fetchval("SELECT count(*) FROM requests")) < records:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    finally:
        await connection.close()
    elapsed = time.perf_counter() - started
    stop.set()
    await ticker
    await writer.close()
    print(f"replayed {records:,} rows in {elapsed:.1f} s ({records / elapsed:,.0f} rows/s)")
    print(f"event loop lag, idle:      {figures(idle)}")
    print(f"event loop lag, replaying: {figures(replaying)}")
    print(f"mean lag while replaying: {statistics.mean(replaying):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    async def recreate() -> None:
        admin = await asyncpg.connect(plain_dsn(args.admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await admin.close()

    asyncio.run(recreate())
    url = args.admin_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    upgrade(url)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as directory:
        write_journal(Path(directory), args.records)
        asyncio.run(run(url, Path(directory), args.records))


if __name__ == "__main__":
    main()
