"""The CLI's start-up: ``shadow-gateway report … --json``, a new process each, on a small database.

    .venv/bin/python bench/cli_startup.py [--rows 5000] [--repeat 10] [--before DIR] [--keep]

Makes the database ``cli_helper_bench`` on the machine's Postgres (``--admin-url``), migrates
it with ``shadow-gateway migrate`` and fills it in SQL: ``--rows`` requests over the last eight
days (four tiers, three categories, two teacher versions, confidences, agreement), and for one
request in five the answers of two students. Then runs each command below ``--repeat`` times
as a new process (after one warm-up) and prints the best and the median wall time, start-up
included, and the median CPU time (user + system: on a shared machine it moves less with the
load than the wall time): ``--help``, ``report slices --help``, and the reports slices,
thresholds, drift and candidates with ``--json``. Drops the database at the end unless
``--keep``. Nothing is asserted.

``--before DIR`` compares with another copy of the code (``git archive COMMIT | tar -x -C
DIR``): each command then runs from it and from this tree in turn (the same venv, both as
``python -m gateway``), so that both see the same load on a shared machine.

The figures are what a person at a terminal waits for; ``python -X importtime -m gateway
report slices --help`` says where the start-up goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from rollups_bench import ROUTE, fill

DATABASE = "cli_helper_bench"
BIN = Path(sys.executable).parent
CONFIG = f"""\
routes:
  - name: {ROUTE}
    mode: shadow
    teacher: {{base_url: "http://127.0.0.1:9/v1", model: t}}
    students:
      - {{name: default, base_urls: ["http://127.0.0.1:9/v1"], model: s}}
      - {{name: rival, base_urls: ["http://127.0.0.1:9/v1"], model: r}}
    champion: default
"""


async def sql(url: str, query: str, *args: object) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(query, *args)
    finally:
        await connection.close()


def commands(end: datetime) -> dict[str, list[str]]:
    """name → the arguments after ``shadow-gateway``."""
    day = (end - timedelta(days=1)).isoformat()
    week = (end - timedelta(days=7)).isoformat()
    until = end.isoformat()
    return {
        "--help": ["--help"],
        "report slices --help": ["report", "slices", "--help"],
        "report slices, 1 day": ["report", "slices", ROUTE, "--since", day, "--until", until],
        "report thresholds, 7 days, tier": [
            *("report", "thresholds", ROUTE, "--since", week, "--until", until),
            *("--dimension", "tier"),
        ],
        "report drift, 1 day against the week before": [
            *("report", "drift", ROUTE, "--since", day, "--until", until),
        ],
        "report candidates, 7 days": [
            *("report", "candidates", ROUTE, "--since", week, "--until", until),
            *("--baseline", "default"),  # no `serve` seeded the route's champion here
        ],
    }


def timed(command: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """The command's wall time and its CPU time (user + system), in seconds."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def cells(times: list[tuple[float, float]]) -> str:
    walls = [wall for wall, _ in times]
    cpu = statistics.median(cpu for _, cpu in times)
    return " | ".join(
        f"{seconds * 1000:.0f} ms" for seconds in (min(walls), statistics.median(walls), cpu)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--before",
        type=Path,
        help="another copy of the code (`git archive COMMIT | tar -x -C DIR`): each command "
        "then runs from it and from this tree in turn, both as `python -m gateway`",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    url = args.admin_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    end = datetime.now(UTC)
    asyncio.run(sql(args.admin_url, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
    asyncio.run(sql(args.admin_url, f"CREATE DATABASE {DATABASE}"))
    try:
        with tempfile.TemporaryDirectory() as folder:
            config = Path(folder) / "gateway.yaml"
            config.write_text(CONFIG)
            env = {**os.environ, "DATABASE_URL": url, "SHADOW_GATEWAY_CONFIG": str(config)}
            subprocess.run([str(BIN / "shadow-gateway"), "migrate"], env=env, check=True)
            asyncio.run(fill(url, args.rows, end, days=8))  # rollups_bench's rows
            asyncio.run(sql(url, "ANALYZE"))
            # name → (command, env); with --before, the other copy first, found by PYTHONPATH
            trees = {"": ([str(BIN / "shadow-gateway")], env)}
            if args.before:
                here = Path(__file__).resolve().parent.parent
                trees = {
                    "before": (
                        [sys.executable, "-m", "gateway"],
                        {**env, "PYTHONPATH": str(args.before)},
                    ),
                    "after": ([sys.executable, "-m", "gateway"], {**env, "PYTHONPATH": str(here)}),
                }
            print(f"{args.rows:,} requests; best and median of {args.repeat}, a new process each")
            header = " | ".join(
                " | ".join(f"{name} {figure}".strip() for figure in ("best", "median", "CPU"))
                for name in trees
            )
            print(f"\n| command | {header} |\n|---{'|---|---|---' * len(trees)}|")
            for name, arguments in commands(end).items():
                if arguments[0] == "report" and "--help" not in arguments:
                    arguments = [*arguments, "--json"]
                times: dict[str, list[tuple[float, float]]] = {tree: [] for tree in trees}
                for turn in range(args.repeat + 1):  # the first: a warm-up, not counted
                    for tree, (program, tree_env) in trees.items():
                        # cwd: not this tree, which `python -m` would put before PYTHONPATH
                        took = timed([*program, *arguments], tree_env, folder)
                        if turn:
                            times[tree].append(took)
                row = " | ".join(cells(times[tree]) for tree in trees)
                print(f"| `{name}` | {row} |", flush=True)
    finally:
        if not args.keep:
            asyncio.run(sql(args.admin_url, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))


if __name__ == "__main__":
    main()
