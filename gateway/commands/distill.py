"""``distill ROUTE --name NAME``: export, train, launch, add as a candidate, replay, report.

Never promotes. Progress goes to stderr, one line per stage; the candidates report (replayed
answers, against the champion) to stdout, as a table or JSON with ``--json``. Every stage is
recorded in ``distill_runs`` (``distill status ROUTE``). A failed or stopped run is resumed by
the same command (or ``--resume``): finished stages are not redone. The launched vLLM server
is stopped when the command ends unless ``--keep-serving`` (see docs/distill.md for why).

Exit status: 0 done, 1 a stage failed (the message names it; rerun to resume), 130 after
Ctrl-C (the run is ``stopped``; rerun to resume), 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.commands import report as report_command
from gateway.commands.common import CommandError, default_actor, positive_int, with_engine
from gateway.commands.export import _holdout, _mix
from gateway.config import GatewayConfig, RouteConfig, Settings, load_settings
from gateway.errors import GatewayError
from gateway.protocol.reports import parse_time
from gateway.services.distill import (
    Distill,
    DistillOptions,
    DistillRun,
    StageFailed,
    create_run,
    latest_run,
    list_runs,
    student_exists,
)
from gateway.services.export import Mix
from gateway.services.students import StudentRegistry


def _route(settings: Settings, name: str) -> RouteConfig:
    try:
        return settings.config.find_route(name)
    except GatewayError as exc:
        raise CommandError(exc.message) from exc


def _options(args: argparse.Namespace, route: RouteConfig) -> DistillOptions:
    config = route.distill
    command = args.train_command or config.train_command
    if not command:
        raise CommandError(
            f"route {route.name!r} has no distill.train_command; give --train-command CMD "
            "(with {train}, {eval} and {output})"
        )
    if "{output}" not in command:
        raise CommandError("the train command has no {output}: where should the model go?")
    since_text = args.since or config.since
    try:
        since = parse_time(since_text, "--since" if args.since else "distill.since")
    except GatewayError as exc:
        raise CommandError(exc.message) from exc
    mix: Mix | None = args.mix
    limit = args.limit if args.limit is not None else config.limit
    if mix is None and config.mix is not None and args.limit is None:
        ((dimension, shares),) = config.mix.items()
        mix = Mix(dimension, dict(shares))
    if mix is not None and limit is None:
        raise CommandError("--mix needs --limit N: how many examples in all")
    if since >= datetime.now(UTC):
        raise CommandError(f"--since {since_text} is not in the past")
    return DistillOptions(
        train_command=command,
        since=since,
        holdout=args.holdout if args.holdout is not None else config.holdout,
        limit=limit,
        mix=mix,
        seed=args.seed,
        exclude_datasets=tuple(dict.fromkeys(args.exclude_dataset)),
        shadow_sample=args.shadow_sample,
        replay_limit=args.replay_limit,
        keep_serving=args.keep_serving,
        output_dir=Path(args.output_dir).expanduser().absolute() if args.output_dir else None,
        launch=config.launch,
    )


async def _the_run(
    engine: AsyncEngine, config: GatewayConfig, args: argparse.Namespace, route: str
) -> DistillRun:
    """A failed or stopped run of this name to resume, or a new one."""
    earlier = await latest_run(engine, route, args.name)
    if earlier is not None and earlier.status in ("failed", "stopped"):
        return earlier
    if earlier is not None and earlier.status == "running" and args.resume:
        return earlier  # marked running by a command that died without a word
    if earlier is not None:
        hint = (
            "; if no distill is running it, resume with --resume"
            if earlier.status == "running"
            else ": choose another --name"
        )
        raise CommandError(f"{args.name!r} on {route} is run {earlier.id}, {earlier.status}{hint}")
    if args.resume:
        raise CommandError(f"no run of {args.name!r} on {route} to resume")
    await StudentRegistry(engine, config).seed()  # the config's students count too
    if await student_exists(engine, route, args.name):
        raise CommandError(
            f"route {route!r} already has a student {args.name!r}; choose another --name"
        )
    return await create_run(engine, route, args.name, args.actor or default_actor(), {})


def cmd_distill(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    route = _route(settings, args.route)
    options = _options(args, route)

    def progress(line: str) -> None:
        print(f"distill {route.name} {args.name}: {line}", file=sys.stderr, flush=True)

    state: dict[str, Any] = {}

    async def work(engine: AsyncEngine) -> DistillRun:
        run = await _the_run(engine, settings.config, args, route.name)
        state["run"] = run
        if run.stages:
            progress(f"resuming run {run.id} ({run.status} at {run.stage})")
        else:
            progress(f"run {run.id}")
        distill = Distill(engine, settings, route, run, options, progress)
        state["distill"] = distill
        return await distill.run()

    try:
        run = with_engine(settings, work)
    except KeyboardInterrupt:
        run_id = state["run"].id if "run" in state else "?"
        print(
            f"shadow-gateway distill: interrupted; run {run_id} is stopped, its server shut "
            "down; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except (StageFailed, CommandError) as exc:
        if "run" not in state:
            raise CommandError(str(exc)) from exc
        failed = state["run"]
        details = exc.details if isinstance(exc, StageFailed) else {}
        if details.get("tail"):
            print(str(details["tail"]), file=sys.stderr)
        raise CommandError(
            f"distill run {failed.id} failed at {failed.stage}: {exc}; fix it and run the "
            "same command again to resume"
        ) from exc
    report = state["distill"].report
    if args.json:
        print(orjson.dumps({"run": run.as_json(), "report": report}).decode())
    elif report is not None:
        print(f"== recent traffic, replayed (it includes prompts {run.student} was trained on)")
        report_command._candidates_table(report)
        print()
        for line in holdout_lines(report.get("holdout")):
            print(line)
        print(f"\nrun {run.id} done; {run.student} is a candidate (never promoted by distill)")
    return 0


_VERDICTS = {
    "better": "BETTER",
    "worse": "WORSE",
    "inconclusive": "inconclusive",
    "not_enough_data": "too few pairs",
}


def _agreement(side: dict[str, Any]) -> str:
    if side["agreement"] is None:
        return "-"
    return f"{side['agreement']:.1%} ({side['agreed']}/{side['compared']})"


def holdout_lines(holdout: dict[str, Any] | None) -> list[str]:
    """The held-out comparison as text: a heading, then slices worst first and the route."""
    if holdout is None:
        return ["== held-out split: none (the export made no eval split)"]
    candidate, baseline = holdout["candidate"], holdout["baseline"]
    lines = [
        f"== held-out split (dataset {holdout['dataset_id']}: {holdout['items']} requests "
        f"{candidate} was not trained on), {candidate} against {baseline} on the same requests",
        f"   agreement with the teacher; DIFF: paired, {candidate} minus {baseline}, Newcombe's "
        f"95% interval; fewer than {holdout['min_pairs']} pairs is not judged",
    ]
    header = ("SLICE", "REQUESTS", candidate.upper(), baseline.upper(), "PAIRS", "DIFF")
    rows = []
    for line in [*holdout["slices"], *([holdout["overall"]] if holdout["overall"] else [])]:
        name = "all" if line is holdout["overall"] else f"{line['dimension']}={line['value']}"
        paired = line["paired"]
        interval = (
            "-"
            if paired["ci_low"] is None
            else f"{paired['ci_low']:+.1%} to {paired['ci_high']:+.1%}"
        )
        rows.append(
            (
                name,
                str(line["items"]),
                _agreement(line["candidate"]),
                _agreement(line["baseline"]),
                str(paired["pairs"]),
                "-" if paired["difference"] is None else f"{paired['difference']:+.1%}",
                interval,
                _VERDICTS[line["verdict"]],
            )
        )
    table = [(*header, "95% CI", "VERDICT"), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    route = _route(settings, args.route)

    async def work(engine: AsyncEngine) -> list[DistillRun]:
        return await list_runs(engine, route.name)

    runs = with_engine(settings, work)
    if args.json:
        print(orjson.dumps([run.as_json() for run in runs], option=orjson.OPT_INDENT_2).decode())
        return 0
    if not runs:
        print(f"{route.name}: no distill runs")
        return 0
    for run in runs:
        when = run.created_at.strftime("%Y-%m-%d %H:%M") if run.created_at else "-"
        print(f"run {run.id} {run.student}: {run.status} (started {when} by {run.created_by})")
        if run.error:
            print(f"  error: {run.error}")
        for stage in run.stages:
            seconds = stage.get("seconds")
            took = "" if seconds is None else f" {seconds:.1f} s"
            error = f": {stage['error']}" if stage.get("error") else ""
            print(f"  {stage['stage']}: {stage['status']}{took}{error}")
    return 0


def cmd_dispatch(args: argparse.Namespace) -> int:
    """``distill ROUTE …`` or ``distill status ROUTE``."""
    words: list[str] = args.words
    if len(words) == 2 and words[0] == "status":
        args.route = words[1]
        return cmd_status(args)
    if len(words) != 1:
        print("shadow-gateway distill: give ROUTE --name NAME, or status ROUTE", file=sys.stderr)
        return 2
    args.route = words[0]
    if not args.name:
        print("shadow-gateway distill: --name NAME is required", file=sys.stderr)
        return 2
    return cmd_distill(args)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a share: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share is between 0 and 1, not {text}")
    return value


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "distill",
        parents=[parent],
        help="Re-distil a route's student: export, train, launch, add as a candidate, replay.",
        description="Export train + holdout from the route's recent verified traffic, run the "
        "route's train command, launch its output on vLLM, add it as a candidate, replay the "
        "holdout and recent traffic against it and print the candidates report. Never "
        "promotes. Each stage is recorded (distill status ROUTE); a failed or stopped run is "
        "resumed by the same command. `distill status ROUTE [--json]` lists the runs.",
    )
    parser.add_argument("words", nargs="+", metavar="ROUTE | status ROUTE")
    parser.add_argument("--name", help="the new candidate's name (and the run's)")
    parser.add_argument(
        "--train-command",
        help="instead of routes[].distill.train_command: one command line with {train}, "
        "{eval} and {output}",
    )
    parser.add_argument(
        "--resume", action="store_true", help="resume this name's run, even one marked running"
    )
    parser.add_argument("--since", help="export from: ISO date-time or an age like 7d")
    parser.add_argument("--holdout", type=_holdout, metavar="F", help="held-out share")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="at most N examples")
    parser.add_argument("--mix", type=_mix, metavar="DIM=VALUE:SHARE,...", help="with --limit")
    parser.add_argument("--seed", type=int, default=0, help="the export's seed (default 0)")
    parser.add_argument(
        "--exclude-dataset",
        type=positive_int,
        action="append",
        default=[],
        metavar="ID",
        help="leave out prompts of this dataset; repeat for more",
    )
    parser.add_argument(
        "--shadow-sample",
        type=_share,
        default=0.0,
        help="the candidate's live shadow share (default 0: replay only)",
    )
    parser.add_argument(
        "--replay-limit",
        type=positive_int,
        default=200,
        metavar="N",
        help="recent requests replayed besides the holdout (default 200)",
    )
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="leave the candidate's vLLM server running when the command ends",
    )
    parser.add_argument("--output-dir", help="the model folder (default DATA_DIR/distill/ID/model)")
    parser.add_argument("--actor", help="who the run is recorded as (default $USER)")
    parser.add_argument("--json", action="store_true", help="the run and report as JSON")
    parser.set_defaults(handler=cmd_dispatch)
