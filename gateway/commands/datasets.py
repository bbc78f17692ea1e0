"""``datasets list|show``: the datasets exports registered (:mod:`gateway.services.datasets`).

``list`` reads only the registry; ``show`` also reads the file and says whether it is still
there with the sha256 recorded (``ok``, ``changed``, ``missing``, ``unreadable``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.commands.common import CommandError, positive_int, print_table, with_engine
from gateway.config import load_settings
from gateway.services.datasets import (
    KINDS,
    Dataset,
    DatasetError,
    file_state,
    get_dataset,
    list_datasets,
)
from gateway.services.export.parts import BUCKETS

DROPPED = [
    "teacher_not_asked",
    "teacher_failed",
    "teacher_truncated",
    "judged_wrong",
    "no_prompt",
    "excluded_dataset",
    "verifier",
    "duplicate_prompt",
    "sampling",
]
_FILE_STATES = {
    "ok": "present, same sha256",
    "changed": "CHANGED since it was written (another sha256)",
    "missing": "MISSING",
    "unreadable": "UNREADABLE",
}


def cmd_list(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def listing(engine: AsyncEngine) -> list[Dataset]:
        async with engine.connect() as connection:
            return await list_datasets(connection, args.route, args.kind)

    found = with_engine(settings, listing)
    if args.json:
        rows = [dataset.summary() for dataset in found]
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if not found:
        print("no datasets" + (" of route " + repr(args.route) if args.route else ""))
        return 0
    print_table(
        ("ID", "ROUTE", "KIND", "ITEMS", "CREATED", "BY", "SPLIT", "PATH"),
        [
            (
                str(dataset.id),
                dataset.route,
                dataset.kind,
                str(dataset.items),
                dataset.created_at.isoformat(timespec="seconds"),
                dataset.created_by,
                _split(dataset),
                dataset.path,
            )
            for dataset in found
        ],
    )
    return 0


def _split(dataset: Dataset) -> str:
    if dataset.split_of is not None:
        return f"eval of {dataset.split_of}"
    if dataset.splits:
        return "eval: " + ",".join(str(split) for split in dataset.splits)
    return "-"


def cmd_show(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def show(engine: AsyncEngine) -> Dataset:
        async with engine.connect() as connection:
            try:
                return await get_dataset(connection, args.id)
            except DatasetError as exc:
                raise CommandError(str(exc)) from exc

    dataset = with_engine(settings, show)
    state = file_state(dataset.path, dataset.sha256)
    if args.json:
        document = dataset.summary() | {"file_state": state, "manifest": dataset.manifest}
        sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(_details(dataset, state))
    return 0


def _details(dataset: Dataset, state: str) -> str:
    manifest = dataset.manifest
    filters = manifest.get("filters") or {}
    window = manifest.get("window") or {}
    lines = [
        f"dataset {dataset.id}: {dataset.kind}, route {dataset.route}",
        f"created {dataset.created_at.isoformat(timespec='seconds')} by {dataset.created_by}",
        f"file    {dataset.path}: {_FILE_STATES[state]}",
        f"sha256  {dataset.sha256}",
        f"items   {dataset.items}" + _examples(manifest),
    ]
    if dataset.split_of is not None:
        lines.append(f"held out from dataset {dataset.split_of}")
    if dataset.splits:
        lines.append("held-out split: dataset " + ", ".join(map(str, dataset.splits)))
    lines.append(f"window  {window.get('since') or '-'} .. {window.get('until') or '-'}")
    lines.append("filters " + _filters(filters))
    verifier = manifest.get("verifier")
    lines.append("verifier " + (str(verifier.get("kind")) if verifier else "none"))
    if config := manifest.get("config_sha256"):
        lines.append(f"config sha256 {config}")
    versions = manifest.get("teacher_versions") or []
    if versions:
        shown = ", ".join(
            f"{v.get('model') or '?'}/{v.get('fingerprint') or '-'} {v.get('examples')}"
            for v in versions
        )
        lines.append(f"teacher versions: {shown}")
    if dropped := _in_order(manifest.get("dropped") or {}, DROPPED):
        matched = manifest.get("rows_matched")
        lines.append(
            f"rows matched {matched}; dropped "
            + ", ".join(f"{reason} {n}" for reason, n in dropped.items() if n)
        )
    lines += _frequency(manifest.get("frequency"))
    slices = manifest.get("slices") or {}
    rows = [
        (f"{dimension}={value}", str(counts.get("live", "")), str(counts.get("examples", "")))
        for dimension, values in sorted(slices.items())
        for value, counts in sorted(values.items())
    ]
    if rows:
        header = ("SLICE", "LIVE", "EXAMPLES")
        width = max(len(row[0]) for row in [header, *rows])
        lines.append("")
        lines += [f"{row[0]:<{width}}  {row[1]:>9}  {row[2]:>9}" for row in [header, *rows]]
    return "\n".join(lines)


def _examples(manifest: dict[str, Any]) -> str:
    if "pairs" in manifest:
        return f" requests, {manifest['pairs']} preference pairs"
    return ""


def _filters(filters: dict[str, Any]) -> str:
    shown = []
    for dimension, values in (filters.get("slices") or {}).items():
        shown.append(f"{dimension}={'|'.join(values)}")
    for name in ("limit", "seed", "holdout", "format"):
        if filters.get(name) is not None:
            shown.append(f"{name} {filters[name]}")
    if filters.get("mix"):
        shown.append(f"mix {filters['mix']}")
    if filters.get("only_disagreements"):
        shown.append("only disagreements")
    if filters.get("use_corrections"):
        shown.append("use corrections")
    if filters.get("exclude_datasets"):
        shown.append("excluding datasets " + ",".join(map(str, filters["exclude_datasets"])))
    return "; ".join(shown) or "none"


def _frequency(frequency: Any) -> list[str]:
    if not isinstance(frequency, dict) or not frequency.get("prompts"):
        return []
    by_frequency = _in_order(frequency["by_frequency"], [label for label, _ in BUCKETS])
    buckets = ", ".join(f"{label}: {n}" for label, n in by_frequency.items() if n)
    lines = [
        f"live frequency: {frequency['prompts']} prompts stood for "
        f"{frequency['live_requests']} live requests (by frequency {buckets})"
    ]
    top = [entry for entry in frequency.get("top") or [] if entry["frequency"] > 1]
    if top:
        shown = ", ".join(f"{entry['request_id']} x{entry['frequency']}" for entry in top[:5])
        lines.append(
            f"most asked: {shown}; the {len(frequency['top'])} most asked prompts stood for "
            f"{frequency['top_share']:.0%} of the live requests"
        )
    return lines


def _in_order(counts: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """A manifest's counts in the order the export wrote them (jsonb keeps its own order)."""
    known = {key: counts[key] for key in order if key in counts}
    return known | {key: value for key, value in counts.items() if key not in known}


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    datasets = commands.add_parser(
        "datasets",
        help="List and show the datasets exports registered.",
        description="List and show the datasets exports registered: each exported file (and "
        "held-out split), its manifest, items and sha256.",
    )
    actions = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list",
        parents=[parent],
        help="List the datasets, newest first.",
        description="List the registered datasets, newest first.",
    )
    listing.add_argument("--route", help="only this route's")
    listing.add_argument("--kind", choices=KINDS, help="only training sets or held-out splits")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(handler=cmd_list)

    show = actions.add_parser(
        "show",
        parents=[parent],
        help="One dataset: its manifest summary, and whether its file is unchanged.",
        description="One dataset: its manifest summary, items, per-slice counts, path and "
        "sha256, and whether the file is still there with that sha256.",
    )
    show.add_argument("id", type=positive_int, metavar="ID", help="the dataset's id")
    show.add_argument("--json", action="store_true", help="JSON (with the whole manifest)")
    show.set_defaults(handler=cmd_show)
