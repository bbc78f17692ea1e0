"""Configuration: one YAML file for routes and knobs, the environment for secrets.

The file is validated strictly (unknown keys are errors, so a typo never silently does
nothing). Secrets are never written in the file: it names environment variables
(``key_env``, ``api_key_env``) and they are read here, once, into ``SecretStr``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core import verify
from gateway.core.routing import Mode
from gateway.errors import ConfigError, RouteNotFound

DEFAULT_CONFIG_PATH = "shadow-gateway.yaml"
Scope = Literal["app", "sre", "analyst"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeacherConfig(_Strict):
    base_url: HttpUrl
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)


SLICE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
DEFAULT_STUDENT = "default"  # the name of a route's one-student form, ``student:``


class StudentConfig(_Strict):
    # Names a student in rows, metrics labels, headers and the CLI: lower-case, like slices.
    name: str = Field(default=DEFAULT_STUDENT, pattern=SLICE_NAME)
    base_urls: list[HttpUrl] = Field(min_length=1)  # HttpUrl: http and https only
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    top_logprobs: int = Field(default=5, ge=0, le=20)
    # Circuit breaker: this many failures in a row stop calls for cooldown_s, then one probe.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=10.0, gt=0)
    # The share of the route's requests this student is shadowed on; None: the route's.
    shadow_sample: float | None = Field(default=None, ge=0.0, le=1.0)


Comparator = Literal["exact", "normalized", "json", "label", "numeric", "semantic", "custom"]
ConfidenceMethod = Literal["mean_prob", "min_prob", "first_token", "margin"]


def _check_regex(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
    return pattern


class AgreementConfig(_Strict):
    """How teacher and student answers are compared (see gateway.core.agreement)."""

    comparator: Comparator = "normalized"
    # score >= threshold is agreement; default 1.0, or 0.8 for semantic
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    fields: list[str] = Field(default_factory=list)  # json: dotted paths; empty = whole document
    pattern: str | None = None  # label: the regex whose first group (or match) is the label
    ignore_case: bool = True  # label
    abs_tol: float = Field(default=0.0, ge=0.0)  # numeric
    rel_tol: float = Field(default=0.0, ge=0.0)  # numeric
    function: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")  # custom
    model: str | None = None  # semantic: the embedding model (default: the packaged MiniLM)

    _regex = field_validator("pattern")(_check_regex)

    @model_validator(mode="after")
    def _needs(self) -> AgreementConfig:
        if self.comparator == "label" and not self.pattern:
            raise ValueError("comparator label needs a pattern")
        if self.comparator == "custom" and not self.function:
            raise ValueError("comparator custom needs function: 'module:function'")
        return self

    @property
    def effective_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return 0.8 if self.comparator == "semantic" else 1.0


class SliceRule(_Strict):
    """Label requests whose last user message matches ``pattern`` with ``dimension=value``."""

    dimension: str = Field(pattern=SLICE_NAME)
    pattern: str
    value: str = Field(min_length=1, max_length=128)

    _regex = field_validator("pattern")(_check_regex)


class LengthBuckets(_Strict):
    """Label the last user message's length in characters: bounds [50, 200] → <50, 50-199, ≥200."""

    dimension: str = Field(default="prompt_length", pattern=SLICE_NAME)
    bounds: list[int] = Field(min_length=1)

    @field_validator("bounds")
    @classmethod
    def _ascending(cls, bounds: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(bounds)) or bounds[0] <= 0:
            raise ValueError("bounds must be positive and strictly ascending")
        return bounds


class CriticalSlice(_Strict):
    """A slice with a bar: the rollout gate and automatic rollback judge routes by these."""

    dimension: str = Field(pattern=SLICE_NAME)
    value: str = Field(min_length=1, max_length=128)
    min_agreement: float = Field(ge=0.0, le=1.0)
    min_samples: int = Field(default=30, ge=1)
    window_s: float = Field(default=3600.0, gt=0)


class SlicesConfig(_Strict):
    rules: list[SliceRule] = Field(default_factory=list)
    length_buckets: LengthBuckets | None = None
    defaults: dict[str, str] = Field(default_factory=dict)  # dimension → label when none set
    critical: list[CriticalSlice] = Field(default_factory=list)


