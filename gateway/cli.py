"""The ``shadow-gateway`` command line (the commands live in :mod:`gateway.commands`).

Every command takes ``--config`` (default: ``$SHADOW_GATEWAY_CONFIG``, else
``./shadow-gateway.yaml``). Problems are reported as one plain sentence on stderr with a
non-zero exit status: 2 for a bad config or arguments, 1 for anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway import __version__, logs
from gateway.commands import (
    datasets,
    demo,
    distill,
    export,
    keys,
    partitions,
    replay,
    report,
    review,
    rollout,
    serve,
    students,
)
from gateway.commands.common import CommandError, common_options
from gateway.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadow-gateway",
        description="Serve a teacher LLM, shadow a distilled student, log both to Postgres.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = common_options()
    serve.add_parsers(commands, parent)
    keys.add_parsers(commands, parent)
    rollout.add_parsers(commands, parent)
    students.add_parsers(commands, parent)
    report.add_parsers(commands, parent)
    review.add_parsers(commands, parent)
    replay.add_parsers(commands, parent)
    export.add_parsers(commands, parent)
    datasets.add_parsers(commands, parent)
    distill.add_parsers(commands, parent)
    partitions.add_parsers(commands, parent)
    demo.add_parsers(commands, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
