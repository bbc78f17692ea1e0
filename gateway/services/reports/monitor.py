"""``shadow_gateway_drift_psi{route,dimension,reference}``, kept current in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.background import BackgroundLoop, RecurringFailure
from gateway.config import GatewayConfig, RouteConfig
from gateway.errors import GatewayError, NoData, NotEnoughData
from gateway.protocol.reports import CONTENT_DIMENSION, DEFAULT_MIN_ROWS, LENGTH_DIMENSION, Window
from gateway.services.reports.drift import DriftReport, Reference
from gateway.services.reports.reference import RegisteredDataset

_log = logging.getLogger("shadow_gateway.reports")

WINDOW, DATASET = "window", "dataset"  # the metric's `reference` label


class DriftMonitor(BackgroundLoop):
    """Refreshes ``shadow_gateway_drift_psi{route,dimension,reference}`` every ``interval_s``.

    Each route's last ``current_s`` is compared with the ``reference_s`` before it
    (``reference="window"``) and, when the route's champion records the dataset it was
    trained on (``route_students.train_dataset_id``), with that dataset
    (``reference="dataset"``, the prompt content too, as ``_prompt_content``). Exported
    dimensions are bounded like every slice metric: critical slices' dimensions, the ones
    listed in ``metrics.slice_values``, ``_prompt_length`` and ``_prompt_content``. A
    comparison without enough data on either side has its series removed rather than left
    stale.

    A dataset does not change: its side (labels, lengths, the content index) is read once
    and kept while a champion names it; each round reads only the last day.
    """

    task_name = "drift-monitor"

    def __init__(
        self,
        engine: AsyncEngine,
        config: GatewayConfig,
        gauge: Gauge,
        *,
        interval_s: float = 300.0,
        current_s: float = 86400.0,
        reference_s: float = 7 * 86400.0,
        min_rows: int = DEFAULT_MIN_ROWS,
    ) -> None:
        super().__init__()
        self._reports = DriftReport(engine, config)
        self._config = config
        self._gauge = gauge
        self._interval_s = interval_s
        self._current_s = current_s
        self._reference_s = reference_s
        self._min_rows = min_rows
        self._exported: dict[tuple[str, str], set[str]] = {}
        self._datasets: dict[int, RegisteredDataset] = {}
        self._unusable: set[tuple[str, int]] = set()  # (route, dataset) logged as unusable
        self._failure = RecurringFailure(_log, "drift refresh")

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # Postgres down or a bad row: try again next round
                self._failure.failed(exc, f"retrying every {self._interval_s:g}s")
            else:
                self._failure.succeeded()
            await asyncio.sleep(self._interval_s)

    async def refresh(self, now: datetime | None = None) -> None:
        until = now or datetime.now(UTC)
        current = Window(until - timedelta(seconds=self._current_s), until)
        reference = Window(current.since - timedelta(seconds=self._reference_s), current.since)
        trained = await self._reports.champion_datasets()
        for stale in set(self._datasets) - set(trained.values()):
            del self._datasets[stale]
        for route in self._config.routes:
            exported = {c.dimension for c in route.slices.critical} | set(
                self._config.metrics.slice_values
            )
            values = await self._compare(route, current, reference, exported)
            self._set(route.name, WINDOW, values)
            dataset_id = trained.get(route.name)
            dataset = await self._dataset(route, dataset_id) if dataset_id else None
            values = await self._compare(route, current, dataset, exported) if dataset else {}
            self._set(route.name, DATASET, values)

    async def _compare(
        self, route: RouteConfig, current: Window, reference: Reference, exported: set[str]
    ) -> dict[str, float]:
        try:
            report = await self._reports.drift(
                route.name, current, reference, min_rows=self._min_rows
            )
        except (NoData, NotEnoughData):
            return {}
        return _values(report, exported)

    async def _dataset(self, route: RouteConfig, dataset_id: int) -> RegisteredDataset | None:
        """The champion's training set, read once; None (logged once) when it cannot be used."""
        found = self._datasets.get(dataset_id)
        if found is not None:
            return found
        try:
            found = await self._reports.dataset_reference(route.name, dataset_id)
        except GatewayError as exc:  # another route's dataset, or gone meanwhile
            if (route.name, dataset_id) not in self._unusable:
                self._unusable.add((route.name, dataset_id))
                _log.warning("drift of route %s against its training set: %s", route.name, exc)
            return None
        self._datasets[dataset_id] = found
        return found

    def _set(self, route: str, reference: str, values: Mapping[str, float]) -> None:
        for stale in self._exported.get((route, reference), set()) - set(values):
            with contextlib.suppress(KeyError):
                self._gauge.remove(route, stale, reference)
        for dimension, value in values.items():
            self._gauge.labels(route, dimension, reference).set(value)
        self._exported[(route, reference)] = set(values)


def _values(report: Mapping[str, Any], exported: set[str]) -> dict[str, float]:
    """The report's figures the metric carries. The content's PSI counts only for a move
    away from the reference (more prompts unlike it than its own held-out part has)."""
    values = {d["dimension"]: d["psi"] for d in report["dimensions"] if d["dimension"] in exported}
    if report["prompt_length"] is not None:
        values[LENGTH_DIMENSION] = report["prompt_length"]["psi"]
    content = report.get("content")
    if content is not None:
        away = content["current"]["share"] > content["held_out"]["share"]
        values[CONTENT_DIMENSION] = content["psi"] if away else 0.0
    return values
