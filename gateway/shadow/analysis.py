"""What the pipeline works out about a request, per route: slices, confidence, agreement.

Built once at start-up from the route's config: slice rules are compiled, the comparator is
made (a ``custom`` function imported, a ``semantic`` model loaded), and the metric allow-list
of slice values fixed. Comparators that may be slow (``semantic``, ``custom``) run in a worker
thread so they never stall the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import (
    AgreementConfig,
    GatewayConfig,
    MetricsConfig,
    RouteConfig,
    ScopeConfig,
    SlicesConfig,
)
from gateway.core import agreement
from gateway.core.agreement import Agreement, Comparator
from gateway.core.confidence import confidence
from gateway.core.outputs import Output
from gateway.core.scope import Scope
from gateway.core.slices import RouteSliceRules, exported_slices
from gateway.core.toolcalls import compare_structured
from gateway.errors import ConfigError, InvalidRequest
from gateway.metrics import Metrics
from gateway.protocol.reports import reference_line


def slice_rules(config: SlicesConfig) -> RouteSliceRules:
    return RouteSliceRules(
        rules=tuple((r.dimension, re.compile(r.pattern), r.value) for r in config.rules),
        length_dimension=config.length_buckets.dimension if config.length_buckets else None,
        length_bounds=tuple(config.length_buckets.bounds) if config.length_buckets else (),
        defaults=tuple(config.defaults.items()),
    )


def _import_function(spec: str) -> Callable[[str, str], Any]:
    module_name, _, attribute = spec.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"agreement.function {spec!r} cannot be imported: {exc}") from exc
    if not callable(found):
        raise ConfigError(f"agreement.function {spec!r} is not callable")
    function: Callable[[str, str], Any] = found
    return function


def comparator(config: AgreementConfig) -> Comparator:
    threshold = config.effective_threshold
    match config.comparator:
        case "exact":
            return agreement.exact(threshold)
        case "normalized":
            return agreement.normalized(threshold)
        case "json":
            return agreement.json_fields(tuple(config.fields), threshold)
        case "label":
            assert config.pattern is not None
            return agreement.label(config.pattern, threshold, ignore_case=config.ignore_case)
        case "numeric":
            return agreement.numeric(config.abs_tol, config.rel_tol, threshold)
        case "semantic":
            from gateway.shadow.embeddings import load_embedder

            return agreement.semantic(load_embedder(config.model), threshold)
        case "custom":
            assert config.function is not None
            return agreement.custom(_import_function(config.function), threshold)
    raise ConfigError(f"unknown comparator {config.comparator!r}")  # pragma: no cover


def allowed_slices(route: RouteConfig, metrics: MetricsConfig) -> dict[str, frozenset[str]]:
    """The allow-list for metric labels: the configured values plus every critical slice."""
    allowed = {dimension: set(values) for dimension, values in metrics.slice_values.items()}
    for critical in route.slices.critical:
        allowed.setdefault(critical.dimension, set()).add(critical.value)
    return {dimension: frozenset(values) for dimension, values in allowed.items()}


@dataclass(frozen=True)
class Verdict:
    confidence: float | None
    agreement: Agreement | None

    def columns(self) -> dict[str, Any]:
        found = self.agreement
        return {
            "student_confidence": self.confidence,
            "agreement_score": found.score if found else None,
            "agree": found.agree if found else None,
            "agreement_reason": found.reason if found else None,
            "agreement_detail": found.detail if found else None,
        }


def build_scope(config: ScopeConfig, base_dir: Path) -> Scope:
    """The route's scope gate; its novelty reference read now (a ConfigError if it cannot be:
    missing, unreadable, malformed, or without one prompt)."""
    allow = {dimension: frozenset(values) for dimension, values in config.allow.items()}
    if config.novelty is None:
        return Scope(allow)
    from gateway.core.novelty import NoveltyIndex

    path = config.novelty.reference.expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        with path.open("rb") as lines:
            prompts = [
                found.text
                for number, line in enumerate(lines, 1)
                if (found := reference_line(line, number, str(path))) is not None
            ]
        index = NoveltyIndex(prompts)
    except OSError as exc:
        raise ConfigError(f"scope.novelty.reference {path}: {exc.strerror or exc}") from exc
    except InvalidRequest as exc:
        raise ConfigError(f"scope.novelty.reference: {exc.message}") from exc
    except ValueError as exc:
        raise ConfigError(f"scope.novelty.reference {path}: {exc}") from exc
    return Scope(allow, index, config.novelty.max_distance)


class RouteAnalysis:
    def __init__(
        self, route: RouteConfig, metrics: MetricsConfig, base_dir: Path | None = None
    ) -> None:
        self.rules = slice_rules(route.slices)
        self.scope = build_scope(route.scope, base_dir or Path.cwd())
        self.allowed = allowed_slices(route, metrics)
        self._confidence_method = route.rollout.confidence
        self._compare = comparator(route.agreement)
        self._threshold = route.agreement.effective_threshold
        self._blocking = route.agreement.comparator in ("semantic", "custom")

    def confidence(self, logprobs: Sequence[Mapping[str, Any]] | None) -> float | None:
        return confidence(self._confidence_method, logprobs)

    async def compare(self, teacher: Output, student: Output) -> Agreement:
        """Tool calls and refusals by their own rules; two texts by the route's comparator."""
        structured = compare_structured(teacher, student, self._threshold)
        if structured is not None:
            return structured
        teacher_text, student_text = teacher.text or "", student.text or ""
        if self._blocking:
            return await asyncio.to_thread(self._compare, teacher_text, student_text)
        return self._compare(teacher_text, student_text)

    async def verdict(self, teacher: Output, student: Output, confidence: float | None) -> Verdict:
        return Verdict(confidence, await self.compare(teacher, student))

    def observe(
        self,
        metrics: Metrics,
        route: str,
        student: str,
        slices: Mapping[str, str],
        verdict: Verdict,
    ) -> None:
        """Count a student's verdict per exported slice, and its confidence by verdict."""
        found = verdict.agreement
        if found is None:
            return
        label = "agree" if found.agree else "disagree"
        for dimension, value in exported_slices(slices, self.allowed):
            metrics.agreement.labels(route, student, dimension, value, label).inc()
            metrics.agreement_score.labels(route, student, dimension, value).observe(found.score)
        if verdict.confidence is not None:
            metrics.confidence.labels(route, student, label).observe(verdict.confidence)


def build_analyses(config: GatewayConfig, base_dir: Path | None = None) -> dict[str, RouteAnalysis]:
    """Every route's analysis; ``base_dir`` anchors relative paths (the config file's folder)."""
    return {route.name: RouteAnalysis(route, config.metrics, base_dir) for route in config.routes}
