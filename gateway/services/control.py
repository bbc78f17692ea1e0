"""The control plane: each route's live knobs in Postgres, audited, shared by every replica.

``route_state`` holds mode, rollout percent, confidence threshold and method, audit sample
and salt; the config file only seeds it (on a route's first start). Every change runs in one
transaction: lock the row, check the new values, bump ``version``, append to
``route_events`` (who, when, old → new, why) and ``NOTIFY``, so other replicas reload within
milliseconds (and by polling otherwise). Each replica serves from an in-memory copy: the
request path never waits on the database, and if Postgres is down at start-up the config's
values are served until it returns.

``route_slice_overrides`` holds per-slice knobs (:class:`~gateway.core.routing.SliceOverride`:
a slice kept on the teacher, served while the route shadows, or its own percent and
threshold), changed the same way under the route's row lock and audited as ``slice_set`` /
``slice_cleared``; the config seeds each one the first time it sees it (an override an SRE
cleared is not brought back by the next start). They travel with the route's state.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.config import SLICE_NAME, GatewayConfig, RouteConfig
from gateway.core.confidence import METHODS
from gateway.core.routing import MODES, SLICE_MODES, RouteState, SliceOverride
from gateway.db.notify import ROUTES_CHANNEL
from gateway.db.tables import (
    rollout_plans,
    route_events,
    route_slice_overrides,
    route_state,
    route_students,
)
from gateway.errors import InvalidRequest, PlanNotFound, RouteNotFound, SliceNotFound
from gateway.metrics import Metrics
from gateway.services.reports import Reports
from gateway.services.reports.common import HAS_DIMENSION, configured_dimensions

_log = logging.getLogger("shadow_gateway.control")
KNOBS = ("mode", "rollout_percent", "confidence_threshold", "confidence_method", "audit_sample")


SLICE_KNOBS = ("mode", "rollout_percent", "confidence_threshold")
_SLICE_NAME = re.compile(SLICE_NAME)


def configured_slices(route: RouteConfig) -> dict[tuple[str, str], SliceOverride]:
    return {
        (entry.dimension, entry.value): SliceOverride(
            entry.dimension, entry.value, entry.mode, entry.percent, entry.threshold
        )
        for entry in route.rollout.slices
    }


def seed_state(route: RouteConfig) -> RouteState:
    rollout = route.rollout
    return RouteState(
        mode=route.mode,
        rollout_percent=rollout.percent,
        confidence_threshold=rollout.threshold,
        confidence_method=rollout.confidence,
        audit_sample=rollout.audit_sample,
        salt=rollout.salt or route.name,
        slices=configured_slices(route),
    )


def _state_columns(state: RouteState) -> dict[str, Any]:
    return {k: getattr(state, k) for k in (*KNOBS, "salt")}


def state_view(state: RouteState) -> dict[str, Any]:
    """A route's live knobs as the API and the CLI show them, its overrides as a list."""
    return {
        **_state_columns(state),
        "version": state.version,
        "slices": [slice_view(o) for o in sorted(state.slices.values(), key=lambda o: o.name)],
    }


def slice_view(override: SliceOverride) -> dict[str, Any]:
    """An override as the API, the CLI and the audit log show it."""
    return {"slice": override.name, **asdict(override)}


def _override(row: Any) -> SliceOverride:
    return SliceOverride(
        row.dimension, row.value, row.mode, row.rollout_percent, row.confidence_threshold
    )


def validate_slice(dimension: str, value: str, changes: dict[str, Any]) -> None:
    """Raise InvalidRequest (naming the field) for a slice override that cannot be set."""
    if not _SLICE_NAME.match(dimension):
        raise InvalidRequest(
            f"'{dimension[:100]}' is not a slice dimension name (lower-case letters, digits, "
            "_ . -)",
            param="slice",
            code="invalid_value",
        )
    if not value.strip():
        raise InvalidRequest("the slice value is empty", param="slice", code="invalid_value")
    unknown = set(changes) - set(SLICE_KNOBS)
    if unknown:
        raise InvalidRequest(
            f"unknown slice setting(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0]
        )
    if not changes:
        raise InvalidRequest(
            "nothing to set: give a mode, a percent or a threshold for the slice",
            param="mode",
            code="invalid_value",
        )
    mode = changes.get("mode")
    if mode is not None and mode not in SLICE_MODES:
        raise InvalidRequest(
            f"a slice's mode must be one of {', '.join(SLICE_MODES)}",
            param="mode",
            code="invalid_value",
        )
    validate_change_numbers(changes)


