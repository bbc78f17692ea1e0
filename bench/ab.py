"""A/B: two versions of the gateway and the bare reference proxy, interleaved in one run.

bench/bench.py measures one gateway; on a shared or noisy machine two of its runs differ by
more than most changes do. This script starts the bare proxy (bench/bare_proxy.py) and the
gateway at two git revisions (or source trees) side by side, each pinned to the same core, and
loads them in turn for short rounds (a rotating order, so drift in the machine's load falls on
all three alike): closed loop, wrk with 32 connections, the instant upstream (nginx), shadowing
every request and logging to Postgres. Per round it records requests/s, p99 and the process's
CPU time per request (the steadiest figure: what the machine's other work changes least),
and prints the medians, each against the bare proxy's.

    .venv/bin/python bench/ab.py --a HEAD~1 --b HEAD              # two commits
    .venv/bin/python bench/ab.py --a main --b /path/to/a/checkout # a tree with edits

A revision is exported with ``git archive`` into the work dir; either way the version runs with
this environment's packages (PYTHONPATH, ``python -P -m gateway``).
Needs what bench/bench.py needs (nginx, libnginx-mod-http-echo, wrk, a Postgres at --pg-url).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from configs import ROUTE_FAST, gateway_config
from sysutil import (
    API_KEY,
    REPO,
    BenchError,
    Interrupted,
    PostgresPin,
    Processes,
    Started,
    cpu_seconds,
    http,
    process_tree,
    psql,
    run_checked,
    start_nginx,
    trap_signals,
    wait_until,
)

from bench import cpu_list, run_rate, run_wrk, settle, start_bare


def source_tree(spec: str, into: Path) -> Path:
    """A directory holding the gateway at ``spec``: a source tree as is, or a git revision
    exported."""
    path = Path(spec)
    if (path / "gateway" / "__init__.py").exists():
        return path.resolve()
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", spec], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise BenchError(f"{spec!r} is neither a source tree nor a git revision")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def start_gateway(
    args: argparse.Namespace,
    procs: Processes,
    workdir: Path,
    name: str,
    tree: Path,
    port: int,
    upstream_port: int,
) -> Started:
    database = f"{args.database}_{name.lower()}"
    config = workdir / f"gateway-{name}.yaml"
    (workdir / name).mkdir()
    config.write_text(gateway_config(workdir / name, upstream_port, upstream_port + 1, 1.0))
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "DATABASE_URL": f"{args.pg_url}/{database}",
        "SHADOW_GATEWAY_BENCH_KEY": API_KEY,
    }
    psql(args.pg_url, f"drop database if exists {database} with (force)")
    psql(args.pg_url, f"create database {database}")
    gateway = [sys.executable, "-P", "-m", "gateway"]
    run_checked([*gateway, "migrate", "--config", str(config)], env=env, timeout=120)
    started = procs.start(
        f"gateway {name}",
        [
            "taskset",
            "-c",
            args.gateway_cpu,
            *gateway,
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        workdir / f"gateway-{name}.log",
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(
        "gateway /healthz", lambda: http("GET", f"{base}/healthz")[0] == 200, 90, alive=started
    )
    return started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--a", required=True, help="git revision or source tree (the before)")
    parser.add_argument("--b", required=True, help="git revision or source tree (the after)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="of full load per round")
    parser.add_argument(
        "--rate", type=float, default=20.0, help="req/s of each round's open-loop part (0: none)"
    )
    parser.add_argument("--rate-seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--gateway-cpu", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--port", type=int, default=18095, help="A; B the next, bare the one after")
    parser.add_argument("--upstream-port", type=int, default=18085)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="shadow_gateway_ab")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    trap_signals()
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="sgw-ab-"))
    pin = PostgresPin(args.pg_url, cpu_list(args.load_cpus))
    try:
        trees = {
            "A": source_tree(args.a, workdir / "tree-a"),
            "B": source_tree(args.b, workdir / "tree-b"),
        }
        start_nginx(procs, workdir, args.load_cpus, args.upstream_port)
        pin.pin()
        targets: dict[str, Started] = {}
        for offset, name in enumerate(("A", "B")):
            targets[name] = start_gateway(
                args, procs, workdir, name, trees[name], args.port + offset, args.upstream_port
            )
        targets["bare"], _ = start_bare(
            procs, workdir, args.gateway_cpu, args.port + 2, {ROUTE_FAST: args.upstream_port}
        )
        ports = {"A": args.port, "B": args.port + 1, "bare": args.port + 2}
        urls = {
            name: f"http://127.0.0.1:{port}/v1/chat/completions" for name, port in ports.items()
        }
        names = list(targets)
        for name in names:  # warm-up
            run_wrk(args, urls[name], ROUTE_FAST, 2)
            settle(process_tree(targets[name].proc.pid))
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for number in range(args.rounds):
            order = names[number % 3 :] + names[: number % 3]
            for name in order:
                pids = process_tree(targets[name].proc.pid)
                before = cpu_seconds(pids)
                result = run_wrk(args, urls[name], ROUTE_FAST, args.seconds)
                settle(pids)  # the background work the round started counts too
                cpu = cpu_seconds(pids) - before
                measured = {
                    "rps": result["rps"],
                    "p99_ms": result["p99_us"] / 1000,
                    "cpu_ms": 1000 * cpu / max(result["requests"], 1),
                    "errors": result["errors"],
                }
                if args.rate > 0:
                    paced = run_rate(args, urls[name], ROUTE_FAST)
                    measured["rate_p50_ms"] = paced["p50_ms"]
                    measured["errors"] += paced["errors"]
                    settle(pids)
                rounds[name].append(measured)
                print(
                    f"round {number + 1} {name}: {result['rps']:.0f} req/s, "
                    f"{rounds[name][-1]['cpu_ms']:.3f} CPU ms/request",
                    flush=True,
                )
        print(table(rounds, args))
        return 0
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"benchmark failed: {exc}\nwork dir kept: {workdir}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        procs.stop_all()
        pin.restore()


def table(rounds: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[name])

    bare_rps, bare_p99 = median("bare", "rps"), median("bare", "p99_ms")
    lines = [
        f"{args.rounds} rounds of {args.seconds:g} s at {args.connections} connections and "
        f"{args.rate_seconds:g} s at {args.rate:g} req/s, medians; "
        f"A = {args.a}, B = {args.b}",
        "",
        "| | req/s | / bare | p99 ms | / bare | CPU ms per request | p50 ms at the rate "
        "| beyond bare's | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("bare", "A", "B"):
        rps, p99 = median(name, "rps"), median(name, "p99_ms")
        errors = sum(r["errors"] for r in rounds[name])
        paced = ["-", "-"]
        if args.rate > 0:
            p50 = median(name, "rate_p50_ms")
            paced = [f"{p50:.2f}", f"{p50 - median('bare', 'rate_p50_ms'):+.2f} ms"]
        lines.append(
            f"| {name} | {rps:,.0f} | {rps / bare_rps:.2f} | {p99:.1f} | {p99 / bare_p99:.2f}x "
            f"| {median(name, 'cpu_ms'):.3f} | {paced[0]} | {paced[1]} | {errors:.0f} |"
        )
    change = median("B", "cpu_ms") / median("A", "cpu_ms") - 1
    lines.append(
        f"\nB against A: CPU per request {change:+.1%}, req/s "
        f"{median('B', 'rps') / median('A', 'rps') - 1:+.1%}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
