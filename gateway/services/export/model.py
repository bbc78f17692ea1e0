"""What an export is asked for (:class:`ExportRequest`) and what it found and did
(:class:`ExportResult`, whose :meth:`~ExportResult.manifest` is written beside the file)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.core import verify
from gateway.core.examples import allocate

_MAX_CHECKS = 50  # distinct verifier checks counted one by one; the rest as "other"
_QUOTED_PER_CHECK = 3  # failed answers named in the manifest, per check


class ExportError(Exception):
    """The export cannot be made as asked; the message says why and what to change."""


@dataclass(frozen=True)
class Mix:
    """Target shares of the values of one slice dimension, e.g. tier: {free: 0.7, paid: 0.3}."""

    dimension: str
    shares: Mapping[str, float]


FORMATS = ("openai", "dpo")  # the OpenAI chat fine-tuning format; TRL's preference pairs


@dataclass(frozen=True)
class ExportRequest:
    route: str
    output: Path
    format: str = "openai"
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    slices: Mapping[str, Sequence[str]] = field(default_factory=dict)  # dimension → any of these
    only_disagreements: bool = False
    limit: int | None = None  # examples in all, stratified; None: every row that qualifies
    mix: Mix | None = None  # needs a limit
    seed: int = 0
    use_corrections: bool = False  # a judged-wrong answer with a correction: export the latter

    @property
    def manifest_path(self) -> Path:
        return self.output.with_name(self.output.name + ".manifest.json")

    def filters(self) -> dict[str, Any]:
        """The filters as the manifest shows them."""
        return {
            "route": self.route,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "slices": {dimension: list(values) for dimension, values in self.slices.items()},
            "only_disagreements": self.only_disagreements,
            "limit": self.limit,
            "mix": {self.mix.dimension: dict(self.mix.shares)} if self.mix else None,
            "seed": self.seed,
            "use_corrections": self.use_corrections,
        }


# --- what an export found and did --------------------------------------------------------------


@dataclass
class Stratum:
    labels: dict[str, str]  # the joint slice labels, or {mix dimension: value}
    live: int = 0  # rows matched
    usable: int = 0  # of those, with a complete teacher answer
    share: float | None = None  # the mix's target share
    quota: int | None = None
    examples: int = 0
    judged_wrong: int = 0  # usable rows dropped because their teacher answer was judged wrong

    def full(self) -> bool:
        return self.quota is not None and self.examples >= self.quota


@dataclass
class ExportResult:
    request: ExportRequest
    verifier: dict[str, Any] | None = None
    strata: dict[str, Stratum] = field(default_factory=dict)
    sampled: bool = False
    live: int = 0
    answered: int = 0
    usable: int = 0
    live_per_slice: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_row: datetime | None = None
    last_row: datetime | None = None
    examples: int = 0
    per_slice: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_example: datetime | None = None
    last_example: datetime | None = None
    no_prompt: int = 0
    judged_wrong: Counter[str] = field(default_factory=Counter)  # by "review" or "feedback"
    judged_per_slice: Counter[tuple[str, str]] = field(default_factory=Counter)
    corrected: int = 0  # examples whose assistant turn is a correction (--use-corrections)
    duplicates: int = 0
    checks_failed: Counter[str] = field(default_factory=Counter)
    failures: dict[str, list[dict[str, str | None]]] = field(default_factory=dict)
    sha256: str = ""

    @property
    def dropped(self) -> dict[str, int]:
        failed, wrong = sum(self.checks_failed.values()), sum(self.judged_wrong.values())
        handled = self.examples + self.no_prompt + wrong + failed + self.duplicates
        return {
            "teacher_failed": self.live - self.answered,
            "teacher_truncated": self.answered - self.usable,
            "judged_wrong": wrong,
            "no_prompt": self.no_prompt,
            "verifier": failed,
            "duplicate_prompt": self.duplicates,
            "sampling": self.usable - handled,
        }

    @property
    def short(self) -> list[Stratum]:
        """Strata that could not fill their quota (too few qualifying rows)."""
        return [s for s in self.strata.values() if s.quota is not None and not s.full()]

    def count_failure(self, request_id: str, outcome: verify.Verification) -> None:
        check = outcome.check or "failed"
        if check not in self.checks_failed and len(self.checks_failed) >= _MAX_CHECKS:
            check = "other"
        self.checks_failed[check] += 1
        quoted = self.failures.setdefault(check, [])
        if len(quoted) < _QUOTED_PER_CHECK:
            quoted.append({"request_id": request_id, "message": outcome.message})

    def manifest(self) -> dict[str, Any]:
        request = self.request
        slices: dict[str, dict[str, dict[str, int]]] = {}
        for (dimension, value), live in sorted(self.live_per_slice.items()):
            counts = {
                "live": live,
                "judged_wrong": self.judged_per_slice[dimension, value],
                "examples": self.per_slice[dimension, value],
            }
            slices.setdefault(dimension, {})[value] = counts
        manifest: dict[str, Any] = {
            "file": request.output.name,
            "format": "openai-chat-jsonl",
            "examples": self.examples,
            "corrected": self.corrected,
            "sha256": self.sha256,
            "created_at": datetime.now(UTC).isoformat(),
            "gateway_version": __version__,
            "filters": request.filters(),
            "verifier": self.verifier,
            "time_range": {
                "first_row": _iso(self.first_row),
                "last_row": _iso(self.last_row),
                "first_example": _iso(self.first_example),
                "last_example": _iso(self.last_example),
            },
            "rows_matched": self.live,
            "dropped": self.dropped,
            "judged_wrong": {
                "review": self.judged_wrong["review"],
                "feedback": self.judged_wrong["feedback"],
            },
            "dropped_by_check": dict(self.checks_failed.most_common()),
            "failed_checks_quoted": self.failures,
            "slices": slices,
            "sampling": "none",
        }
        if self.sampled:
            manifest["sampling"] = "mix" if request.mix else "stratified_by_live_traffic"
            manifest["strata"] = [
                {"slices": s.labels, "live": s.live, "usable": s.usable}
                | ({"share": s.share} if s.share is not None else {})
                | {"judged_wrong": s.judged_wrong, "quota": s.quota, "examples": s.examples}
                for s in sorted(self.strata.values(), key=lambda s: (-s.live, str(s.labels)))
            ]
        return manifest


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def set_quotas(result: ExportResult) -> None:
    request = result.request
    if request.limit is None:
        return
    if request.mix is not None:
        for value, share in request.mix.shares.items():
            result.strata[value].share = share
        quotas = allocate(request.limit, request.mix.shares)
    elif request.limit < result.live:
        quotas = allocate(request.limit, {key: s.live for key, s in result.strata.items()})
    else:
        return  # room for every row: nothing to sample
    for key, stratum in result.strata.items():
        stratum.quota = quotas.get(key, 0)
    result.sampled = True


def nothing_left(result: ExportResult) -> str:
    dropped = ", ".join(f"{reason} {n}" for reason, n in result.dropped.items() if n)
    checks = ", ".join(f"{check} {n}" for check, n in result.checks_failed.most_common(5))
    return f"no examples left: all {result.live} matching rows were dropped ({dropped})" + (
        f"; failed verifier checks: {checks}" if checks else ""
    )
