"""The record of a ``distill`` run: one ``distill_runs`` row, its stages appended as they go.

Each stage is a dict in ``stages`` (in the order they ran, a stage run again on resume
appearing again): ``stage``, ``status`` (``running``, ``done``, ``failed``, ``stopped``),
``started_at``, ``finished_at``, ``seconds``, ``details`` (what it made or measured) and
``error``. The row's ``stage`` is the stage running or last run, ``status`` the run's, and
``error`` why it failed or stopped. A stage counts as finished when its latest entry is
``done``; resuming starts from the first stage that is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import desc, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.tables import distill_runs, route_students

STAGES = ("export", "train", "launch", "add", "replay", "report")


@dataclass
class DistillRun:
    id: int
    route: str
    student: str
    created_by: str
    status: str
    stage: str | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    train_dataset_id: int | None = None
    eval_dataset_id: int | None = None
    output_dir: str | None = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def finished(self, stage: str) -> dict[str, Any] | None:
        """The stage's latest entry if it is ``done``, else None."""
        latest = next((s for s in reversed(self.stages) if s["stage"] == stage), None)
        return latest if latest is not None and latest["status"] == "done" else None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "route": self.route,
            "student": self.student,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "status": self.status,
            "stage": self.stage,
            "stages": self.stages,
            "options": self.options,
            "train_dataset_id": self.train_dataset_id,
            "eval_dataset_id": self.eval_dataset_id,
            "output_dir": self.output_dir,
            "error": self.error,
        }


def _run(row: Any) -> DistillRun:
    return DistillRun(
        id=row.id,
        route=row.route,
        student=row.student,
        created_by=row.created_by,
        status=row.status,
        stage=row.stage,
        stages=list(row.stages or []),
        options=dict(row.options or {}),
        train_dataset_id=row.train_dataset_id,
        eval_dataset_id=row.eval_dataset_id,
        output_dir=row.output_dir,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def latest_run(engine: AsyncEngine, route: str, student: str) -> DistillRun | None:
    query = (
        select(distill_runs)
        .where(distill_runs.c.route == route, distill_runs.c.student == student)
        .order_by(desc(distill_runs.c.id))
        .limit(1)
    )
    async with engine.connect() as connection:
        row = (await connection.execute(query)).first()
    return None if row is None else _run(row)


async def list_runs(engine: AsyncEngine, route: str) -> list[DistillRun]:
    query = select(distill_runs).where(distill_runs.c.route == route).order_by(distill_runs.c.id)
    async with engine.connect() as connection:
        return [_run(row) for row in (await connection.execute(query)).all()]


async def create_run(
    engine: AsyncEngine, route: str, student: str, created_by: str, options: dict[str, Any]
) -> DistillRun:
    values = {
        "route": route,
        "student": student,
        "created_by": created_by,
        "status": "running",
        "options": options,
    }
    async with engine.begin() as connection:
        row = (
            await connection.execute(insert(distill_runs).values(**values).returning(distill_runs))
        ).one()
    return _run(row)


async def save_run(engine: AsyncEngine, run: DistillRun) -> None:
    values = {
        "status": run.status,
        "stage": run.stage,
        "stages": run.stages,
        "options": run.options,
        "train_dataset_id": run.train_dataset_id,
        "eval_dataset_id": run.eval_dataset_id,
        "output_dir": run.output_dir,
        "error": run.error,
        "updated_at": func.now(),
    }
    async with engine.begin() as connection:
        await connection.execute(
            update(distill_runs).where(distill_runs.c.id == run.id).values(**values)
        )


async def student_exists(engine: AsyncEngine, route: str, name: str) -> bool:
    """Whether the route has (or had: names are never reused) a student of that name."""
    query = select(route_students.c.name).where(
        route_students.c.route == route, route_students.c.name == name
    )
    async with engine.connect() as connection:
        return (await connection.execute(query)).first() is not None
