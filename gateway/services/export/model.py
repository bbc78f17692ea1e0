"""What an export is asked for (:class:`ExportRequest`) and what it found and did
(:class:`ExportResult`, whose :meth:`~ExportResult.manifest` is written beside the file)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.core import verify
from gateway.core.examples import allocate

if TYPE_CHECKING:
    from gateway.services.export.parts import Part

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
    holdout: float | None = None  # the share of examples held out in FILE.eval.jsonl
    exclude_datasets: tuple[int, ...] = ()  # leave out prompts these datasets hold

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.output)

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
            "holdout": self.holdout,
            "exclude_datasets": list(self.exclude_datasets),
            "format": self.format,
        }


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def request_from_manifest(manifest: Mapping[str, Any], output: Path) -> ExportRequest:
    """The request that wrote ``manifest``, to write the same file again to ``output``: its
    filters, with the window as the absolute times the manifest recorded (``window``)."""
    filters, window = manifest.get("filters"), manifest.get("window")
    if not isinstance(filters, dict) or not isinstance(window, dict):
        raise ExportError(
            "the manifest has no filters and window to repeat: it is not an export's "
            "manifest, or one written before exports recorded their window"
        )
    try:
        mix = None
        if filters.get("mix"):
            ((dimension, shares),) = filters["mix"].items()
            mix = Mix(dimension, {str(value): float(share) for value, share in shares.items()})
        chosen = filters.get("format")
        if chosen is None:
            chosen = "dpo" if manifest.get("format") == "trl-preference-jsonl" else "openai"
        return ExportRequest(
            route=str(filters["route"]),
            output=output,
            format=chosen,
            since=_moment(window.get("since")),
            until=_moment(window.get("until")),
            slices={str(d): [str(v) for v in values] for d, values in filters["slices"].items()},
            only_disagreements=bool(filters.get("only_disagreements")),
            limit=filters.get("limit"),
            mix=mix,
            seed=int(filters.get("seed") or 0),
            use_corrections=bool(filters.get("use_corrections")),
            holdout=filters.get("holdout"),
            exclude_datasets=tuple(int(i) for i in filters.get("exclude_datasets") or ()),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportError(f"the manifest's filters cannot be read back: {exc!r}") from exc


def _moment(text: object) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(str(text))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def original_digests(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The sha256 of each file the manifest's export wrote: ``train`` (and ``eval``)."""
    split = manifest.get("split")
    if isinstance(split, dict):
        return {
            kind: str(split[kind]["sha256"])
            for kind in ("train", "eval")
            if isinstance(split.get(kind), dict)
        }
    return {"train": str(manifest.get("sha256"))}