def _from_row(row: Any, slices: dict[tuple[str, str], SliceOverride]) -> RouteState:
    return RouteState(
        mode=row.mode,
        rollout_percent=row.rollout_percent,
        confidence_threshold=row.confidence_threshold,
        confidence_method=row.confidence_method,
        audit_sample=row.audit_sample,
        salt=row.salt,
        version=row.version,
        slices=slices,
    )


def _slice_columns(override: SliceOverride) -> dict[str, Any]:
    return {knob: getattr(override, knob) for knob in SLICE_KNOBS}


# Whether a slice override of a route was ever held: seeded, set, cleared or rolled back.
_SLICE_SEEN = text(
    "SELECT EXISTS (SELECT 1 FROM route_slice_overrides WHERE route = :route "
    "AND dimension || '=' || value = :slice) OR EXISTS (SELECT 1 FROM route_events "
    "WHERE route = :route AND action LIKE 'slice%' AND detail ->> 'slice' = :slice)"
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
    validate_change_numbers(changes)
    method = changes.get("confidence_method")
    if method is not None and method not in METHODS:
        raise InvalidRequest(
            f"confidence_method must be one of {', '.join(METHODS)}", param="confidence_method"
        )


def validate_change_numbers(changes: dict[str, Any]) -> None:
    """Percent, threshold and audit share within their ranges."""
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


def _require_reason(reason: str) -> None:
    if not reason or not reason.strip():
        raise InvalidRequest("a reason is required for every change", param="reason")


async def _load_slices(
    connection: AsyncConnection, name: str
) -> dict[tuple[str, str], SliceOverride]:
    rows = await connection.execute(
        select(route_slice_overrides).where(route_slice_overrides.c.route == name)
    )
    return {(row.dimension, row.value): _override(row) for row in rows}


async def _upsert_slice(
    connection: AsyncConnection, name: str, new: SliceOverride, actor: str, reason: str
) -> None:
    await connection.execute(
        pg_insert(route_slice_overrides)
        .values(
            route=name,
            dimension=new.dimension,
            value=new.value,
            **_slice_columns(new),
            updated_by=actor,
            reason=reason.strip(),
        )
        .on_conflict_do_update(
            index_elements=["route", "dimension", "value"],
            set_={
                **_slice_columns(new),
                "version": route_slice_overrides.c.version + 1,
                "updated_by": actor,
                "updated_at": text("now()"),
                "reason": reason.strip(),
            },
        )
    )


# The latest ramp event of each route (or of one): what the guardian last said of its ramp.
_LAST_RAMP_EVENTS = text(
    "SELECT DISTINCT ON (route) route, at, actor, action, reason FROM route_events "
    "WHERE action LIKE 'ramp%' AND (CAST(:route AS text) IS NULL OR route = :route) "
    "ORDER BY route, id DESC"
)


def _plan_view(row: Any, last: Any) -> dict[str, Any]:
    return {
        "steps": list(row.steps),
        "hold_s": row.hold_s,
        "step": row.step_index + 1,
        "percent": row.steps[row.step_index],
        "status": row.status,
        "next_at": row.next_at.isoformat(),
        "created_by": row.created_by,
        "reason": row.reason,
        "last_event": None
        if last is None
        else {
            "at": last.at.isoformat(),
            "actor": last.actor,
            "action": last.action,
            "reason": last.reason,
        },
    }


async def _dimension_warnings(
    connection: AsyncConnection, route: RouteConfig, dimension: str
) -> list[str]:
    """A warning when no request has carried the dimension and the config does not name it."""
    if dimension in configured_dimensions(route):
        return []
    found = await connection.execute(HAS_DIMENSION, {"route": route.name, "dimension": dimension})
    if found.scalar():
        return []
    return [
        f"no request of route {route.name!r} has carried a {dimension!r} label and the config "
        "does not name it: the override applies only once requests carry it"
    ]


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

    def reports(self) -> Reports:
        """The reports on this control plane's database (calibration reads them)."""
        return Reports(self._engine, self._config)

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
                await self._seed_slices(connection, self.route(name))
        await self.refresh()

    async def _seed_slices(self, connection: AsyncConnection, route: RouteConfig) -> None:
        """The config's overrides the table has never held (one cleared stays cleared)."""
        for key, override in configured_slices(route).items():
            seen = await connection.execute(
                _SLICE_SEEN, {"route": route.name, "slice": override.name}
            )
            if seen.scalar():
                continue
            await connection.execute(
                insert(route_slice_overrides).values(
                    route=route.name,
                    dimension=key[0],
                    value=key[1],
                    **_slice_columns(override),
                    updated_by="config",
                    reason="in the config file",
                )
            )
            await self._slice_event(
                connection, route.name, "config", "slice_seed", "in the config file", None, override
            )

    async def refresh(self) -> None:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(route_state))).all()
            overrides = (await connection.execute(select(route_slice_overrides))).all()
        slices: dict[str, dict[tuple[str, str], SliceOverride]] = {}
        for row in overrides:
            slices.setdefault(row.route, {})[(row.dimension, row.value)] = _override(row)
        for row in rows:
            if row.route in self._states:
                self._states[row.route] = _from_row(row, slices.get(row.route, {}))
        self._export_all()

    def _export_all(self) -> None:
        """The live state as gauges; called whenever it changes (here or, via refresh, on
        another replica), so the slice overrides gauge follows sets and clears."""
        for name, state in self._states.items():
            self._metrics.rollout_percent.labels(name).set(state.rollout_percent)
            for mode in MODES:
                self._metrics.route_mode.labels(name, mode).set(1 if mode == state.mode else 0)
            self._metrics.describe_slice_overrides(name, state.slices.values())

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
        _require_reason(reason)
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
            old = _from_row(row, await _load_slices(connection, name))
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

    async def change_slice(
        self,
        name: str,
        dimension: str,
        value: str,
        changes: dict[str, Any],
        *,
        actor: str,
        reason: str,
        action: str = "slice_set",
        detail: dict[str, Any] | None = None,
    ) -> tuple[SliceOverride, bool, list[str]]:
        """Set knobs of one slice's override (creating it); the others it had are kept.

        Returns the override, whether anything changed, and warnings (a dimension no request
        has carried and the config does not name: the override would never apply).
        """
        route = self.route(name)
        _require_reason(reason)
        changes = {k: v for k, v in changes.items() if v is not None}
        validate_slice(dimension, value, changes)
        async with self._engine.begin() as connection:
            await self._lock(connection, name)
            if changes.get("mode") == "rollout":
                await require_student(connection, route, "rollout")
            slices = await _load_slices(connection, name)
            old = slices.get((dimension, value))
            new = replace(old or SliceOverride(dimension, value), **changes)
            if new == old:
                return new, False, []
            await _upsert_slice(connection, name, new, actor, reason)
            await self._slice_event(connection, name, actor, action, reason, old, new, detail)
            warnings = await _dimension_warnings(connection, route, dimension)
            slices[(dimension, value)] = new
        self._states[name] = self._states[name].changed(slices=slices)
        self._export_all()
        _log.info("route %s: slice %s set by %s (%s): %s", name, new.name, actor, action, changes)
        return new, True, warnings

    async def apply_slices(
        self,
        name: str,
        changes: dict[tuple[str, str], dict[str, Any]],
        *,
        actor: str,
        reason: str,
        action: str = "slice_calibration",
        detail: dict[str, Any] | None = None,
    ) -> list[SliceOverride]:
        """Several slices' knobs in one transaction and one audit entry (a calibration)."""
        route = self.route(name)
        _require_reason(reason)
        for (dimension, value), knobs in changes.items():
            validate_slice(dimension, value, knobs)
        async with self._engine.begin() as connection:
            await self._lock(connection, name)
            if any(knobs.get("mode") == "rollout" for knobs in changes.values()):
                await require_student(connection, route, "rollout")
            slices = await _load_slices(connection, name)
            before, after, applied = [], [], []
            for (dimension, value), knobs in changes.items():
                old = slices.get((dimension, value))
                new = replace(old or SliceOverride(dimension, value), **knobs)
                if new == old:
                    continue
                await _upsert_slice(connection, name, new, actor, reason)
                slices[(dimension, value)] = new
                applied.append(new)
                before.append(None if old is None else slice_view(old))
                after.append(slice_view(new))
            if after:
                await connection.execute(
                    insert(route_events).values(
                        route=name,
                        actor=actor,
                        action=action,
                        reason=reason.strip(),
                        old={"slices": before},
                        new={"slices": after},
                        detail={"slices": [view["slice"] for view in after], **(detail or {})},
                    )
                )
                await connection.execute(text(f"NOTIFY {ROUTES_CHANNEL}"))
        self._states[name] = self._states[name].changed(slices=slices)
        self._export_all()
        _log.info("route %s: %d slice(s) set by %s (%s)", name, len(applied), actor, action)
        return applied

    async def clear_slice(
        self, name: str, dimension: str, value: str, *, actor: str, reason: str
    ) -> SliceOverride:
        """Remove a slice's override: the slice follows the route's knobs again."""
        self.route(name)
        _require_reason(reason)
        async with self._engine.begin() as connection:
            await self._lock(connection, name)
            slices = await _load_slices(connection, name)
            old = slices.pop((dimension, value), None)
            if old is None:
                held = ", ".join(sorted(o.name for o in slices.values())) or "none"
                raise SliceNotFound(
                    f"route {name!r} has no override for slice {dimension}={value} "
                    f"(overrides: {held})",
                    param="slice",
                )
            await connection.execute(
                route_slice_overrides.delete().where(
                    route_slice_overrides.c.route == name,
                    route_slice_overrides.c.dimension == dimension,
                    route_slice_overrides.c.value == value,
                )
            )
            await self._slice_event(connection, name, actor, "slice_cleared", reason, old, None)
        self._states[name] = self._states[name].changed(slices=slices)
        self._export_all()
        _log.info("route %s: slice %s cleared by %s", name, old.name, actor)
        return old

    @staticmethod
    async def _lock(connection: AsyncConnection, name: str) -> None:
        """The route's row, locked: its knobs and its overrides change one at a time."""
        found = await connection.execute(
            select(route_state.c.route).where(route_state.c.route == name).with_for_update()
        )
        if found.first() is None:
            raise RouteNotFound(
                f"route {name!r} has no state yet: start a gateway once with it in the config file",
                param="route",
            )

    @staticmethod
    async def _slice_event(
        connection: AsyncConnection,
        name: str,
        actor: str,
        action: str,
        reason: str,
        old: SliceOverride | None,
        new: SliceOverride | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        which = new or old
        assert which is not None
        await connection.execute(
            insert(route_events).values(
                route=name,
                actor=actor,
                action=action,
                reason=reason.strip(),
                old=None if old is None else slice_view(old),
                new=None if new is None else slice_view(new),
                detail={"slice": which.name, **(detail or {})},
            )
        )
        await connection.execute(text(f"NOTIFY {ROUTES_CHANNEL}"))

    async def slice_overrides(self, name: str) -> list[dict[str, Any]]:
        """The route's overrides as stored: knobs, and who set them, when and why."""
        self.route(name)
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(route_slice_overrides)
                .where(route_slice_overrides.c.route == name)
                .order_by(route_slice_overrides.c.dimension, route_slice_overrides.c.value)
            )
            return [
                {
                    **slice_view(_override(row)),
                    "version": row.version,
                    "updated_at": row.updated_at.isoformat(),
                    "updated_by": row.updated_by,
                    "reason": row.reason,
                }
                for row in rows
            ]

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

    async def plans(self, name: str | None = None) -> dict[str, dict[str, Any]]:
        """Each route's ramp (or one route's): its steps, where it is, when it is next
        judged, and the last thing the guardian said of it (``last_event``)."""
        query = select(rollout_plans)
        if name is not None:
            query = query.where(rollout_plans.c.route == name)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
            last = {
                row.route: row
                for row in await connection.execute(_LAST_RAMP_EVENTS, {"route": name})
            }
        return {row.route: _plan_view(row, last.get(row.route)) for row in rows}

    async def cancel_plan(self, name: str, *, actor: str, reason: str) -> dict[str, Any]:
        """Stop a route's active ramp where it is (its percent stays); audited."""
        self.route(name)
        _require_reason(reason)
        async with self._engine.begin() as connection:
            cancelled = (
                await connection.execute(
                    update(rollout_plans)
                    .where(rollout_plans.c.route == name, rollout_plans.c.status == "active")
                    .values(status="cancelled", updated_at=text("now()"))
                    .returning(rollout_plans)
                )
            ).first()
            if cancelled is None:
                raise PlanNotFound(f"route {name!r} has no active ramp to cancel", param="route")
            await connection.execute(
                insert(route_events).values(
                    route=name,
                    actor=actor,
                    action="ramp_cancelled",
                    reason=reason.strip(),
                    detail={"steps": list(cancelled.steps), "step": cancelled.step_index + 1},
                )
            )
        _log.info("route %s: ramp cancelled by %s", name, actor)
        return _plan_view(cancelled, None)
