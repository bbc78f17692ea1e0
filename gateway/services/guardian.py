"""Background guards on rollouts: automatic rollback and staged ramps.

Every ``guard.interval_s`` each replica looks at the agreement logged in Postgres (all
replicas' traffic, not just its own), on what the route's policy serves: compared answers
whose confidence reaches the request's threshold (its slices' override, else the route's),
leaving out slices kept on the teacher. An answer the policy would not serve never counts
against the student.

- **Automatic rollback, per slice.** For a route that serves the student (in rollout, or with
  a slice override in rollout), each critical slice is judged over its own ``window_s``: once
  it has ``min_samples`` comparisons and its agreement is below ``min_agreement``, *that slice*
  goes back to the teacher (a ``teacher`` override, a ``slice_rollback`` event naming the
  slice, its figures and the bar); the route goes on serving the others. Requests of the
  slice are still shadowed, so its agreement stays measured; an SRE clears the override
  (``rollout clear``) once the student is fixed.
- **Automatic rollback, per route.** The route as a whole is judged against its own bar,
  ``rollout.gate_min_agreement`` over ``gate_window_s``, critical slices or not: below it the
  route goes back to shadow (an ``auto_rollback`` event). Both kinds count in
  ``shadow_gateway_auto_rollbacks_total`` (``dimension="all"`` for the route).
- **Staged ramps** (``rollout plan``). A plan's steps are percentages; after each step has
  been held ``hold_s``, the next is applied only if every served critical slice (or, with
  none, the route as a whole against ``rollout.gate_min_agreement``) meets its bar over the
  hold. A slice without enough data holds the ramp where it is; one below its bar stops the
  plan with a ``ramp_stopped`` event. A ramp raises the route's percent only: a slice kept
  on the teacher stays there (each step's event lists them), and is not part of the gate. A
  plan also stops if the route leaves rollout mode.

Replicas may run the same check at once: plans are claimed with ``FOR UPDATE SKIP LOCKED``,
and a rollback of a route already in shadow changes nothing and records nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.background import BackgroundLoop, RecurringFailure
from gateway.config import GatewayConfig, RouteConfig
from gateway.core.routing import SliceOverride, SliceVerdict, judge_slice
from gateway.db.tables import rollout_plans, route_state
from gateway.metrics import Metrics
from gateway.services.control import ControlPlane

_log = logging.getLogger("shadow_gateway.guardian")
ACTOR = "guardian"

# Agreement on what the route's policy serves: compared answers with at least the request's
# threshold (its slices' highest override threshold, else the route's), leaving out requests
# of a slice kept on the teacher. Answers the policy would not serve (low confidence, a slice
# on the teacher) never count against the student: they are the teacher's already.
_AGREEMENT = text(
    "SELECT count(*) AS samples, count(*) FILTER (WHERE r.agree) AS agreed FROM requests AS r "
    "WHERE r.route = :route AND r.agree IS NOT NULL "
    "AND r.created_at >= now() - make_interval(secs => :window_s) "
    "AND (CAST(:dimension AS text) IS NULL OR r.slices ->> CAST(:dimension AS text) = :value) "
    "AND r.student_confidence >= COALESCE((SELECT max(o.confidence_threshold) "
    "FROM route_slice_overrides AS o WHERE o.route = r.route "
    "AND r.slices ->> o.dimension = o.value), :threshold) "
    "AND NOT EXISTS (SELECT 1 FROM route_slice_overrides AS o WHERE o.route = r.route "
    "AND o.mode = 'teacher' AND r.slices ->> o.dimension = o.value)"
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
    connection: AsyncConnection,
    route: RouteConfig,
    window_s: float | None = None,
    *,
    skip: frozenset[tuple[str, str]] = frozenset(),
) -> list[SliceCheck]:
    """The route's critical slices (but those in ``skip``) against their bars; the route
    itself when it has none."""
    targets: list[tuple[str | None, str, float, int, float]] = [
        (c.dimension, c.value, c.min_agreement, c.min_samples, window_s or c.window_s)
        for c in route.slices.critical
        if (c.dimension, c.value) not in skip
    ]
    if not route.slices.critical:
        targets = [_route_target(route, window_s)]
    return await _judge(connection, route, targets)


def _route_target(
    route: RouteConfig, window_s: float | None
) -> tuple[str | None, str, float, int, float]:
    rollout = route.rollout
    window = window_s or rollout.gate_window_s
    return (None, "all", rollout.gate_min_agreement, rollout.gate_min_samples, window)


async def check_route(connection: AsyncConnection, route: RouteConfig) -> SliceCheck:
    """The route as a whole against its own bar (``rollout.gate_*``)."""
    [check] = await _judge(connection, route, [_route_target(route, None)])
    return check


async def _judge(
    connection: AsyncConnection,
    route: RouteConfig,
    targets: list[tuple[str | None, str, float, int, float]],
) -> list[SliceCheck]:
    threshold = (
        await connection.execute(
            select(route_state.c.confidence_threshold).where(route_state.c.route == route.name)
        )
    ).scalar()
    checks = []
    for dimension, value, bar, min_samples, window in targets:
        row = (
            await connection.execute(
                _AGREEMENT,
                {
                    "route": route.name,
                    "window_s": window,
                    "dimension": dimension,
                    "value": value,
                    "threshold": route.rollout.threshold if threshold is None else threshold,
                },
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


def _kept_on_teacher(overrides: Iterable[SliceOverride]) -> frozenset[tuple[str, str]]:
    return frozenset((o.dimension, o.value) for o in overrides if o.mode == "teacher")


def _kept_note(kept: frozenset[tuple[str, str]]) -> str:
    if not kept:
        return ""
    names = ", ".join(sorted(f"{d}={v}" for d, v in kept))
    return f"; still on the teacher, not re-enabled by the ramp: {names}"


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
            state = self._control.state(name)
            serving = state.mode == "rollout" or any(
                o.mode == "rollout" for o in state.slices.values()
            )
            if not serving:
                continue
            kept = _kept_on_teacher(state.slices.values())
            async with self._engine.connect() as connection:
                checks = (
                    await check_slices(connection, route, skip=kept)
                    if route.slices.critical
                    else []
                )
                whole = await check_route(connection, route)
            for check in checks:
                if check.verdict == "fail":
                    await self._roll_back_slice(name, check)
            if whole.verdict == "fail" and state.mode == "rollout":
                await self._roll_back_route(name, whole)

    async def _roll_back_slice(self, name: str, check: SliceCheck) -> None:
        _, changed, _ = await self._control.change_slice(
            name,
            check.dimension,
            check.value,
            {"mode": "teacher"},
            actor=ACTOR,
            action="slice_rollback",
            reason=f"critical slice below its bar: {check.describe()}",
            detail={"check": check.detail()},
        )
        if changed:
            self._metrics.auto_rollbacks.labels(name, check.dimension, check.value).inc()
            _log.warning("route %s: slice back on the teacher: %s", name, check.describe())

    async def _roll_back_route(self, name: str, check: SliceCheck) -> None:
        _, changed = await self._control.change(
            name,
            {"mode": "shadow"},
            actor=ACTOR,
            action="auto_rollback",
            reason=f"the route is below its own bar: {check.describe()}",
            detail={"failed": [check.detail()]},
        )
        if changed:
            self._metrics.auto_rollbacks.labels(name, "all", "all").inc()
            _log.warning("route %s rolled back to shadow: %s", name, check.describe())
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
        kept = _kept_on_teacher(self._control.state(name).slices.values())
        checks = await check_slices(connection, route, window_s=plan.hold_s, skip=kept)
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
            f"{plan.hold_s:g}s" + _kept_note(kept),
            detail={
                "checks": [check.detail() for check in checks],
                "kept_on_teacher": sorted(f"{d}={v}" for d, v in kept),
            },
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
