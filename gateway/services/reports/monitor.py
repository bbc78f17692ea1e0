"""``shadow_gateway_drift_psi{route,dimension}``, kept current in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.background import BackgroundLoop, RecurringFailure
from gateway.config import GatewayConfig
from gateway.errors import NoData, NotEnoughData
from gateway.protocol.reports import LENGTH_DIMENSION, Window
from gateway.services.reports.common import DEFAULT_MIN_ROWS
from gateway.services.reports.drift import DriftReport

_log = logging.getLogger("shadow_gateway.reports")


class DriftMonitor(BackgroundLoop):
    """Refreshes ``shadow_gateway_drift_psi{route,dimension}`` every ``interval_s``.

    Each route's last ``current_s`` is compared with the ``reference_s`` before it. Exported
    dimensions are bounded like every slice metric: critical slices' dimensions, the ones
    listed in ``metrics.slice_values``, and ``_prompt_length``. A route without enough data on
    either side has its series removed rather than left stale.
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
        self._exported: dict[str, set[str]] = {}
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
        for route in self._config.routes:
            exported = {c.dimension for c in route.slices.critical} | set(
                self._config.metrics.slice_values
            )
            try:
                report = await self._reports.drift(
                    route.name, current, reference, min_rows=self._min_rows
                )
            except (NoData, NotEnoughData):
                values: dict[str, float] = {}
            else:
                values = {d["dimension"]: d["psi"] for d in report["dimensions"]}
                values = {dim: psi for dim, psi in values.items() if dim in exported}
                if report["prompt_length"] is not None:
                    values[LENGTH_DIMENSION] = report["prompt_length"]["psi"]
            self._set(route.name, values)

    def _set(self, route: str, values: Mapping[str, float]) -> None:
        for stale in self._exported.get(route, set()) - set(values):
            with contextlib.suppress(KeyError):
                self._gauge.remove(route, stale)
        for dimension, value in values.items():
            self._gauge.labels(route, dimension).set(value)
        self._exported[route] = set(values)
