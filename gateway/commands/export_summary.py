"""How ``export`` shows what it did: the table, the JSON summary, and warnings on stderr."""

from __future__ import annotations

import sys
from typing import Any

import orjson

from gateway.services.export import (
    ExportRequest,
    ExportResult,
    Part,
    PreferenceResult,
    original_digests,
)


def json_summary(request: ExportRequest, result: ExportResult | PreferenceResult) -> str:
    summary = {"output": str(request.output), "manifest": str(request.manifest_path)}
    if len(result.parts) > 1:
        held = result.parts[1].path
        summary["eval_output"] = str(held)
        summary["eval_manifest"] = str(held.with_name(held.name + ".manifest.json"))
    return orjson.dumps(summary | result.manifest(), option=orjson.OPT_INDENT_2).decode()


def compare(manifest: dict[str, Any], result: ExportResult | PreferenceResult) -> None:
    """Say whether the repeat wrote the same bytes as the original."""
    before = original_digests(manifest)
    now = {part.kind: part.sha256 for part in result.parts}
    if before == now:
        print("the same sha256 as the original: the same examples", file=sys.stderr)
        return
    changed = ", ".join(
        kind for kind in sorted(set(before) | set(now)) if before.get(kind) != now.get(kind)
    )
    print(
        f"shadow-gateway: warning: the {changed} file differs from the original (sha256): "
        "the logged rows, reviews or the verifier changed since",
        file=sys.stderr,
    )


def warn_short(result: ExportResult) -> None:
    for stratum in result.short:
        labels = ", ".join(f"{k}={v}" for k, v in stratum.labels.items()) or "(no slices)"
        print(
            f"shadow-gateway: warning: {labels}: {stratum.examples} examples of the "
            f"{stratum.quota} its share asks for (too few rows qualify)",
            file=sys.stderr,
        )


def _registered(parts: list[Part]) -> list[str]:
    ids = [f"{part.dataset_id} ({part.kind})" for part in parts if part.dataset_id is not None]
    return [f"registered as dataset {', '.join(ids)}"] if ids else ["not registered"]


def table(result: ExportResult) -> str:
    request, parts = result.request, result.parts
    lines = [f"wrote {part.examples} examples to {part.path}" for part in parts]
    lines += [f"manifest: {request.manifest_path}", *_registered(parts), ""]
    lines.append(f"rows matched        {result.live:>9}")
    dropped = [(reason, count) for reason, count in result.dropped.items() if count]
    lines += ["dropped"] if dropped else []
    lines += [f"  {reason:<18}{count:>9}" for reason, count in dropped]
    lines.append(f"examples            {result.examples:>9}")
    if len(parts) > 1:
        lines += [f"  {part.kind:<18}{part.examples:>9}" for part in parts]
    if result.corrected:
        lines.append(f"  corrected         {result.corrected:>9}")
    if result.judged_wrong:
        by = ", ".join(f"{n} by {source}" for source, n in sorted(result.judged_wrong.items()))
        lines.append(f"judged wrong: {by}")
    if result.checks_failed:
        checks = ", ".join(f"{check} {n}" for check, n in result.checks_failed.most_common(5))
        lines.append(f"failed verifier checks: {checks}")
    frequency = result.train.frequency
    if frequency.prompts:
        top = max(n for n, _, _ in frequency.top)
        lines.append(
            f"live requests per prompt: {frequency.requests / frequency.prompts:.2f} on average, "
            f"{top} at most"
        )
    header = ["SLICE", "LIVE"] + (
        [p.kind.upper() for p in parts] if len(parts) > 1 else ["EXAMPLES"]
    )
    rows = [header] + [
        [f"{dimension}={value}", str(live)] + [str(p.per_slice[dimension, value]) for p in parts]
        for (dimension, value), live in sorted(result.live_per_slice.items())
    ]
    if len(rows) > 1:
        width = max(len(row[0]) for row in rows)
        lines.append("")
        lines += [
            f"{row[0]:<{width}}" + "".join(f"  {cell:>9}" for cell in row[1:]) for row in rows
        ]
    return "\n".join(lines)


def pairs_table(result: PreferenceResult) -> str:
    request = result.request
    lines = [
        f"wrote {result.examples} preference pairs ({result.form}) to {request.output}",
        f"manifest: {request.manifest_path}",
        *_registered(result.parts),
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
