"""Fault benchmark: short runs at a steady load, each with one kind of fault injected.

The black-box measurement of issue 20's table (fault | rows lost | app p99 | after it), on the
machinery of bench/soak.py: its own embedded PostgreSQL in a temp dir (so it can be stopped,
frozen and started again), nginx as teacher and student (route ``bench-50ms``: both answer
after 50 ms), ``shadow-gateway serve --workers 2`` with ``DATABASE_URL`` on that Postgres, and
an open-loop load (bench/loadgen.py's ``fixed_rate``, 150 req/s) that records each request's
send time, latency, status and ``x-request-id``. Each scenario is its own run on a fresh
gateway (the Postgres, its tables emptied, and nginx are shared):

- ``postgres-restart``: Postgres stopped for ``--fault-seconds`` (20), started, twice;
- ``gateway-sigterm``: SIGTERM to the ``serve`` process mid-load (what Docker and Kubernetes
  send), a restart once it has exited; then, unless ``--no-embedded-check``, ``serve`` on the
  embedded default database is sent SIGTERM and must leave no postgres process behind;
- ``gateway-sigkill``: SIGKILL to the gateway's process group mid-load, a restart; then
  Postgres stopped, SIGKILL again during the outage, a restart, Postgres back;
- ``journal-disk-full``: the journal directory is a small tmpfs; Postgres stopped and the
  tmpfs filled to the last byte, both for ``--fault-seconds``; the disk freed, then Postgres
  started 5 s later;
- ``postgres-frozen``: every process of the cluster (the postmaster from ``postmaster.pid``
  and its children) SIGSTOPped for ``--fault-seconds``, then SIGCONT; then frozen again, the
  gateway SIGKILLed 10 s into it, Postgres thawed and the gateway restarted.

For each: answered requests; rows lost (answered ids without a ``requests`` row holding the
teacher's output once the log has settled and the gateway has drained on SIGTERM); answered
rows without the student's half (``student_status`` null; ``shutdown`` is a half saying its
call was cut); the app's p50/p99 in the steady state before the first fault (from 5 s in),
the worst p99 over ``--window`` (1 s) windows of completed requests from each fault's start
to 10 s after its end, their ratio, and the worst window of the steady state as a yardstick
of the machine's own noise; ``/readyz`` at the end. Prints the tables, writes ``--json FILE``;
exits 0 when every check held, 3 when one failed, 1 when it could not run. Latency is
reported, not checked: on a shared machine it is too noisy to gate on.

Usage:  .venv/bin/python bench/faults.py                        # every scenario, ~12 minutes
        .venv/bin/python bench/faults.py --scenario gateway-sigkill --json kill.json
Needs:  apt-get install nginx libnginx-mod-http-echo; the project's venv; root for the tmpfs
        of journal-disk-full (skipped, and said so, when it cannot be mounted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from configs import ECHO_MODULE, ROUTE_SLOW, gateway_config
from loadgen import Progress, fixed_rate
from report import fault_latency, fault_tables, log_summary, machine_info, metric_by_label
from soak import COUNTERS, query, taskset
from sysutil import (
    API_KEY,
    BenchError,
    Interrupted,
    Processes,
    Started,
    alive,
    clean_up,
    cmdline,
    fill_disk,
    http,
    interrupted,
    mount_tmpfs,
    port_free,
    postmaster_tree,
    process_tree,
    signal_each,
    start_nginx,
    tail,
    trap_signals,
    unmount,
    wait_until,
)

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrate import upgrade

BENCH_DIR = Path(__file__).resolve().parent
AFTER_S = 10.0  # each fault's p99 window runs on this long past its end
STEADY_FROM_S = 5.0  # the steady state's window starts here (connections, code paths warm)
# After a refused write the writer probes the journal's disk with a backoff doubling up to
# 10 s (gateway/db/writer.py): /readyz may say "unwritable" that long after the disk is freed.
JOURNAL_OK_WITHIN_S = 15.0
POLL_TIMEOUT_S = 1.0  # /readyz and /metrics: a stalled gateway must not hold the timeline up
EXTRA_COUNTERS = {
    "journal_write_errors": "shadow_gateway_journal_write_errors_total",
    "journal_writable": "shadow_gateway_journal_writable",
}


# --------------------------------------------------------------------------- the load


async def _load(args: argparse.Namespace) -> None:
    """loadgen's open-loop fixed rate; each request's send time (monotonic, shared by every
    process on the machine), latency, status and x-request-id written to args.out."""
    body = json.dumps({"model": ROUTE_SLOW, "messages": [{"role": "user", "content": "hi"}]})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    progress = Progress()

    async def announce() -> None:
        await progress.started.wait()
        print(json.dumps({"start": progress.start}), flush=True)

    connector = aiohttp.TCPConnector(limit=256)  # a slow gateway, not the pool, sets latency
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        announcer = asyncio.create_task(announce())
        results, _ = await fixed_rate(
            session, args.url, body.encode(), headers, args.rate, args.duration, progress
        )
        await announcer
    lines = (
        f"{progress.start + i / args.rate:.4f}\t{ms:.3f}\t{status}\t{request_id}\n"
        for i, (ms, status, request_id) in enumerate(results)
    )
    args.out.write_text("".join(lines))


def load_child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faults.py load-child")
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_load(args))
    else:
        uvloop.run(_load(args))
    return 0


@dataclass
class Sample:
    sent: float  # monotonic
    ms: float
    status: str
    request_id: str

    @property
    def done(self) -> float:
        return self.sent + self.ms / 1000

    @property
    def ok(self) -> bool:
        return self.status.startswith("2") and bool(self.request_id)


def read_samples(path: Path) -> list[Sample]:
    out = []
    for line in path.read_text().splitlines():
        sent, ms, status, request_id = line.split("\t")
        out.append(Sample(float(sent), float(ms), status, request_id))
    return out


# --------------------------------------------------------------------------- one scenario


def launch_gateway(
    procs: Processes, workdir: Path, args: argparse.Namespace, database_url: str
) -> Started:
    """``serve`` on bench/configs.py's config, once /healthz answers (soak's start_gateway
    less its check requests: a worker starting on a busy machine may take longer than they
    wait, and the load's own requests say whether it serves)."""
    config = workdir / "gateway.yaml"
    config.write_text(gateway_config(workdir, args.upstream_port, args.upstream_port + 1))
    env = {**os.environ, "DATABASE_URL": database_url, "SHADOW_GATEWAY_BENCH_KEY": API_KEY}
    serve = [args.gateway_bin, "serve", "--config", str(config), "--host", "127.0.0.1"]
    serve += ["--port", str(args.gateway_port), "--workers", str(args.workers)]
    gateway = procs.start(
        "gateway", [*taskset(args.gateway_cpu), *serve], workdir / "gateway.log", env=env
    )
    base = f"http://127.0.0.1:{args.gateway_port}"

    def up() -> bool:
        return http("GET", f"{base}/healthz")[0] == 200

    wait_until("gateway /healthz", up, args.start_timeout, gateway)
    return gateway


def ready(base: str) -> str:
    """/readyz's status code and word (or the error), asked with a short timeout."""
    try:
        status, _, body = http("GET", f"{base}/readyz", timeout=POLL_TIMEOUT_S)
        return f"{status} {json.loads(body).get('status', '?')}"
    except (OSError, ValueError) as exc:
        return f"error {type(exc).__name__}"


@dataclass
class Window:
    label: str
    start: float  # monotonic
    end: float = math.nan


@dataclass
class Stage:
    """One scenario's run: the processes, the timeline, what was polled along the way."""

    args: argparse.Namespace
    procs: Processes
    workdir: Path
    pg: EmbeddedPostgres
    url: str
    gateway: Started
    t0: float = math.inf
    events: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Window] = field(default_factory=list)  # p99 windows
    restarts: list[Window] = field(default_factory=list)  # the gateway down, by our hand
    readyz: list[tuple[float, str]] = field(default_factory=list)  # changes only
    metrics_done: dict[str, float] = field(default_factory=dict)  # of gateways gone
    metrics_last: dict[str, float] = field(default_factory=dict)
    journal_peak: float = 0.0
    frozen: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.args.gateway_port}"

    def t(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def mark(self, what: str) -> float:
        self.events.append({"t_s": self.t(), "what": what})
        print(f"[{self.t():6.1f} s] {what}", flush=True)
        return time.monotonic()

    @contextlib.contextmanager
    def fault(self, label: str) -> Iterator[Window]:
        window = Window(label, self.mark(f"fault: {label}"))
        self.faults.append(window)
        yield window
        window.end = self.mark(f"fault over: {label}")

    def poll(self) -> None:
        state = ready(self.base)
        if not self.readyz or self.readyz[-1][1] != state:
            self.readyz.append((self.t(), state))
        try:
            status, _, body = http("GET", f"{self.base}/metrics", timeout=POLL_TIMEOUT_S)
        except OSError:
            return
        if status != 200:
            return
        text = body.decode(errors="replace")
        names = {**COUNTERS, **EXTRA_COUNTERS}
        self.metrics_last = {k: sum(metric_by_label(text, n).values()) for k, n in names.items()}
        self.journal_peak = max(self.journal_peak, self.metrics_last["journal_records"])

    def wait_for(self, seconds: float) -> None:
        self.wait_until_t(time.monotonic() - self.t0 + seconds)

    def wait_until_t(self, offset_s: float) -> None:
        """Poll /readyz and /metrics every second until offset_s into the load."""
        next_print = self.t() + 5
        while time.monotonic() - self.t0 < offset_s:
            self.poll()
            if self.t() >= next_print:
                m = self.metrics_last
                print(
                    f"[{self.t():6.1f} s] {self.readyz[-1][1]} | queue "
                    f"{m.get('queue_depth', 0):.0f} journal {m.get('journal_records', 0):.0f} "
                    f"dropped {m.get('records_dropped', 0):.0f}",
                    flush=True,
                )
                next_print += 5
            time.sleep(max(0.0, min(1.0, self.t0 + offset_s - time.monotonic())))

    # --- Postgres

    def pg_stop(self) -> None:
        self.pg.stop()
        self.mark("Postgres stopped")

    def pg_start(self) -> None:
        self.pg.start()
        self.mark("Postgres started")

    def freeze(self) -> None:
        self.frozen = postmaster_tree(self.pg.pgdata)  # the postmaster first: it forks no more
        signal_each(self.frozen, signal.SIGSTOP)
        self.mark(f"Postgres frozen: SIGSTOP to {len(self.frozen)} processes")

    def thaw(self) -> None:
        if self.frozen:
            signal_each(list(reversed(self.frozen)), signal.SIGCONT)
            self.frozen = []
            self.mark("Postgres thawed: SIGCONT")

    # --- the gateway

    def retire_metrics(self) -> None:
        """Bank the counters of the gateway going away (a new one's /metrics start at 0)."""
        for key, value in self.metrics_last.items():
            if key not in ("queue_depth", "journal_records", "database_up", "journal_writable"):
                self.metrics_done[key] = self.metrics_done.get(key, 0.0) + value
        self.metrics_last = {}

    def kill_gateway(self) -> Window:
        self.poll()  # its counters, as late as can be
        window = Window("gateway down (SIGKILL)", self.mark("gateway: SIGKILL to its group"))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.gateway.proc.pid, signal.SIGKILL)
        self.procs.stop(self.gateway, grace_s=5)
        self.retire_metrics()
        self.restarts.append(window)
        return window

    def term_gateway(self) -> Window:
        """SIGTERM to the serve process alone, as Docker and Kubernetes send it."""
        pids = process_tree(self.gateway.proc.pid)
        self.poll()
        window = Window("gateway down (SIGTERM)", self.mark("gateway: SIGTERM"))
        os.kill(self.gateway.proc.pid, signal.SIGTERM)
        try:
            code: int | None = self.gateway.proc.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        self.mark(f"gateway exited: {code}")
        others = [pid for pid in pids if pid != self.gateway.proc.pid]
        left, deadline = others, time.monotonic() + 5
        while left and time.monotonic() < deadline:  # a worker may finish just after its parent
            time.sleep(0.2)
            left = [pid for pid in others if alive(pid)]
        left_cmds = {pid: cmdline(pid) for pid in left}
        log = self.gateway.log.read_text(errors="replace")
        self.extra["sigterm"] = {
            "exit_code": code,
            "stop_s": round(time.monotonic() - window.start, 2),
            "left_behind": left_cmds,
            "shutdowns_logged": log.count("Application shutdown complete"),
        }
        self.procs.stop(self.gateway, grace_s=5)
        self.retire_metrics()
        self.restarts.append(window)
        return window

    def restart_gateway(self, window: Window) -> None:
        self.gateway = launch_gateway(self.procs, self.workdir, self.args, self.url)
        window.end = self.mark("gateway restarted: /healthz answers")


