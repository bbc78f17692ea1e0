"""The ``shadow-gateway`` command line (the commands live in :mod:`gateway.commands`).

Every command takes ``--config`` (default: ``$SHADOW_GATEWAY_CONFIG``, else
``./shadow-gateway.yaml``). Problems are reported as one plain sentence on stderr with a
non-zero exit status: 2 for a bad config or arguments, 1 for anything else.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from gateway import __version__, logs
from gateway.commands.common import CommandError, common_options
from gateway.errors import ConfigError

# Each command's module (gateway.commands.<module>), in the order --help lists them. A command
# imports only its own module: a report does not pay for distill's or the demo's imports
# (docs/benchmarks.md, "The CLI's start-up").
_MODULES = {
    "serve": "serve",
    "migrate": "serve",
    "keys": "keys",
    "rollout": "rollout",
    "students": "students",
    "report": "report",
    "review": "review",
    "replay": "replay",
    "export": "export",
    "datasets": "datasets",
    "distill": "distill",
    "partitions": "partitions",
    "demo": "demo",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; or, for a known ``command``, one that knows only it (and so imports
    only its module)."""
    parser = argparse.ArgumentParser(
        prog="shadow-gateway",
        description="Serve a teacher LLM, shadow a distilled student, log both to Postgres.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = common_options()
    wanted = [_MODULES[command]] if command in _MODULES else dict.fromkeys(_MODULES.values())
    for module in wanted:
        importlib.import_module(f"gateway.commands.{module}").add_parsers(commands, parent)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command named on the line: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    args.log_format = logs.resolve_log_format(args.log_format)
    logs.configure(args.log_level, args.log_format)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
    except ConfigError as exc:
        print(f"shadow-gateway: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"shadow-gateway: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`… | head`): stop quietly, as other Unix tools do; the rest
        # of the output goes nowhere, so the interpreter's last flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    except KeyboardInterrupt:
        print("shadow-gateway: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT
    return code
