"""``students list|add|set|promote|retire``: a route's students from a shell, audited.

Like ``rollout``, the commands change the shared state in Postgres directly (the same registry
the admin API uses), so every gateway replica picks the change up within about a second. Each
change needs ``--reason`` and is recorded in ``route_events`` under ``--actor`` (default:
$USER). Every command takes ``--json``: the students, or the one changed, as the admin API
shows them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.commands.common import (
    CommandError,
    add_json_option,
    bounded,
    default_actor,
    positive_int,
    print_json,
    print_table,
    reason_text,
    with_engine,
)
from gateway.config import load_settings
from gateway.errors import GatewayError
from gateway.services.students import StudentRegistry, StudentState


def _run(args: argparse.Namespace, method: str, *call: Any, **options: Any) -> Any:
    """Seed the registry from the config (as a gateway would), then one call on it."""
    settings = load_settings(args.config)
    try:  # an unknown route fails before anything else
        settings.config.find_route(args.route)
    except GatewayError as exc:
        raise CommandError(exc.message) from exc

    async def run(engine: AsyncEngine) -> Any:
        registry = StudentRegistry(engine, settings.config)
        await registry.seed()
        if method == "all":
            return registry.all(args.route)
        return await getattr(registry, method)(args.route, *call, **options)

    return with_engine(settings, run)


def _summary(state: StudentState) -> str:
    config = state.config
    urls = ",".join(str(url) for url in config.base_urls)
    return (
        f"{state.name}: {state.status}, model {config.model} at {urls}, "
        f"shadow_sample {config.shadow_sample:g} (version {state.version})"
    )


def cmd_list(args: argparse.Namespace) -> int:
    students: list[StudentState] = _run(args, "all")
    if args.json:
        print_json([student.view() for student in students])
        return 0
    header = ("NAME", "STATUS", "MODEL", "SHADOW", "CONCURRENCY", "TIMEOUT", "VERSION", "URLS")
    table = [
        (
            s.name,
            s.status,
            s.config.model,
            f"{s.config.shadow_sample:g}",
            str(s.config.max_concurrency),
            f"{s.config.timeout_s:g}s",
            str(s.version),
            ",".join(str(url) for url in s.config.base_urls),
        )
        for s in students
    ]
    print_table(header, table)
    return 0


def _knobs(args: argparse.Namespace) -> dict[str, Any]:
    knobs = {
        "base_urls": args.base_url,
        "api_key_env": args.api_key_env,
        "shadow_sample": args.shadow_sample,
        "timeout_s": args.timeout_s,
        "max_concurrency": args.max_concurrency,
        "top_logprobs": None if args.top_logprobs is None else int(args.top_logprobs),
    }
    return {key: value for key, value in knobs.items() if value is not None}


def _actor(args: argparse.Namespace) -> dict[str, str]:
    return {"actor": args.actor or default_actor(), "reason": args.reason}


def cmd_add(args: argparse.Namespace) -> int:
    fields = {"name": args.name, "model": args.model, **_knobs(args)}
    state: StudentState = _run(args, "add", fields, **_actor(args))
    if args.json:
        print_json({"route": args.route, "student": state.view(), "changed": True})
        return 0
    print(f"{args.route}: added {_summary(state)}")
    return 0


def _report(args: argparse.Namespace, result: tuple[StudentState, bool], done: str) -> int:
    state, changed = result
    if args.json:
        print_json({"route": args.route, "student": state.view(), "changed": changed})
        return 0
    if changed:
        print(f"{args.route}: {done} {_summary(state)}")
    else:
        print(f"{args.route}: unchanged, {_summary(state)}", file=sys.stderr)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    knobs = _knobs(args)
    if not knobs:
        raise CommandError(
            "nothing to set: give --base-url, --api-key-env, --shadow-sample, --timeout-s, "
            "--max-concurrency or --top-logprobs"
        )
    return _report(args, _run(args, "change", args.name, knobs, **_actor(args)), "set")


def cmd_promote(args: argparse.Namespace) -> int:
    return _report(args, _run(args, "promote", args.name, **_actor(args)), "promoted")


def cmd_retire(args: argparse.Namespace) -> int:
    return _report(args, _run(args, "retire", args.name, **_actor(args)), "retired")


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    students = commands.add_parser(
        "students",
        help="Read or change a route's students: candidates and the champion (audited).",
        description="Read or change a route's students; every change is recorded with its "
        "reason and reaches every replica within about a second.",
    )
    actions = students.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[parent], help="A route's students.")
    listing.add_argument("route", help="the route's name")
    add_json_option(listing, "JSON instead of a table")
    listing.set_defaults(handler=cmd_list)

    def changing(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, parents=[parent], help=help_text, description=help_text
        )
        sub.add_argument("route", help="the route's name")
        sub.add_argument("name", help="the student's name")
        sub.add_argument("--reason", required=True, type=reason_text, help="why (recorded)")
        sub.add_argument("--actor", help="who is changing it (default: $USER)")
        add_json_option(sub, "the student after the change, as JSON")
        return sub

    def knobs(sub: argparse.ArgumentParser, *, adding: bool) -> None:
        sub.add_argument(
            "--base-url",
            action="append",
            required=adding,
            help="an OpenAI-compatible base URL, e.g. http://10.0.0.7:8001/v1 (repeat for "
            "replicas; set replaces the list)",
        )
        sub.add_argument("--api-key-env", help="env variable with its API key (on every replica)")
        sub.add_argument(
            "--shadow-sample",
            type=bounded(0, 1, "--shadow-sample"),
            help="share of the route's requests it is shadowed on (0-1)",
        )
        sub.add_argument("--timeout-s", type=bounded(0.001, 3600, "--timeout-s"))
        sub.add_argument("--max-concurrency", type=positive_int)
        sub.add_argument("--top-logprobs", type=bounded(0, 20, "--top-logprobs"))

    add = changing("add", "Add a candidate (the champion if the route has none).")
    add.add_argument("--model", required=True, help="the model name the student serves")
    knobs(add, adding=True)
    add.set_defaults(handler=cmd_add)

    change = changing("set", "Change a student's replicas, key, share, timeout or bounds.")
    knobs(change, adding=False)
    change.set_defaults(handler=cmd_set)

    promote = changing(
        "promote",
        "Make a student the champion (the one a rollout serves); the previous one "
        "stays shadowed as a candidate.",
    )
    promote.set_defaults(handler=cmd_promote)

    retire = changing("retire", "Stop calling a candidate (its rows are kept).")
    retire.set_defaults(handler=cmd_retire)
