"""``review sample|list|judge``: the review queue from a shell (the console has a page for it).

``sample`` draws teacher answers for people to judge, up to N per slice; ``list`` shows the
queue; ``judge`` gives a task its verdict (scripts that bulk-import verdicts use it, or
``POST /admin/reviews/{id}``). The reviewer is ``--by`` (default: $USER).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.commands.common import (
    arguments_checked,
    default_actor,
    positive_int,
    print_table,
    with_engine,
)
from gateway.config import load_settings
from gateway.db.tables import VERDICTS
from gateway.protocol.reports import QUALITY_SPAN, check_dimension, window
from gateway.services.reviews import MAX_PER_SLICE, ReviewQueue

_checked = arguments_checked("review", "action")


def _run(args: argparse.Namespace, work: Callable[[ReviewQueue], Any]) -> dict[str, Any]:
    settings = load_settings(args.config)

    async def run(engine: AsyncEngine) -> dict[str, Any]:
        result: dict[str, Any] = await work(ReviewQueue(engine, settings.config))
        return result

    return with_engine(settings, run)


def _json(result: dict[str, Any]) -> None:
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


def _short(text: str | None, width: int = 48) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@_checked
def cmd_sample(args: argparse.Namespace) -> int:
    span = window(args.since, args.until, QUALITY_SPAN)
    dimension = check_dimension(args.dimension) if args.dimension else None
    result = _run(
        args,
        lambda queue: queue.sample(
            args.route,
            span,
            per_slice=args.per_slice,
            actor=args.by or default_actor(),
            student=args.student,
            dimension=dimension,
            disagreements_only=args.disagreements_only,
        ),
    )
    if args.json:
        _json(result)
        return 0
    kind = "disagreements" if args.disagreements_only else "teacher answers"
    print(
        f"{result['route']}: drew {result['created']} {kind} for review against "
        f"{result['student']} (batch {result['batch']}, up to {result['per_slice']} per slice)"
    )
    print_table(("SLICE", "TASKS"), [(name, str(n)) for name, n in result["slices"].items()])
    return 0


@_checked
def cmd_list(args: argparse.Namespace) -> int:
    result = _run(
        args,
        lambda queue: queue.tasks(
            route=args.route,
            status=args.status,
            student=args.student,
            batch=args.batch,
            limit=args.limit,
            after_id=args.after_id,
        ),
    )
    if args.json:
        _json(result)
        return 0
    counts = result["counts"]
    print(f"{counts['open']} open, {counts['judged']} judged")
    rows = [
        (
            str(task["id"]),
            task["route"],
            task["student"],
            "yes" if task["disagreement"] else "no" if task["disagreement"] is False else "-",
            str(task["group_open"]),
            task["verdict"] or "-",
            _short(task["prompt"], 32),
            _short(task["teacher_answer"]),
        )
        for task in result["tasks"]
    ]
    header = ("ID", "ROUTE", "STUDENT", "DISAGREES", "GROUP", "VERDICT", "PROMPT", "TEACHER")
    print_table(header, rows)
    if result["next_after_id"] is not None:
        print(f"more: --after-id {result['next_after_id']}")
    return 0


@_checked
def cmd_judge(args: argparse.Namespace) -> int:
    result = _run(
        args,
        lambda queue: queue.judge(
            args.id,
            args.verdict,
            args.by or default_actor(),
            corrected_output=args.corrected_output,
            group=args.group,
        ),
    )
    if args.json:
        _json(result)
    else:
        print(f"review {result['id']}: {result['verdict']} ({result['judged']} task(s) judged)")
    return 0


def _per_slice(text: str) -> int:
    value = positive_int(text)
    if value > MAX_PER_SLICE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PER_SLICE}, not {value}")
    return value


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    review = commands.add_parser(
        "review",
        help="The review queue: draw teacher answers for people to judge, list, judge.",
        description="Review tasks: a teacher answer beside a student's, for a person to judge.",
    )
    actions = review.add_subparsers(dest="action", required=True, metavar="ACTION")

    sample = actions.add_parser(
        "sample",
        parents=[parent],
        help="Draw up to N requests per slice at random into review tasks.",
        description="Draw up to N requests per slice at random into review tasks.",
    )
    sample.add_argument("route", help="the route's name")
    sample.add_argument(
        "--per-slice", type=_per_slice, default=20, help="tasks per slice (default 20)"
    )
    sample.add_argument(
        "--disagreements-only",
        action="store_true",
        help="only requests where the student disagreed with the teacher",
    )
    sample.add_argument(
        "--student", help="the student to judge beside the teacher (default: champion)"
    )
    sample.add_argument(
        "--dimension", help="a slice per value of this dimension (default: per label combination)"
    )
    sample.add_argument("--since", help="ISO 8601 or an age like 7d (default: 30 days back)")
    sample.add_argument("--until", help="end, excluded (default: now)")
    sample.add_argument("--by", help="recorded as who drew the tasks (default: $USER)")
    sample.add_argument("--json", action="store_true", help="JSON instead of a table")
    sample.set_defaults(handler=cmd_sample)

    listing = actions.add_parser(
        "list", parents=[parent], help="The queue, oldest first.", description="The queue."
    )
    listing.add_argument("route", nargs="?", help="only this route")
    listing.add_argument("--status", choices=("open", "judged", "all"), default="open")
    listing.add_argument("--student")
    listing.add_argument("--batch", help="only the tasks one sample drew")
    listing.add_argument("--limit", type=positive_int, default=50)
    listing.add_argument("--after-id", type=int, help="continue after this task id")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(handler=cmd_list)

    judge = actions.add_parser(
        "judge",
        parents=[parent],
        help="Give a task its verdict (a later verdict replaces it; history keeps both).",
        description="Give a task its verdict.",
    )
    judge.add_argument("id", type=positive_int, help="the task's id")
    judge.add_argument("verdict", choices=VERDICTS)
    judge.add_argument("--corrected-output", help="the answer that would have been right")
    judge.add_argument(
        "--group", action="store_true", help="also every open task with the same answer pair"
    )
    judge.add_argument("--by", help="recorded as the reviewer (default: $USER)")
    judge.add_argument("--json", action="store_true", help="JSON instead of a line")
    judge.set_defaults(handler=cmd_judge)
