"""``rollout status|set|rollback``: change a route's live knobs from a shell, audited.

The commands talk to Postgres directly (the same control plane the admin API uses), so every
gateway replica picks the change up within about a second. Each change needs ``--reason``
and is recorded in ``route_events`` under ``--actor`` (default: $USER).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.commands.common import (
    CommandError,
    bounded,
    default_actor,
    reason_text,
    with_engine,
)
from gateway.config import load_settings
from gateway.core.confidence import METHODS
from gateway.core.routing import MODES
from gateway.metrics import Metrics
from gateway.services.control import ControlPlane


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def status(engine: AsyncEngine) -> list[dict[str, Any]]:
        control = ControlPlane(engine, settings.config, Metrics())
        await control.seed()
        return [
            {"route": route.name, **asdict(control.state(route.name))}
            for route in settings.config.routes
        ]

    rows = with_engine(settings, status)
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    header = ("ROUTE", "MODE", "PERCENT", "THRESHOLD", "METHOD", "AUDIT", "VERSION")
    table = [header] + [
        (
            r["route"],
            r["mode"],
            f"{r['rollout_percent']:g}",
            f"{r['confidence_threshold']:g}",
            r["confidence_method"],
            f"{r['audit_sample']:g}",
            str(r["version"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _change(args: argparse.Namespace, knobs: dict[str, Any], action: str) -> int:
    settings = load_settings(args.config)

    async def change(engine: AsyncEngine) -> tuple[Any, bool]:
        control = ControlPlane(engine, settings.config, Metrics())
        control.route(args.route)  # an unknown route fails before anything else
        await control.seed()
        return await control.change(
            args.route,
            knobs,
            actor=args.actor or default_actor(),
            reason=args.reason,
            action=action,
        )

    state, changed = with_engine(settings, change)
    summary = (
        f"mode={state.mode} percent={state.rollout_percent:g} "
        f"threshold={state.confidence_threshold:g} method={state.confidence_method} "
        f"audit_sample={state.audit_sample:g}"
    )
    if changed:
        print(f"{args.route}: {summary} (version {state.version})")
    else:
        print(f"{args.route}: unchanged, already {summary}", file=sys.stderr)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    knobs = {
        "mode": args.mode,
        "rollout_percent": args.percent,
        "confidence_threshold": args.threshold,
        "confidence_method": args.method,
        "audit_sample": args.audit_sample,
    }
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if not knobs:
        raise CommandError(
            "nothing to set: give --mode, --percent, --threshold, --method or --audit-sample"
        )
    return _change(args, knobs, "set")


def cmd_rollback(args: argparse.Namespace) -> int:
    return _change(args, {"mode": "shadow"}, "rollback")


def cmd_plan(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def plan(engine: AsyncEngine) -> Any:
        control = ControlPlane(engine, settings.config, Metrics())
        control.route(args.route)
        await control.seed()
        return await control.start_plan(
            args.route,
            args.steps,
            args.hold,
            actor=args.actor or default_actor(),
            reason=args.reason,
        )

    state = with_engine(settings, plan)
    steps = ", ".join(f"{step:g}%" for step in args.steps)
    print(
        f"{args.route}: ramp {steps}, holding {args.hold:g}s per step while every critical "
        f"slice meets its bar; now at {state.rollout_percent:g}% (version {state.version})"
    )
    return 0


def _steps(text: str) -> list[float]:
    try:
        steps = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"steps must be numbers like 1,5,25,100, not {text!r}"
        ) from None
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError(
            "steps must be ascending percentages above 0 and at most 100, like 1,5,25,100"
        )
    return steps


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` → seconds."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in _UNITS else text
    try:
        seconds = float(number) * _UNITS.get(unit, 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a duration is a number with s, m, h or d, like 30m; not {text!r}"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the hold must be positive")
    return seconds


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    rollout = commands.add_parser(
        "rollout",
        help="Read or change routes' rollout (audited).",
        description="Read or change routes' rollout; every change is recorded with its reason.",
    )
    actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")

    status = actions.add_parser("status", parents=[parent], help="Every route's live knobs.")
    status.add_argument("--json", action="store_true", help="JSON instead of a table")
    status.set_defaults(handler=cmd_status)

    def changing(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, parents=[parent], help=help_text, description=help_text
        )
        sub.add_argument("route", help="the route's name")
        sub.add_argument("--reason", required=True, type=reason_text, help="why (recorded)")
        sub.add_argument("--actor", help="who is changing it (default: $USER)")
        return sub

    change = changing("set", "Change a route's mode, percent, threshold, method or audit share.")
    change.add_argument("--mode", choices=MODES)
    change.add_argument(
        "--percent",
        type=bounded(0, 100, "--percent"),
        help="share of users (0-100, fractions allowed) who get the student",
    )
    change.add_argument(
        "--threshold",
        type=bounded(0, 1, "--threshold"),
        help="confidence needed to serve the student's answer (0-1)",
    )
    change.add_argument("--method", choices=sorted(METHODS), help="confidence method")
    change.add_argument(
        "--audit-sample",
        type=bounded(0, 1, "--audit-sample"),
        help="share of student answers also checked against the teacher",
    )
    change.set_defaults(handler=cmd_set)

    rollback = changing("rollback", "Put a route back in shadow mode (the teacher answers).")
    rollback.set_defaults(handler=cmd_rollback)

    plan = changing(
        "plan",
        "Ramp a route through rollout percentages, each held while every critical slice "
        "meets its bar; stop (with an event) when one does not.",
    )
    plan.add_argument("steps", type=_steps, help="percentages, e.g. 1,5,25,50,100")
    plan.add_argument(
        "--hold",
        type=_duration,
        required=True,
        help="how long each step is held and judged, e.g. 30m",
    )
    plan.set_defaults(handler=cmd_plan)
