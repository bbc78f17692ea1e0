"""Background guards on rollouts: automatic rollback and staged ramps.

Every ``guard.interval_s`` each replica looks at the agreement logged in Postgres (all
replicas' traffic, not just its own):

- **Automatic rollback.** For a route in rollout, each critical slice is judged over its own
  ``window_s``: once it has ``min_samples`` comparisons and its agreement is below
  ``min_agreement``, the route goes back to shadow, with an ``auto_rollback`` event naming the
  slice and its figures, and ``shadow_gateway_auto_rollbacks_total`` counts it.
- **Staged ramps** (``rollout plan``). A plan's steps are percentages; after each step has
  been held ``hold_s``, the next is applied only if every critical slice (or, with none, the
  route as a whole against ``rollout.gate_min_agreement``) meets its bar over the hold. A
  slice without enough data holds the ramp where it is; one below its bar stops the plan with
  a ``ramp_stopped`` event. A plan also stops if the route leaves rollout mode.

Replicas may run the same check at once: plans are claimed with ``FOR UPDATE SKIP LOCKED``,
and a rollback of a route already in shadow changes nothing and records nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.background import BackgroundLoop, RecurringFailure
from gateway.config import GatewayConfig, RouteConfig
from gateway.core.routing import SliceVerdict, judge_slice
from gateway.db.tables import rollout_plans
from gateway.metrics import Metrics
from gateway.services.control import ControlPlane

_log = logging.getLogger("shadow_gateway.guardian")
ACTOR = "guardian"

_AGREEMENT = text(
    "SELECT count(*) AS samples, count(*) FILTER (WHERE agree) AS agreed FROM requests "
    "WHERE route = :route AND agree IS NOT NULL "
    "AND created_at >= now() - make_interval(secs => :window_s) "
    "AND (CAST(:dimension AS text) IS NULL OR slices ->> CAST(:dimension AS text) = :value)"
)


@dataclass(frozen=True)
class SliceCheck:
    dimension: str
    value: str
    samples: int
    agreed: int
    bar: float
    min_samples: int
    window_s: float
    verdict: SliceVerdict

    def describe(self) -> str:
        share = f"{self.agreed / self.samples:.1%}" if self.samples else "n/a"
        return (
            f"{self.dimension}={self.value}: agreement {share} over {self.samples} "
            f"comparisons in {self.window_s:g}s, bar {self.bar:.1%}"
        )

    def detail(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "value": self.value,
            "samples": self.samples,
            "agreed": self.agreed,
            "agreement": self.agreed / self.samples if self.samples else None,
            "bar": self.bar,
            "min_samples": self.min_samples,
            "window_s": self.window_s,
        }


async def check_slices(
    connection: AsyncConnection, route: RouteConfig, window_s: float | None = None
) -> list[SliceCheck]:
    """The route's critical slices (or the route itself) against their bars."""
    targets: list[tuple[str | None, str, float, int, float]] = [
        (c.dimension, c.value, c.min_agreement, c.min_samples, window_s or c.window_s)
        for c in route.slices.critical
    ]
    if not targets:
        rollout = route.rollout
        targets = [
            (None, "all", rollout.gate_min_agreement, rollout.gate_min_samples, window_s or 3600.0)
        ]
    checks = []
    for dimension, value, bar, min_samples, window in targets:
        row = (
            await connection.execute(
                _AGREEMENT,
                {"route": route.name, "window_s": window, "dimension": dimension, "value": value},
            )
        ).one()
        checks.append(
            SliceCheck(
                dimension or "all",
                value,
                row.samples,
                row.agreed,
                bar,
                min_samples,
                window,
                judge_slice(row.samples, row.agreed, bar, min_samples),
            )
        )
    return checks


