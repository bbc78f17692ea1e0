"""``export``: logged production traffic as a training set for the next distillation.

Writes JSONL in the OpenAI fine-tuning chat format (``--format openai``, the default) or
preference pairs from reviewed answers for TRL's DPO trainer (``--format dpo``), and a
manifest beside it (``FILE.manifest.json``: filters, counts, what was dropped and why, time
range, gateway version), with ``--holdout F`` a held-out split beside it
(``FILE.eval.jsonl``), and registers each file as a dataset (``datasets list|show``; not with
``--no-register``). ``--from-manifest`` repeats an earlier export. The summary on stdout is a
table, or the manifest as JSON with ``--json``. See :mod:`gateway.services.export` for what is
kept and how it is sampled.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine
from tqdm import tqdm

from gateway.commands import export_summary
from gateway.commands.common import CommandError, default_actor, positive_int, with_engine
from gateway.config import Settings, VerifierConfig, load_settings
from gateway.core.verify import Verifier
from gateway.errors import InvalidRequest
from gateway.protocol.reports import parse_time
from gateway.services.datasets import DatasetError, get_dataset
from gateway.services.export import (
    FORMATS,
    Exporter,
    ExportError,
    ExportRequest,
    ExportResult,
    Mix,
    PreferenceExporter,
    PreferenceResult,
    Provenance,
    build_verifier,
    request_from_manifest,
)

_SLICE = re.compile(r"^([^=\s]+)=(.+)$")


def _moment(option: str, end_of_day: bool) -> Any:
    """An ISO date or date-time, ``now`` or an age (``7d``), as every command takes them; a
    bare date ends at its midnight for ``--until`` (inclusive). The manifest records the
    absolute time an age stood for."""

    def parse(text: str) -> datetime:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            try:
                day = date.fromisoformat(text) + timedelta(days=1 if end_of_day else 0)
            except ValueError:
                pass  # reported below
            else:
                return datetime(day.year, day.month, day.day, tzinfo=UTC)
        try:
            return parse_time(text, option)
        except InvalidRequest as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _slice(text: str) -> tuple[str, str]:
    found = _SLICE.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(f"a slice is DIM=VALUE, like tier=free; not {text!r}")
    return found.group(1), found.group(2)


def _mix(text: str) -> Mix:
    """``tier=free:0.7,paid:0.3`` (also ``tier=free:70%,tier=paid:30%``): shares adding up to 1."""
    dimension: str | None = None
    shares: dict[str, float] = {}
    usage = f"a mix is dimension=value:share,value:share like tier=free:0.7,paid:0.3; not {text!r}"
    for item in text.split(","):
        name, sep, rest = item.strip().partition("=")
        if sep:
            if dimension not in (None, name):
                raise argparse.ArgumentTypeError(f"a mix is over one dimension: {text!r}")
            dimension, item = name, rest
        value, sep, share_text = item.rpartition(":")
        if not sep or not value or dimension is None:
            raise argparse.ArgumentTypeError(usage)
        try:
            share = float(share_text.rstrip("%")) / (100 if share_text.endswith("%") else 1)
        except ValueError:
            raise argparse.ArgumentTypeError(usage) from None
        if not (math.isfinite(share) and 0 < share <= 1) or value in shares:
            raise argparse.ArgumentTypeError(
                f"each value once, with a share above 0 and at most 1: {item!r}"
            )
        shares[value] = share
    if dimension is None or abs(sum(shares.values()) - 1) > 0.005:
        raise argparse.ArgumentTypeError(
            f"the mix's shares add up to {sum(shares.values()):g}; they must add up to 1"
        )
    return Mix(dimension, shares)


def _format(text: str) -> str:
    if text not in FORMATS:
        hint = " (the summary as JSON is --json)" if text in ("json", "table") else ""
        raise argparse.ArgumentTypeError(f"unknown format {text!r}: {' or '.join(FORMATS)}{hint}")
    return text


def _holdout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--holdout is a fraction, not {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 0.5):
        raise argparse.ArgumentTypeError(
            f"--holdout must be above 0 and at most 0.5 (the share held out), not {text}"
        )
    return value


# The options that say what to export: --from-manifest takes them all from the manifest.
_REQUEST_OPTIONS = {
    "route": "--route",
    "since": "--since",
    "until": "--until",
    "slice": "--slice",
    "only_disagreements": "--only-disagreements",
    "max": "--max",
    "limit": "--limit",
    "mix": "--mix",
    "seed": "--seed",
    "format": "--format",
    "use_corrections": "--use-corrections",
    "holdout": "--holdout",
    "exclude_dataset": "--exclude-dataset",
}


def _request(args: argparse.Namespace) -> ExportRequest:
    if args.route is None or args.output is None:
        missing = [option for option in ("--route", "--output") if not getattr(args, option[2:])]
        verb = "is" if len(missing) == 1 else "are"
        raise _Usage(f"{' and '.join(missing)} {verb} required (or --from-manifest with --output)")
    args.format = args.format or "openai"
    if args.max is not None and not args.only_disagreements:
        raise CommandError("--max caps --only-disagreements; for a sample of all rows use --limit")
    if args.max is not None and args.limit is not None:
        raise CommandError("give --max or --limit, not both")
    limit = args.max if args.max is not None else args.limit
    if args.format == "dpo":
        options = {"--limit": args.limit, "--max": args.max, "--mix": args.mix}
        options["--use-corrections"] = args.use_corrections or None
        options["--holdout"] = args.holdout
        if given := [option for option, value in options.items() if value is not None]:
            raise CommandError(
                f"--format dpo takes every reviewed pair the filters match; {given[0]} is for "
                "--format openai (a both_wrong verdict's correction is always used)"
            )
    if args.mix is not None and limit is None:
        raise CommandError("--mix needs --limit N: how many examples in all")
    if args.since and args.until and args.since >= args.until:
        raise CommandError(f"--since {args.since:%Y-%m-%d %H:%M} is not before --until")
    slices: dict[str, list[str]] = {}
    for dimension, value in args.slice:
        slices.setdefault(dimension, []).append(value)
    return ExportRequest(
        route=args.route,
        output=Path(args.output).expanduser().absolute(),
        since=args.since,
        until=args.until,
        slices=slices,
        only_disagreements=args.only_disagreements,
        limit=limit,
        mix=args.mix,
        seed=args.seed if args.seed is not None else 0,
        format=args.format,
        use_corrections=args.use_corrections,
        holdout=args.holdout,
        exclude_datasets=tuple(dict.fromkeys(args.exclude_dataset)),
    )


class _Usage(Exception):
    """Arguments that do not go together: exit status 2, like argparse's own errors."""


