"""Loading: the file found and validated, the secrets its environment variables name."""

from __future__ import annotations

import difflib
import hashlib
import os
import types
import typing
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.config.route import RouteConfig
from gateway.config.sections import GatewayConfig, KeyConfig
from gateway.errors import ConfigError

DEFAULT_CONFIG_PATH = "shadow-gateway.yaml"


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
        raise ConfigError(
            f"config file {path} does not exist: name one with --config FILE or "
            "$SHADOW_GATEWAY_CONFIG (examples/shadow-gateway.yaml is a commented starting "
            "point; `shadow-gateway demo` runs without one)"
        ) from exc
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
            f"  {'.'.join(str(part) for part in err['loc']) or '(top level)'}: {_message(err)}"
            for err in exc.errors()
        )
        raise ConfigError(f"config file {path} is invalid:\n{problems}") from exc


def _message(error: Any) -> str:
    """Pydantic's message; for an unknown key, the valid keys there and the closest one."""
    if error["type"] != "extra_forbidden":
        return str(error["msg"])
    loc = error["loc"]
    known = _keys_at(GatewayConfig, loc[:-1])
    if not known:
        return "unknown key"
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}valid keys here: {', '.join(sorted(known))}"


def _keys_at(model: Any, path: tuple[Any, ...]) -> list[str]:
    """The field names of the model found by following ``path`` (field names and list
    indexes) down from ``model``; empty when the path leads elsewhere (a dict, a union)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            if len(args) != 1:
                return []
            current = args[0]
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
        # Optional[X] and list[X] both lead to X
        while typing.get_origin(current) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            if len(args) != 1:
                return []
            current = args[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def load_settings(config_path: str | Path | None = None) -> Settings:
    path = resolve_config_path(str(config_path) if config_path is not None else None)
    return Settings(load_config_file(path), path, EnvSettings())
