"""Result records, /metrics parsing and the markdown tables the benchmark prints."""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
# Against the bare reference proxy (bench/bare_proxy.py) in the same run.
TARGET_BARE_THROUGHPUT = 0.60  # gateway req/s / bare req/s, full load, 1 core
TARGET_BARE_P99 = 2.0  # gateway p99 / bare p99, full load
TARGET_BARE_ADDED_P50_MS = 0.30  # gateway p50 - bare p50 at the fixed rate


@dataclass
class Result:
    path: str  # "direct" | "bare" | "gateway"
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

        if ("bare", 0, "full") in index:
            lines += bare_table(index)
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


def bare_table(index: dict[tuple[str, int, str], Result]) -> list[str]:
    """The gateway as a ratio to the bare reference proxy measured in the same run."""
    lines = [
        "",
        "Against the bare reference proxy (bench/bare_proxy.py: the same teacher call and "
        "background student call, no logging), same run, same core:",
        "",
        "| upstream | throughput gateway / bare (full load) | p99 gateway / bare (full load) "
        "| p50 added beyond bare's @ rate |",
        "|---|---:|---:|---:|",
    ]
    verdicts = []
    for delay in (0, 50):
        b_full, g_full = index[("bare", delay, "full")], index[("gateway", delay, "full")]
        b_rate, g_rate = index[("bare", delay, "rate")], index[("gateway", delay, "rate")]
        throughput = g_full.rps / b_full.rps if b_full.rps else 0.0
        p99 = g_full.p99_ms / b_full.p99_ms if b_full.p99_ms else float("inf")
        added = g_rate.p50_ms - b_rate.p50_ms
        lines.append(f"| {delay} ms | {throughput:.2f} | {p99:.2f}x | {added:+.2f} ms |")
        verdicts.append(
            f"- upstream {delay} ms: throughput {throughput:.2f} ≥ {TARGET_BARE_THROUGHPUT:g}: "
            f"{verdict(throughput >= TARGET_BARE_THROUGHPUT)}; p99 {p99:.2f}x ≤ "
            f"{TARGET_BARE_P99:g}x: {verdict(p99 <= TARGET_BARE_P99)}; added p50 "
            f"{added:.2f} ms ≤ {TARGET_BARE_ADDED_P50_MS:g} ms: "
            f"{verdict(added <= TARGET_BARE_ADDED_P50_MS)}"
        )
    return [*lines, "", *verdicts]


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


# --------------------------------------------------------------------------- faults