class Guardian(BackgroundLoop):
    task_name = "guardian"

    def __init__(
        self, engine: AsyncEngine, control: ControlPlane, config: GatewayConfig, metrics: Metrics
    ) -> None:
        super().__init__()
        self._engine = engine
        self._control = control
        self._routes = {route.name: route for route in config.routes}
        self._interval_s = config.guard.interval_s
        self._metrics = metrics
        self._failure = RecurringFailure(_log, "rollout checks")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_once()
            except Exception as exc:  # Postgres down or a bad row: try again next round
                self._failure.failed(exc, f"retrying every {self._interval_s:g}s")
            else:
                self._failure.succeeded()

    async def check_once(self) -> None:
        await self.guard_rollouts()
        await self.advance_plans()

    async def guard_rollouts(self) -> None:
        for name, route in self._routes.items():
            if self._control.state(name).mode != "rollout" or not route.slices.critical:
                continue
            async with self._engine.connect() as connection:
                checks = await check_slices(connection, route)
            failed = [check for check in checks if check.verdict == "fail"]
            if not failed:
                continue
            worst = failed[0]
            _, changed = await self._control.change(
                name,
                {"mode": "shadow"},
                actor=ACTOR,
                action="auto_rollback",
                reason=f"critical slice below its bar: {worst.describe()}",
                detail={"failed": [check.detail() for check in failed]},
            )
            if changed:
                self._metrics.auto_rollbacks.labels(name, worst.dimension, worst.value).inc()
                _log.warning("route %s rolled back to shadow: %s", name, worst.describe())
                await self._stop_plan(name, "the route was rolled back automatically")

    async def advance_plans(self) -> None:
        async with self._engine.begin() as connection:
            plans = (
                await connection.execute(
                    select(rollout_plans)
                    .where(rollout_plans.c.status == "active")
                    .where(rollout_plans.c.next_at <= text("now()"))
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for plan in plans:
                await self._advance(connection, plan)

    async def _advance(self, connection: AsyncConnection, plan: Any) -> None:
        name = plan.route
        route = self._routes.get(name)
        if route is None:
            return
        if self._control.state(name).mode != "rollout":
            await self._finish(
                connection, name, "stopped", "ramp_stopped", "the route left rollout mode"
            )
            return
        checks = await check_slices(connection, route, window_s=plan.hold_s)
        failed = [check for check in checks if check.verdict == "fail"]
        if failed:
            await self._finish(
                connection,
                name,
                "stopped",
                "ramp_stopped",
                f"gate failed at {plan.steps[plan.step_index]:g}%: {failed[0].describe()}",
                {"failed": [check.detail() for check in failed]},
            )
            return
        if any(check.verdict == "not_enough_data" for check in checks):
            return  # hold here until the slices have enough comparisons
        if plan.step_index + 1 >= len(plan.steps):
            await self._finish(
                connection,
                name,
                "completed",
                "ramp_completed",
                f"reached {plan.steps[-1]:g}% with every bar met",
            )
            return
        step = plan.step_index + 1
        await self._control.change(
            name,
            {"rollout_percent": plan.steps[step]},
            actor=ACTOR,
            action="ramp_step",
            reason=f"ramp step {step + 1} of {len(plan.steps)}: every bar met over "
            f"{plan.hold_s:g}s",
            detail={"checks": [check.detail() for check in checks]},
        )
        await connection.execute(
            update(rollout_plans)
            .where(rollout_plans.c.route == name)
            .values(
                step_index=step,
                next_at=datetime.now(UTC) + timedelta(seconds=plan.hold_s),
                updated_at=text("now()"),
            )
        )

    async def _finish(
        self,
        connection: AsyncConnection,
        name: str,
        status: str,
        action: str,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await connection.execute(
            update(rollout_plans)
            .where(rollout_plans.c.route == name)
            .values(status=status, updated_at=text("now()"))
        )
        await self._control.record_event(
            name, actor=ACTOR, action=action, reason=reason, detail=detail
        )
        _log.info("ramp of %s %s: %s", name, status, reason)

    async def _stop_plan(self, name: str, reason: str) -> None:
        async with self._engine.begin() as connection:
            stopped = await connection.execute(
                update(rollout_plans)
                .where(rollout_plans.c.route == name, rollout_plans.c.status == "active")
                .values(status="stopped", updated_at=text("now()"))
                .returning(rollout_plans.c.route)
            )
            if stopped.first() is None:
                return
        await self._control.record_event(name, actor=ACTOR, action="ramp_stopped", reason=reason)
