"""Every Prometheus metric the gateway exports, on an injectable registry.

Tests build their own ``Metrics(CollectorRegistry())`` and read values with
``registry.get_sample_value``. Label values are bounded: routes come from config, students
from the student registry (validated names, never reused; a student's series go when it
leaves: :meth:`Metrics.describe_students`), statuses and outcomes from fixed sets, slice
values from an allow-list (the overrides gauge: the slices someone set, capped per route).

Metrics that concern a student carry a ``student`` label, candidates' as well as the
champion's. What used to be "the route's student" is the champion: select it by joining on
the info metric, ``... and on (route, student) (shadow_gateway_student_info{status="champion"}
== 1)`` (the ``== 1`` drops the zeroed series multi-process mode leaves behind).

With several worker processes, ``shadow-gateway serve`` sets ``PROMETHEUS_MULTIPROC_DIR``
before the workers start; prometheus_client then keeps every value in a per-process file
there, and :func:`render` merges them, so ``/metrics`` on any worker shows the whole server.
Gauges say how to merge (``multiprocess_mode``): sums for queue depths, the latest value for
figures every worker sets alike.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
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
from gateway.core.routing import SliceOverride
from gateway.core.slices import exported_slices

_log = logging.getLogger("shadow_gateway.metrics")

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

# Label names of the per-student metrics: route and student first, so a student's series are
# found (and forgotten) the same way in each.
_STUDENT = ("route", "student")
_STUDENT_OUTCOME = (*_STUDENT, "outcome")
_STUDENT_REASON = (*_STUDENT, "reason")
_STUDENT_VERDICT = (*_STUDENT, "verdict")
_STUDENT_SLICE = (*_STUDENT, "dimension", "slice")
_STUDENT_SLICE_VERDICT = (*_STUDENT_SLICE, "verdict")

# The knobs of a slice override, as the ``knob`` label of shadow_gateway_slice_override.
OVERRIDE_KNOBS = ("teacher_only", "rollout", "percent", "threshold")
# Overrides exported per route. Each is one an SRE (or the guardian, for a critical slice) set,
# so there are few; the cap only keeps a runaway script from flooding Prometheus.
MAX_EXPORTED_OVERRIDES = 100


def override_knobs(override: SliceOverride) -> dict[str, float]:
    """An override's series: 1/0 for the two modes, and the percent and threshold it sets (a
    knob it leaves to the route has no series)."""
    knobs = {
        "teacher_only": 1.0 if override.mode == "teacher" else 0.0,
        "rollout": 1.0 if override.mode == "rollout" else 0.0,
    }
    if override.rollout_percent is not None:
        knobs["percent"] = override.rollout_percent
    if override.confidence_threshold is not None:
        knobs["threshold"] = override.confidence_threshold
    return knobs


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
        self.feedback = Counter(
            "shadow_gateway_feedback_total",
            "Feedback stored from apps (POST /v1/feedback), by route and who gave the answer "
            "judged (teacher or student).",
            ["route", "answered_by"],
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
            _STUDENT,
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
            "Student calls by student and outcome (ok, timeout, unreachable, http_error, "
            "invalid_response, shutdown, internal_error).",
            _STUDENT_OUTCOME,
            registry=reg,
        )
        self.shadow_dropped = Counter(
            "shadow_gateway_shadow_dropped_total",
            "Shadow calls not made because the student's concurrency bound was reached.",
            _STUDENT,
            registry=reg,
        )
        self.circuit_skipped = Counter(
            "shadow_gateway_circuit_skipped_total",
            "Student calls not made because the student's circuit breaker is open.",
            _STUDENT,
            registry=reg,
        )
        self.circuit_open = Gauge(
            "shadow_gateway_student_circuit_open",
            "1 while the student's circuit breaker is open or probing, else 0.",
            _STUDENT,
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.shadow_in_flight = Gauge(
            "shadow_gateway_shadow_in_flight",
            "Student calls in flight.",
            _STUDENT,
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
        self.journal_write_errors = Counter(
            "shadow_gateway_journal_write_errors_total",
            "Journal writes (and disk probes) the disk refused; retried with a backoff.",
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
            "Teacher/student comparisons by route, student, slice and verdict (agree, disagree).",
            _STUDENT_SLICE_VERDICT,
            registry=reg,
        )
        self.agreement_score = Histogram(
            "shadow_gateway_agreement_score",
            "Agreement score in [0, 1] by route, student and slice.",
            _STUDENT_SLICE,
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=reg,
        )
        self.confidence = Histogram(
            "shadow_gateway_student_confidence",
            "Student confidence (the route's method) by verdict, to see calibration.",
            _STUDENT_VERDICT,
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
            "Requests the student was chosen for but the teacher answered, by reason; or the "
            "student answered for a failed teacher (teacher_error). student: the champion.",
            _STUDENT_REASON,
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
            "Population stability index of the route's last day of traffic against a "
            'reference: reference="window", the week before; reference="dataset", the '
            "champion's training set. Per slice dimension (_prompt_length: prompt length in "
            "characters; _prompt_content: prompts unlike the training set's, dataset only).",
            ["route", "dimension", "reference"],
            multiprocess_mode="mostrecent",
            registry=reg,
        )
        self.auto_rollbacks = Counter(
            "shadow_gateway_auto_rollbacks_total",
            "Automatic rollbacks: a critical slice back on the teacher (its dimension and "
            'value), or the whole route back to shadow (dimension="all", slice="all").',
            ["route", "dimension", "slice"],
            registry=reg,
        )
        # Every route's series exists from start-up at 0 (describe_routes), so increase() sees
        # the first change; counted by the replica that recorded it (gateway.services.teachers).
        self.teacher_changes = Counter(
            "shadow_gateway_teacher_changes_total",
            "New teacher versions: the route's teacher answered with a (model, "
            "system_fingerprint) it had not reported before (not its first; not a return).",
            ["route"],
            registry=reg,
        )
        # Slices bounded like the agreement metrics: the allow-list, "other", and "all".
        self.slice_requests = Counter(
            "shadow_gateway_slice_requests_total",
            "Requests answered, per slice, by who served them and why the teacher answered "
            'for a student (the fallback reason; "" when none, teacher_error when the '
            "student stood in for the teacher).",
            ["route", "dimension", "slice", "served_by", "reason"],
            registry=reg,
        )
        # Every worker exports the same overrides (each refreshes from Postgres); like
        # student_info, ``livemostrecent`` keeps the newest write of a live worker, so a
        # restarted worker's stale view of a cleared override is dropped.
        self.slice_override = Gauge(
            "shadow_gateway_slice_override",
            "A route's live slice overrides: knob teacher_only and rollout 1 or 0 (the slice's "
            "mode), percent and threshold when the override sets them. Gone when cleared.",
            ["route", "dimension", "slice", "knob"],
            multiprocess_mode="livemostrecent",
            registry=reg,
        )
        # -- students ------------------------------------------------------------------------
        # Every worker sets the same values from the same registry; ``livemostrecent`` takes
        # the newest write, so a worker that has already seen a promotion wins over one that
        # has not yet, and a dead worker's stale view is dropped.
        self.student_info = Gauge(
            "shadow_gateway_student_info",
            "1 for each live student of a route, with its status (champion, candidate): join "
            "on (route, student) to pick the champion's series.",
            ["route", "student", "status"],
            multiprocess_mode="livemostrecent",
            registry=reg,
        )
        # The per-student metrics with their label names, to forget a student's series.
        self._per_student: tuple[tuple[Counter | Gauge | Histogram, tuple[str, ...]], ...] = (
            (self.student_latency, _STUDENT),
            (self.shadow_calls, _STUDENT_OUTCOME),
            (self.shadow_dropped, _STUDENT),
            (self.circuit_skipped, _STUDENT),
            (self.circuit_open, _STUDENT),
            (self.shadow_in_flight, _STUDENT),
            (self.agreement, _STUDENT_SLICE_VERDICT),
            (self.agreement_score, _STUDENT_SLICE),
            (self.confidence, _STUDENT_VERDICT),
            (self.fallbacks, _STUDENT_REASON),
        )
        self._statuses: dict[str, dict[str, str]] = {}  # route -> live student -> status
        # route -> (dimension, slice, knob) -> value: the override series exported last.
        self._overrides: dict[str, dict[tuple[str, str, str], float]] = {}
        self._overrides_left_out: dict[str, int] = {}
        # The slice counter's series by label values, looked up on every request instead of
        # labels() (which converts and checks the values under a lock): measured 2.4 instead
        # of 4.7 us for a request counted under three slices. As bounded as the series, and
        # none is ever removed (routes come from config).
        self._slice_children: dict[tuple[str, str, str, str, str], Counter] = {}

    def count_slices(
        self,
        route: str,
        slices: Mapping[str, str],
        allowed: Mapping[str, frozenset[str]],
        served_by: str,
        reason: str | None,
    ) -> None:
        """Count one answered request under each of its exported slices (``allowed``: the
        route's allow-list), by who served it and why the teacher did."""
        children = self._slice_children
        for dimension, value in exported_slices(slices, allowed):
            key = (route, dimension, value, served_by, reason or "")
            child = children.get(key)
            if child is None:
                child = children[key] = self.slice_requests.labels(*key)
            child.inc()

    def describe_slice_overrides(self, route: str, overrides: Iterable[SliceOverride]) -> None:
        """The route's live overrides now (from the control plane): sets their series and
        removes those of an override cleared, or of a knob it no longer sets.

        Removed series in multi-process mode (which cannot remove one) read NaN instead: read
        the gauge with ``>= 0``. Past :data:`MAX_EXPORTED_OVERRIDES` (by slice name) the rest
        are left out, and the log says so (once, not at every refresh).
        """
        held = sorted(overrides, key=lambda o: (o.dimension, o.value))
        left_out = max(0, len(held) - MAX_EXPORTED_OVERRIDES)
        if left_out != self._overrides_left_out.get(route, 0):
            self._overrides_left_out[route] = left_out
            if left_out:
                _log.warning(
                    "route %s: %d slice overrides, only the first %d are exported as metrics",
                    route,
                    len(held),
                    MAX_EXPORTED_OVERRIDES,
                )
        exported = {
            (override.dimension, override.value, knob): value
            for override in held[:MAX_EXPORTED_OVERRIDES]
            for knob, value in override_knobs(override).items()
        }
        gauge = self.slice_override
        for key in self._overrides.get(route, {}).keys() - exported.keys():
            if os.environ.get(MULTIPROC_ENV):
                gauge.labels(route, *key).set(math.nan)
            else:
                gauge.remove(route, *key)
        for key, value in exported.items():
            gauge.labels(route, *key).set(value)
        self._overrides[route] = exported

    def describe_students(self, route: str, statuses: Mapping[str, str]) -> None:
        """The route's live students now (name -> champion or candidate), from the registry.

        Sets the info series of each; removes the info series of a status a student no longer
        has, and every series of a student no longer live (retired), so the ``student`` label
        only ever holds the registry's live names.
        """
        before = self._statuses.get(route, {})
        for name, status in before.items():
            if statuses.get(name) != status:
                self._drop(self.student_info, (route, name, status))
        for name in before.keys() - statuses.keys():
            self.forget_student(route, name)
        for name, status in statuses.items():
            self.student_info.labels(route, name, status).set(1)
        self._statuses[route] = dict(statuses)

    def forget_student(self, route: str, student: str) -> None:
        """Remove every series of one student (found by its route and student labels)."""
        for metric, names in self._per_student:
            held = {
                tuple(sample.labels[name] for name in names)
                for family in metric.collect()
                for sample in family.samples
                if sample.labels.get("route") == route and sample.labels.get("student") == student
            }
            for values in held:
                self._drop(metric, values)

    @staticmethod
    def _drop(metric: Counter | Gauge | Histogram, values: tuple[str, ...]) -> None:
        """Remove one series. prometheus_client cannot remove a series in multi-process mode
        (each value lives in a worker's file until the server restarts): there a gauge is set
        to 0 instead (so the info metric is read with ``== 1``), and a counter or histogram
        stays as it was, no longer growing."""
        if not os.environ.get(MULTIPROC_ENV):
            metric.remove(*values)
        elif isinstance(metric, Gauge):
            metric.labels(*values).set(0)


def describe_routes(config: GatewayConfig, metrics: Metrics) -> None:
    """Export each route's critical-slice bars (mode and percent come from the control plane),
    and its teacher-change counter at 0."""
    for route in config.routes:
        metrics.teacher_changes.labels(route.name)
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