Scenario = Callable[[Stage], None]


def postgres_restart(stage: Stage) -> None:
    stage.wait_until_t(stage.args.steady)
    for _ in range(2):
        with stage.fault("Postgres down"):
            stage.pg_stop()
            stage.wait_for(stage.args.fault_seconds)
            stage.pg_start()
        stage.wait_for(AFTER_S)


def gateway_sigterm(stage: Stage) -> None:
    stage.wait_until_t(stage.args.steady)
    with stage.fault("SIGTERM, restart"):
        stage.restart_gateway(stage.term_gateway())


def gateway_sigkill(stage: Stage) -> None:
    stage.wait_until_t(stage.args.steady)
    with stage.fault("SIGKILL, restart"):
        stage.restart_gateway(stage.kill_gateway())
    stage.wait_for(AFTER_S)
    with stage.fault("Postgres down, SIGKILL 10 s in, restart, Postgres back"):
        stage.pg_stop()
        stopped = time.monotonic()
        stage.wait_for(10)
        stage.restart_gateway(stage.kill_gateway())
        stage.wait_for(max(5.0, stage.args.fault_seconds - (time.monotonic() - stopped)))
        stage.pg_start()


def journal_disk_full(stage: Stage) -> None:
    filler = stage.workdir / "gateway-data" / "journal" / "filler"
    stage.wait_until_t(stage.args.steady)
    with stage.fault("Postgres down, journal disk full"):
        stage.pg_stop()
        stage.extra["filled_bytes"] = fill_disk(filler)
        stage.mark(f"journal disk filled ({stage.extra['filled_bytes']:,} bytes)")
        stage.wait_for(stage.args.fault_seconds)
        filler.unlink()
        freed = stage.mark("journal disk freed")
        journal, in_a_row = "?", 0
        while time.monotonic() - freed < JOURNAL_OK_WITHIN_S and in_a_row < 3:
            with contextlib.suppress(OSError, ValueError):
                journal = json.loads(http("GET", f"{stage.base}/readyz", timeout=3)[2])["journal"]
            in_a_row = in_a_row + 1 if journal == "ok" else 0  # 3 in a row: likely every worker
            time.sleep(0.2)
        stage.extra["journal_after_free"] = journal
        stage.extra["journal_ok_after_s"] = round(time.monotonic() - freed, 2)
        stage.mark(f"/readyz journal: {journal}")
        stage.wait_for(max(0.0, 5 - (time.monotonic() - freed)))  # Postgres at least 5 s later
        stage.pg_start()


