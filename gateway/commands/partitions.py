"""``partitions``: create the time partitions of ``requests`` and ``student_answers`` ahead,
drop those past the retention (both tables alike; the report names each one's partitions).

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
    if args.json or args.format == "json":
        print(orjson.dumps(_json(result), option=orjson.OPT_INDENT_2).decode())
    else:
        print(_text(result))
    return 1 if result.failed else 0


def _json(result: Maintenance) -> dict[str, Any]:
    """One document for every table: partitions and steps name their table; the counts are
    totals, with each table's under ``tables``."""
    cutoff = result.cutoff
    tables = result.tables
    return {
        "dry_run": result.dry_run,
        "partitions": [
            {
                "table": t.table,
                "name": p.name,
                "from": p.span.start.isoformat(),
                "to": p.span.end.isoformat(),
            }
            for t in tables
            for p in t.partitions
        ],
        "default_rows": sum(t.default_rows for t in tables),
        "retention_cutoff": cutoff.isoformat() if cutoff else None,
        "create": [
            {
                "table": t.table,
                "name": p.name,
                "from": p.span.start.isoformat(),
                "to": p.span.end.isoformat(),
            }
            for t in tables
            for p in t.plan.create
        ],
        "drop": [p.name for t in tables for p in t.plan.drop],
        "created": result.created,
        "dropped": result.dropped,
        "rows_moved_from_default": sum(t.moved for t in tables),
        "default_rows_expired": sum(t.expired for t in tables),
        "failed": [{"step": step, "error": why} for step, why in result.failed],
        "tables": {
            t.table: {
                "partitions": len(t.partitions),
                "default_partition": t.default_partition,
                "default_rows": t.default_rows,
                "rows_moved_from_default": t.moved,
                "default_rows_expired": t.expired,
            }
            for t in tables
        },
    }


def _text(result: Maintenance) -> str:
    cutoff = result.cutoff
    tables = result.tables
    verb = ("would create", "would drop") if result.dry_run else ("created", "dropped")
    created = [p.name for t in tables for p in t.plan.create] if result.dry_run else result.created
    dropped = [p.name for t in tables for p in t.plan.drop] if result.dry_run else result.dropped
    kept = "every row kept" if cutoff is None else f"rows before {cutoff:%Y-%m-%d %H:%M} UTC go"
    lines = [
        f"{len(t.partitions)} partition(s) of {t.table} before this run, "
        f"{t.default_rows} row(s) in {t.default_partition}"
        for t in tables
    ]
    lines += [
        f"retention: {kept}",
        f"{verb[0]}: {', '.join(created) or 'nothing'}",
        f"{verb[1]}: {', '.join(dropped) or 'nothing'}",
    ]
    for t in tables:
        if t.moved:
            lines.append(
                f"rows {'to move' if result.dry_run else 'moved'} out of {t.default_partition}: "
                f"{t.moved}"
            )
        if t.expired:
            lines.append(
                f"rows of {t.default_partition} past the retention"
                f"{' (to delete)' if result.dry_run else ' deleted'}: {t.expired}"
            )
    lines += [f"FAILED {step}: {why}" for step, why in result.failed]
    return "\n".join(lines)


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "partitions",
        parents=[parent],
        help="Create the time partitions of requests and student_answers ahead; drop those "
        "past the retention.",
        description="Create the partitions of the requests and student_answers tables for the "
        "current period and database.partitions.ahead more, move rows out of their default "
        "partitions into partitions of their own, and drop partitions wholly older than "
        "database.partitions.retention_days. The gateway does this by itself too.",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would change; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    # the older spelling, kept working for scripts that use it
    parser.add_argument(
        "--format", choices=["table", "json"], default="table", help=argparse.SUPPRESS
    )
    parser.set_defaults(handler=cmd_partitions)
