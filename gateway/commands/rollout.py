"""``rollout status|set|clear|calibrate|rollback|plan|cancel``: change a route's live knobs
from a shell, audited.

The commands talk to Postgres directly (the same control plane the admin API uses), so every
gateway replica picks the change up within about a second. Each change needs ``--reason``
and is recorded in ``route_events`` under ``--actor`` (default: $USER). Each takes ``--json``:
the route's knobs after the change (``changed``: whether anything did), or the slice's
override, as the admin API shows them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.commands.common import (
    CommandError,
    add_json_option,
    arguments_checked,
    bounded,
    default_actor,
    positive_int,
    print_json,
    print_table,
    reason_text,
    with_engine,
)
from gateway.config import load_settings
from gateway.core.confidence import METHODS
from gateway.core.routing import MODES, SLICE_MODES, RouteState
from gateway.errors import InvalidRequest
from gateway.metrics import Metrics
from gateway.protocol.reports import (
    WEEK,
    check_dimension,
    parse_duration,
    parse_slice,
    window,
)
from gateway.services.control import ControlPlane, slice_view, state_view
from gateway.services.reports import calibrated_overrides
from gateway.services.reports.thresholds import DEFAULT_MIN_SERVED


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def status(engine: AsyncEngine) -> list[dict[str, Any]]:
        control = ControlPlane(engine, settings.config, Metrics())
        await control.seed()
        plans = await control.plans()
        return [
            {
                "route": route.name,
                **state_view(control.state(route.name)),
                "slices": await control.slice_overrides(route.name),
                "ramp": plans.get(route.name),
            }
            for route in settings.config.routes
        ]

    rows = with_engine(settings, status)
    if args.json:
        print_json(rows)
        return 0
    header = ("ROUTE", "MODE", "PERCENT", "THRESHOLD", "METHOD", "AUDIT", "VERSION")
    table = [
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
    print_table(header, table)
    ramps = [(r["route"], r["ramp"]) for r in rows if r["ramp"]]
    if ramps:
        print("\nramps")
    for route, ramp in ramps:
        steps = ", ".join(f"{step:g}%" for step in ramp["steps"])
        print(
            f"  {route}: {ramp['status']}, step {ramp['step']} of {len(ramp['steps'])} "
            f"({steps}), holding {ramp['hold_s']:g}s; next check {ramp['next_at']}"
        )
        if ramp["last_event"]:
            last = ramp["last_event"]
            print(f"    last: {last['action']} at {last['at']}: {last['reason']}")
    overrides = [(r["route"], o) for r in rows for o in r["slices"]]
    if overrides:
        print("\nslice overrides (the most conservative applies when several match)")
        for route, o in overrides:
            print(f"  {route} {o['slice']}: {_knobs(o)}; by {o['updated_by']}: {o['reason']}")
    return 0


def _knobs(override: dict[str, Any]) -> str:
    knobs = [
        f"{name}={override[key]:g}"
        if isinstance(override[key], float)
        else f"{name}={override[key]}"
        for key, name in (
            ("mode", "mode"),
            ("rollout_percent", "percent"),
            ("confidence_threshold", "threshold"),
        )
        if override[key] is not None
    ]
    return " ".join(knobs)


T = TypeVar("T")
_checked = arguments_checked("rollout", "action")


def _on_route(args: argparse.Namespace, work: Callable[[ControlPlane], Awaitable[T]]) -> T:
    """One operation on the route's control plane, seeded from the config as a gateway
    would seed it; an unknown route fails before anything else."""
    settings = load_settings(args.config)

    async def run(engine: AsyncEngine) -> T:
        control = ControlPlane(engine, settings.config, Metrics())
        control.route(args.route)
        await control.seed()
        return await work(control)

    return with_engine(settings, run)


def _slice(args: argparse.Namespace) -> tuple[str, str]:
    return parse_slice(args.slice, "--slice")


def _change_slice(args: argparse.Namespace) -> int:
    """``rollout set ROUTE --slice DIM=VALUE …``: one slice's own knobs."""
    dimension, value = _slice(args)
    if args.method is not None or args.audit_sample is not None:
        raise InvalidRequest(
            "--method and --audit-sample are the route's; a slice takes --mode (teacher or "
            "rollout), --percent and --threshold"
        )
    if args.mode is not None and args.mode not in SLICE_MODES:
        raise InvalidRequest(f"a slice's --mode is teacher or rollout, not {args.mode}")
    knobs = {
        "mode": args.mode,
        "rollout_percent": args.percent,
        "confidence_threshold": args.threshold,
    }
    override, changed, warnings = _on_route(
        args,
        lambda control: control.change_slice(
            args.route,
            dimension,
            value,
            knobs,
            actor=args.actor or default_actor(),
            reason=args.reason,
        ),
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print_json(
            {
                "route": args.route,
                "slice": slice_view(override),
                "changed": changed,
                "warnings": warnings,
            }
        )
        return 0
    shown = _knobs(slice_view(override))
    if changed:
        print(f"{args.route} {override.name}: {shown}")
    else:
        print(f"{args.route} {override.name}: unchanged, already {shown}", file=sys.stderr)
    return 0


@_checked
def cmd_clear(args: argparse.Namespace) -> int:
    dimension, value = _slice(args)
    cleared = _on_route(
        args,
        lambda control: control.clear_slice(
            args.route, dimension, value, actor=args.actor or default_actor(), reason=args.reason
        ),
    )
    if args.json:
        print_json({"route": args.route, "cleared": slice_view(cleared)})
        return 0
    print(f"{args.route} {cleared.name}: cleared; the slice follows the route's knobs")
    return 0


@_checked
def cmd_calibrate(args: argparse.Namespace) -> int:
    """A confidence threshold per slice from the logged comparisons; with --apply, set."""
    span = window(args.since, args.until, WEEK)
    dimension = check_dimension(args.dimension) if args.dimension else None
    if args.apply and not args.reason:
        raise InvalidRequest("--apply needs --reason (it is recorded)")

    async def calibrate(control: ControlPlane) -> tuple[dict[str, Any], list[Any]]:
        result = await control.reports().slice_thresholds(
            args.route,
            span,
            args.target_agreement,
            conservative=args.conservative,
            dimension=dimension,
            min_served=args.min_served,
        )
        applied: list[Any] = []
        changes = calibrated_overrides(result)
        if args.apply and changes:
            applied = await control.apply_slices(
                args.route,
                changes,
                actor=args.actor or default_actor(),
                reason=args.reason,
                detail={
                    "target_agreement": args.target_agreement,
                    "conservative": args.conservative,
                    **span.as_json(),
                },
            )
        return result, applied

    result, applied = _on_route(args, calibrate)
    if args.json:
        print_json({**result, "applied": [slice_view(o) for o in applied] if args.apply else None})
        return 0
    basis = "lower end of the 95% interval" if args.conservative else "agreement"
    print(
        f"{args.route}: {result['since']} to {result['until']}; per slice, the lowest threshold "
        f"whose served answers have {basis} >= {args.target_agreement:g} "
        f"(over at least {args.min_served})\n"
    )
    verdicts = {"ok": "", "not_enough_data": "too few comparisons", "unreachable": "-> teacher"}
    rows = [
        (
            f"{line['dimension']}={line['value']}",
            str(line["comparisons"]),
            "-" if line["threshold"] is None else f"{line['threshold']:g}",
            "-" if line["at_threshold"] is None else f"{line['at_threshold']['share']:.1%}",
            "-" if line["at_threshold"] is None else f"{line['at_threshold']['agreement']:.1%}",
            verdicts[line["status"]],
        )
        for line in result["slices"]
    ]
    print_table(("SLICE", "COMPARED", "THRESHOLD", "SERVED", "AGREEMENT", "NOTE"), rows)
    if args.apply:
        print(f"\napplied to {len(applied)} slice(s) in one audited change")
    elif calibrated_overrides(result):
        print("\nadd --apply --reason R to set these as slice overrides")
    return 0


def _change(args: argparse.Namespace, knobs: dict[str, Any], action: str) -> int:
    state, changed = _on_route(
        args,
        lambda control: control.change(
            args.route,
            knobs,
            actor=args.actor or default_actor(),
            reason=args.reason,
            action=action,
        ),
    )
    if args.json:
        print_json({"route": args.route, **state_view(state), "changed": changed})
        return 0
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


@_checked
def cmd_set(args: argparse.Namespace) -> int:
    if args.slice is not None:
        return _change_slice(args)
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
    async def plan(control: ControlPlane) -> tuple[RouteState, dict[str, Any] | None]:
        state = await control.start_plan(
            args.route,
            args.steps,
            args.hold,
            actor=args.actor or default_actor(),
            reason=args.reason,
        )
        return state, (await control.plans(args.route)).get(args.route)

    state, ramp = _on_route(args, plan)
    if args.json:
        print_json({"route": args.route, **state_view(state), "ramp": ramp})
        return 0
    steps = ", ".join(f"{step:g}%" for step in args.steps)
    print(
        f"{args.route}: ramp {steps}, holding {args.hold:g}s per step while every critical "
        f"slice meets its bar; now at {state.rollout_percent:g}% (version {state.version})"
    )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    ramp = _on_route(
        args,
        lambda control: control.cancel_plan(
            args.route, actor=args.actor or default_actor(), reason=args.reason
        ),
    )
    if args.json:
        print_json({"route": args.route, "ramp": ramp})
        return 0
    print(
        f"{args.route}: ramp cancelled at step {ramp['step']} of {len(ramp['steps'])}; "
        f"the route stays at {ramp['percent']:g}%"
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


def _duration(text: str) -> float:
    """``--hold``: ``90`` (seconds), or a number and a unit like ``--since`` ages (``90s``,
    ``30m``, ``2h``, ``1d``, ``2w``) → seconds."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parse_duration(text, "--hold").total_seconds()
        except InvalidRequest as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
    if not 0 < seconds < math.inf:
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
    add_json_option(status, "JSON instead of a table")
    status.set_defaults(handler=cmd_status)

    def changing(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, parents=[parent], help=help_text, description=help_text
        )
        sub.add_argument("route", help="the route's name")
        sub.add_argument("--reason", required=True, type=reason_text, help="why (recorded)")
        sub.add_argument("--actor", help="who is changing it (default: $USER)")
        add_json_option(sub, "the route's knobs (or the slice's override) after it, as JSON")
        return sub

    change = changing(
        "set",
        "Change a route's mode, percent, threshold, method or audit share; with --slice, "
        "one slice's own mode (teacher or rollout), percent or threshold.",
    )
    change.add_argument(
        "--slice",
        metavar="DIM=VALUE",
        help="change this slice's override instead of the route (e.g. tier=free)",
    )
    change.add_argument("--mode", choices=MODES, help="with --slice: teacher or rollout")
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

    clear = changing("clear", "Remove a slice's override: it follows the route's knobs again.")
    clear.add_argument("--slice", metavar="DIM=VALUE", required=True, help="e.g. tier=free")
    clear.set_defaults(handler=cmd_clear)

    calibrate = actions.add_parser(
        "calibrate",
        parents=[parent],
        help="A confidence threshold per slice from the logged comparisons (--apply sets them).",
        description=(
            "Per slice, the lowest confidence threshold at which the answers the student would "
            "serve agree with the teacher at least --target-agreement of the time. With "
            "--apply, judged slices get that threshold and slices no threshold makes good "
            "enough go to the teacher, in one audited change."
        ),
    )
    calibrate.add_argument("route", help="the route's name")
    calibrate.add_argument(
        "--target-agreement",
        type=bounded(0.01, 1, "--target-agreement"),
        default=0.9,
        help="agreement the served answers must reach (default 0.9)",
    )
    calibrate.add_argument(
        "--conservative",
        action="store_true",
        help="the lower end of the 95%% interval must reach the target",
    )
    calibrate.add_argument(
        "--since", help="start: ISO 8601 or an age like 7d (default: 7 days before --until)"
    )
    calibrate.add_argument("--until", help="end, excluded (default: now)")
    calibrate.add_argument("--dimension", help="only this slice dimension")
    calibrate.add_argument(
        "--min-served",
        type=positive_int,
        default=DEFAULT_MIN_SERVED,
        help=f"fewest served comparisons a threshold is judged on (default {DEFAULT_MIN_SERVED})",
    )
    calibrate.add_argument("--apply", action="store_true", help="set the thresholds (audited)")
    calibrate.add_argument("--reason", type=reason_text, help="why (required with --apply)")
    calibrate.add_argument("--actor", help="who is changing it (default: $USER)")
    add_json_option(calibrate, "JSON instead of a table")
    calibrate.set_defaults(handler=cmd_calibrate)

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
        help="how long each step is held and judged: seconds, or a number and a unit "
        "(s, m, h, d, w) like 30m or 2h",
    )
    plan.set_defaults(handler=cmd_plan)

    cancel = changing("cancel", "Stop a route's active ramp where it is (the percent stays).")
    cancel.set_defaults(handler=cmd_cancel)
