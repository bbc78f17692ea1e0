"""Each route's students as live state in Postgres, shared by every replica.

``route_students`` holds every student a route has had: its replicas and knobs, and its
status: ``champion`` (the one a rollout serves and ``requests`` describes; at most one per
route), ``candidate`` (shadowed beside it, compared on the same requests) or ``retired`` (kept
for the record, never called). The config file seeds them: a student it names that the table
does not hold yet is inserted (as champion if the route has none, else as a candidate), so a
student added to the file arrives with the next start; after that the CLI and the admin API
change them. Each change is one transaction, like the control plane's: rows locked, checked,
``version`` bumped, an audit row in ``route_events`` (who, when, old → new, why), ``NOTIFY``;
every replica reloads within about a second and rebuilds its student pool. The request path
never waits on the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.config import GatewayConfig, RouteConfig, StudentConfig
from gateway.db.notify import STUDENTS_CHANNEL
from gateway.db.tables import route_events, route_students
from gateway.errors import InvalidRequest, StudentNotFound

_log = logging.getLogger("shadow_gateway.students")

Status = Literal["champion", "candidate", "retired"]
# The knobs a student's row keeps besides its name and status (StudentConfig's fields).
KNOBS = (
    "base_urls",
    "model",
    "api_key_env",
    "timeout_s",
    "connect_timeout_s",
    "shadow_sample",
    "max_concurrency",
    "top_logprobs",
    "breaker_failures",
    "breaker_cooldown_s",
)
CHANGEABLE = frozenset(KNOBS) - {"model"}  # a new model is a new student: add it


@dataclass(frozen=True)
class StudentState:
    name: str
    status: Status
    config: StudentConfig  # shadow_sample resolved (never None)
    version: int = 1

    @property
    def live(self) -> bool:
        return self.status != "retired"

    def view(self) -> dict[str, Any]:
        """As the CLI and admin API show it (never a secret: ``api_key_env`` is a name)."""
        knobs = self.config.model_dump(mode="json", include=set(KNOBS))
        return {"name": self.name, "status": self.status, "version": self.version, **knobs}


def _columns(config: StudentConfig) -> dict[str, Any]:
    return {
        key: [str(url) for url in config.base_urls] if key == "base_urls" else getattr(config, key)
        for key in KNOBS
    }


def _from_row(row: Any) -> StudentState:
    config = StudentConfig.model_validate(
        {"name": row.name, **{key: getattr(row, key) for key in KNOBS}}
    )
    return StudentState(row.name, row.status, config, row.version)


def _require(reason: str) -> None:
    if not reason or not reason.strip():
        raise InvalidRequest(
            "a reason is required for every change", param="reason", code="invalid_value"
        )


def configured(route: RouteConfig) -> list[StudentState]:
    """The config's students of a route, as the table would first hold them."""
    return [
        StudentState(
            student.name,
            "champion" if student.name == route.champion else "candidate",
            student.model_copy(update={"shadow_sample": route.sample_share(student)}),
        )
        for student in route.students
    ]


def _spec(route: RouteConfig, fields: Mapping[str, Any]) -> StudentConfig:
    """A student's knobs from a request, checked as the config file's are."""
    try:
        config = StudentConfig.model_validate(dict(fields))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(
            f"Invalid value for '{param}': {first['msg']}", param=param, code="invalid_value"
        ) from None
    return config.model_copy(update={"shadow_sample": route.sample_share(config)})