class RolloutConfig(_Strict):
    """The rollout knobs' starting values; live values are in ``route_state`` (admin API/CLI)."""

    percent: float = Field(default=0.0, ge=0.0, le=100.0)
    threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    confidence: ConfidenceMethod = "mean_prob"  # how the student's logprobs become confidence
    audit_sample: float = Field(default=0.05, ge=0.0, le=1.0)
    salt: str | None = None  # default: the route's name
    sticky_header: str | None = None  # e.g. x-user-id, used when a request has no `user`
    # How long a chosen student may take before the teacher answers instead; default: the
    # student's timeout_s. Worst case for the app: this plus the teacher's answer time.
    student_budget_s: float | None = Field(default=None, gt=0)
    # The ramp gate for a route without critical slices: route-level agreement over the hold.
    gate_min_agreement: float = Field(default=0.9, ge=0.0, le=1.0)
    gate_min_samples: int = Field(default=30, ge=1)


class JsonSchemaVerifier(_Strict):
    """The teacher's answer is JSON valid against ``schema`` (see gateway.core.verify)."""

    kind: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        verify.check_schema(schema)
        return schema


class RegexVerifier(_Strict):
    """The teacher's answer contains a match of ``pattern`` (anchor it for the whole answer)."""

    kind: Literal["regex"]
    pattern: str

    _regex = field_validator("pattern")(_check_regex)


class FunctionVerifier(_Strict):
    """``function(answer, request)`` returns a bool or ``(bool, reason)``."""

    kind: Literal["function"]
    function: str = Field(pattern=r"^[\w.]+:[\w.]+$")


VerifierConfig = Annotated[
    JsonSchemaVerifier | RegexVerifier | FunctionVerifier, Field(discriminator="kind")
]


class ExportConfig(_Strict):
    """The training-set export (``shadow-gateway export``): which teacher answers qualify."""

    verifier: VerifierConfig | None = None


class RedactionPattern(_Strict):
    """A custom redactor: every match of ``pattern`` is stored as ``replacement`` (literal text)."""

    pattern: str
    replacement: str = Field(default="[REDACTED]", max_length=200)

    @field_validator("pattern")
    @classmethod
    def _usable(cls, pattern: str) -> str:
        _check_regex(pattern)
        if re.compile(pattern).fullmatch(""):
            raise ValueError("the pattern matches the empty string; it would redact everywhere")
        return pattern


class RedactionConfig(_Strict):
    """What is redacted in stored text (the log, the journal, exports), never what is sent."""

    emails: bool = False
    phones: bool = False
    cards: bool = False  # 13-19 digits passing the Luhn check
    patterns: list[RedactionPattern] = Field(default_factory=list)


class RateLimit(_Strict):
    """A token bucket: ``requests_per_s`` sustained, up to ``burst`` at once."""

    requests_per_s: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitsConfig(_Strict):
    """Per API key, per gateway process (N workers or replicas admit N times as much)."""

    default: RateLimit | None = None  # keys without their own entry; None: unlimited
    keys: dict[str, RateLimit] = Field(default_factory=dict)  # by key name


class RouteConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    teacher: TeacherConfig
    # The route's students: a list (``students``, with the ``champion`` a rollout serves, by
    # default the first) or one (``student``, named "default"). Either way, once validated,
    # ``students`` holds them all and ``student`` is the champion's entry, so code that knows
    # one student per route keeps working. ``student`` is left out of dumps: a dump holds the
    # list form, which validates again as it is.
    student: StudentConfig | None = Field(default=None, exclude=True)
    students: list[StudentConfig] = Field(default_factory=list)
    champion: str | None = None
    mode: Mode = "shadow"
    shadow_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    rollout: RolloutConfig = RolloutConfig()
    agreement: AgreementConfig = AgreementConfig()
    slices: SlicesConfig = SlicesConfig()
    export: ExportConfig = ExportConfig()
    redaction: RedactionConfig | None = None  # None: the top-level redaction section
    # When the teacher fails (unreachable, timed out, 5xx or 429): "error" passes the error on
    # (OpenAI's shape); "student" answers with the student instead (x-fallback-reason:
    # teacher_error), whatever its confidence. Off by default.
    on_teacher_error: Literal["error", "student"] = "error"

    @model_validator(mode="before")
    @classmethod
    def _one_list_of_students(cls, data: Any) -> Any:
        """Read either form as ``students`` and ``champion``; fill ``student`` with the champion.

        The model is frozen, so the normalised values go into the input here rather than being
        patched in after validation. The entries are validated first, so that ``student`` and
        the champion's place in ``students`` are one object; if one is invalid the input is left
        as written and field validation reports it where the file has it (``student.model``,
        not ``students.0.model``). Names and the champion are checked after, on typed values.
        """
        if not isinstance(data, dict):
            return data
        single, listed = data.get("student"), data.get("students")
        if single is not None and listed is not None:
            raise ValueError("give either student or students")
        entries = [single] if single is not None else listed
        if not isinstance(entries, list):
            return data
        try:
            students = [StudentConfig.model_validate(entry) for entry in entries]
        except ValidationError:
            return data
        champion = data.get("champion")
        if champion is None and students:
            champion = students[0].name
        chosen = next((s for s in students if s.name == champion), None)
        return {**data, "student": chosen, "students": students, "champion": champion}

    @model_validator(mode="after")
    def _champion_among_students(self) -> RouteConfig:
        names = [student.name for student in self.students]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"duplicate student name {name!r}")
        if self.champion is not None and self.champion not in names:
            raise ValueError(
                f"champion {self.champion!r} is not among the route's students: "
                f"{', '.join(names) or '(none)'}"
            )
        return self

    @model_validator(mode="after")
    def _teacher_fallback_needs_a_student(self) -> RouteConfig:
        if self.on_teacher_error == "student" and self.student is None:
            raise ValueError("on_teacher_error: student needs a student for the route")
        return self

    @property
    def champion_student(self) -> StudentConfig | None:
        """The champion's config (the student a rollout serves); None without students."""
        return next((s for s in self.students if s.name == self.champion), None)

    def sample_share(self, student: StudentConfig) -> float:
        """The share of requests ``student`` is shadowed on: its own, else the route's."""
        return self.shadow_sample if student.shadow_sample is None else student.shadow_sample


class KeyConfig(_Strict):
    name: str = Field(min_length=1)
    key_env: str = Field(min_length=1)
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["app"]))


class AuthConfig(_Strict):
    keys: list[KeyConfig] = Field(default_factory=list)


class ServerConfig(_Strict):
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


class PartitionsConfig(_Strict):
    """Time partitions of ``requests`` and ``student_answers`` (gateway.db.partitions;
    docs/deploy.md)."""

    # day: retention is kept to the day and a day's reports read only its partitions; month:
    # 12 partitions a year, for keeping data for years (thousands of partitions slow planning)
    interval: Literal["day", "month"] = "day"
    ahead: int = Field(default=7, ge=1, le=400)  # periods created beyond the current one
    # Partitions wholly older than this many days are dropped; None keeps every row.
    retention_days: int | None = Field(default=None, ge=1)
    check_interval_s: float = Field(default=3600.0, gt=0)