def postgres_frozen(stage: Stage) -> None:
    stage.wait_until_t(stage.args.steady)
    with stage.fault("frozen"):
        stage.freeze()
        stage.wait_for(stage.args.fault_seconds)
        stage.thaw()
    stage.wait_for(AFTER_S + 5)
    with stage.fault("frozen, SIGKILL 10 s in, thaw, restart"):
        stage.freeze()
        stage.wait_for(10)
        down = stage.kill_gateway()
        stage.wait_for(5)
        stage.thaw()
        stage.restart_gateway(down)


RESTART_S = 30.0  # what a gateway restart is budgeted in the load's length (a busy machine)

# name: (what the table calls it, the scenario, its load in seconds given the args:
# a restart that takes longer than RESTART_S eats into the tail after the last fault)
SCENARIOS: dict[str, tuple[str, Scenario, Callable[[argparse.Namespace], float]]] = {
    "postgres-restart": (
        "Postgres restarted twice ({fault:g} s down)",
        postgres_restart,
        lambda a: a.steady + 2 * (a.fault_seconds + AFTER_S) + 5,
    ),
    "gateway-sigterm": (
        "gateway SIGTERM",
        gateway_sigterm,
        lambda a: a.steady + RESTART_S + AFTER_S + 5,
    ),
    "gateway-sigkill": (
        "gateway SIGKILL (once with Postgres up, once during an outage)",
        gateway_sigkill,
        lambda a: (
            a.steady + 2 * RESTART_S + AFTER_S + 10 + max(5, a.fault_seconds - 10) + AFTER_S + 5
        ),
    ),
    "journal-disk-full": (
        "Postgres down, journal disk full",
        journal_disk_full,
        lambda a: a.steady + a.fault_seconds + 10 + AFTER_S + 5,
    ),
    "postgres-frozen": (
        "Postgres frozen (SIGSTOP); then frozen again with a gateway SIGKILL",
        postgres_frozen,
        lambda a: a.steady + a.fault_seconds + AFTER_S + 5 + 15 + RESTART_S + AFTER_S + 5,
    ),
}


# --------------------------------------------------------------------------- after the load


def settle_rows(url: str, answered: set[str], max_s: float) -> None:
    """Wait until every answered request has both halves, or nothing changed for 15 s."""
    deadline, last, last_change = time.monotonic() + max_s, None, time.monotonic()
    while time.monotonic() < deadline:
        rows = query(url, "select request_id, student_status from requests")
        if rows is not None:
            halves = {row[0]: row[1] for row in rows}
            state = (len(answered - halves.keys()), sum(halves.get(i) is None for i in answered))
            if state == (0, 0):
                return
            if state != last:
                last, last_change = state, time.monotonic()
            elif time.monotonic() - last_change > 15:
                return
        time.sleep(1.0)


def check_rows(url: str, answered: set[str], stage: Stage, samples: list[Sample]) -> dict[str, Any]:
    """Rows against the answered ids: lost (no teacher half), no student half, by fault."""
    rows = query(
        url,
        "select request_id, teacher_output is not null, student_status, student_error "
        "from requests",
    )
    if rows is None:
        raise BenchError("Postgres did not answer the final row query")
    with_teacher = {row[0] for row in rows if row[1]}
    status = {row[0]: row[2] for row in rows}
    lost = answered - with_teacher
    no_student = sorted(i for i in answered & with_teacher if status[i] is None)
    shutdown = [row for row in rows if row[0] in answered and row[2] == "shutdown"]
    sample = {s.request_id: s for s in samples}

    def when(request_id: str) -> dict[str, Any]:
        """When the app sent it and got its answer (s into the load), and in which fault."""
        s = sample[request_id]
        label = next(
            (w.label for w in stage.faults if w.start <= s.sent <= w.end + AFTER_S), "no fault"
        )
        return {
            "id": request_id,
            "sent_s": round(s.sent - stage.t0, 2),
            "fault": label,
            "answered_s": round(s.done - stage.t0, 2),
        }

    return {
        "answered": len(answered),
        "rows": len(rows),
        "duplicates": len(rows) - len(status),
        "lost": len(lost),
        "lost_by_fault": dict(Counter(when(i)["fault"] for i in lost)),
        "lost_sample": [when(i) for i in sorted(lost)[:10]],
        "missing_student_half": len(no_student),
        "missing_student_sample": [when(i) for i in no_student[:10]],
        "student_shutdown": len(shutdown),
        "student_shutdown_errors": dict(Counter(str(row[3])[:100] for row in shutdown)),
        "unanswered_with_row": len(status.keys() - answered),
    }


