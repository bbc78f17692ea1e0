"""Benchmark: what the gateway adds on top of calling the teacher upstream directly.

One run measures requests/s and p50/p99 latency of

  (a) the upstream called directly, and
  (b) the same upstream called through ``shadow-gateway serve`` in shadow mode
      (shadow_sample 1.0, so every request also makes a background student call; the student
      is the same upstream) with Postgres logging on,

for two upstream variants (answers at once, answers after 50 ms), each at full load (wrk, 32
connections) and at a fixed 20 requests/s (bench/loadgen.py, open loop). The upstream is nginx
returning a fixed chat.completion with logprobs, so it costs little CPU. The gateway is pinned
to one core (``taskset -c 0``); nginx, wrk, the load generator and the local Postgres to the
other core(s). After all runs it reports each gateway process's resident memory, the rows
logged, and prints markdown tables (docs/benchmarks.md holds the figures and the method).

Every process it starts runs in its own process group and is stopped on exit, Ctrl-C or error.
The machine's Postgres is not restarted; its processes' CPU affinity is set to the load
core(s) for the run and put back afterwards (--no-pin-postgres leaves it alone).

Usage:  .venv/bin/python bench/bench.py                 # full run, ~5 minutes
        .venv/bin/python bench/bench.py --direct-only   # nginx/wrk only, no gateway
        .venv/bin/python bench/bench.py --help
Needs:  apt-get install nginx libnginx-mod-http-echo wrk; a Postgres at --pg-url (trust auth).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs import ECHO_MODULE, ROUTE_FAST, ROUTE_SLOW, gateway_config
from hotspots import summarise
from hotspots import table as profile_table
from report import Result, gateway_metrics, machine_info, metric_by_label, report
from sysutil import (
    API_KEY,
    REPO,
    BenchError,
    CpuWindow,
    Interrupted,
    PostgresPin,
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
    psql,
    run_checked,
    start_nginx,
    status_field,
    tail,
    trap_signals,
    wait_until,
)

BENCH_DIR = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- load tools


def run_wrk(args: argparse.Namespace, url: str, model: str, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "BENCH_MODEL": model, "BENCH_API_KEY": API_KEY}
    cmd = [
        "taskset",
        "-c",
        args.load_cpus,
        "wrk",
        "-t",
        str(args.wrk_threads),
        "-c",
        str(args.connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH_DIR / "chat.lua"),
        url,
    ]
    out = run_checked(cmd, env=env, timeout=seconds + 60).stdout
    match = re.search(r"^BENCH_RESULT (.*)$", out, re.MULTILINE)
    if not match:
        raise BenchError(f"wrk printed no BENCH_RESULT line:\n{out}")
    values = dict(pair.split("=", 1) for pair in match.group(1).split())
    parsed = {key: float(value) for key, value in values.items()}
    parsed["errors"] = sum(parsed[key] for key in values if key.endswith("_err"))
    return parsed


def run_rate(args: argparse.Namespace, url: str, model: str) -> dict[str, Any]:
    cmd = [
        "taskset",
        "-c",
        args.load_cpus,
        sys.executable,
        str(BENCH_DIR / "loadgen.py"),
        url,
        "--rate",
        f"{args.rate:g}",
        "--duration",
        f"{args.rate_seconds:g}",
        "--warmup",
        "2",
        "--model",
        model,
        "--api-key",
        API_KEY,
    ]
    out = run_checked(cmd, timeout=args.rate_seconds + 120).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def settle(gateway_pids: list[int], max_s: float = 15.0) -> None:
    """Wait until the gateway is idle again (background shadow calls and log flushes done)."""
    if not gateway_pids:
        time.sleep(1.0)
        return
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        before = cpu_seconds(gateway_pids)
        time.sleep(0.5)
        if (cpu_seconds(gateway_pids) - before) / 0.5 < 0.03:
            return


@dataclass
class GatewayView:
    """Histogram deltas from the gateway's /metrics across one run, for one route."""

    metrics_url: str | None
    route: str
    before: dict[str, tuple[float, float]] = field(default_factory=dict)
    means: dict[str, float | None] = field(default_factory=dict)

    HISTOGRAMS = (
        ("teacher_ms", "shadow_gateway_teacher_latency_seconds"),
        ("overhead_ms", "shadow_gateway_overhead_seconds"),
        ("student_ms", "shadow_gateway_student_latency_seconds"),
    )

    def _read(self) -> dict[str, tuple[float, float]]:
        if self.metrics_url is None:
            return {}
        status, _, body = http("GET", self.metrics_url)
        text = body.decode(errors="replace") if status == 200 else ""
        return {
            key: (
                metric_by_label(text, f"{name}_sum", "route").get(self.route, 0.0),
                metric_by_label(text, f"{name}_count", "route").get(self.route, 0.0),
            )
            for key, name in self.HISTOGRAMS
        }

    def __enter__(self) -> GatewayView:
        self.before = self._read()
        return self

    def __exit__(self, *_exc: object) -> None:
        after = self._read()
        for key, (total, count) in after.items():
            total0, count0 = self.before.get(key, (0.0, 0.0))
            n = count - count0
            self.means[f"gw_{key}"] = round(1000 * (total - total0) / n, 3) if n else None


