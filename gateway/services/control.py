"""The control plane: each route's live knobs in Postgres, audited, shared by every replica.

``route_state`` holds mode, rollout percent, confidence threshold and method, audit sample
and salt; the config file only seeds it (on a route's first start). Every change runs in one
transaction: lock the row, check the new values, bump ``version``, append to
``route_events`` (who, when, old → new, why) and ``NOTIFY``, so other replicas reload within
milliseconds (and by polling otherwise). Each replica serves from an in-memory copy: the
request path never waits on the database, and if Postgres is down at start-up the config's
values are served until it returns.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.config import GatewayConfig, RouteConfig
from gateway.core.confidence import METHODS
from gateway.core.routing import MODES, RouteState
from gateway.db.notify import ROUTES_CHANNEL
from gateway.db.tables import rollout_plans, route_events, route_state, route_students
from gateway.errors import InvalidRequest, RouteNotFound
from gateway.metrics import Metrics

_log = logging.getLogger("shadow_gateway.control")
KNOBS = ("mode", "rollout_percent", "confidence_threshold", "confidence_method", "audit_sample")


def seed_state(route: RouteConfig) -> RouteState:
    rollout = route.rollout
    return RouteState(
        mode=route.mode,
        rollout_percent=rollout.percent,
        confidence_threshold=rollout.threshold,
        confidence_method=rollout.confidence,
        audit_sample=rollout.audit_sample,
        salt=rollout.salt or route.name,
    )


def _state_columns(state: RouteState) -> dict[str, Any]:
    return {k: v for k, v in asdict(state).items() if k != "version"}


def _from_row(row: Any) -> RouteState:
    return RouteState(
        mode=row.mode,
        rollout_percent=row.rollout_percent,
        confidence_threshold=row.confidence_threshold,
        confidence_method=row.confidence_method,
        audit_sample=row.audit_sample,
        salt=row.salt,
        version=row.version,
    )


def validate_change(route: RouteConfig, changes: dict[str, Any]) -> None:
    """Raise InvalidRequest (naming the field) for a change that cannot be applied."""
    unknown = set(changes) - set(KNOBS)
    if unknown:
        raise InvalidRequest(
            f"unknown setting(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0]
        )
    mode = changes.get("mode")
    if mode is not None and mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}", param="mode")
    for field, low, high in (
        ("rollout_percent", 0.0, 100.0),
        ("confidence_threshold", 0.0, 1.0),
        ("audit_sample", 0.0, 1.0),
    ):
        value = changes.get(field)
        if value is not None and not (
            isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
        ):
            raise InvalidRequest(f"{field} must be a number from {low:g} to {high:g}", param=field)
    method = changes.get("confidence_method")
    if method is not None and method not in METHODS:
        raise InvalidRequest(
            f"confidence_method must be one of {', '.join(METHODS)}", param="confidence_method"
        )


_STUDENTS = select(
    func.count().filter(route_students.c.status == "champion").label("champions"),
    func.count().label("students"),
)


async def require_student(connection: AsyncConnection, route: RouteConfig, mode: str) -> None:
    """Refuse a mode that calls a student when the route has none to call.

    The student registry is the truth (a student added with ``students add`` counts, though
    the config file names none); a route whose students the database does not hold yet (no
    gateway has started with it) has the config's.
    """
    if mode not in ("shadow", "rollout"):
        return
    found = (await connection.execute(_STUDENTS.where(route_students.c.route == route.name))).one()
    if found.champions or (not found.students and route.students):
        return
    raise InvalidRequest(
        f"route {route.name!r} has no student: add one first (shadow-gateway students add)",
        param="mode",
    )


class ControlPlane:
    def __init__(self, engine: AsyncEngine, config: GatewayConfig, metrics: Metrics) -> None:
        self._engine = engine
        self._config = config
        self._metrics = metrics
        self._states = {route.name: seed_state(route) for route in config.routes}
        self._export_all()

    # -- the request path reads these --------------------------------------------------------

    def state(self, route: str) -> RouteState:
        return self._states[route]

    def route(self, name: str) -> RouteConfig:
        return self._config.find_route(name)

    # -- keeping the copy current ------------------------------------------------------------

    async def seed(self) -> None:
        """Insert config values for routes the database has not seen; then load everything."""
        async with self._engine.begin() as connection:
            for name, state in self._states.items():
                inserted = await connection.execute(
                    pg_insert(route_state)
                    .values(route=name, updated_by="config", **_state_columns(state))
                    .on_conflict_do_nothing(index_elements=["route"])
                    .returning(route_state.c.route)
                )
                if inserted.first() is not None:
                    await connection.execute(
                        insert(route_events).values(
                            route=name,
                            actor="config",
                            action="seed",
                            old=None,
                            new=_state_columns(state) | {"version": 1},
                            reason="first start with this route in the config file",
                        )
                    )
        await self.refresh()

    async def refresh(self) -> None:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(route_state))).all()
        for row in rows:
            if row.route in self._states:
                self._states[row.route] = _from_row(row)
        self._export_all()

    def _export_all(self) -> None:
        for name, state in self._states.items():
            self._metrics.rollout_percent.labels(name).set(state.rollout_percent)
            for mode in MODES:
                self._metrics.route_mode.labels(name, mode).set(1 if mode == state.mode else 0)

    # -- changes -----------------------------------------------------------------------------

    async def change(
        self,
        name: str,
        changes: dict[str, Any],
        *,
        actor: str,
        reason: str,
        action: str = "set",
        detail: dict[str, Any] | None = None,
    ) -> tuple[RouteState, bool]:
        """Apply ``changes``; returns the new state and whether anything changed."""
        route = self.route(name)
        if not reason or not reason.strip():
            raise InvalidRequest("a reason is required for every change", param="reason")
        changes = {k: v for k, v in changes.items() if v is not None}
        validate_change(route, changes)
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    select(route_state).where(route_state.c.route == name).with_for_update()
                )
            ).first()
            if row is None:
                raise RouteNotFound(
                    f"route {name!r} has no state yet: start a gateway once "
                    "with it in the config file",
                    param="route",
                )
            old = _from_row(row)
            new = old.changed(**changes)
            if new == old:
                return old, False
            if "mode" in changes:
                await require_student(connection, route, new.mode)
            await connection.execute(
                update(route_state)
                .where(route_state.c.route == name)
                .values(
                    **changes, version=old.version + 1, updated_by=actor, updated_at=text("now()")
                )
            )
            new = new.changed(version=old.version + 1)
            await connection.execute(
                insert(route_events).values(
                    route=name,
                    actor=actor,
                    action=action,
                    reason=reason.strip(),
                    detail=detail,
                    old={k: getattr(old, k) for k in changes} | {"version": old.version},
                    new={k: getattr(new, k) for k in changes} | {"version": new.version},
                )
            )
            await connection.execute(text(f"NOTIFY {ROUTES_CHANNEL}"))
        self._states[name] = new
        self._export_all()
        _log.info("route %s changed by %s (%s): %s", name, actor, action, changes)
        return new, True

    async def events(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        self.route(name)
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(route_events)
                    .where(route_events.c.route == name)
                    .order_by(route_events.c.id.desc())
                    .limit(limit)
                )
            ).all()
        return [
            {**row._asdict(), "at": row.at.isoformat() if isinstance(row.at, datetime) else row.at}
            for row in rows
        ]

    async def record_event(
        self,
        name: str,
        *,
        actor: str,
        action: str,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """An audit entry that changes no knob (a ramp stopped or finished, say)."""
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(route_events).values(
                    route=name, actor=actor, action=action, reason=reason, detail=detail
                )
            )

    async def start_plan(
        self, name: str, steps: list[float], hold_s: float, *, actor: str, reason: str
    ) -> RouteState:
        """Start a staged ramp: apply the first step now; the guardian takes the rest."""
        route = self.route(name)
        if not steps or any(not 0 < step <= 100 for step in steps):
            raise InvalidRequest("steps must be percentages above 0 and at most 100", param="steps")
        if any(later <= earlier for earlier, later in itertools.pairwise(steps)):
            raise InvalidRequest("steps must be strictly ascending", param="steps")
        if hold_s <= 0:
            raise InvalidRequest("the hold must be positive", param="hold_s")
        validate_change(route, {"mode": "rollout"})
        if not reason or not reason.strip():
            raise InvalidRequest("a reason is required for every change", param="reason")
        plan = {
            "steps": steps,
            "hold_s": hold_s,
            "step_index": 0,
            "status": "active",
            "created_by": actor,
            "reason": reason.strip(),
            "next_at": datetime.now(UTC) + timedelta(seconds=hold_s),
        }
        async with self._engine.begin() as connection:
            await require_student(connection, route, "rollout")
            await connection.execute(
                pg_insert(rollout_plans)
                .values(route=name, **plan)
                .on_conflict_do_update(index_elements=["route"], set_=plan)
            )
        await self.record_event(
            name,
            actor=actor,
            action="ramp_planned",
            reason=reason.strip(),
            detail={"steps": steps, "hold_s": hold_s},
        )
        state, _ = await self.change(
            name,
            {"mode": "rollout", "rollout_percent": steps[0]},
            actor=actor,
            action="ramp_step",
            reason=f"ramp step 1 of {len(steps)}: {reason.strip()}",
        )
        return state

    async def plans(self) -> dict[str, dict[str, Any]]:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(rollout_plans))).all()
        return {
            row.route: {
                "steps": list(row.steps),
                "hold_s": row.hold_s,
                "step": row.step_index + 1,
                "status": row.status,
                "next_at": row.next_at.isoformat(),
            }
            for row in rows
        }