class StudentRegistry:
    def __init__(
        self,
        engine: AsyncEngine,
        config: GatewayConfig,
        on_change: Callable[[str, list[StudentState]], None] | None = None,
    ) -> None:
        self._engine = engine
        self._config = config
        self._on_change = on_change
        self._students: dict[str, dict[str, StudentState]] = {
            route.name: {state.name: state for state in configured(route)}
            for route in config.routes
        }

    # -- the request path reads these --------------------------------------------------------

    def live(self, route: str) -> list[StudentState]:
        """The students called for a route: the champion first, then the candidates by name."""
        students = self._students.get(route, {}).values()
        return sorted(
            (s for s in students if s.live), key=lambda s: (s.status != "champion", s.name)
        )

    def champion(self, route: str) -> StudentState | None:
        return next((s for s in self.live(route) if s.status == "champion"), None)

    def all(self, route: str) -> list[StudentState]:
        self._config.find_route(route)
        return sorted(self._students.get(route, {}).values(), key=lambda s: s.name)

    # -- keeping the copy current ------------------------------------------------------------

    async def seed(self) -> None:
        """Insert the config's students the table does not hold yet; then load everything."""
        async with self._engine.begin() as connection:
            for route in self._config.routes:
                await self._lock(connection, route.name)
                rows = await self._rows(connection, route.name)
                held = {row.name for row in rows}
                has_champion = any(row.status == "champion" for row in rows)
                for state in configured(route):
                    if state.name in held:
                        continue
                    status = "candidate" if has_champion else state.status
                    await connection.execute(
                        insert(route_students).values(
                            route=route.name,
                            name=state.name,
                            status=status,
                            updated_by="config",
                            **_columns(state.config),
                        )
                    )
                    await self._audit(
                        connection,
                        route.name,
                        "config",
                        "student_seed",
                        "a student of the config file the database did not hold yet",
                        None,
                        replace(state, status=status),
                    )
        await self.refresh()

    async def refresh(self) -> None:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(route_students))).all()
        loaded: dict[str, dict[str, StudentState]] = {}
        for row in rows:
            if self._config.route(row.route) is None:
                continue  # a route no longer in this replica's config
            try:
                loaded.setdefault(row.route, {})[row.name] = _from_row(row)
            except ValidationError as exc:
                _log.error("student %s of route %s cannot be used: %s", row.name, row.route, exc)
        for route in self._config.routes:
            students = loaded.get(route.name)
            if students is None or students == self._students.get(route.name):
                continue
            self._students[route.name] = students
            if self._on_change is not None:
                self._on_change(route.name, self.live(route.name))

    # -- changes -----------------------------------------------------------------------------

    async def add(
        self, route_name: str, fields: Mapping[str, Any], *, actor: str, reason: str
    ) -> StudentState:
        """A new candidate; the champion if the route has none. A name is never reused, a
        retired student's included, so every row of ``student_answers`` names one student."""
        route = self._config.find_route(route_name)
        _require(reason)
        spec = _spec(route, fields)
        async with self._engine.begin() as connection:
            await self._lock(connection, route.name)
            taken = await self._row(connection, route.name, spec.name)
            if taken is not None:
                raise InvalidRequest(
                    f"route {route.name!r} already has a student {spec.name!r} "
                    f"({taken.status}); choose another name",
                    param="name",
                    code="invalid_value",
                )
            rows = await self._rows(connection, route.name)
            status: Status = (
                "candidate" if any(row.status == "champion" for row in rows) else "champion"
            )
            await connection.execute(
                insert(route_students).values(
                    route=route.name,
                    name=spec.name,
                    status=status,
                    updated_by=actor,
                    **_columns(spec),
                )
            )
            state = StudentState(spec.name, status, spec)
            await self._audit(connection, route.name, actor, "student_added", reason, None, state)
        await self.refresh()
        return state

    async def change(
        self,
        route_name: str,
        name: str,
        changes: Mapping[str, Any],
        *,
        actor: str,
        reason: str,
    ) -> tuple[StudentState, bool]:
        route = self._config.find_route(route_name)
        _require(reason)
        unknown = set(changes) - CHANGEABLE
        if unknown:
            first = sorted(unknown)[0]
            raise InvalidRequest(
                f"{first} cannot be changed"
                + (": a new model is a new student, add it" if first == "model" else ""),
                param=first,
                code="invalid_value",
            )
        async with self._engine.begin() as connection:
            await self._lock(connection, route.name)
            old = await self._existing(connection, route.name, name)
            if not old.live:
                raise InvalidRequest(
                    f"student {name!r} is retired", param="name", code="invalid_value"
                )
            new_config = _spec(route, {**old.config.model_dump(), **changes, "name": name})
            if new_config == old.config:
                return old, False
            new = StudentState(name, old.status, new_config, old.version + 1)
            await self._update(connection, route.name, new, actor, _columns(new_config))
            await self._audit(connection, route.name, actor, "student_changed", reason, old, new)
        await self.refresh()
        return new, True

    async def promote(
        self, route_name: str, name: str, *, actor: str, reason: str
    ) -> tuple[StudentState, bool]:
        """Make ``name`` the champion; the previous champion stays on as a candidate."""
        route = self._config.find_route(route_name)
        _require(reason)
        async with self._engine.begin() as connection:
            await self._lock(connection, route.name)
            new = await self._existing(connection, route.name, name)
            if new.status == "champion":
                return new, False
            if not new.live:
                raise InvalidRequest(
                    f"student {name!r} is retired; add it again under a new name", param="name"
                )
            for row in await self._rows(connection, route.name):
                if row.status == "champion":
                    old = _from_row(row)
                    demoted = replace(old, status="candidate", version=old.version + 1)
                    await self._update(connection, route.name, demoted, actor, {})
            promoted = replace(new, status="champion", version=new.version + 1)
            await self._update(connection, route.name, promoted, actor, {})
            await self._audit(
                connection, route.name, actor, "student_promoted", reason, new, promoted
            )
        await self.refresh()
        return promoted, True

    async def retire(
        self, route_name: str, name: str, *, actor: str, reason: str
    ) -> tuple[StudentState, bool]:
        """Stop calling a candidate (a champion must be replaced by a promotion first)."""
        route = self._config.find_route(route_name)
        _require(reason)
        async with self._engine.begin() as connection:
            await self._lock(connection, route.name)
            old = await self._existing(connection, route.name, name)
            if not old.live:
                return old, False
            if old.status == "champion":
                raise InvalidRequest(
                    f"student {name!r} is the champion: promote another student first",
                    param="name",
                    code="invalid_value",
                )
            new = replace(old, status="retired", version=old.version + 1)
            await self._update(connection, route.name, new, actor, {})
            await self._audit(connection, route.name, actor, "student_retired", reason, old, new)
        await self.refresh()
        return new, True

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    async def _lock(connection: AsyncConnection, route: str) -> None:
        """One change to a route's students at a time, across replicas."""
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('shadow_gateway_students:' || :route))"),
            {"route": route},
        )

    @staticmethod
    async def _rows(connection: AsyncConnection, route: str) -> list[Any]:
        return list(
            (
                await connection.execute(
                    select(route_students).where(route_students.c.route == route)
                )
            ).all()
        )

    async def _row(self, connection: AsyncConnection, route: str, name: str) -> StudentState | None:
        row = (
            await connection.execute(
                select(route_students).where(
                    route_students.c.route == route, route_students.c.name == name
                )
            )
        ).first()
        return None if row is None else _from_row(row)

    async def _existing(self, connection: AsyncConnection, route: str, name: str) -> StudentState:
        found = await self._row(connection, route, name)
        if found is None:
            known = ", ".join(s.name for s in self.all(route)) or "none"
            raise StudentNotFound(
                f"route {route!r} has no student {name!r} (students: {known})", param="student"
            )
        return found

    @staticmethod
    async def _update(
        connection: AsyncConnection,
        route: str,
        new: StudentState,
        actor: str,
        columns: Mapping[str, Any],
    ) -> None:
        await connection.execute(
            update(route_students)
            .where(route_students.c.route == route, route_students.c.name == new.name)
            .values(
                status=new.status,
                version=new.version,
                updated_by=actor,
                updated_at=text("now()"),
                **columns,
            )
        )

    @staticmethod
    async def _audit(
        connection: AsyncConnection,
        route: str,
        actor: str,
        action: str,
        reason: str,
        old: StudentState | None,
        new: StudentState,
    ) -> None:
        await connection.execute(
            insert(route_events).values(
                route=route,
                actor=actor,
                action=action,
                reason=reason.strip(),
                old=None if old is None else {"student": old.name, **old.view()},
                new={"student": new.name, **new.view()},
            )
        )
        await connection.execute(text(f"NOTIFY {STUDENTS_CHANNEL}"))
        _log.info("route %s: %s %s by %s", route, action, new.name, actor)