def measure_target(
    args: argparse.Namespace,
    path: str,
    urls: dict[int, str],
    models: dict[int, str],
    gateway_pids: list[int],
    metrics_url: str | None = None,
) -> tuple[list[Result], int]:
    """Warm-up, fixed-rate run and full-load run for each upstream variant.

    With metrics_url (the gateway's /metrics), each run also records the gateway's own view:
    mean teacher-call time and mean overhead over that run's requests, from histogram deltas.
    """
    results: list[Result] = []
    sent = 0
    for delay_ms, url in urls.items():
        model = models[delay_ms]
        print(f"[{path}, upstream {delay_ms} ms] warm-up {args.warmup:g} s", flush=True)
        sent += int(run_wrk(args, url, model, args.warmup)["requests"])
        settle(gateway_pids)

        print(
            f"[{path}, upstream {delay_ms} ms] {args.rate:g} req/s for {args.rate_seconds:g} s",
            flush=True,
        )
        with CpuWindow(gateway_pids) as window, GatewayView(metrics_url, model) as view:
            rate = run_rate(args, url, model)
        rate.update(view.means)
        sent += int(rate["sent"]) + round(2 * args.rate)
        results.append(
            Result(
                path,
                delay_ms,
                "rate",
                rate["rps"],
                rate["p50_ms"],
                rate["p99_ms"],
                rate["sent"],
                rate["errors"],
                window.gateway_cpu if gateway_pids else None,
                window.cores,
                rate,
            )
        )
        print(
            f"    p50 {rate['p50_ms']:.2f} ms  p99 {rate['p99_ms']:.2f} ms  "
            f"errors {rate['errors']}",
            flush=True,
        )
        settle(gateway_pids)

        print(
            f"[{path}, upstream {delay_ms} ms] full load, {args.connections} connections, "
            f"{args.full_seconds:g} s",
            flush=True,
        )
        with CpuWindow(gateway_pids) as window, GatewayView(metrics_url, model) as view:
            full = run_wrk(args, url, model, args.full_seconds)
        full.update(view.means)
        sent += int(full["requests"])
        results.append(
            Result(
                path,
                delay_ms,
                "full",
                full["rps"],
                full["p50_us"] / 1000,
                full["p99_us"] / 1000,
                int(full["requests"]),
                int(full["errors"]),
                window.gateway_cpu if gateway_pids else None,
                window.cores,
                full,
            )
        )
        print(
            f"    {full['rps']:.0f} req/s  p50 {full['p50_us'] / 1000:.2f} ms  "
            f"p99 {full['p99_us'] / 1000:.2f} ms  errors {int(full['errors'])}",
            flush=True,
        )
        settle(gateway_pids)
    return results, sent


# --------------------------------------------------------------------------- gateway


def count_rows(args: argparse.Namespace) -> tuple[int | None, int | None]:
    try:
        out = psql(
            args.pg_url, "select count(*), count(student_output) from requests", args.database
        )
        total, with_student = out.split("|")
        return int(total), int(with_student)
    except (BenchError, ValueError) as exc:
        print(f"  could not count logged rows: {exc}", flush=True)
        return None, None