def _manifest_source(args: argparse.Namespace) -> int | Path:
    """``--from-manifest``: a dataset id (digits) or a manifest file."""
    given = [
        option
        for name, option in _REQUEST_OPTIONS.items()
        if getattr(args, name) not in (None, False, [])
    ]
    if given:
        raise _Usage(
            f"--from-manifest repeats an export as its manifest says; {given[0]} cannot be "
            "combined with it"
        )
    if args.output is None:
        raise _Usage("--from-manifest needs --output FILE: where to write the export again")
    text = args.from_manifest
    return int(text) if text.isdigit() else Path(text).expanduser().absolute()


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise CommandError(f"cannot read the manifest {path}: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"the manifest {path} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise CommandError(f"the manifest {path} is not an export's manifest")
    return document


def _config_sha256(settings: Settings) -> str | None:
    try:
        return hashlib.sha256(settings.config_path.read_bytes()).hexdigest()
    except OSError:
        return None


def cmd_export(args: argparse.Namespace) -> int:
    try:
        source = _manifest_source(args) if args.from_manifest is not None else None
        request = _request(args) if source is None else None
    except _Usage as exc:
        print(f"shadow-gateway export: {exc}", file=sys.stderr)
        return 2
    settings = load_settings(args.config)
    output = Path(args.output).expanduser().absolute()
    manifest = _read_manifest(source) if isinstance(source, Path) else None
    if request is not None:
        _verifier(settings, request)  # an unknown route or verifier: before the database
    provenance = Provenance(
        config_sha256=_config_sha256(settings),
        created_by=default_actor(),
        register=not args.no_register,
    )

    async def export(engine: AsyncEngine) -> tuple[ExportResult | PreferenceResult, Any]:
        nonlocal manifest
        asked, origin = request, provenance
        if asked is None:  # --from-manifest
            if isinstance(source, int):
                manifest = await _dataset_manifest(engine, source)
            assert manifest is not None
            asked = request_from_manifest(manifest, output)
            repeated: dict[str, Any] = {"dataset_id": source}
            if isinstance(source, Path):
                repeated = {"manifest": str(source), "dataset_id": manifest.get("dataset_id")}
            origin = replace(provenance, reproduces=repeated)
        verifier, config = _verifier(settings, asked)
        if manifest is not None:
            _warn_verifier(manifest, asked, config)
        kind = PreferenceExporter if asked.format == "dpo" else Exporter
        # rows read so far, on stderr (tqdm shows it on a terminal only: stdout stays the result)
        with tqdm(unit=" rows", file=sys.stderr, mininterval=0.5, disable=None) as bar:
            exporter = kind(engine, verifier, config, progress=bar.update)
            return await exporter.run(asked, origin), asked

    try:
        result, asked = with_engine(settings, export)
    except ExportError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        print(export_summary.json_summary(asked, result))
    elif isinstance(result, PreferenceResult):
        print(export_summary.pairs_table(result))
    else:
        print(export_summary.table(result))
    if isinstance(result, ExportResult):
        export_summary.warn_short(result)
    if manifest is not None:
        export_summary.compare(manifest, result)
    return 0


async def _dataset_manifest(engine: AsyncEngine, dataset_id: int) -> dict[str, Any]:
    try:
        async with engine.connect() as connection:
            return (await get_dataset(connection, dataset_id)).manifest
    except DatasetError as exc:
        raise CommandError(f"--from-manifest: {exc}") from exc


def _verifier(
    settings: Settings, request: ExportRequest
) -> tuple[Verifier | None, VerifierConfig | None]:
    """The route's verifier and its config; an unknown route is a CommandError."""
    route = settings.config.route(request.route)
    if route is None:
        names = ", ".join(r.name for r in settings.config.routes)
        raise CommandError(f"unknown route {request.route!r}; the routes are: {names}")
    return build_verifier(route.export.verifier), route.export.verifier


def _warn_verifier(
    manifest: dict[str, Any], request: ExportRequest, config: VerifierConfig | None
) -> None:
    now = config.model_dump(by_alias=True) if config is not None else None
    if manifest.get("verifier") != now:
        print(
            f"shadow-gateway: warning: route {request.route!r}'s export.verifier is not the "
            "one the manifest records; the examples may differ",
            file=sys.stderr,
        )


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export",
        parents=[parent],
        help="Write logged traffic as a JSONL training set (OpenAI chat or DPO) + manifest.",
        description="Write the teacher's answers to logged production traffic as JSONL in the "
        "OpenAI fine-tuning chat format, with a manifest beside it. Only complete teacher "
        "answers that pass the route's export.verifier and were not judged wrong (by a review "
        "or the app's feedback) are kept, one per normalised prompt. --format dpo writes "
        "preference pairs from reviewed answers instead, for TRL's DPOTrainer. Each file is "
        "registered as a dataset (datasets list|show).",
    )
    export.add_argument("--route", help="the route whose traffic to export (required)")
    export.add_argument("--output", "-o", help="the JSONL file to write (required)")
    export.add_argument(
        "--since",
        type=_moment("--since", end_of_day=False),
        help="from this ISO date/time (UTC if no zone), or an age like 7d",
    )
    export.add_argument(
        "--until",
        type=_moment("--until", end_of_day=True),
        help="until this ISO date/time (or now, or an age), exclusive; a bare date includes "
        "that day",
    )
    export.add_argument(
        "--slice",
        type=_slice,
        action="append",
        default=[],
        metavar="DIM=VALUE",
        help="only this slice; repeat for more (one dimension repeated: any of its values)",
    )
    export.add_argument(
        "--only-disagreements",
        action="store_true",
        help="only requests where the student disagreed with the teacher (hard examples)",
    )
    export.add_argument(
        "--max", type=positive_int, metavar="N", help="with --only-disagreements: at most N"
    )
    export.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="at most N examples, sampled so slice proportions match live traffic",
    )
    export.add_argument(
        "--mix",
        type=_mix,
        metavar="DIM=VALUE:SHARE,...",
        help="with --limit: sample to these shares of one dimension, e.g. tier=free:0.7,paid:0.3",
    )
    export.add_argument(
        "--seed", type=int, help="the seed of the sample and of the holdout split (default 0)"
    )
    export.add_argument(
        "--format",
        type=_format,
        metavar="|".join(FORMATS),
        help="openai: the OpenAI chat fine-tuning format (default); dpo: preference pairs "
        "from reviewed answers (TRL's DPO format)",
    )
    export.add_argument(
        "--use-corrections",
        action="store_true",
        help="export a teacher answer judged wrong with its correction, when it has one, "
        "instead of dropping it",
    )
    export.add_argument(
        "--holdout",
        type=_holdout,
        metavar="F",
        help="also write FILE.eval.jsonl: this share (above 0, at most 0.5) of the examples, "
        "stratified like the training file, no normalised prompt on both sides",
    )
    export.add_argument(
        "--exclude-dataset",
        type=positive_int,
        action="append",
        default=[],
        metavar="ID",
        help="leave out rows whose normalised prompt is in this dataset; repeat for more",
    )
    export.add_argument(
        "--from-manifest",
        metavar="PATH|ID",
        help="repeat the export a manifest file or a dataset id records (with --output)",
    )
    export.add_argument(
        "--no-register",
        action="store_true",
        help="a scratch export: write the files without registering them as datasets",
    )
    export.add_argument("--json", action="store_true", help="the summary as JSON")
    export.set_defaults(handler=cmd_export)
