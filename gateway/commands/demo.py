"""``demo``: the whole loop on one machine, no GPU, no API key.

Starts the embedded PostgreSQL (or uses ``DATABASE_URL``), the demo teacher, the two demo
students on vLLM's CPU build (through :mod:`student_server`: the shipped one as champion, a
smaller checkpoint as candidate) and the gateway; replays traffic in shadow mode, prints the
candidates report, recommends a threshold, switches the route to rollout, and prints the slice
report (see :mod:`gateway.demo.walkthrough`). ``--redistill`` then runs the re-distillation
loop once on the demo's traffic (:mod:`gateway.demo.redistill`: export, fine-tune, vLLM,
candidate, replay, report; never a promotion). Then it keeps everything running, with the URLs
to try, until Ctrl-C, and stops it all. ``--exit-after`` stops right after the report.

vLLM's CPU build lives in its own virtual environment (its torch is not the gateway's):
``--student-python``, else ``$SHADOW_GATEWAY_STUDENT_PYTHON``, else ``.venv-student`` in the
current directory or the checkout. Without one the command says how to make it
(``bash student_server/install-cpu.sh``), or makes it itself with ``--install-student``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import psutil

from gateway.commands.common import CommandError, common_options, positive_int


def _wait_for_ctrl_c() -> None:
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.stack import (
        INSTALL_SCRIPT,
        DemoError,
        DemoStack,
        demo_model_dir,
        find_student_python,
        install_student,
    )
    from gateway.demo.walkthrough import try_it, walkthrough

    model_dir = Path(args.model) if args.model else demo_model_dir()
    if not (model_dir / "config.json").exists():
        raise CommandError(f"no student model in {model_dir} (config.json is missing)")
    python = find_student_python(args.student_python)
    if python is None or not python.exists():
        if not args.install_student:
            where = f" ({python} does not exist)" if python else ""
            raise CommandError(
                f"the demo's student runs on vLLM's CPU build, in its own virtual environment, "
                f"and there is none{where}. Make it with `bash {INSTALL_SCRIPT}` (a few "
                "minutes, about 3.5 GB, needs Python 3.11), or rerun with --install-student to "
                "do that now, or point --student-python at one"
            )
        print(f"installing the student's environment with {INSTALL_SCRIPT} ...", flush=True)
        try:
            python = install_student()
        except DemoError as exc:
            raise CommandError(str(exc)) from exc

    def say(line: str) -> None:
        print(line, flush=True)

    data_dir = Path(args.data_dir).resolve()
    if args.keep_data:
        say(f"continuing in {data_dir}: the earlier runs' rows and route state stay")
    elif clear_data_dir(data_dir):
        say(f"starting clean: removed the previous demo run's data in {data_dir}")

    # One line per request from the replay's HTTP client would drown the progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    stack = DemoStack(
        data_dir=data_dir,
        student_python=python,
        model_dir=model_dir.resolve(),
        gateway_port=args.port,
        student_port=args.student_port,
        say=say,
    )
    try:
        stack.start()
        walkthrough(
            stack,
            shadow_requests=args.requests,
            rollout_requests=args.rollout_requests,
            seed=args.seed,
            say=say,
        )
        if args.redistill:
            from gateway.demo.redistill import redistill

            say(
                "\n== 7. re-distill: the real `distill` loop on this run's traffic: export "
                "(verified, with a held-out split), fine-tune, vLLM, candidate, replay, report"
            )
            redistill(stack, say)
        try_it(stack, say)
        if not args.exit_after:
            _wait_for_ctrl_c()
            say("")
    except DemoError as exc:
        raise CommandError(str(exc)) from exc
    except KeyboardInterrupt:
        say("\ninterrupted")
    finally:
        stack.stop()
    say("demo stopped")
    return 0


DATA_DIR_MARK = ".shadow-gateway-demo"


def clear_data_dir(data_dir: Path) -> bool:
    """Empty a data directory an earlier demo made (its mark file says so); make it, marked,
    if it is new. A directory with other things in it and no mark is refused, never emptied.
    Whether an earlier run's data was removed."""
    mark = data_dir / DATA_DIR_MARK
    existed = data_dir.is_dir() and any(data_dir.iterdir())
    if existed and not mark.exists():
        raise CommandError(
            f"{data_dir} holds files the demo did not make: pass another --data-dir (the demo "
            "empties its own at each start)"
        )
    if existed:
        for pidfile in data_dir.rglob("postmaster.pid"):
            pid = pidfile.read_text().split("\n", 1)[0].strip()
            if pid.isdigit() and psutil.pid_exists(int(pid)):
                raise CommandError(
                    f"a PostgreSQL from an earlier demo still runs on {pidfile.parent} (pid "
                    f"{pid}): stop it (kill {pid}), or pass --keep-data to go on with it"
                )
        for entry in data_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)
    mark.write_text("made by `shadow-gateway demo`, which empties this directory at each start\n")
    return existed


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    del parent  # the demo writes its own config: it takes no --config
    demo = commands.add_parser(
        "demo",
        parents=[common_options(config=False)],
        help="Run the whole loop on this machine: a demo teacher, two vLLM students on CPU, "
        "shadow traffic, the candidates report, a threshold, a rollout.",
        description="Start the embedded PostgreSQL, the demo teacher, the two demo students "
        "(vLLM on CPU: a champion and a candidate) and the gateway; replay traffic in shadow "
        "mode, print the candidates report, switch the route to rollout at the recommended "
        "threshold, print the slice report, and keep it all running until Ctrl-C "
        "(--redistill first runs the re-distillation loop once on the demo's traffic).",
    )
    demo.add_argument("--requests", type=positive_int, default=300, help="shadow requests (300)")
    demo.add_argument(
        "--rollout-requests", type=positive_int, default=100, help="requests after the switch (100)"
    )
    demo.add_argument("--seed", type=int, default=7, help="the replayed prompts' seed")
    demo.add_argument("--port", type=int, default=8080, help="the gateway's port (8080)")
    demo.add_argument(
        "--student-port",
        type=int,
        default=8001,
        help="the champion's vLLM port (8001); the candidate's is the next one when free",
    )
    demo.add_argument(
        "--data-dir", default=".shadow-gateway-demo", help="Postgres data, logs, the config"
    )
    demo.add_argument(
        "--keep-data",
        action="store_true",
        help="continue the previous run's database (default: start clean)",
    )
    demo.add_argument("--model", help="the champion's model directory (default: the demo's)")
    demo.add_argument("--student-python", help="the Python of vLLM's CPU environment")
    demo.add_argument(
        "--install-student",
        action="store_true",
        help="make .venv-student with student_server/install-cpu.sh if it is missing",
    )
    demo.add_argument(
        "--redistill",
        action="store_true",
        help="then run `distill` once on the demo's traffic: export, fine-tune a new student "
        "on CPU, serve it on vLLM, add it as a candidate, replay, report (never promotes)",
    )
    demo.add_argument(
        "--exit-after", action="store_true", help="stop after the report instead of waiting"
    )
    demo.set_defaults(handler=cmd_demo)