def wait_rows_stable(args: argparse.Namespace, max_s: float = 30.0) -> tuple[int | None, ...]:
    deadline = time.monotonic() + max_s
    last: tuple[int | None, int | None] = (None, None)
    while time.monotonic() < deadline:
        now = count_rows(args)
        if now == last and now[0] is not None:
            return now
        last = now
        time.sleep(2.0)
    return last


def run_gateway(
    args: argparse.Namespace, procs: Processes, workdir: Path, port_fast: int, port_slow: int
) -> dict[str, Any]:
    binary = args.gateway_bin
    database_url = f"{args.pg_url}/{args.database}"
    env = {**os.environ, "DATABASE_URL": database_url, "SHADOW_GATEWAY_BENCH_KEY": API_KEY}
    config = workdir / "gateway.yaml"
    config.write_text(gateway_config(workdir, port_fast, port_slow, args.shadow_sample))

    print(f"gateway: fresh database {args.database}, migrate", flush=True)
    psql(args.pg_url, f"drop database if exists {args.database} with (force)")
    psql(args.pg_url, f"create database {args.database}")
    run_checked([binary, "migrate", "--config", str(config)], env=env, timeout=120)

    base = f"http://127.0.0.1:{args.gateway_port}"
    gateway = procs.start(
        "gateway",
        [
            "taskset",
            "-c",
            args.gateway_cpu,
            binary,
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(args.gateway_port),
            "--workers",
            str(args.workers),
        ],
        workdir / "gateway.log",
        env=env,
    )
    wait_until(
        "gateway /healthz", lambda: http("GET", f"{base}/healthz")[0] == 200, 90, alive=gateway
    )
    for model in (ROUTE_FAST, ROUTE_SLOW):
        status, headers, body = http("POST", f"{base}/v1/chat/completions", chat_request(model))
        if status != 200:
            raise BenchError(
                f"gateway answered {status} for route {model}: {body[:2000]!r}\n"
                f"log:\n{tail(gateway.log)}"
            )
        served_by = {k.lower(): v for k, v in headers.items()}.get("x-served-by")
        print(f"  route {model}: 200, x-served-by {served_by}", flush=True)
    time.sleep(1.0)  # let uvicorn spawn its workers, if any, before listing them
    pids = process_tree(gateway.proc.pid)
    rss_start = {pid: status_field(pid, "VmRSS") for pid in pids}

    url = f"{base}/v1/chat/completions"
    results, sent = measure_target(
        args, "gateway", {0: url, 50: url}, {0: ROUTE_FAST, 50: ROUTE_SLOW}, pids, f"{base}/metrics"
    )
    settle(pids, max_s=30)
    rss_measured = {pid: status_field(pid, "VmRSS") for pid in process_tree(gateway.proc.pid)}
    sent_measured = sent
    profile = None
    if args.soak_seconds > 0:
        print(f"[gateway] soak: full load for {args.soak_seconds:g} s", flush=True)
        if args.profile:  # py-spy samples the soak (the flame graph's data stays in workdir)
            profile = workdir / "gateway.folded"
            spy = procs.start(
                "py-spy",
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(gateway.proc.pid),
                    "--duration",
                    str(max(1, int(args.soak_seconds) - 2)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(profile),
                    "--nonblocking",
                ],
                workdir / "py-spy.log",
            )
        sent += int(run_wrk(args, url, ROUTE_FAST, args.soak_seconds)["requests"])
        if args.profile:
            spy.proc.wait(timeout=60)
        settle(pids, max_s=30)

    pids = process_tree(gateway.proc.pid)
    memory = [
        {
            "pid": pid,
            "cmd": cmdline(pid),
            "rss_start": rss_start.get(pid, "?"),
            "rss_measured": rss_measured.get(pid, "?"),
            "rss_end": status_field(pid, "VmRSS"),
            "threads": status_field(pid, "Threads"),
        }
        for pid in pids
    ]
    status, _, metrics_body = http("GET", f"{base}/metrics")
    metrics_text = metrics_body.decode(errors="replace") if status == 200 else ""
    metrics = gateway_metrics(metrics_text) if metrics_text else {}
    rows_before_stop = wait_rows_stable(args)

    print("gateway: SIGTERM, waiting for it to drain and exit", flush=True)
    stop_s = procs.stop(gateway, grace_s=60)
    rows_after_stop = count_rows(args)
    log_text = gateway.log.read_text(errors="replace")
    errors_in_log = [
        line for line in log_text.splitlines() if re.search(r"Traceback|ERROR|CRITICAL", line)
    ]
    return {
        "results": results,
        "sent": sent,
        "sent_measured": sent_measured,
        "graceful": "Application shutdown complete" in log_text,
        "memory": memory,
        "metrics": metrics,
        "rows_before_stop": rows_before_stop,
        "rows_after_stop": rows_after_stop,
        "stop_seconds": round(stop_s, 2),
        "exit_code": gateway.proc.returncode,
        "log_errors": errors_in_log[:20],
        "log": str(gateway.log),
        "profile": str(profile) if profile is not None and profile.exists() else None,
    }


