"""One ``distill`` run: export → train → launch → add → replay → report, never a promotion.

Each stage is recorded in the run's ``distill_runs`` row as it starts and ends
(:mod:`.runs`). A stage that fails raises :class:`~.processes.StageFailed`: the run is
``failed`` with the stage's error and details, and the same command resumes it. Cancelled
(Ctrl-C), the stage in progress is ``stopped``, the training command or the vLLM server is
stopped, and the run is ``stopped``, also resumable. Resuming skips every stage whose latest
entry is ``done``, except ``launch`` (a server does not outlive the command that started it
unless ``keep_serving``; a candidate added earlier gets the new server's URL) and ``report``.

The export is the export service's (the route's verifier, the holdout split, datasets
registered); the candidate is added through the student registry, the answers replayed by the
replay service (:mod:`.replays`), the report is the held-out comparison (:mod:`.holdout`)
beside the candidates report (:mod:`gateway.services.reports`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import DistillLaunch, RouteConfig, Settings
from gateway.db.tables import route_students
from gateway.errors import GatewayError
from gateway.protocol.reports import Window
from gateway.services.distill.holdout import holdout_comparison
from gateway.services.distill.processes import (
    Served,
    StageFailed,
    launch,
    run_training,
    tail,
    train_command_line,
)
from gateway.services.distill.replays import ReplayPasses
from gateway.services.distill.runs import DistillRun, save_run
from gateway.services.export import (
    Exporter,
    ExportError,
    ExportRequest,
    Mix,
    Provenance,
    build_verifier,
    eval_path,
)
from gateway.services.reports import Reports
from gateway.services.students import StudentRegistry, StudentState

CREATED_BY = "distill"


@dataclass
class DistillOptions:
    """What one invocation asked for (stored in the run's ``options``)."""

    train_command: str
    since: datetime
    holdout: float = 0.1
    limit: int | None = None
    mix: Mix | None = None
    seed: int = 0
    exclude_datasets: tuple[int, ...] = ()
    shadow_sample: float = 0.0
    replay_limit: int | None = 200
    keep_serving: bool = False
    output_dir: Path | None = None
    launch: DistillLaunch = field(default_factory=DistillLaunch)

    def as_json(self) -> dict[str, Any]:
        return {
            "train_command": self.train_command,
            "since": self.since.isoformat(),
            "holdout": self.holdout,
            "limit": self.limit,
            "mix": {self.mix.dimension: dict(self.mix.shares)} if self.mix else None,
            "seed": self.seed,
            "exclude_datasets": list(self.exclude_datasets),
            "shadow_sample": self.shadow_sample,
            "replay_limit": self.replay_limit,
            "keep_serving": self.keep_serving,
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "launch": self.launch.model_dump(),
        }


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Distill:
    """Runs (or resumes) one run; ``progress`` gets a line per stage for the terminal."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        route: RouteConfig,
        run: DistillRun,
        options: DistillOptions,
        progress: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._route = route
        self._run = run
        self._options = options
        self._progress = progress
        self._folder = settings.data_dir / "distill" / str(run.id)
        self._served: Served | None = None
        self._report: dict[str, Any] | None = None

    @property
    def report(self) -> dict[str, Any] | None:
        """The candidates report (source ``replay``) once the run is done."""
        return self._report

    async def run(self) -> DistillRun:
        run = self._run
        run.options = self._options.as_json()
        run.status, run.error = "running", None
        await save_run(self._engine, run)
        stages: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("export", self._export),
            ("train", self._train),
            ("launch", self._launch),
            ("add", self._add),
            ("replay", self._replay),
            ("report", self._make_report),
        ]
        try:
            for name, work in stages:
                if name in ("export", "train", "add", "replay") and run.finished(name):
                    self._progress(f"{name}: done in an earlier attempt, not redone")
                    continue
                if name == "launch" and run.finished("replay"):
                    continue  # only the report is left: no server needed
                await self._stage(name, work)
            run.status, run.stage = "done", "report"
            await save_run(self._engine, run)
        finally:
            await self._shut_down()
        return run

    async def _stage(self, name: str, work: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        run = self._run
        record: dict[str, Any] = {"stage": name, "status": "running", "started_at": _now()}
        run.stages.append(record)
        run.stage = name
        await save_run(self._engine, run)
        self._progress(f"{name}: started")
        started = time.monotonic()

        def close(status: str, error: str | None = None, **details: Any) -> None:
            record.update(status=status, finished_at=_now())
            record["seconds"] = round(time.monotonic() - started, 3)
            if error is not None:
                record["error"] = error
            record.setdefault("details", {}).update(details)

        try:
            record["details"] = await work()
        except StageFailed as exc:
            close("failed", str(exc), **exc.details)
            run.status, run.error = "failed", f"{name}: {exc}"
            await save_run(self._engine, run)
            raise
        except (asyncio.CancelledError, KeyboardInterrupt):
            close("stopped", "interrupted")
            run.status, run.error = "stopped", f"{name}: interrupted (Ctrl-C)"
            await save_run(self._engine, run)
            raise
        except Exception as exc:
            close("failed", f"{type(exc).__name__}: {exc}")
            run.status, run.error = "failed", f"{name}: {exc}"
            await save_run(self._engine, run)
            raise
        close("done")
        await save_run(self._engine, run)
        self._progress(f"{name}: done in {record['seconds']:.1f} s")

    # -- the stages --------------------------------------------------------------------------

    async def _export(self) -> dict[str, Any]:
        options, route = self._options, self._route
        self._folder.mkdir(parents=True, exist_ok=True)
        request = ExportRequest(
            route=route.name,
            output=self._folder / "train.jsonl",
            since=options.since,
            limit=options.limit,
            mix=options.mix,
            seed=options.seed,
            holdout=options.holdout,
            exclude_datasets=options.exclude_datasets,
        )
        config = route.export.verifier
        exporter = Exporter(self._engine, build_verifier(config), config)
        provenance = Provenance(config_sha256=_config_sha256(self._settings), created_by=CREATED_BY)
        try:
            result = await exporter.run(request, provenance)
        except ExportError as exc:
            raise StageFailed(f"the export is empty or failed: {exc}") from exc
        parts = {part.kind: part for part in result.parts}
        train, held_out = parts["train"], parts.get("eval")
        self._run.train_dataset_id = train.dataset_id
        self._run.eval_dataset_id = held_out.dataset_id if held_out else None
        return {
            "train": str(train.path),
            "eval": str(held_out.path) if held_out else None,
            "train_dataset_id": train.dataset_id,
            "eval_dataset_id": self._run.eval_dataset_id,
            "train_examples": train.examples,
            "eval_examples": held_out.examples if held_out else 0,
            "rows_matched": result.live,
            "dropped": result.dropped,
        }

    def _export_files(self) -> tuple[Path, Path]:
        details = self._run.finished("export")
        assert details is not None  # the export ran first
        train = Path(details["details"]["train"])
        return train, eval_path(train)

    def _output_dir(self) -> Path:
        if self._run.output_dir:
            return Path(self._run.output_dir)
        chosen = self._options.output_dir or self._folder / "model"
        self._run.output_dir = str(chosen)
        return chosen

    async def _train(self) -> dict[str, Any]:
        train, held_out = self._export_files()
        output = self._output_dir()
        output.mkdir(parents=True, exist_ok=True)
        line = train_command_line(self._options.train_command, train, held_out, output)
        log_path = self._folder / "train.log"
        started = time.monotonic()
        code = await run_training(line, log_path)
        details: dict[str, Any] = {"command": line, "log": str(log_path), "exit_status": code}
        if code != 0:
            details["tail"] = tail(log_path)
            raise StageFailed(f"the train command exited with status {code}", details)
        details["train_seconds"] = round(time.monotonic() - started, 3)
        details["output_dir"] = str(output)
        return details

    async def _launch(self) -> dict[str, Any]:
        output = self._output_dir()
        attempt = sum(1 for s in self._run.stages if s["stage"] == "launch")
        log_path = self._folder / f"vllm-{attempt}.log"
        record = self._run.stages[-1]

        async def started(pid: int) -> None:
            # Recorded at once: a command killed outright leaves the pid to stop by hand.
            record["details"] = {"pid": pid, "log": str(log_path)}
            await save_run(self._engine, self._run)

        self._served = served = await launch(
            output, self._run.student, self._options.launch, log_path, started
        )
        return {
            "url": served.url,
            "pid": served.process.pid,
            "log": str(log_path),
            "seconds_to_ready": round(served.seconds_to_ready, 3),
        }

    async def _registry(self) -> StudentRegistry:
        registry = StudentRegistry(self._engine, self._settings.config)
        await registry.seed()
        return registry

    async def _add(self) -> dict[str, Any]:
        assert self._served is not None
        registry = await self._registry()
        route, name = self._route.name, self._run.student
        if registry.champion(route) is None:
            raise StageFailed(
                f"route {route!r} has no champion: the first student added becomes the "
                "champion, and distill never promotes (add one with `students add`)"
            )
        fields = {
            "name": name,
            "model": name,
            "base_urls": [self._served.url],
            "shadow_sample": self._options.shadow_sample,
        }
        reason = f"distill run {self._run.id}: trained on dataset {self._run.train_dataset_id}"
        try:
            state = await registry.add(route, fields, actor=CREATED_BY, reason=reason)
        except GatewayError as exc:
            raise StageFailed(exc.message) from exc
        await self._set_train_dataset()
        return {"student": state.name, "status": state.status, "url": self._served.url}

    async def _set_train_dataset(self) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(route_students)
                .where(
                    route_students.c.route == self._route.name,
                    route_students.c.name == self._run.student,
                )
                .values(train_dataset_id=self._run.train_dataset_id)
            )

    async def _candidate(self) -> StudentState:
        """The candidate, pointed at this attempt's server (a resumed run launched anew)."""
        assert self._served is not None
        registry = await self._registry()
        name, url = self._run.student, self._served.url
        state = next((s for s in registry.all(self._route.name) if s.name == name), None)
        if state is None:
            raise StageFailed(f"student {name!r} is no longer registered on {self._route.name}")
        if [str(u).rstrip("/") for u in state.config.base_urls] != [url]:
            state, _changed = await registry.change(
                self._route.name,
                name,
                {"base_urls": [url]},
                actor=CREATED_BY,
                reason=f"distill run {self._run.id}: resumed, served at a new address",
            )
        return state

    async def _replay(self) -> dict[str, Any]:
        candidate = await self._candidate()
        champion = (await self._registry()).champion(self._route.name)
        passes = ReplayPasses(
            self._engine,
            self._settings,
            self._route,
            Window(self._options.since, datetime.now(UTC)),
            self._progress,
        )
        return await passes.run(
            candidate,
            None if champion is None or champion.name == candidate.name else champion,
            self._run.eval_dataset_id,
            self._options.replay_limit,
        )

    async def _make_report(self) -> dict[str, Any]:
        span = Window(self._options.since, datetime.now(UTC))
        try:
            report = await Reports(self._engine, self._settings.config).candidates(
                self._route.name, span
            )
        except GatewayError as exc:
            raise StageFailed(exc.message) from exc
        report["sources"] = [s for s in report["sources"] if s["source"] == "replay"]
        report["holdout"] = await self._holdout(report["baseline"])
        self._report = report
        overall = next(
            (
                entry
                for source in report["sources"]
                for entry in source["overall"]["candidates"]
                if entry["student"] == self._run.student
            ),
            None,
        )
        holdout = report["holdout"]
        return {
            "baseline": report["baseline"],
            "candidate": overall,
            "holdout": holdout["overall"] if holdout else None,
        }

    async def _holdout(self, baseline: str) -> dict[str, Any] | None:
        """The candidate against ``baseline`` on the held-out split (None without one)."""
        if self._run.eval_dataset_id is None:
            return None
        return await holdout_comparison(
            self._engine,
            self._route.name,
            self._run.eval_dataset_id,
            candidate=self._run.student,
            baseline=baseline,
        )

    async def _shut_down(self) -> None:
        served = self._served
        if served is None:
            return
        if self._options.keep_serving and self._run.status == "done":
            self._progress(
                f"{self._run.student} keeps serving at {served.url} (pid {served.process.pid}, "
                f"log {served.log_path}); stop it with kill {served.process.pid}"
            )
            return
        await asyncio.to_thread(served.stop)
        self._served = None


def _config_sha256(settings: Settings) -> str | None:
    try:
        return hashlib.sha256(settings.config_path.read_bytes()).hexdigest()
    except OSError:
        return None
