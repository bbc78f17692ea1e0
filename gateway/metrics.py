"""Every Prometheus metric the gateway exports, on an injectable registry.

Tests build their own ``Metrics(CollectorRegistry())`` and read values with
``registry.get_sample_value``. Label values are bounded: routes come from config, statuses
and outcomes from fixed sets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.shadow_in_flight = Gauge(
            "shadow_gateway_shadow_in_flight",
            "Student calls in flight.",
            ["route"],
            registry=reg,
        )
        self.log_queue_depth = Gauge(
            "shadow_gateway_log_queue_depth",
            "Log records waiting to be written to Postgres.",
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
            registry=reg,
        )
        self.journal_replayed = Counter(
            "shadow_gateway_journal_replayed_total",
            "Records replayed from the journal into Postgres.",
            registry=reg,
        )
        self.database_up = Gauge(
            "shadow_gateway_database_up",
            "1 while the log writer can reach Postgres, else 0.",
            registry=reg,
        )