def errors_outside_restarts(samples: list[Sample], stage: Stage) -> int:
    """Failed requests that ended outside the spans in which we had the gateway down."""
    spans = [(w.start, w.end + 1.0) for w in stage.restarts]
    return sum(1 for s in samples if not s.ok and not any(a <= s.done <= b for a, b in spans))


# --------------------------------------------------------------------------- the runs


def embedded_sigterm(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    """``serve`` on the embedded default database, SIGTERM: no postgres process may remain."""
    workdir.mkdir()
    config = workdir / "gateway.yaml"
    config.write_text(gateway_config(workdir, args.upstream_port, args.upstream_port + 1))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["SHADOW_GATEWAY_BENCH_KEY"] = API_KEY
    port = args.gateway_port + 1
    serve = [args.gateway_bin, "serve", "--config", str(config), "--port", str(port)]
    serve += ["--host", "127.0.0.1", "--workers", str(args.workers)]
    gateway = procs.start("embedded gateway", serve, workdir / "gateway.log", env=env)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        return http("GET", f"{base}/healthz")[0] == 200

    wait_until("embedded gateway", up, args.start_timeout, gateway)
    before = postmaster_tree(workdir / "gateway-data" / "postgres")
    os.kill(gateway.proc.pid, signal.SIGTERM)
    try:
        code: int | None = gateway.proc.wait(60)
    except subprocess.TimeoutExpired:
        code = None
    deadline, left = time.monotonic() + 5, before
    while left and time.monotonic() < deadline:
        left = [pid for pid in before if alive(pid)]
        time.sleep(0.2)
    procs.stop(gateway, grace_s=5)
    if left:  # ours to clean up: the postmaster of this temp dir, shut down at once
        signal_each(before[:1], signal.SIGQUIT)
    return {"exit_code": code, "postgres_pids_before": before, "postgres_left_behind": left}


def drive(stage: Stage, name: str, duration: float) -> list[Sample]:
    """Start the load, run the scenario's timeline through it, wait for it to end."""
    out, log = stage.workdir / "samples.tsv", stage.workdir / "load.log"
    load = stage.procs.start(
        "load",
        [
            *taskset(stage.args.load_cpus),
            *(sys.executable, str(Path(__file__).resolve()), "load-child"),
            f"{stage.base}/v1/chat/completions",
            *("--rate", f"{stage.args.rate:g}", "--duration", f"{duration:g}"),
            *("--out", str(out)),
        ],
        log,
    )
    wait_until("the load's start", lambda: '"start"' in log.read_text(), 60, load)
    stage.t0 = json.loads(log.read_text().splitlines()[0])["start"]
    print(f"--- {name}: {stage.args.rate:g} req/s for {duration:g} s", flush=True)
    try:
        SCENARIOS[name][1](stage)
    finally:
        stage.thaw()
    stage.wait_until_t(duration)
    load.proc.wait(60)
    stage.mark("load over")
    if load.proc.returncode != 0:
        raise BenchError(f"the load exited {load.proc.returncode}:\n{tail(log)}")
    return read_samples(out)


def collect(stage: Stage, samples: list[Sample], duration: float) -> dict[str, Any]:
    """Once the log has settled: /readyz, then SIGTERM (drains), then rows and latency."""
    answered = {s.request_id for s in samples if s.ok}
    settle_rows(stage.url, answered, stage.args.settle_max)
    stage.mark("log settled")
    readiness = "?"
    for _ in range(15):  # it answers from a 1-s cache: give a just-replayed writer a moment
        stage.poll()
        readiness = ready(stage.base)
        if readiness.endswith(" ready"):
            break
        time.sleep(1.0)
    stage.poll()
    stage.retire_metrics()
    stage.procs.stop(stage.gateway, grace_s=60)  # SIGTERM to the group; drains the log queue
    t0, last_end = stage.t0, stage.faults[-1].end - stage.t0
    result = {
        "rows": check_rows(stage.url, answered, stage, samples),
        "load": {
            "rate": stage.args.rate,
            "duration_s": duration,
            "sent": len(samples),
            "errors": sum(not s.ok for s in samples),
            "errors_outside_restarts": errors_outside_restarts(samples, stage),
            "statuses": dict(Counter(s.status for s in samples)),
        },
        "latency": fault_latency(
            [(s.done - t0, s.ms) for s in samples if s.ok],
            stage.faults[0].start - t0,
            [(w.label, w.start - t0, w.end - t0 + AFTER_S) for w in stage.faults],
            stage.args.window,
            stage.args.window_min,
            STEADY_FROM_S,
        ),
        "readyz_end": readiness,
        "readyz_timeline": stage.readyz,
        "events": stage.events,
        "metrics": {**stage.metrics_done, "journal_peak": stage.journal_peak},
        "gateway_down_s": [round(w.end - w.start, 1) for w in stage.restarts],
        "tail_s": round(duration - last_end, 1),
        "log": log_summary((stage.workdir / "gateway.log").read_text(errors="replace")),
        "extra": stage.extra,
    }
    if result["tail_s"] < AFTER_S:
        print(f"note: the load ended {result['tail_s']} s after the last fault", flush=True)
    return result


def run_scenario(
    name: str, args: argparse.Namespace, procs: Processes, root: Path, pg: EmbeddedPostgres
) -> dict[str, Any]:
    title, _, duration_of = SCENARIOS[name]
    result: dict[str, Any] = {"scenario": name, "title": title.format(fault=args.fault_seconds)}
    workdir = root / name
    tmpfs = workdir / "gateway-data" / "journal"
    tmpfs.parent.mkdir(parents=True)
    if name == "journal-disk-full":
        try:
            mount_tmpfs(tmpfs, args.tmpfs_mib)
        except BenchError as exc:
            result["skipped"] = f"no tmpfs for the journal ({str(exc).splitlines()[0]})"
            return result
    try:
        url = pg.start()  # running already, unless a scenario before failed mid-outage
        query(url, "truncate requests, student_answers")
        stage = Stage(args, procs, workdir, pg, url, launch_gateway(procs, workdir, args, url))
        duration = duration_of(args)
        result.update(collect(stage, drive(stage, name, duration), duration))
        if name == "gateway-sigterm" and args.embedded_check:
            try:
                embedded = embedded_sigterm(args, procs, workdir / "embedded")
            except (BenchError, OSError) as exc:  # the check fails; the run's figures stand
                embedded = {"error": str(exc).splitlines()[0], "postgres_pids_before": []}
            result["extra"]["embedded"] = embedded
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        result["skipped"] = f"could not run: {str(exc).splitlines()[0]}"
        print(f"{name}: {exc}", file=sys.stderr, flush=True)
        return result
    finally:
        for started in list(procs.items):
            if started.name != "nginx":  # the gateway, the load, should this end early
                procs.stop(started)
        if name == "journal-disk-full":
            unmount(tmpfs)
    result["checks"] = checks(name, result)
    return result


def checks(name: str, r: dict[str, Any]) -> list[tuple[str, bool]]:
    rows, load, extra = r["rows"], r["load"], r["extra"]
    out = [
        ("no answered request lost", rows["lost"] == 0),
        ("every answered row has its student half", rows["missing_student_half"] == 0),
        ("no duplicated row", rows["duplicates"] == 0),
        (
            "no request failed outside the gateway's own restarts",
            load["errors_outside_restarts"] == 0,
        ),
        ("/readyz ready at the end", r["readyz_end"].endswith(" ready")),
    ]
    if name == "gateway-sigterm":
        term = extra["sigterm"]
        out.append(("SIGTERM: exits by itself", term["exit_code"] in (0, 128 + signal.SIGTERM)))
        out.append(("SIGTERM: no worker left behind", not term["left_behind"]))
        if "embedded" in extra:
            embedded = extra["embedded"]
            out.append(
                (
                    "SIGTERM of embedded serve leaves no postgres",
                    bool(embedded["postgres_pids_before"]) and not embedded["postgres_left_behind"],
                )
            )
    if name == "journal-disk-full":
        out.append(
            (
                f"/readyz journal ok within {JOURNAL_OK_WITHIN_S:g} s of freeing the disk",
                extra["journal_after_free"] == "ok",
            )
        )
    return out


def run(args: argparse.Namespace, procs: Processes, root: Path) -> list[dict[str, Any]]:
    pg = EmbeddedPostgres(root / "pg")
    results = []
    try:
        url = pg.start()
        upgrade(url)
        print(f"embedded Postgres up in {root / 'pg'}, migrated", flush=True)
        start_nginx(procs, root, args.load_cpus, args.upstream_port)
        for name in args.scenario or list(SCENARIOS):
            results.append(run_scenario(name, args, procs, root, pg))
            print(fault_tables(results[-1:], args.window), flush=True)
    finally:
        for started in list(procs.items):
            if started.name != "nginx":
                procs.stop(started)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pg.stop()
    return results


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Gateway fault benchmark (see docs/benchmarks.md, 'Faults').",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--scenario", action="append", choices=list(SCENARIOS), help="repeatable; default all"
    )
    parser.add_argument("--rate", type=float, default=150.0, help="offered requests per second")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds before the fault")
    parser.add_argument("--fault-seconds", type=float, default=20.0, help="outage length")
    parser.add_argument("--window", type=float, default=1.0, help="p99 window, seconds")
    parser.add_argument("--window-min", type=int, default=20, help="fewer requests: no p99")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--start-timeout", type=float, default=240.0, help="seconds for the gateway to come up"
    )
    parser.add_argument("--tmpfs-mib", type=int, default=32, help="the journal's disk")
    parser.add_argument("--settle-max", type=float, default=120.0, help="wait for rows, seconds")
    parser.add_argument(
        "--no-embedded-check",
        dest="embedded_check",
        action="store_false",
        help="skip SIGTERM of serve on the embedded database (gateway-sigterm)",
    )
    parser.add_argument("--gateway-bin", default=str(BENCH_DIR.parent / ".venv/bin/shadow-gateway"))
    parser.add_argument("--gateway-port", type=int, default=18290, help="and the next one")
    parser.add_argument("--upstream-port", type=int, default=18281, help="and the next one")
    parser.add_argument("--gateway-cpu", default="", help="taskset CPU list ('': no pinning)")
    parser.add_argument("--load-cpus", default="", help="same, for nginx and the load")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep-workdir", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["load-child"]:
        return load_child(argv[1:])
    args = parse_args(argv)
    trap_signals()
    ports = [args.upstream_port, args.upstream_port + 1, args.gateway_port, args.gateway_port + 1]
    problems = [] if shutil.which("nginx") else ["nginx missing"]
    problems += [] if ECHO_MODULE.exists() else [f"{ECHO_MODULE} missing"]
    problems += [f"port {port} in use" for port in ports if not port_free(port)]
    if problems:
        print(f"faults cannot start: {'; '.join(problems)}", file=sys.stderr)
        return 1
    procs = Processes()
    load_start = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="sgw-faults-"))
    print(f"workdir {root}", flush=True)
    succeeded = False
    try:
        results = run(args, procs, root)
        machine = {**machine_info(), "loadavg": f"{load_start:.2f} → {os.getloadavg()[0]:.2f}"}
        print(f"\nFaults, {machine['date']}; load average {machine['loadavg']}\n")
        print(fault_tables(results, args.window) + "\n", flush=True)
        for r in results:
            for check, ok in r.get("checks", []):
                print(f"- {r['scenario']}: {check}: {'ok' if ok else 'FAILED'}")
        if args.json:
            document = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
            args.json.write_text(json.dumps({**document, "results": results}, indent=2))
        succeeded = True
        if any(r.get("skipped", "").startswith("could not run") for r in results):
            return 1
        held = all(ok for r in results for _, ok in r.get("checks", []))
        return 0 if held and not any(r.get("skipped") for r in results) else 3
    except (BenchError, subprocess.TimeoutExpired, RuntimeError, OSError) as exc:
        print(f"\nfaults failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted) as exc:
        return interrupted(exc)
    finally:
        clean_up(procs, root, keep=not succeeded or args.keep_workdir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