class DatabaseConfig(_Strict):
    pool_size: int = Field(default=5, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # None: migrate the embedded database automatically, never an external one.
    auto_migrate: bool | None = None
    partitions: PartitionsConfig = PartitionsConfig()


class LogWriterConfig(_Strict):
    batch_size: int = Field(default=500, ge=1)
    flush_interval_s: float = Field(default=0.2, gt=0)
    # A queued record is about 0.1-0.5 MB in memory with the student's logprobs (measured,
    # docs/deploy.md); past this many the backlog goes to the journal on disk instead.
    queue_max: int = Field(default=5_000, ge=1)
    # Only when Postgres is down *and* the disk refuses the journal do records pile up in
    # memory; past this many the oldest are dropped (counted), rather than the worker dying.
    memory_max: int = Field(default=10_000, ge=1)
    retry_interval_s: float = Field(default=1.0, gt=0)
    store_payloads: bool = True

    @model_validator(mode="after")
    def _memory_holds_a_queue(self) -> LogWriterConfig:
        if self.memory_max < self.queue_max:
            raise ValueError(
                f"memory_max ({self.memory_max}) must be at least queue_max ({self.queue_max})"
            )
        return self


class GuardConfig(_Strict):
    """The background checks: automatic rollback and staged ramps."""

    interval_s: float = Field(default=15.0, gt=0)


class MetricsConfig(_Strict):
    # Slice values exported as metric labels, per dimension; other values are exported as
    # "other" and unlisted dimensions not at all, so label cardinality stays bounded whatever
    # apps send. Critical slices are always exported.
    slice_values: dict[str, list[str]] = Field(default_factory=dict)


class ConsoleConfig(_Strict):
    """The built-in console page (``/console``, docs/console.md): its login sessions."""

    session_ttl_s: float = Field(default=8 * 3600.0, gt=0)
    # The env variable holding the key that signs session cookies; several replicas need the
    # same one. None: a random one kept in data_dir (enough for one host, any worker count).
    session_secret_env: str | None = None


class GatewayConfig(_Strict):
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


class EnvSettings(BaseSettings):
    """What comes from the environment rather than the file."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: SecretStr | None = None
    shadow_gateway_config: str | None = None


class ApiKey(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    scopes: frozenset[str]
    sha256: bytes


class Settings:
    """A loaded, validated configuration plus the secrets its env variables named.

    Secrets are read when first needed, so commands that never serve (``migrate``,
    ``rollout``, ``keys``) run without the app's or the upstreams' keys in their environment;
    ``serve`` reads them at start-up and stops with a ConfigError naming a missing one.
    """

    def __init__(self, config: GatewayConfig, config_path: Path, env: EnvSettings) -> None:
        self.config = config
        self.config_path = config_path
        self.env = env

    @cached_property
    def api_keys(self) -> tuple[ApiKey, ...]:
        return tuple(_load_key(key) for key in self.config.auth.keys)

    @cached_property
    def upstream_keys(self) -> dict[str, SecretStr]:
        return {
            var: _require_env(var, "an upstream's api_key_env")
            for route in self.config.routes
            for var in _upstream_key_vars(route)
        }

    @cached_property
    def console_secret(self) -> SecretStr | None:
        """The console's session-signing secret, when the config names its env variable."""
        var = self.config.console.session_secret_env
        return _require_env(var, "the console's session secret") if var else None

    @property
    def data_dir(self) -> Path:
        """``data_dir`` from the file, relative to the file's own folder."""
        path = self.config.data_dir.expanduser()
        return path if path.is_absolute() else (self.config_path.parent / path).resolve()

    @property
    def database_url(self) -> str | None:
        return self.env.database_url.get_secret_value() if self.env.database_url else None


def _upstream_key_vars(route: RouteConfig) -> list[str]:
    found = [route.teacher.api_key_env, *(student.api_key_env for student in route.students)]
    return list(dict.fromkeys(var for var in found if var))


def _require_env(var: str, what: str) -> SecretStr:
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"environment variable {var} ({what}) is not set or empty")
    return SecretStr(value)


def _load_key(key: KeyConfig) -> ApiKey:
    secret = _require_env(key.key_env, f"the API key {key.name!r}")
    return ApiKey(
        name=key.name,
        scopes=frozenset(key.scopes),
        sha256=hashlib.sha256(secret.get_secret_value().encode()).digest(),
    )


def resolve_config_path(explicit: str | None) -> Path:
    chosen = explicit or EnvSettings().shadow_gateway_config or DEFAULT_CONFIG_PATH
    return Path(chosen).expanduser().resolve()


def load_config_file(path: Path) -> GatewayConfig:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"config file {path} is invalid:\n{problems}") from exc


def load_settings(config_path: str | Path | None = None) -> Settings:
    path = resolve_config_path(str(config_path) if config_path is not None else None)
    return Settings(load_config_file(path), path, EnvSettings())
