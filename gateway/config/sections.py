"""The config file as a whole (:class:`GatewayConfig`) and its top-level sections: server,
database, log writer, auth, rate limits, metrics, guard, console."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from gateway.config.base import Strict
from gateway.config.route import RedactionConfig, RouteConfig
from gateway.errors import RouteNotFound

Scope = Literal["app", "sre", "analyst", "reviewer"]


class RateLimit(Strict):
    """A token bucket: ``requests_per_s`` sustained, up to ``burst`` at once."""

    requests_per_s: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitsConfig(Strict):
    """Per API key, per gateway process (N workers or replicas admit N times as much)."""

    default: RateLimit | None = None  # keys without their own entry; None: unlimited
    keys: dict[str, RateLimit] = Field(default_factory=dict)  # by key name


class KeyConfig(Strict):
    name: str = Field(min_length=1)
    key_env: str = Field(min_length=1)
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["app"]))


class AuthConfig(Strict):
    keys: list[KeyConfig] = Field(default_factory=list)


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    drain_timeout_s: float = Field(default=20.0, gt=0)
    # Slow bodies: a request body must arrive within body_timeout_s, plus one second for each
    # body_min_rate_bytes_s bytes received (a slow-loris never earns more time); else 408.
    body_timeout_s: float = Field(default=30.0, gt=0)
    body_min_rate_bytes_s: int = Field(default=65_536, ge=1)
    # Slow headers: a connection must finish each request's headers within this (408, closed).
    header_timeout_s: float = Field(default=10.0, gt=0)


class PartitionsConfig(Strict):
    """Time partitions of ``requests`` and ``student_answers`` (gateway.db.partitions;
    docs/deploy.md)."""

    # day: retention is kept to the day and a day's reports read only its partitions; month:
    # 12 partitions a year, for keeping data for years (thousands of partitions slow planning)
    interval: Literal["day", "month"] = "day"
    ahead: int = Field(default=7, ge=1, le=400)  # periods created beyond the current one
    # Partitions wholly older than this many days are dropped; None keeps every row.
    retention_days: int | None = Field(default=None, ge=1)
    check_interval_s: float = Field(default=3600.0, gt=0)


class RollupsConfig(Strict):
    """The hourly rollups the reports read (gateway.services.rollups; docs/reports.md)."""

    # false: no replica recomputes them; reports then read raw rows (still exact, slower)
    enabled: bool = True
    interval_s: float = Field(default=30.0, gt=0)  # between two rounds
    # an hour is recomputed once it ended this long ago (late rows of it mark it again)
    settle_s: float = Field(default=120.0, ge=0)
    max_buckets: int = Field(default=500, ge=1)  # recomputed per round, newest first


class DatabaseConfig(Strict):
    pool_size: int = Field(default=5, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # None: migrate the embedded database automatically, never an external one.
    auto_migrate: bool | None = None
    partitions: PartitionsConfig = PartitionsConfig()
    rollups: RollupsConfig = RollupsConfig()


class LogWriterConfig(Strict):
    batch_size: int = Field(default=500, ge=1)
    flush_interval_s: float = Field(default=0.2, gt=0)
    # A queued record is about 0.1-0.5 MB in memory with the student's logprobs (measured,
    # docs/deploy.md); past this many the backlog goes to the journal on disk instead.
    queue_max: int = Field(default=5_000, ge=1)
    # Only when Postgres is down *and* the disk refuses the journal do records pile up in
    # memory; past this many the oldest are dropped (counted), rather than the worker dying.
    memory_max: int = Field(default=10_000, ge=1)
    retry_interval_s: float = Field(default=1.0, gt=0)
    # A batch Postgres has not taken within this long is journaled and Postgres handled as
    # down: a frozen server (accepting connections, never answering) is noticed in seconds.
    write_timeout_s: float = Field(default=5.0, gt=0)
    # Each record is appended to a write-ahead log on disk as it is submitted, so a killed
    # process (SIGKILL, the OOM killer) loses nothing it answered; fsync'd this often, off the
    # event loop, for power loss.
    wal: bool = True
    wal_fsync_interval_s: float = Field(default=1.0, gt=0)
    store_payloads: bool = True

    @model_validator(mode="after")
    def _memory_holds_a_queue(self) -> LogWriterConfig:
        if self.memory_max < self.queue_max:
            raise ValueError(
                f"memory_max ({self.memory_max}) must be at least queue_max ({self.queue_max})"
            )
        return self


class GuardConfig(Strict):
    """The background checks: automatic rollback and staged ramps."""

    interval_s: float = Field(default=15.0, gt=0)


class MetricsConfig(Strict):
    # Slice values exported as metric labels, per dimension; other values are exported as
    # "other" and unlisted dimensions not at all, so label cardinality stays bounded whatever
    # apps send. Critical slices are always exported.
    slice_values: dict[str, list[str]] = Field(default_factory=dict)


class ConsoleConfig(Strict):
    """The built-in console page (``/console``, docs/console.md): its login sessions."""

    session_ttl_s: float = Field(default=8 * 3600.0, gt=0)
    # The env variable holding the key that signs session cookies; several replicas need the
    # same one. None: a random one kept in data_dir (enough for one host, any worker count).
    session_secret_env: str | None = None


class GatewayConfig(Strict):
    data_dir: Path = Path(".shadow-gateway")
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    log_writer: LogWriterConfig = LogWriterConfig()
    auth: AuthConfig = AuthConfig()
    metrics: MetricsConfig = MetricsConfig()
    guard: GuardConfig = GuardConfig()
    redaction: RedactionConfig = RedactionConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    console: ConsoleConfig = ConsoleConfig()
    routes: list[RouteConfig] = Field(min_length=1)

    @field_validator("routes")
    @classmethod
    def _unique_route_names(cls, routes: list[RouteConfig]) -> list[RouteConfig]:
        seen: set[str] = set()
        for route in routes:
            if route.name in seen:
                raise ValueError(f"route name {route.name!r} is used twice")
            seen.add(route.name)
        return routes

    @model_validator(mode="after")
    def _shadow_needs_student(self) -> GatewayConfig:
        for route in self.routes:
            if route.mode != "teacher" and route.student is None:
                raise ValueError(
                    f"route {route.name!r} is in {route.mode} mode but has no student; "
                    "add a student or set mode: teacher"
                )
        return self

    def route(self, name: str) -> RouteConfig | None:
        return self._routes_by_name.get(name)

    def find_route(self, name: str, *, param: str = "route") -> RouteConfig:
        """The route called ``name``; else RouteNotFound naming the routes there are (apps
        know routes as models: ``param="model"`` says it in their words)."""
        found = self._routes_by_name.get(name)
        if found is not None:
            return found
        known = ", ".join(sorted(self._routes_by_name))
        if param == "model":
            message = f"The model '{name}' does not exist. Models (routes) served here: {known}."
        else:
            message = f"Unknown route '{name}'. Routes: {known}."
        raise RouteNotFound(message, param=param)

    @cached_property
    def _routes_by_name(self) -> dict[str, RouteConfig]:
        return {route.name: route for route in self.routes}
