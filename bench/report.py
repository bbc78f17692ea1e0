"""Result records, /metrics parsing and the markdown tables the benchmark prints."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 5.0
TARGET_FULL_LOAD_RPS = 1500.0


@dataclass
class Result:
    path: str  # "direct" | "gateway"
    delay_ms: int  # upstream delay
    load: str  # "full" | "rate"
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    gateway_cpu: float | None = None
    cores: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


def metric_by_label(text: str, name: str, label: str | None = None) -> dict[str, float]:
    """Samples of one Prometheus metric summed by one label ("" when label is None)."""
    sums: dict[str, float] = {}
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        key = ""
        if label is not None:
            found = re.search(rf'{label}="([^"]*)"', match.group(1) or "")
            key = found.group(1) if found else ""
        sums[key] = sums.get(key, 0.0) + float(match.group(2))
    return sums


def gateway_metrics(text: str) -> dict[str, Any]:
    overhead_sum = sum(metric_by_label(text, "shadow_gateway_overhead_seconds_sum").values())
    overhead_n = sum(metric_by_label(text, "shadow_gateway_overhead_seconds_count").values())
    return {
        "requests": sum(metric_by_label(text, "shadow_gateway_requests_total").values()),
        "shadow_dropped": sum(
            metric_by_label(text, "shadow_gateway_shadow_dropped_total").values()
        ),
        "shadow_calls": metric_by_label(text, "shadow_gateway_shadow_calls_total", "outcome"),
        "overhead_mean_ms": 1000 * overhead_sum / overhead_n if overhead_n else None,
    }


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(
    args: argparse.Namespace,
    results: list[Result],
    gw: dict[str, Any] | None,
    machine: dict[str, str],
) -> str:
    lines = [
        f"### Run of {machine['date']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['kernel']}; "
        f"{machine['tools']}.",
        f"Gateway on CPU {args.gateway_cpu} ({args.workers} worker), load and upstream on "
        f"CPU {args.load_cpus}; full load = wrk {args.connections} connections "
        f"{args.full_seconds:g} s; fixed rate = {args.rate:g} req/s for "
        f"{args.rate_seconds:g} s (bench/loadgen.py); routes' shadow_sample "
        f"{args.shadow_sample:g}.",
        "",
        "| upstream | path | load | req/s | p50 ms | p99 ms | requests | errors "
        "| gateway CPU | cpu0 / cpu1 busy | gateway's view: teacher / overhead mean ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        load = f"{args.connections} conns" if r.load == "full" else f"{args.rate:g} req/s"
        gw_cpu = "" if r.gateway_cpu is None else f"{r.gateway_cpu:.0%}"
        cores = " / ".join(f"{v:.0%}" for _, v in sorted(r.cores.items())[:2])
        view = ""
        if r.path == "gateway":
            view = f"{fmt(r.detail.get('gw_teacher_ms'))} / {fmt(r.detail.get('gw_overhead_ms'))}"
        lines.append(
            f"| {r.delay_ms} ms | {r.path} | {load} | {r.rps:,.0f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.requests:,} | {r.errors:,} | {gw_cpu} | {cores} | {view} |"
        )

    if gw is not None:
        lines += [
            "",
            "| upstream | added p50 @ rate | added p99 @ rate | gateway req/s, "
            "full load, 1 core | req/s per busy core |",
            "|---|---:|---:|---:|---:|",
        ]
        index = {(r.path, r.delay_ms, r.load): r for r in results}
        checks = []
        for delay in (0, 50):
            d_rate, g_rate = index[("direct", delay, "rate")], index[("gateway", delay, "rate")]
            g_full = index[("gateway", delay, "full")]
            added50, added99 = g_rate.p50_ms - d_rate.p50_ms, g_rate.p99_ms - d_rate.p99_ms
            per_core = g_full.rps / g_full.gateway_cpu if g_full.gateway_cpu else None
            lines.append(
                f"| {delay} ms | {added50:+.2f} ms | {added99:+.2f} ms "
                f"| {g_full.rps:,.0f} | {fmt(per_core, 0)} |"
            )
            checks.append((delay, added50, added99, g_full))
        lines += ["", "Targets (one worker on one core, shadowing and Postgres logging on):", ""]
        for delay, added50, added99, _ in checks:
            lines.append(
                f"- upstream {delay} ms: added p50 {added50:.2f} ms ≤ "
                f"{TARGET_ADDED_P50_MS:g} ms: {verdict(added50 <= TARGET_ADDED_P50_MS)}"
                f"; added p99 {added99:.2f} ms ≤ {TARGET_ADDED_P99_MS:g} ms: "
                f"{verdict(added99 <= TARGET_ADDED_P99_MS)}"
            )
        fast_full = checks[0][3]
        met = verdict(fast_full.rps >= TARGET_FULL_LOAD_RPS)
        lines.append(
            f"- full load, upstream 0 ms: {fast_full.rps:,.0f} req/s ≥ "
            f"{TARGET_FULL_LOAD_RPS:,.0f}: {met}"
        )

        lines += [
            "",
            "Gateway memory (VmRSS of each gateway process; with --workers 1 uvicorn runs the "
            "app in the serve process itself):",
            "",
            "| pid | process | after start | after the measured runs "
            f"({gw['sent_measured']:,} req) | after the soak ({gw['sent']:,} req) | threads |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for m in gw["memory"]:
            lines.append(
                f"| {m['pid']} | `{m['cmd'][:70]}` | {m['rss_start']} | {m['rss_measured']} "
                f"| {m['rss_end']} | {m['threads']} |"
            )
        total, with_student = gw["rows_after_stop"]
        metrics = gw["metrics"]
        calls = ", ".join(
            f"{k} {v:,.0f}" for k, v in sorted(metrics.get("shadow_calls", {}).items())
        )
        lines += [
            "",
            f"Requests sent to the gateway {gw['sent']:,} (wrk does not count requests still in "
            f"flight when it stops); rows in `requests` after the SIGTERM drain: {total} "
            f"(with student output: {with_student}); shadow calls by outcome: {calls or 'n/a'}; "
            f"shadow calls dropped: {fmt(metrics.get('shadow_dropped'), 0)}; gateway-measured "
            f"overhead mean: {fmt(metrics.get('overhead_mean_ms'))} ms; "
            f"SIGTERM to exit {gw['stop_seconds']} s, graceful shutdown logged: "
            f"{'yes' if gw['graceful'] else '**no**'} (exit status {gw['exit_code']}).",
        ]
    return "\n".join(lines)


def machine_info() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    nginx_version = nginx_v.stderr.strip().split("/")[-1]
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    wrk_version = (wrk_v.stdout + wrk_v.stderr).split()[1] if wrk_v.stdout + wrk_v.stderr else "?"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": f"Linux {platform.release()}",
        "tools": f"nginx {nginx_version}, wrk {wrk_version}, Python {platform.python_version()}",
    }