# --------------------------------------------------------------------------- bare reference


def start_bare(
    procs: Processes, workdir: Path, cpu: str, port: int, upstreams: dict[str, int]
) -> tuple[Started, str]:
    """bench/bare_proxy.py on ``cpu``, relaying each model to its nginx port; the process and
    its chat URL, once it answers."""
    command = [sys.executable, str(BENCH_DIR / "bare_proxy.py"), "--port", str(port)]
    for model, upstream in upstreams.items():
        command += ["--upstream", f"{model}=http://127.0.0.1:{upstream}"]
    bare = procs.start("bare proxy", ["taskset", "-c", cpu, *command], workdir / "bare.log")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    first = next(iter(upstreams))
    wait_until(
        "bare proxy", lambda: http("POST", url, chat_request(first))[0] == 200, 30, alive=bare
    )
    return bare, url


def run_bare(
    args: argparse.Namespace, procs: Processes, workdir: Path, port_fast: int, port_slow: int
) -> list[Result]:
    """The floor: bench/bare_proxy.py on the gateway's core, the same two calls, no logging."""
    upstreams = {ROUTE_FAST: port_fast, ROUTE_SLOW: port_slow}
    bare, url = start_bare(procs, workdir, args.gateway_cpu, args.bare_port, upstreams)
    pids = process_tree(bare.proc.pid)
    results, _ = measure_target(
        args, "bare", {0: url, 50: url}, {0: ROUTE_FAST, 50: ROUTE_SLOW}, pids
    )
    procs.stop(bare, grace_s=10)
    return results


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Gateway overhead benchmark (see docs/benchmarks.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--direct-only",
        action="store_true",
        help="measure the upstream alone; do not start the gateway",
    )
    parser.add_argument("--gateway-bin", default=str(REPO / ".venv/bin/shadow-gateway"))
    parser.add_argument("--gateway-cpu", default="0", help="taskset CPU list for the gateway")
    parser.add_argument(
        "--load-cpus",
        default="1",
        help="taskset CPU list for nginx, wrk, the load generator and Postgres",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gateway-port", type=int, default=18090)
    parser.add_argument("--bare-port", type=int, default=18091)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the gateway with py-spy during the soak and print where its time goes "
        "(bench/hotspots.py); needs pip install py-spy and --soak-seconds",
    )
    parser.add_argument(
        "--no-bare", action="store_true", help="skip the bare reference proxy (the floor)"
    )
    parser.add_argument(
        "--upstream-port",
        type=int,
        default=18081,
        help="nginx port without delay; the 50 ms variant uses the next port",
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk before runs")
    parser.add_argument("--full-seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--rate-seconds", type=float, default=30.0)
    parser.add_argument(
        "--shadow-sample",
        type=float,
        default=1.0,
        help="the routes' shadow_sample; the benchmark proper is 1.0, 0 isolates what the "
        "background student call costs",
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=60.0,
        help="extra full-load seconds through the gateway before reading memory",
    )
    parser.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432",
        help="Postgres server URL (no database); trust auth",
    )
    parser.add_argument(
        "--database", default="shadow_gateway_bench", help="dropped and created afresh for each run"
    )
    parser.add_argument(
        "--no-pin-postgres",
        action="store_true",
        help="leave the CPU affinity of the machine's Postgres alone",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temp dir (configs, logs) after a successful run",
    )
    return parser.parse_args()


