"""The reports at millions of rows, read through the hourly rollups: API and CLI, end to end.

    .venv/bin/python bench/rollups_bench.py [--rows 10000000] [--days 30] [--keep]

Makes the database ``--database`` (``bench_rollups``) on the machine's Postgres
(``--admin-url``), migrates it, makes daily partitions, and fills it in SQL (``INSERT …
SELECT generate_series``, one day per statement, not through the gateway): ``--rows``
requests evenly over the last ``--days`` days (four tiers, three categories, chat payloads of
60-500 characters, two teacher versions, confidence, agreement, fallbacks, student-served
rows) and, for one request in five, the answers of two students (``default`` and ``rival``)
in ``student_answers``. Then:

1. one rollup round over every hour (``gateway.services.rollups.refresh``), timed;
2. a gateway (``shadow-gateway serve``) on 127.0.0.1, and each report through the admin API
   (slices over a day and a week, thresholds, drift, candidates, the console's trend): one
   warm-up, then the best and the median of ``--repeat`` requests, each a new connection;
3. each report through the CLI (``shadow-gateway report … --json``, a new process each, so
   its start-up is included), and ``shadow-gateway --help`` alone;
4. the same reports with the rollups ignored (``Reports(…, rollups=False)``, in process), for
   comparison, unless ``--no-raw``.

Prints markdown tables; drops the database at the end unless ``--keep``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

from gateway.config import GatewayConfig, PartitionsConfig
from gateway.db.engine import create_engine, plain_dsn
from gateway.db.migrate import upgrade
from gateway.db.partitions import ROLLUP_TABLES, maintain
from gateway.protocol.reports import Window
from gateway.services.reports import Reports
from gateway.services.rollups import refresh

ROUTE = "support-bot"
DATABASE = "bench_rollups"
KEY = "bench-analyst-key"
BIN = Path(sys.executable).parent
CRITICAL = [
    {"dimension": "tier", "value": "enterprise", "min_agreement": 0.9, "min_samples": 20},
    {"dimension": "tier", "value": "gold", "min_agreement": 0.9, "min_samples": 20},
]
ROUTES = [
    {
        "name": ROUTE,
        "mode": "shadow",
        "teacher": {"base_url": "http://127.0.0.1:9/v1", "model": "t"},
        "students": [
            {"name": "default", "base_urls": ["http://127.0.0.1:9/v1"], "model": "s"},
            {"name": "rival", "base_urls": ["http://127.0.0.1:9/v1"], "model": "r"},
        ],
        "champion": "default",
        "slices": {"critical": CRITICAL},
    }
]

REQUESTS_SQL = """
INSERT INTO requests (request_id, route, endpoint, created_at, mode, served_by, fallback_reason,
    slices, request_payload, teacher_status, teacher_output, teacher_model_reported,
    teacher_fingerprint, student_output, student_confidence, agree, agreement_score,
    teacher_latency_ms, student_latency_ms)
SELECT 'b-' || g, '{route}', 'chat', $1::timestamptz - g * $2::float8 * interval '1 second',
    'shadow', CASE WHEN g % 20 = 0 THEN 'student' ELSE 'teacher' END,
    CASE WHEN g % 50 = 0 THEN 'low_confidence' WHEN g % 97 = 0 THEN 'out_of_scope' END,
    jsonb_build_object('tier', (ARRAY['free', 'pro', 'enterprise', 'gold'])[1 + g % 4],
        'category', (ARRAY['billing', 'tech', 'sales'])[1 + g % 3]),
    jsonb_build_object('model', '{route}', 'messages', jsonb_build_array(
        jsonb_build_object('role', 'system', 'content', 'You answer support questions.'),
        jsonb_build_object('role', 'user', 'content', 'Customer question number ' || g
            || ': ' || repeat('my invoice looks wrong, ', 1 + g % 20)))),
    200, 'The answer to question ' || g, 'big-model',
    CASE WHEN g < $5::int THEN 'fp-new' ELSE 'fp-old' END,
    'The answer to question ' || (g % 7), ((g * 37) % 100) / 100.0, g % 7 <> 0, (g % 10) / 10.0,
    300 + g % 700, 40 + (g * 13) % 160
FROM generate_series($3::int, $4::int) AS g
"""
ANSWERS_SQL = """
INSERT INTO student_answers (request_id, student, source, created_at, answered_at, route,
    endpoint, slices, student_model, student_status, student_output, student_latency_ms,
    student_confidence, agree, agreement_score)
