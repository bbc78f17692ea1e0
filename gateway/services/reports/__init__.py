"""The analyst reports: slices, disagreements, threshold calibration, drift, candidates, quality.

Every figure is aggregated in Postgres (``GROUP BY`` over the route's rows in the window:
labels, ``width_bucket`` of the confidence, prompt length, day); Python only sees per-group
counts, plus one page of rows for the disagreement listing. The statistics on those counts
(Wilson intervals, calibration curves, PSI) are :mod:`gateway.core.statistics`.

Reports answer with plain JSON-ready dicts, the same for the API and the CLI. Bad input is a
gateway error: :class:`~gateway.errors.RouteNotFound`, :class:`UnknownDimension` and
:class:`NoData` (404), :class:`NotEnoughData` and :class:`~gateway.errors.InvalidRequest`
(400).

One module per report (:mod:`.slices`, :mod:`.disagreements`, :mod:`.thresholds`,
:mod:`.drift`, :mod:`.candidates`, :mod:`.quality`), each a mixin over :class:`.common.ReportsBase`;
:class:`Reports` is all of them.
:class:`DriftMonitor` (:mod:`.monitor`) keeps
``shadow_gateway_drift_psi{route,dimension,reference}`` current in the background: each
route's last day against the week before it, and against its champion's training set.
Drift's registered-dataset references are read by :mod:`.reference`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.protocol.reports import DEFAULT_MIN_ROWS, DEFAULT_PSI_THRESHOLD
from gateway.services.reports.candidates import CandidateReport
from gateway.services.reports.common import (
    TEXT_PARTS_COUNTED,
    configured_dimensions,
    last_user_text_sql,
)
from gateway.services.reports.disagreements import DisagreementReport
from gateway.services.reports.drift import DriftReport, reference_dataset
from gateway.services.reports.quality import QualityReport
from gateway.services.reports.slices import SliceReport
from gateway.services.reports.thresholds import ThresholdReport, calibrated_overrides

if TYPE_CHECKING:
    from gateway.services.reports.monitor import DriftMonitor

__all__ = [
    "DEFAULT_MIN_ROWS",
    "DEFAULT_PSI_THRESHOLD",
    "TEXT_PARTS_COUNTED",
    "DriftMonitor",
    "Reports",
    "calibrated_overrides",
    "configured_dimensions",
    "last_user_text_sql",
    "reference_dataset",
]


class Reports(
    SliceReport, DisagreementReport, ThresholdReport, DriftReport, CandidateReport, QualityReport
):
    """Every report over one engine and config: ``slices``, ``disagreements``, ``thresholds``,
    ``drift``, ``candidates`` and ``quality``."""


def __getattr__(name: str) -> Any:
    # DriftMonitor is the server's: loaded on first use, so that a report run from the CLI
    # does not import prometheus_client and the background loop (the CLI's start-up)
    if name == "DriftMonitor":
        from gateway.services.reports.monitor import DriftMonitor

        return DriftMonitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