def nearest_rank(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list, as bench/loadgen.py computes it."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil(pct/100 * n), at least 1
    return sorted_values[int(rank) - 1]


def windows_by_completion(
    done: list[tuple[float, float]], width_s: float, min_n: int
) -> list[dict[str, float]]:
    """(completed at s, latency ms) pairs cut into windows of width_s by completion time: each
    window with at least min_n requests, its start, count, p50 and p99 (ms)."""
    buckets: dict[int, list[float]] = {}
    for at_s, ms in done:
        buckets.setdefault(int(at_s // width_s), []).append(ms)
    out = []
    for index in sorted(buckets):
        values = sorted(buckets[index])
        if len(values) >= min_n:
            out.append(
                {
                    "t_s": round(index * width_s, 3),
                    "n": len(values),
                    "p50_ms": round(nearest_rank(values, 50), 2),
                    "p99_ms": round(nearest_rank(values, 99), 2),
                }
            )
    return out


def fault_tables(results: list[dict[str, Any]], window_s: float) -> str:
    """The issue's table (fault | rows lost | app p99 | after it), then the figures behind it.

    "app p99" is, per fault, the worst p99 of a window_s window from its start to 10 s past
    its end, and that over the steady p99 measured before the first fault of the same run."""
    lines = ["| fault | rows lost | app p99 | after it |", "|---|---|---|---|"]
    for r in results:
        if r.get("skipped"):
            lines.append(f"| {r['title']} | not run: {r['skipped']} | | |")
            continue
        rows, lat = r["rows"], r["latency"]
        lost = f"**{rows['lost']}**" if rows["lost"] else "0"
        student = rows["missing_student_half"]
        lost_text = f"{lost} of {rows['answered']:,} answered"
        if student:
            lost_text += f"; {student} rows missing the student half"
        p99 = "; ".join(
            f"{f['label']}: {fmt(f['worst_p99_ms'], 0)} ms ({fmt(f['ratio'], 1)} times)"
            for f in lat["per_fault"]
        )
        p99 += f" [steady p99 {fmt(lat['steady_p99_ms'], 0)} ms]"
        lines.append(f"| {r['title']} | {lost_text} | {p99} | {r['readyz_end']} |")
    lines += [
        "",
        "| scenario | sent | answered | errors (during gateway restarts) | lost | no student "
        "half / `shutdown` | steady p50 / p99 ms | steady worst "
        f"{window_s:g}-s p99 | fault worst {window_s:g}-s p99 (at s) | ratio | journal peak "
        "| records dropped | workers replaced | checks |",
        "|---|---:|---:|---|---:|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.get("skipped"):
            continue
        rows, lat, load = r["rows"], r["latency"], r["load"]
        failed = [name for name, ok in r["checks"] if not ok]
        lines.append(
            f"| {r['scenario']} | {load['sent']:,} | {rows['answered']:,} "
            f"| {load['errors']} ({load['errors'] - load['errors_outside_restarts']}) "
            f"| {rows['lost']} | {rows['missing_student_half']} / {rows['student_shutdown']} "
            f"| {fmt(lat['steady_p50_ms'], 1)} / {fmt(lat['steady_p99_ms'], 1)} "
            f"| {fmt(lat['steady_worst_p99_ms'], 1)} "
            f"| {fmt(lat['fault_worst_p99_ms'], 1)} ({fmt(lat['fault_worst_at_s'], 0)}) "
            f"| {fmt(lat['ratio'], 1)} | {r['metrics'].get('journal_peak', 0):,.0f} "
            f"| {r['metrics'].get('records_dropped', 0):.0f} | {r['log']['workers_replaced']} "
            f"| {'all held' if not failed else 'FAILED: ' + ', '.join(failed)} |"
        )
    return "\n".join(lines)


def fault_latency(
    done: list[tuple[float, float]],
    first_fault_s: float,
    spans: list[tuple[str, float, float]],
    width_s: float,
    min_n: int,
    steady_from_s: float,
) -> dict[str, Any]:
    """(completed at s, ms) of the answered requests: p50/p99 of the steady state (from
    steady_from_s to the first fault) and, per (label, from s, to s) span, the worst p99 of a
    width_s window in it and that over the steady p99."""
    steady = sorted(ms for at, ms in done if steady_from_s <= at < first_fault_s)
    steady_p99 = nearest_rank(steady, 99) if steady else None
    windows = windows_by_completion(done, width_s, min_n)
    per_fault = []
    for label, start, end in spans:
        span = [w for w in windows if start - width_s < w["t_s"] <= end]
        worst = max(span, key=lambda w: w["p99_ms"], default=None)
        per_fault.append(
            {
                "label": label,
                "windows": len(span),
                "worst_p99_ms": worst["p99_ms"] if worst else None,
                "worst_at_s": worst["t_s"] if worst else None,
                "ratio": round(worst["p99_ms"] / steady_p99, 2) if worst and steady_p99 else None,
            }
        )
    worst_fault = max(
        (f for f in per_fault if f["worst_p99_ms"] is not None),
        key=lambda f: float(f["worst_p99_ms"]),
        default={"worst_p99_ms": None, "worst_at_s": None, "ratio": None},
    )
    in_steady = [w for w in windows if steady_from_s <= w["t_s"] <= first_fault_s - width_s]
    return {
        "steady_n": len(steady),
        "steady_p50_ms": round(nearest_rank(steady, 50), 2) if steady else None,
        "steady_p99_ms": round(steady_p99, 2) if steady_p99 else None,
        "steady_worst_p99_ms": max((w["p99_ms"] for w in in_steady), default=None),
        "fault_worst_p99_ms": worst_fault["worst_p99_ms"],
        "fault_worst_at_s": worst_fault["worst_at_s"],
        "ratio": worst_fault["ratio"],
        "per_fault": per_fault,
        "windows": windows,
    }


def log_summary(text: str) -> dict[str, Any]:
    """The gateway's JSON log: its lines above INFO counted by message, and the workers
    uvicorn's supervisor replaced (one that misses its 5 s health check, as a worker still
    importing on a starved machine does, is killed and started again)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") not in ("INFO", "DEBUG", None):
            key = f"{entry['level']} {entry.get('logger')}: {str(entry.get('message'))[:140]}"
            counts[key] = counts.get(key, 0) + 1
    return {
        "above_info": dict(sorted(counts.items(), key=lambda item: -item[1])[:15]),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "workers_replaced": len(re.findall(r"Child process \[\d+\] died", text)),
    }