SELECT r.request_id, s.name, 'live', r.created_at, r.created_at, r.route, r.endpoint, r.slices,
    s.name, 'ok', 'an answer', 30 + (n * 13 + s.k * 41) % 300 + 0.5, (n % 100) / 100.0,
    (n * (3 + s.k)) % 10 < 7 + s.k, 0.5
FROM (SELECT request_id, created_at, route, endpoint, slices,
        substr(request_id, 3)::int AS n FROM requests
      WHERE created_at >= $1 AND created_at < $2) AS r
CROSS JOIN (VALUES ('default', 0), ('rival', 1)) AS s(name, k)
WHERE r.n % 5 = 0 AND r.n BETWEEN $3::int AND $4::int
"""


async def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(plain_dsn(url), timeout=10, command_timeout=7200)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def fill(url: str, rows: int, end: datetime, days: int) -> float:
    """``rows`` requests, newest at ``end``, evenly over ``days``, a day per statement (so the
    WAL stays small), each day's answers after it."""
    step_s = days * 86400 / rows
    per_day = max(1, rows // days)
    started = time.perf_counter()
    for first in range(1, rows + 1, per_day):
        last = min(rows, first + per_day - 1)
        await sql(url, REQUESTS_SQL.format(route=ROUTE), end, step_s, first, last, rows // 10)
        newest = end - timedelta(seconds=(first - 1) * step_s) + timedelta(seconds=1)
        oldest = end - timedelta(seconds=last * step_s)
        await sql(url, ANSWERS_SQL, oldest, newest, first, last)
        print(f"  {last:,} / {rows:,} rows, {time.perf_counter() - started:.0f} s", flush=True)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def best_and_median(run: Callable[[], None], repeat: int) -> tuple[float, float]:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def reports(end: datetime) -> dict[str, tuple[str, dict[str, str], list[str]]]:
    """name → (API path, query, CLI arguments after ``report``)."""
    day = (end - timedelta(days=1)).isoformat()
    week = (end - timedelta(days=7)).isoformat()
    until = end.isoformat()
    return {
        "slices, 1 day": (
            "/admin/reports/slices",
            {"since": day, "until": until},
            ["slices", ROUTE, "--since", day, "--until", until],
        ),
        "slices, 7 days": (
            "/admin/reports/slices",
            {"since": week, "until": until},
            ["slices", ROUTE, "--since", week, "--until", until],
        ),
        "thresholds, 7 days, tier": (
            "/admin/reports/thresholds",
            {"since": week, "until": until, "dimension": "tier"},
            ["thresholds", ROUTE, "--since", week, "--until", until, "--dimension", "tier"],
        ),
        "drift, 1 day against the week before": (
            "/admin/reports/drift",
            {"since": day, "until": until},
            ["drift", ROUTE, "--since", day, "--until", until],
        ),
        "candidates, 7 days": (
            "/admin/reports/candidates",
            {"since": week, "until": until},
            ["candidates", ROUTE, "--since", week, "--until", until],
        ),
        "console trend, 7 days by day": (
            "/console/api/trend",
            {"since": week, "until": until},
            [],
        ),
    }


def serve(config: Path, url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "BENCH_ANALYST_KEY": KEY}
    process = subprocess.Popen(
        [str(BIN / "shadow-gateway"), "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the gateway did not become ready")


def in_process(url: str, config: GatewayConfig, work: Callable[[Reports], Awaitable[Any]]) -> None:
    async def go() -> None:
        engine = create_engine(url, config.database)
        try:
            await work(Reports(engine, config, rollups=False))
        finally:
            await engine.dispose()

    asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", default=DATABASE, help="the database to make (dropped)")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--reuse", action="store_true", help="use the kept database as it is")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-rows comparison")
    args = parser.parse_args()
    database = args.database
    url = args.admin_url.rsplit("/", 1)[0] + f"/{database}"
    config = GatewayConfig.model_validate({"routes": ROUTES})
    if args.reuse:
        end = asyncio.run(sql(url, "SELECT max(created_at) AS m FROM requests"))[0]["m"]
    else:
        end = datetime.now(UTC)
        asyncio.run(sql(args.admin_url, f'DROP DATABASE IF EXISTS "{database}"'))
        asyncio.run(sql(args.admin_url, f'CREATE DATABASE "{database}"'))
        upgrade(url)

        async def partition() -> None:
            engine = create_engine(url, config.database)
            try:
                await maintain(
                    engine,
                    PartitionsConfig(interval="day", ahead=args.days + 2),
                    now=end - timedelta(days=args.days + 1),
                )
            finally:
                await engine.dispose()

        asyncio.run(partition())
        print(f"filling {args.rows:,} requests over {args.days} days", flush=True)
        filled = asyncio.run(fill(url, args.rows, end, args.days))
        started = time.perf_counter()
        asyncio.run(sql(url, "ANALYZE"))
        print(f"filled in {filled:.0f} s; ANALYZE {time.perf_counter() - started:.0f} s")

        async def roll() -> int | None:
            engine = create_engine(url, config.database)
            try:
                return await refresh(engine, settle_s=0, now=end + timedelta(hours=2))
            finally:
                await engine.dispose()

        started = time.perf_counter()
        buckets = asyncio.run(roll())
        print(f"rollups: {buckets} hour buckets in {time.perf_counter() - started:.0f} s")
    answers = asyncio.run(sql(url, "SELECT count(*) AS n FROM student_answers"))[0]["n"]
    print(f"{answers:,} student answers; rollup tables (rows, bytes):")
    for table in ROLLUP_TABLES:
        count = f"SELECT count(*) AS n, pg_total_relation_size($1) AS bytes FROM {table}"  # noqa: S608
        size = asyncio.run(sql(url, count, table))[0]
        print(f"  {table}: {size['n']:,} rows, {size['bytes']:,} bytes")
    try:
        with tempfile.TemporaryDirectory() as workdir:
            config_path = Path(workdir) / "gateway.yaml"
            config_path.write_text(
                yaml.safe_dump(
                    {
                        "data_dir": workdir,
                        "routes": ROUTES,
                        "auth": {
                            "keys": [
                                {
                                    "name": "analyst",
                                    "key_env": "BENCH_ANALYST_KEY",
                                    "scopes": ["analyst"],
                                }
                            ]
                        },
                    }
                )
            )
            measure(url, config, config_path, end, args)
    finally:
        if not args.keep and not args.reuse:
            asyncio.run(sql(args.admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def measure(url: str, config: GatewayConfig, config_path: Path, end: datetime, args: Any) -> None:
    port = free_port()
    process = serve(config_path, url, port)
    lines = ["| report | API best | API median | CLI best | CLI median | raw rows, in process |"]
    lines.append("|---|---|---|---|---|---|")
    env = {**os.environ, "DATABASE_URL": url, "BENCH_ANALYST_KEY": KEY}
    try:
        for name, (path, query, cli) in reports(end).items():

            def api(path: str = path, query: dict[str, str] = query) -> None:
                response = httpx.get(
                    f"http://127.0.0.1:{port}{path}",
                    params={"route": ROUTE, **query},
                    headers={"Authorization": f"Bearer {KEY}"},
                    timeout=60,
                )
                response.raise_for_status()

            api_best, api_median = best_and_median(api, args.repeat)
            cli_cells = "- | -"
            if cli:
                command = [str(BIN / "shadow-gateway"), "report", *cli, "--json"]
                command += ["--config", str(config_path)]

                def run_cli(command: list[str] = command) -> None:
                    subprocess.run(command, env=env, check=True, capture_output=True)

                cli_best, cli_median = best_and_median(run_cli, args.repeat)
                cli_cells = f"{cli_best * 1000:.0f} ms | {cli_median * 1000:.0f} ms"
            raw = "-"
            if not args.no_raw and cli:
                raw = f"{raw_time(url, config, name, end) * 1000:.0f} ms"
            lines.append(
                f"| {name} | {api_best * 1000:.0f} ms | {api_median * 1000:.0f} ms | "
                f"{cli_cells} | {raw} |"
            )
            print(lines[-1], flush=True)
    finally:
        process.terminate()
        process.wait(10)
    helps = best_and_median(
        lambda: subprocess.run(
            [str(BIN / "shadow-gateway"), "--help"], check=True, capture_output=True
        ),
        args.repeat,
    )
    print()
    print("\n".join(lines))
    print(
        f"\n`shadow-gateway --help`: best {helps[0] * 1000:.0f} ms, median {helps[1] * 1000:.0f} ms"
    )


def raw_time(url: str, config: GatewayConfig, name: str, end: datetime) -> float:
    day = Window(end - timedelta(days=1), end)
    week = Window(end - timedelta(days=7), end)
    work: dict[str, Callable[[Reports], Awaitable[Any]]] = {
        "slices, 1 day": lambda r: r.slices(ROUTE, day),
        "slices, 7 days": lambda r: r.slices(ROUTE, week),
        "thresholds, 7 days, tier": lambda r: r.thresholds(ROUTE, week, dimension="tier"),
        "drift, 1 day against the week before": lambda r: r.drift(ROUTE, day),
        "candidates, 7 days": lambda r: r.candidates(ROUTE, week),
    }
    started = time.perf_counter()
    in_process(url, config, work[name])
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
