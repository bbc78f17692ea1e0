"""``replay ROUTE --student NAME``: try a student on logged traffic before it sees live traffic.

See :mod:`gateway.services.replay` for what is sent, how answers are judged and stored, and
why a rerun resumes. Progress goes to stderr, the summary to stdout (JSON with ``--json``).
Exit status: 0 when every chosen request was tried (a failed call is counted, and tried again
by the next run), 1 when the student kept failing and the replay stopped, 130 after Ctrl-C
(answers received so far are written; rerun the same command to go on), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine
from tqdm import tqdm

from gateway.clients.students import make_student
from gateway.clients.upstream import new_session
from gateway.commands.common import CommandError, positive_int, with_engine
from gateway.config import load_settings
from gateway.db.engine import plain_dsn
from gateway.errors import GatewayError, InvalidRequest, StudentNotFound
from gateway.metrics import Metrics
from gateway.protocol.reports import WEEK, parse_slice, window
from gateway.services.replay import Replay, ReplayOutcome
from gateway.services.students import StudentRegistry
from gateway.shadow.analysis import RouteAnalysis
from gateway.shadow.records import RedactingWriter, route_redactors

MAX_CONCURRENCY = 256


def cmd_replay(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    config = settings.config
    try:
        route = config.find_route(args.route)
        span = window(args.since, args.until, WEEK)
        slices = [parse_slice(text, "--slice") for text in args.slice]
    except InvalidRequest as exc:
        print(f"shadow-gateway replay: {exc.message}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        raise CommandError(exc.message) from exc
    analysis = RouteAnalysis(route, config.metrics, settings.config_path.parent)
    last: list[ReplayOutcome] = [ReplayOutcome()]

    async def run(engine: AsyncEngine) -> tuple[Any, ReplayOutcome]:
        registry = StudentRegistry(engine, config)
        await registry.seed()
        state = next((s for s in registry.all(route.name) if s.name == args.student), None)
        if state is None:
            known = ", ".join(s.name for s in registry.all(route.name)) or "none"
            raise StudentNotFound(
                f"route {route.name!r} has no student {args.student!r} (students: {known}); "
                "register it first with `shadow-gateway students add`"
            )
        secrets = {k: v.get_secret_value() for k, v in settings.upstream_keys.items()}
        student = make_student(
            state.name, state.config, lambda name: secrets.get(name) or os.environ.get(name)
        )
        replay = Replay(engine, route, analysis, student, span, slices=slices, limit=args.limit)
        plan = await replay.plan()
        print(
            f"replaying route {route.name} to student {state.name} ({state.status}, model "
            f"{state.config.model}): {plan.chosen} logged requests from {span.describe()}, "
            f"{plan.done} answered by an earlier run, {plan.to_do} to send",
            file=sys.stderr,
        )
        writer = RedactingWriter(
            plain_dsn(engine.url.render_as_string(hide_password=False)),
            settings.data_dir / "journal",
            config.log_writer,
            Metrics(CollectorRegistry()),
            redactors=route_redactors(config),
            connect_timeout_s=config.database.connect_timeout_s,
        )
        await writer.start()
        bar = tqdm(total=plan.chosen, initial=0, unit="req", file=sys.stderr, mininterval=0.5)
        shown = 0

        def progress(outcome: ReplayOutcome) -> None:
            nonlocal shown
            last[0] = outcome
            done = outcome.answered + outcome.skipped + sum(outcome.failed.values())
            bar.update(done - shown)
            shown = done
            if outcome.compared:
                bar.set_postfix(agreement=f"{outcome.agreed / outcome.compared:.1%}")

        try:
            async with new_session(max_connections=args.concurrency) as session:
                outcome = await replay.run(session, writer, args.concurrency, progress)
        finally:
            bar.close()
            await writer.close()  # also after Ctrl-C: every answer received is written
        return plan, outcome

    try:
        plan, outcome = with_engine(settings, run)
    except KeyboardInterrupt:
        done = last[0]
        print(
            f"interrupted: {done.answered} answers written this run; run the same command again "
            "to resume",
            file=sys.stderr,
        )
        return 130
    return _summary(args, route.name, plan, outcome)


def _summary(args: argparse.Namespace, route: str, plan: Any, outcome: ReplayOutcome) -> int:
    if args.json:
        result = {
            "route": route,
            "student": args.student,
            "chosen": plan.chosen,
            **outcome.as_json(),
        }
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        agreement = f"{outcome.agreed / outcome.compared:.1%}" if outcome.compared else "-"
        print(
            f"{args.student}: {outcome.answered} answered ({outcome.compared} compared, "
            f"agreement {agreement}), {outcome.skipped} answered before"
        )
        if outcome.failed:
            kinds = ", ".join(f"{kind} {n}" for kind, n in outcome.failed.most_common())
            print(f"failed: {kinds}; run the same command again to retry them")
        print(f"compare: shadow-gateway report candidates {route}")
    if outcome.stopped:
        print(f"shadow-gateway replay: {outcome.stopped}", file=sys.stderr)
        return 1
    return 0


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "replay",
        parents=[parent],
        help="Send logged requests to a student and judge its answers against the teacher's.",
        description=(
            "Send a route's logged requests (those the teacher answered) to a registered "
            "student, judge each answer against the logged teacher answer, and store it in "
            "student_answers with source=replay. Newest first; rerun to resume."
        ),
    )
    parser.add_argument("route", help="the route's name")
    parser.add_argument("--student", required=True, help="the student's name (students list)")
    parser.add_argument(
        "--since", help="start: ISO 8601 or an age like 24h, 7d (default: 7 days before --until)"
    )
    parser.add_argument("--until", help="end, excluded: ISO 8601 or an age (default: now)")
    parser.add_argument(
        "--slice",
        action="append",
        default=[],
        help="only requests labelled dimension=value (repeatable: all must hold)",
    )
    parser.add_argument(
        "--limit", type=positive_int, help="at most this many requests, newest first"
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default=4,
        help=f"calls in flight at once (1-{MAX_CONCURRENCY}, default 4)",
    )
    parser.add_argument("--json", action="store_true", help="the summary as JSON")
    parser.set_defaults(handler=cmd_replay)


def _concurrency(text: str) -> int:
    value = positive_int(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CONCURRENCY}, not {value}")
    return value