@dataclass(frozen=True)
class Provenance:
    """Where an export comes from and whether it is registered as a dataset."""

    config_sha256: str | None = None  # of the config file's bytes
    created_by: str = "cli"
    register: bool = True  # False: a scratch export (``--no-register``)
    reproduces: dict[str, Any] | None = None  # ``--from-manifest``: the dataset or file repeated


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
    not_asked: int = 0  # served by the student, the teacher never asked (no audit)
    answered: int = 0
    usable: int = 0
    live_per_slice: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_row: datetime | None = None
    last_row: datetime | None = None
    examples: int = 0  # in all the files
    no_prompt: int = 0
    excluded: int = 0  # the prompt is in a dataset of ``exclude_datasets``
    judged_wrong: Counter[str] = field(default_factory=Counter)  # by "review" or "feedback"
    judged_per_slice: Counter[tuple[str, str]] = field(default_factory=Counter)
    duplicates: int = 0
    checks_failed: Counter[str] = field(default_factory=Counter)
    failures: dict[str, list[dict[str, str | None]]] = field(default_factory=dict)
    window_until: datetime | None = None  # the snapshot's time: no row after it was seen
    parts: list[Part] = field(default_factory=list)  # the training file, and the eval split
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def train(self) -> Part:
        return self.parts[0]

    @property
    def per_slice(self) -> Counter[tuple[str, str]]:
        """Examples per slice label, in all the files."""
        return sum((part.per_slice for part in self.parts), Counter())

    @property
    def corrected(self) -> int:
        return sum(part.corrected for part in self.parts)

    @property
    def dropped(self) -> dict[str, int]:
        failed, wrong = sum(self.checks_failed.values()), sum(self.judged_wrong.values())
        handled = self.examples + self.no_prompt + wrong + failed + self.duplicates + self.excluded
        return {
            "teacher_not_asked": self.not_asked,
            "teacher_failed": self.live - self.not_asked - self.answered,
            "teacher_truncated": self.answered - self.usable,
            "judged_wrong": wrong,
            "no_prompt": self.no_prompt,
            "excluded_dataset": self.excluded,
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

    def window(self) -> dict[str, str | None]:
        """The window as absolute times, to repeat the export (see :func:`absolute_window`)."""
        return absolute_window(self.request, self.first_row, self.last_row, self.window_until)

    def manifest(self, part: Part | None = None) -> dict[str, Any]:
        """The manifest of one file (the training file by default)."""
        request, part = self.request, part or self.train
        slices: dict[str, dict[str, dict[str, int]]] = {}
        for (dimension, value), live in sorted(self.live_per_slice.items()):
            counts = {
                "live": live,
                "judged_wrong": self.judged_per_slice[dimension, value],
                "examples": part.per_slice[dimension, value],
            }
            slices.setdefault(dimension, {})[value] = counts
        provenance = self.provenance
        manifest: dict[str, Any] = {
            "file": part.path.name,
            "format": "openai-chat-jsonl",
            "kind": part.kind,
            "dataset_id": part.dataset_id,
            "examples": part.examples,
            "corrected": part.corrected,
            "sha256": part.sha256,
            "created_at": datetime.now(UTC).isoformat(),
            "created_by": provenance.created_by,
            "gateway_version": __version__,
            "config_sha256": provenance.config_sha256,
            "filters": request.filters(),
            "window": self.window(),
            "verifier": self.verifier,
            "time_range": {
                "first_row": _iso(self.first_row),
                "last_row": _iso(self.last_row),
                "first_example": _iso(part.first_example),
                "last_example": _iso(part.last_example),
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
            "teacher_versions": part.teacher_versions(),
            "frequency": part.frequency.as_json(),
            "sampling": "none",
        }
        if provenance.reproduces is not None:
            manifest["reproduces"] = provenance.reproduces
        if len(self.parts) > 1:
            manifest["split"] = {
                "holdout": request.holdout,
                "by": "prompt_key, stratified",
                **{
                    other.kind: {
                        "file": other.path.name,
                        "dataset_id": other.dataset_id,
                        "examples": other.examples,
                        "sha256": other.sha256,
                    }
                    for other in self.parts
                },
            }
        if self.sampled:
            manifest["sampling"] = "mix" if request.mix else "stratified_by_live_traffic"
        if self.sampled or len(self.parts) > 1:
            manifest["strata"] = [
                {"slices": s.labels, "live": s.live, "usable": s.usable}
                | ({"share": s.share} if s.share is not None else {})
                | {"judged_wrong": s.judged_wrong, "quota": s.quota, "examples": s.examples}
                | (
                    {other.kind: other.per_stratum[key] for other in self.parts}
                    if len(self.parts) > 1
                    else {}
                )
                for key, s in sorted(
                    self.strata.items(), key=lambda item: (-item[1].live, str(item[1].labels))
                )
            ]
        return manifest


def absolute_window(
    request: ExportRequest,
    first_row: datetime | None,
    last_row: datetime | None,
    snapshot: datetime | None,
) -> dict[str, str | None]:
    """``since`` as asked, else the first matching row; ``until`` (exclusive) as asked, else
    the snapshot's time, or just after the last matching row if that is later (a row logged
    with a clock ahead)."""
    until = request.until
    if until is None and snapshot is not None:
        until = snapshot
        if last_row is not None and last_row >= snapshot:
            until = last_row + timedelta(microseconds=1)
    return {"since": _iso(request.since or first_row), "until": _iso(until)}


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