def cpu_list(spec: str) -> set[int]:
    """A taskset-style CPU list ("1", "1,3", "1-7") as a set."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def preflight(args: argparse.Namespace, ports: list[int]) -> None:
    missing = [tool for tool in ("nginx", "wrk", "taskset", "psql") if not shutil.which(tool)]
    if missing:
        raise BenchError(
            f"missing tools: {', '.join(missing)} "
            "(apt-get install nginx libnginx-mod-http-echo wrk postgresql-client)"
        )
    if not ECHO_MODULE.exists():
        raise BenchError(f"{ECHO_MODULE} missing (apt-get install libnginx-mod-http-echo)")
    if (os.cpu_count() or 1) < 2:
        raise BenchError("needs at least 2 cores: one for the gateway, one for the load")
    if importlib.util.find_spec("aiohttp") is None:
        raise BenchError(
            f"{sys.executable} has no aiohttp (bench/loadgen.py needs it): run the benchmark "
            "with the project's environment, .venv/bin/python bench/bench.py"
        )
    busy = [port for port in ports if not port_free(port)]
    if busy:
        raise BenchError(f"ports already in use on 127.0.0.1: {busy}")
    if not args.direct_only:
        run_checked([args.gateway_bin, "serve", "--help"], timeout=60)


def main() -> int:
    args = parse_args()
    port_fast, port_slow = args.upstream_port, args.upstream_port + 1
    ports = [port_fast, port_slow] + ([] if args.direct_only else [args.gateway_port])
    ports += [] if args.direct_only or args.no_bare else [args.bare_port]
    trap_signals()

    try:
        preflight(args, ports)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"benchmark cannot start: {exc}", file=sys.stderr, flush=True)
        return 1

    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="sgw-bench-"))
    pin = PostgresPin(args.pg_url, cpu_list(args.load_cpus))
    succeeded = False
    try:
        machine = machine_info()
        print(f"workdir {workdir}", flush=True)

        start_nginx(procs, workdir, args.load_cpus, port_fast)
        upstream = {
            0: f"http://127.0.0.1:{port_fast}/v1/chat/completions",
            50: f"http://127.0.0.1:{port_slow}/v1/chat/completions",
        }
        began = time.monotonic()
        http("POST", upstream[50], chat_request("bench"))
        print(
            f"nginx up: 0 ms and {1000 * (time.monotonic() - began):.0f} ms upstreams", flush=True
        )

        if not args.direct_only and not args.no_pin_postgres:
            pin.pin()
            print(f"Postgres pinned to CPU {args.load_cpus} for the run", flush=True)

        results, _ = measure_target(args, "direct", upstream, {0: "bench", 50: "bench"}, [])
        if not args.direct_only and not args.no_bare:
            results += run_bare(args, procs, workdir, port_fast, port_slow)
        gw = None
        if not args.direct_only:
            gw = run_gateway(args, procs, workdir, port_fast, port_slow)
            results += gw["results"]

        text = report(args, results, gw, machine)
        if gw and gw.get("profile"):
            text += "\n\nWhere the gateway's time goes (py-spy, during the soak):\n\n"
            text += profile_table(summarise(Path(gw["profile"])))
        print("\n" + text + "\n", flush=True)
        if gw and gw["log_errors"]:
            print("\nerror lines in the gateway log:\n" + "\n".join(gw["log_errors"]), flush=True)
        if args.json:
            payload = {
                "machine": machine,
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": [r.__dict__ for r in results],
                "gateway": {k: v for k, v in (gw or {}).items() if k != "results"},
            }
            args.json.write_text(json.dumps(payload, indent=2, default=str))
        succeeded = True
        return 0
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted) as exc:
        return interrupted(exc)
    finally:
        clean_up(procs, workdir, keep=not succeeded or args.keep_workdir)
        pin.restore()


if __name__ == "__main__":
    sys.exit(main())
