"""The analyst surface at a million rows: reports and export on the partitioned ``requests``.

    .venv/bin/python bench/reports_bench.py [--rows 1000000] [--days 30] [--migration]

Makes a database of its own on the machine's Postgres (``--admin-url``), migrates it, makes
daily partitions for the data's days (as ``database.partitions.interval: day`` does), inserts
``--rows`` synthetic requests spread evenly over the last ``--days`` days (four tiers, three
categories, chat payloads of 60-500 characters, JSON answers, agreement, confidence,
fallbacks), ANALYZEs, and then measures:

- each report (slices over 1 and 7 days, one page of disagreements, thresholds over 7 days,
  drift of the last day against the week before), on a fresh engine each, so connecting is
  included; one warm-up run, then the best of ``--repeat``;
- ``shadow-gateway export`` as a child process: wall time and its own peak RSS (``wait4``),
  for every row, for ``--limit 50000`` and for ``--only-disagreements --max 10000``;
- the table's size on disk, summed over its partitions (``pg_total_relation_size`` of the
  parent is 0 for a partitioned table).

``--plain`` measures the same on the table before 0006 (one plain table), for comparison.
With ``--migration`` it first measures migration 0006 itself: the same rows inserted at
revision 0005 (one plain table), then the upgrade that partitions them, timed. The database is
dropped at the end unless ``--keep``. Prints a markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from gateway.config import GatewayConfig, PartitionsConfig
from gateway.db.engine import create_engine, plain_dsn
from gateway.db.migrate import upgrade
from gateway.db.partitions import maintain
from gateway.protocol.reports import Window
from gateway.services.reports import Reports

ROUTE = "support-bot"
BIN = Path(sys.executable).parent
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}}
TEACHER = {"base_url": "http://127.0.0.1:9/v1", "model": "t"}
CRITICAL = [
    {"dimension": "tier", "value": "enterprise", "min_agreement": 0.9, "min_samples": 20},
    {"dimension": "tier", "value": "gold", "min_agreement": 0.9, "min_samples": 20},
]
ROUTES = [
    {
        "name": ROUTE,
        "mode": "teacher",
        "teacher": TEACHER,
        "slices": {"critical": CRITICAL, "length_buckets": {"bounds": [100]}},
        "export": {"verifier": {"kind": "json_schema", "schema": SCHEMA}},
    }
]

ROWS_SQL = """
INSERT INTO requests (request_id, route, endpoint, created_at, mode, served_by, fallback_reason,
    slices, request_payload, teacher_status, teacher_output, teacher_finish_reason,
    student_output, student_confidence, agree, agreement_score, agreement_reason)
SELECT 'bench-' || g, '{route}', 'chat', $1::timestamptz - g * $2::float8 * interval '1 second',
    'shadow', CASE WHEN g % 20 = 0 THEN 'student' ELSE 'teacher' END,
    CASE WHEN g % 50 = 0 THEN 'low_confidence' END,
    jsonb_build_object('tier', (ARRAY['free', 'pro', 'enterprise', 'gold'])[1 + g % 4],
        'category', (ARRAY['billing', 'tech', 'sales'])[1 + g % 3]),
    jsonb_build_object('model', '{route}', 'messages', jsonb_build_array(
        jsonb_build_object('role', 'system', 'content', 'You answer support questions.'),
        jsonb_build_object('role', 'user', 'content', 'Customer question number ' || g
            || ': ' || repeat('my invoice looks wrong, ', 1 + g % 20)))),
    200, '{{"label": "' || (CASE WHEN g % 3 = 0 THEN 'no' ELSE 'yes' END) || '"}}', 'stop',
    '{{"label": "' || (CASE WHEN g % 7 = 0 THEN 'maybe' ELSE 'yes' END) || '"}}',
    (g % 100) / 100.0, g % 7 <> 0, (g % 10) / 10.0,
    CASE WHEN g % 7 = 0 THEN 'label_mismatch' END
FROM generate_series($3::int, $4::int) AS g
"""
SIZE_SQL = """
SELECT count(*) AS partitions, sum(pg_total_relation_size(relid)) AS total,
       sum(pg_relation_size(relid)) AS heap, sum(pg_indexes_size(relid)) AS indexes
FROM pg_partition_tree('requests') WHERE isleaf
"""
PLAIN_SIZE_SQL = """
SELECT 1 AS partitions, pg_total_relation_size('requests') AS total,
       pg_relation_size('requests') AS heap, pg_indexes_size('requests') AS indexes
