"""Every Prometheus metric the gateway exports, on an injectable registry.

Tests build their own ``Metrics(CollectorRegistry())`` and read values with
``registry.get_sample_value``. Label values are bounded: routes come from config, statuses
and outcomes from fixed sets, slice values from an allow-list.

With several worker processes, ``shadow-gateway serve`` sets ``PROMETHEUS_MULTIPROC_DIR``
before the workers start; prometheus_client then keeps every value in a per-process file
there, and :func:`render` merges them, so ``/metrics`` on any worker shows the whole server.
Gauges say how to merge (``multiprocess_mode``): sums for queue depths, the latest value for
figures every worker sets alike.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway.config import GatewayConfig

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "shadow_gateway_requests_total",
            "Requests answered, by route, who served them and HTTP status.",
            ["route", "served_by", "status"],
            registry=reg,
        )
        self.rejected = Counter(
            "shadow_gateway_rejected_total",
            "Requests refused before reaching a route (auth, bad input, unknown route).",
            ["reason"],
            registry=reg,
        )
        self.rate_limited = Counter(
            "shadow_gateway_rate_limited_total",
            "Requests refused with 429 by the per-key rate limit, by key name.",
            ["key"],
            registry=reg,
        )
        self.teacher_latency = Histogram(
            "shadow_gateway_teacher_latency_seconds",
            "Teacher call latency (whole answer; for streams, until the last chunk).",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.student_latency = Histogram(
            "shadow_gateway_student_latency_seconds",
            "Student call latency, successful calls only.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.overhead = Histogram(
            "shadow_gateway_overhead_seconds",
            "Time the gateway itself adds to a request (total minus the teacher call).",
            ["route"],
            buckets=_OVERHEAD_BUCKETS,
            registry=reg,
        )
        self.shadow_calls = Counter(
            "shadow_gateway_shadow_calls_total",
            "Background student calls by outcome (ok, timeout, unreachable, http_error, "
            "invalid_response, shutdown).",
            ["route", "outcome"],
            registry=reg,
        )
        self.shadow_dropped = Counter(
            "shadow_gateway_shadow_dropped_total",
            "Shadow calls not made because the route's student concurrency bound was reached.",
            ["route"],
            registry=reg,
        )
        self.circuit_skipped = Counter(
            "shadow_gateway_circuit_skipped_total",
            "Student calls not made because the route's circuit breaker is open.",
            ["route"],
            registry=reg,
        )
        self.circuit_open = Gauge(
            "shadow_gateway_student_circuit_open",
            "1 while the route's student circuit breaker is open or probing, else 0.",
            ["route"],
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.shadow_in_flight = Gauge(
            "shadow_gateway_shadow_in_flight",
            "Student calls in flight.",
            ["route"],
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.log_queue_depth = Gauge(
            "shadow_gateway_log_queue_depth",
            "Log records waiting to be written to Postgres.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.log_rows_written = Counter(
            "shadow_gateway_log_records_written_total",
            "Log records (row halves) written to Postgres, replays included.",
            registry=reg,
        )
        self.db_write_errors = Counter(
            "shadow_gateway_db_write_errors_total",
            "Batches that could not be written to Postgres, by kind (unavailable, rejected).",
            ["kind"],
            registry=reg,
        )
        self.journal_records = Gauge(
            "shadow_gateway_journal_records",
            "Records in the local journal waiting for Postgres.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.journal_replayed = Counter(
            "shadow_gateway_journal_replayed_total",
            "Records replayed from the journal into Postgres.",
            registry=reg,
        )
        self.journal_writable = Gauge(
            "shadow_gateway_journal_writable",
            "1 while the disk takes journal writes, else 0 (disk full, directory unwritable).",
            multiprocess_mode="livemin",
            registry=reg,
        )
        self.log_records_dropped = Counter(
            "shadow_gateway_log_records_dropped_total",
            "Log records dropped because neither Postgres nor the journal took them.",
            registry=reg,
        )
        self.database_up = Gauge(
            "shadow_gateway_database_up",
            "1 while the log writer can reach Postgres, else 0.",
            multiprocess_mode="livemin",
            registry=reg,
        )
        # -- agreement and slices ------------------------------------------------------------
        # ``dimension``/``slice`` come from the route's slice labels; values outside the
        # configured allow-list are exported as "other", and every request also counts once
        # under dimension="all", slice="all" (the aggregate, shown beside the slices).
        self.agreement = Counter(
            "shadow_gateway_agreement_total",
            "Teacher/student comparisons by route, slice and verdict (agree, disagree).",
            ["route", "dimension", "slice", "verdict"],
            registry=reg,
        )
        self.agreement_score = Histogram(
            "shadow_gateway_agreement_score",
            "Agreement score in [0, 1] by route and slice.",
            ["route", "dimension", "slice"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=reg,
        )
        self.confidence = Histogram(
            "shadow_gateway_student_confidence",
            "Student confidence (the route's method) by verdict, to see calibration.",
            ["route", "verdict"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=reg,
        )
        self.slice_bar = Gauge(
            "shadow_gateway_slice_bar",
            "A critical slice's minimum agreement (its bar), from the route's config.",
            ["route", "dimension", "slice"],
            multiprocess_mode="mostrecent",
            registry=reg,
        )
        self.slice_min_samples = Gauge(
            "shadow_gateway_slice_min_samples",
            "Comparisons a critical slice needs in its window before its bar is judged.",
            ["route", "dimension", "slice"],
            multiprocess_mode="mostrecent",
            registry=reg,
        )
        # -- rollout -------------------------------------------------------------------------
        self.fallbacks = Counter(
            "shadow_gateway_fallbacks_total",
            "Requests the student was chosen for but the teacher answered, by reason.",
            ["route", "reason"],
            registry=reg,
        )
        self.rollout_percent = Gauge(
            "shadow_gateway_rollout_percent",
            "Share of users (0-100) eligible for the student's answer.",
            ["route"],
            multiprocess_mode="mostrecent",
            registry=reg,
        )
        self.route_mode = Gauge(
            "shadow_gateway_route_mode",
            "1 for the route's current mode (teacher, shadow, rollout), 0 for the others.",
            ["route", "mode"],
            multiprocess_mode="mostrecent",
            registry=reg,
        )
        self.drift_psi = Gauge(
            "shadow_gateway_drift_psi",
            "Population stability index of the route's last day of traffic against the week "
            "before, per slice dimension (_prompt_length: prompt length in characters).",
            ["route", "dimension"],
            multiprocess_mode="mostrecent",
            registry=reg,
        )
        self.auto_rollbacks = Counter(
            "shadow_gateway_auto_rollbacks_total",
            "Automatic rollbacks to shadow because a critical slice fell below its bar.",
            ["route", "dimension", "slice"],
            registry=reg,
        )


def describe_routes(config: GatewayConfig, metrics: Metrics) -> None:
    """Export each route's critical-slice bars (mode and percent come from the control plane)."""
    for route in config.routes:
        for critical in route.slices.critical:
            labels = (route.name, critical.dimension, critical.value)
            metrics.slice_bar.labels(*labels).set(critical.min_agreement)
            metrics.slice_min_samples.labels(*labels).set(critical.min_samples)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PID_FILE = re.compile(r"_(\d+)\.db$")


def render(metrics: Metrics) -> bytes:
    """The exposition text: this process's registry, or every worker's when multi-process."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(metrics.registry)
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(merged)


def forget_dead_workers() -> None:
    """Drop the live gauges of worker processes that no longer exist (a restarted worker)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    pids = {
        int(m.group(1)) for p in Path(directory).glob("*.db") if (m := _PID_FILE.search(p.name))
    }
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass
