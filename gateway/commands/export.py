"""``export``: logged production traffic as a training set for the next distillation.

Writes JSONL in the OpenAI fine-tuning chat format (``--format openai``, the default) or
preference pairs from reviewed answers for TRL's DPO trainer (``--format dpo``), and a
manifest beside it (``FILE.manifest.json``: filters, counts, what was dropped and why, time
range, gateway version). The summary on stdout is a table, or the manifest as JSON with
``--json``. See :mod:`gateway.services.export` for what is kept and how it is sampled.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.commands.common import CommandError, positive_int, with_engine
from gateway.config import load_settings
from gateway.services.export import (
    FORMATS,
    Exporter,
    ExportError,
    ExportRequest,
    ExportResult,
    Mix,
    PreferenceExporter,
    PreferenceResult,
    build_verifier,
)

_SLICE = re.compile(r"^([^=\s]+)=(.+)$")


def _moment(end_of_day: bool) -> Any:
    """An ISO date or date-time; a bare date ends at its midnight for ``--until`` (inclusive)."""

    def parse(text: str) -> datetime:
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                day = date.fromisoformat(text) + timedelta(days=1 if end_of_day else 0)
                return datetime(day.year, day.month, day.day, tzinfo=UTC)
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not an ISO date or date-time: {text!r} (e.g. 2026-11-01 or 2026-11-01T12:00Z)"
            ) from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

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


def _request(args: argparse.Namespace) -> ExportRequest:
    if args.max is not None and not args.only_disagreements:
        raise CommandError("--max caps --only-disagreements; for a sample of all rows use --limit")
    if args.max is not None and args.limit is not None:
        raise CommandError("give --max or --limit, not both")
    limit = args.max if args.max is not None else args.limit
    if args.format == "dpo":
        options = {"--limit": args.limit, "--max": args.max, "--mix": args.mix}
        options["--use-corrections"] = args.use_corrections or None
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
        seed=args.seed,
        format=args.format,
        use_corrections=args.use_corrections,
    )


def cmd_export(args: argparse.Namespace) -> int:
    request = _request(args)
    settings = load_settings(args.config)
    route = settings.config.route(request.route)
    if route is None:
        names = ", ".join(r.name for r in settings.config.routes)
        raise CommandError(f"unknown route {request.route!r}; the routes are: {names}")
    config = route.export.verifier
    exporter_verifier = build_verifier(config)

    async def export(engine: AsyncEngine) -> ExportResult | PreferenceResult:
        if request.format == "dpo":
            return await PreferenceExporter(engine, exporter_verifier, config).run(request)
        return await Exporter(engine, exporter_verifier, config).run(request)

    try:
        result = with_engine(settings, export)
    except ExportError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        summary = {"output": str(request.output), "manifest": str(request.manifest_path)}
        document = summary | result.manifest()
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    elif isinstance(result, PreferenceResult):
        print(_pairs_table(result))
    else:
        print(_table(result))
    if isinstance(result, ExportResult):
        _warn_short(result)
    return 0


def _warn_short(result: ExportResult) -> None:
    for stratum in result.short:
        labels = ", ".join(f"{k}={v}" for k, v in stratum.labels.items()) or "(no slices)"
        print(
            f"shadow-gateway: warning: {labels}: {stratum.examples} examples of the "
            f"{stratum.quota} its share asks for (too few rows qualify)",
            file=sys.stderr,
        )


def _table(result: ExportResult) -> str:
    request = result.request
    lines = [
        f"wrote {result.examples} examples to {request.output}",
        f"manifest: {request.manifest_path}",
        "",
        f"rows matched        {result.live:>9}",
    ]
    dropped = [(reason, count) for reason, count in result.dropped.items() if count]
    lines += ["dropped"] if dropped else []
    lines += [f"  {reason:<18}{count:>9}" for reason, count in dropped]
    lines.append(f"examples            {result.examples:>9}")
    if result.corrected:
        lines.append(f"  corrected         {result.corrected:>9}")
    if result.judged_wrong:
        by = ", ".join(f"{n} by {source}" for source, n in sorted(result.judged_wrong.items()))
        lines.append(f"judged wrong: {by}")
    if result.checks_failed:
        checks = ", ".join(f"{check} {n}" for check, n in result.checks_failed.most_common(5))
        lines.append(f"failed verifier checks: {checks}")
    rows = [("SLICE", "LIVE", "EXAMPLES")] + [
        (f"{dimension}={value}", str(live), str(result.per_slice[dimension, value]))
        for (dimension, value), live in sorted(result.live_per_slice.items())
    ]
    if len(rows) > 1:
        width = max(len(row[0]) for row in rows)
        lines.append("")
        lines += [f"{name:<{width}}  {live:>9}  {examples:>9}" for name, live, examples in rows]
    return "\n".join(lines)


def _pairs_table(result: PreferenceResult) -> str:
    request = result.request
    lines = [
        f"wrote {result.examples} preference pairs ({result.form}) to {request.output}",
        f"manifest: {request.manifest_path}",
        "",
        f"review tasks judged {result.judged:>9}",
        f"  used              {result.used:>9}",
    ]
    skipped = [(reason, count) for reason, count in result.skipped.items() if count]
    lines += ["skipped"] if skipped else []
    lines += [f"  {reason:<18}{count:>9}" for reason, count in skipped]
    lines.append("pairs")
    lines += [f"  {verdict:<18}{result.pairs[verdict]:>9}" for verdict in sorted(result.pairs)]
    return "\n".join(lines)


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export",
        parents=[parent],
        help="Write logged traffic as a JSONL training set (OpenAI chat or DPO) + manifest.",
        description="Write the teacher's answers to logged production traffic as JSONL in the "
        "OpenAI fine-tuning chat format, with a manifest beside it. Only complete teacher "
        "answers that pass the route's export.verifier and were not judged wrong (by a review "
        "or the app's feedback) are kept, one per normalised prompt. --format dpo writes "
        "preference pairs from reviewed answers instead, for TRL's DPOTrainer.",
    )
    export.add_argument("--route", required=True, help="the route whose traffic to export")
    export.add_argument("--output", "-o", required=True, help="the JSONL file to write")
    export.add_argument(
        "--since", type=_moment(end_of_day=False), help="from this ISO date/time (UTC if no zone)"
    )
    export.add_argument(
        "--until",
        type=_moment(end_of_day=True),
        help="until this ISO date/time, exclusive; a bare date includes that day",
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
    export.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    export.add_argument(
        "--format",
        type=_format,
        default="openai",
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
    export.add_argument("--json", action="store_true", help="the summary as JSON")
    export.set_defaults(handler=cmd_export)