"""


async def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(plain_dsn(url), timeout=10, command_timeout=3600)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def insert(url: str, rows: int, end: datetime, days: int) -> float:
    """``rows`` rows, newest at ``end``, evenly over ``days``; in chunks, so WAL stays small."""
    step_s = days * 86400 / rows
    started = time.perf_counter()
    chunk = 100_000
    for first in range(1, rows + 1, chunk):
        last = min(rows, first + chunk - 1)
        await sql(url, ROWS_SQL.format(route=ROUTE), end, step_s, first, last)
    return time.perf_counter() - started


def timed(url: str, config: GatewayConfig, work: Callable[[Reports], Awaitable[Any]]) -> float:
    async def go() -> float:
        started = time.perf_counter()
        engine = create_engine(url, config.database)
        try:
            await work(Reports(engine, config))
        finally:
            await engine.dispose()
        return time.perf_counter() - started

    return asyncio.run(go())


def export(url: str, config: Path, output: Path, *args: str) -> tuple[float, float, int]:
    """Wall seconds, the child's own peak RSS in MiB, and the examples written."""
    command = [str(BIN / "shadow-gateway"), "export", "--config", str(config)]
    started = time.perf_counter()
    with subprocess.Popen(
        [*command, "--route", ROUTE, "--output", str(output), *args],
        env={**os.environ, "DATABASE_URL": url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stderr is not None
        errors = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"export failed: {errors.decode()}")
    examples = sum(1 for _ in output.open("rb"))
    return elapsed, usage.ru_maxrss / 1024, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--migration", action="store_true", help="also time migration 0006")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument(
        "--plain", action="store_true", help="for comparison: the unpartitioned table (0005)"
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "SGW_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    name = f"sgw_bench_reports_{secrets.token_hex(3)}"
    url = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    end = datetime.now(UTC)
    lines: list[tuple[str, str]] = []
    asyncio.run(sql(args.admin_url, f'CREATE DATABASE "{name}"'))
    try:
        if args.migration:
            upgrade(url, "0005")
            inserted = asyncio.run(insert(url, args.rows, end, args.days))
            started = time.perf_counter()
            upgrade(url)
            lines.append(
                (f"migration 0006 on {args.rows:,} rows", f"{time.perf_counter() - started:.1f} s")
            )
            print(f"inserted at 0005 in {inserted:.0f} s; {lines[-1]}", flush=True)
            asyncio.run(sql(args.admin_url, f'DROP DATABASE "{name}" WITH (FORCE)'))
            asyncio.run(sql(args.admin_url, f'CREATE DATABASE "{name}"'))
        upgrade(url, "0005" if args.plain else "head")
        # only daily partitions, as a gateway with interval: day makes them
        for row in asyncio.run(
            sql(
                url,
                "SELECT relid::text AS part FROM pg_partition_tree('requests') "
                "WHERE isleaf AND relid::text <> 'requests_default' AND $1",
                not args.plain,
            )
        ):
            asyncio.run(sql(url, f'DROP TABLE "{row["part"]}"'))
        config = GatewayConfig.model_validate({"routes": ROUTES})

        async def partition() -> int:
            engine = create_engine(url, config.database)
            try:
                done = await maintain(
                    engine,
                    PartitionsConfig(interval="day", ahead=args.days + 2),
                    now=end - timedelta(days=args.days + 1),
                )
            finally:
                await engine.dispose()
            return len(done.created)

        made = 0 if args.plain else asyncio.run(partition())
        inserted = asyncio.run(insert(url, args.rows, end, args.days))
        started = time.perf_counter()
        asyncio.run(sql(url, "ANALYZE requests"))
        analyzed = time.perf_counter() - started
        print(
            f"{made} daily partitions; {args.rows:,} rows in {inserted:.0f} s; "
            f"ANALYZE {analyzed:.0f} s",
            flush=True,
        )
        if not args.plain:
            [in_default] = asyncio.run(sql(url, "SELECT count(*) AS n FROM requests_default"))
            assert in_default["n"] == 0, "rows in the default partition"

        day, week = Window(end - timedelta(days=1), end), Window(end - timedelta(days=7), end)
        reports: dict[str, Callable[[Reports], Awaitable[Any]]] = {
            "slices, 1 day, every dimension": lambda r: r.slices(ROUTE, day),
            "slices, 7 days, every dimension": lambda r: r.slices(ROUTE, week),
            "disagreements, one page of 50 with a slice filter": lambda r: r.disagreements(
                ROUTE, week, slices=[("tier", "gold")]
            ),
            "thresholds, 7 days, 21 candidates, dimension=tier": lambda r: r.thresholds(
                ROUTE, week, dimension="tier"
            ),
            "drift, 1 day against the week before": lambda r: r.drift(ROUTE, day),
        }
        for label, work in reports.items():
            timed(url, config, work)  # warm-up
            best = min(timed(url, config, work) for _ in range(args.repeat))
            lines.append((label, f"{best * 1000:.0f} ms"))
            print(f"{label}: {best * 1000:.0f} ms", flush=True)

        with tempfile.TemporaryDirectory() as folder:
            config_path = Path(folder) / "gateway.yaml"
            config_path.write_text(yaml.safe_dump({"routes": ROUTES}))
            for label, extra in (
                ("every row", []),
                ("--limit 50000 (stratified)", ["--limit", "50000"]),
                ("--only-disagreements --max 10000", ["--only-disagreements", "--max", "10000"]),
            ):
                output = Path(folder) / "out.jsonl"
                seconds, peak, examples = export(url, config_path, output, *extra)
                size = output.stat().st_size / 2**20
                lines.append(
                    (
                        f"export {label}: {examples:,} examples, {size:.0f} MiB",
                        f"{seconds:.1f} s, peak RSS {peak:.0f} MiB",
                    )
                )
                print(lines[-1], flush=True)

        [size] = asyncio.run(sql(url, PLAIN_SIZE_SQL if args.plain else SIZE_SQL))
        per_million = size["total"] * 1_000_000 / args.rows
        lines.append(
            (
                f"disk: {size['partitions']} partitions, heap {size['heap'] / 2**20:.0f} MiB + "
                f"indexes {size['indexes'] / 2**20:.0f} MiB",
                f"{size['total'] / 2**30:.2f} GiB in all, "
                f"{per_million / 2**30:.2f} GiB per million rows "
                f"({size['total'] / args.rows:.0f} bytes/row)",
            )
        )
        print(lines[-1], flush=True)
    finally:
        if not args.keep:
            asyncio.run(sql(args.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print("\n| measure | result |\n|---|---|")
    for label, value in lines:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
