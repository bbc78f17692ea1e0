"""Configuration: one YAML file for routes and knobs, the environment for secrets.

The file is validated strictly (unknown keys are errors, so a typo never silently does
nothing). Secrets are never written in the file: it names environment variables
(``key_env``, ``api_key_env``) and they are read here, once, into ``SecretStr``.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

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

from gateway.errors import ConfigError

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


class StudentConfig(_Strict):
    base_urls: list[HttpUrl] = Field(min_length=1)
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    top_logprobs: int = Field(default=5, ge=0, le=20)


class RouteConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    teacher: TeacherConfig
    student: StudentConfig | None = None
    mode: Literal["teacher", "shadow"] = "shadow"
    shadow_sample: float = Field(default=1.0, ge=0.0, le=1.0)


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


class DatabaseConfig(_Strict):
    pool_size: int = Field(default=5, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # None: migrate the embedded database automatically, never an external one.
    auto_migrate: bool | None = None


class LogWriterConfig(_Strict):
    batch_size: int = Field(default=500, ge=1)
    flush_interval_s: float = Field(default=0.2, gt=0)
    queue_max: int = Field(default=100_000, ge=1)
    retry_interval_s: float = Field(default=1.0, gt=0)
    store_payloads: bool = True


class GatewayConfig(_Strict):
    data_dir: Path = Path(".shadow-gateway")
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    log_writer: LogWriterConfig = LogWriterConfig()
    auth: AuthConfig = AuthConfig()
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
            if route.mode == "shadow" and route.student is None and route.shadow_sample > 0:
                raise ValueError(
                    f"route {route.name!r} is in shadow mode but has no student; "
                    "add a student or set mode: teacher"
                )
        return self

    def route(self, name: str) -> RouteConfig | None:
        return self._routes_by_name.get(name)

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
    """A loaded, validated configuration plus the secrets its env variables named."""

    def __init__(self, config: GatewayConfig, config_path: Path, env: EnvSettings) -> None:
        self.config = config
        self.config_path = config_path
        self.env = env
        self.api_keys = tuple(_load_key(key) for key in config.auth.keys)
        self.upstream_keys = {
            var: _require_env(var, "an upstream's api_key_env")
            for route in config.routes
            for var in _upstream_key_vars(route)
        }

    @property
    def data_dir(self) -> Path:
        """``data_dir`` from the file, relative to the file's own folder."""
        path = self.config.data_dir.expanduser()
        return path if path.is_absolute() else (self.config_path.parent / path).resolve()

    @property
    def database_url(self) -> str | None:
        return self.env.database_url.get_secret_value() if self.env.database_url else None


def _upstream_key_vars(route: RouteConfig) -> list[str]:
    found = [route.teacher.api_key_env]
    if route.student is not None:
        found.append(route.student.api_key_env)
    return [var for var in found if var]


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
