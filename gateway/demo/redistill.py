"""``demo --redistill``: the re-distillation loop, for real, on the demo's own traffic.

Once the walk-through is done, the demo runs ``distill`` (:mod:`gateway.services.distill`,
the same service as ``shadow-gateway distill dates --name tiny-v2``) with the route's
``distill`` section, which the demo writes into its config
(:func:`~gateway.demo.stack.distill_section`):

1. export the run's verified traffic (the route's verifier leaves the teacher's wrong relative
   dates out) with a stratified held-out split, both registered as datasets;
2. train: :mod:`student_server.demo.finetune` fine-tunes the shipped champion on the training
   file, with ``.venv-student``'s torch, in well under a minute on two cores;
3. launch the result on vLLM's CPU build, 4. add it as the candidate ``tiny-v2`` (never
   promoted, ``shadow_sample`` 0), 5. replay the held-out requests and recent traffic to it,
6. report: the candidate against the champion on the held-out split (paired), and on the
   replayed recent traffic (which includes the prompts it was trained on).

A demo started with ``--keep-data`` goes on with the next free name (``tiny-v3`` …), or
resumes an earlier run of that name that failed or was stopped. The server ``distill``
started is stopped when the run ends, as ``distill`` does by default.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.demo.stack import ROUTE, DemoError, DemoStack

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.services.distill import DistillRun

FIRST_VERSION = 2  # the champion is tiny-v1
NAME_PREFIX = "tiny-v"
REPLAY_LIMIT = 200


@dataclass
class Redistilled:
    """What the run made: the run's record, the report, and how long it all took."""

    run: DistillRun
    report: dict[str, Any] | None
    seconds: float


async def _the_run(engine: AsyncEngine, created_by: str) -> tuple[DistillRun, bool]:
    """The next free ``tiny-vN``'s new run, or an earlier failed or stopped one to resume."""
    from gateway.services.distill import create_run, latest_run, student_exists

    version = FIRST_VERSION
    while True:
        name = f"{NAME_PREFIX}{version}"
        earlier = await latest_run(engine, ROUTE, name)
        if earlier is not None and earlier.status in ("failed", "stopped"):
            return earlier, True
        if earlier is None and not await student_exists(engine, ROUTE, name):
            return await create_run(engine, ROUTE, name, created_by, {}), False
        version += 1


def redistill(stack: DemoStack, say: Callable[[str], None] = print) -> Redistilled:
    """Run the loop once on the demo's database (see the module docstring); print as it goes."""
    from gateway.config import load_settings
    from gateway.db.engine import create_engine
    from gateway.errors import GatewayError
    from gateway.protocol.reports import parse_time
    from gateway.services.distill import Distill, DistillOptions, StageFailed

    assert stack.config_path is not None
    settings = load_settings(stack.config_path)
    route = settings.config.find_route(ROUTE)
    section = route.distill
    if section.train_command is None:
        raise DemoError(f"the demo's config has no routes[].distill for {ROUTE}")
    options = DistillOptions(
        train_command=section.train_command,
        since=parse_time(section.since, "distill.since"),
        holdout=section.holdout,
        replay_limit=REPLAY_LIMIT,
        launch=section.launch,
    )
    started = time.monotonic()

    def progress(line: str) -> None:
        say(f"      {line} ({time.monotonic() - started:.0f} s)")

    async def work() -> Redistilled:
        engine = create_engine(stack.database_url, settings.config.database)
        try:
            run, resumed = await _the_run(engine, "demo")
            verb = "resuming" if resumed else "starting"
            say(f"      {verb} distill run {run.id}: candidate {run.student}")
            distill = Distill(engine, settings, route, run, options, progress)
            try:
                done = await distill.run()
            except StageFailed as exc:
                tail = str(exc.details.get("tail") or "")
                raise DemoError(
                    f"distill run {run.id} failed at {run.stage}: {exc}"
                    + (f"\n{tail}" if tail else "")
                ) from exc
            except GatewayError as exc:
                raise DemoError(f"distill run {run.id} failed at {run.stage}: {exc}") from exc
            return Redistilled(done, distill.report, time.monotonic() - started)
        finally:
            await engine.dispose()

    result = asyncio.run(work())
    print_outcome(result, say)
    return result


def _train_summary(run: DistillRun) -> list[str]:
    """The fine-tuning script's own before/after lines, from the train stage's log."""
    train = run.finished("train")
    if train is None:
        return []
    try:
        text = Path(train["details"]["log"]).read_text(errors="replace")
    except (KeyError, OSError):
        return []
    return [line for line in text.splitlines() if line.startswith(("held-out,", "wrote "))]


def print_outcome(result: Redistilled, say: Callable[[str], None]) -> None:
    from gateway.commands.distill import holdout_lines
    from gateway.demo.walkthrough import print_candidates

    run = result.run
    timings = ", ".join(
        f"{stage['stage']} {stage['seconds']:.1f} s"
        for stage in run.stages
        if stage["status"] == "done" and stage.get("seconds") is not None
    )
    say(f"      stages: {timings}; {result.seconds:.0f} s in all")
    for line in _train_summary(run):
        say(f"      train.log: {line}")
    report = result.report
    if report is None:
        return
    say(f"\n   recent traffic, replayed (it includes prompts {run.student} was trained on):")
    print_candidates(report, say)
    say("")
    for line in holdout_lines(report.get("holdout")):
        say(f"  {line}")
    say(
        f"\n      {run.student} is a candidate with shadow_sample 0, never promoted: that is "
        f"`students promote {ROUTE} {run.student}`, a person's decision. Its vLLM server was "
        f"stopped with the run; the model is in {run.output_dir}."
    )
