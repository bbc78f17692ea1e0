"""``partitions``: create ``requests``'s time partitions ahead, drop those past the retention.

The gateway does the same at start-up and every ``database.partitions.check_interval_s``; the
command is for a cron job, for a database no gateway is running against, and for a look at
what would change (``--dry-run``). Exit status 1 when a step could not be done (a lock not
granted in time, say); running it again later finishes the work.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.commands.common import CommandError, with_engine
from gateway.config import load_settings
from gateway.core.partitions import DEFAULT_PARTITION
from gateway.db.partitions import Maintenance, PartitionError, maintain


def cmd_partitions(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    config = settings.config.database.partitions

    async def run(engine: AsyncEngine) -> Maintenance:
        return await maintain(engine, config, dry_run=args.dry_run)

    try:
        result = with_engine(settings, run)
    except PartitionError as exc:
        raise CommandError(str(exc)) from exc
    if args.format == "json":
        print(orjson.dumps(_json(result), option=orjson.OPT_INDENT_2).decode())
    else:
        print(_text(result))
    return 1 if result.failed else 0


def _json(result: Maintenance) -> dict[str, Any]:
    plan = result.plan
    return {
        "dry_run": result.dry_run,
        "partitions": [
            {"name": p.name, "from": p.span.start.isoformat(), "to": p.span.end.isoformat()}
            for p in result.partitions
        ],
        "default_rows": result.default_rows,
        "retention_cutoff": plan.cutoff.isoformat() if plan.cutoff else None,
        "create": [
            {"name": s.name, "from": s.start.isoformat(), "to": s.end.isoformat()}
            for s in plan.create
        ],
        "drop": [p.name for p in plan.drop],
        "created": result.created,
        "dropped": result.dropped,
        "rows_moved_from_default": result.moved,
        "default_rows_expired": result.expired,
        "failed": [{"step": step, "error": why} for step, why in result.failed],
    }


def _text(result: Maintenance) -> str:
    plan = result.plan
    verb = ("would create", "would drop") if result.dry_run else ("created", "dropped")
    created = [s.name for s in plan.create] if result.dry_run else result.created
    dropped = [p.name for p in plan.drop] if result.dry_run else result.dropped
    kept = (
        "every row kept"
        if plan.cutoff is None
        else f"rows before {plan.cutoff:%Y-%m-%d %H:%M} UTC go"
    )
    lines = [
        f"{len(result.partitions)} partition(s) of requests before this run, "
        f"{result.default_rows} row(s) in {DEFAULT_PARTITION}",
        f"retention: {kept}",
        f"{verb[0]}: {', '.join(created) or 'nothing'}",
        f"{verb[1]}: {', '.join(dropped) or 'nothing'}",
    ]
    if result.moved:
        lines.append(
            f"rows {'to move' if result.dry_run else 'moved'} out of the default "
            f"partition: {result.moved}"
        )
    if result.expired:
        lines.append(
            f"rows of the default partition past the retention"
            f"{' (to delete)' if result.dry_run else ' deleted'}: {result.expired}"
        )
    lines += [f"FAILED {step}: {why}" for step, why in result.failed]
    return "\n".join(lines)


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "partitions",
        parents=[parent],
        help="Create requests' time partitions ahead; drop those past the retention.",
        description="Create the partitions of the requests table for the current period and "
        "database.partitions.ahead more, move rows out of the default partition into "
        "partitions of their own, and drop partitions wholly older than "
        "database.partitions.retention_days. The gateway does this by itself too.",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would change; change nothing"
    )
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(handler=cmd_partitions)
