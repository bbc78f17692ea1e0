"""Configuration: one YAML file for routes and knobs, the environment for secrets.

The file is validated strictly (unknown keys are errors, so a typo never silently does
nothing). Secrets are never written in the file: it names environment variables
(``key_env``, ``api_key_env``) and they are read here, once, into ``SecretStr``.

- :mod:`.route`: one route's section (teacher, students, comparator, slices, rollout, export,
  redaction);
- :mod:`.sections`: the file as a whole, :class:`GatewayConfig`, and its other sections;
- :mod:`.settings`: finding and loading the file, and the secrets it names.

Everything is importable from here, as it was when this was one module.
"""

from __future__ import annotations

from gateway.config.route import (
    DEFAULT_STUDENT,
    SLICE_NAME,
    AgreementConfig,
    Comparator,
    ConfidenceMethod,
    CriticalSlice,
    DistillConfig,
    DistillLaunch,
    ExportConfig,
    FunctionVerifier,
    JsonSchemaVerifier,
    LengthBuckets,
    NoveltyConfig,
    RedactionConfig,
    RedactionPattern,
    RegexVerifier,
    RolloutConfig,
    RouteConfig,
    ScopeConfig,
    SliceRule,
    SlicesConfig,
    SliceServing,
    StudentConfig,
    TeacherConfig,
    VerifierConfig,
)
from gateway.config.sections import (
    AuthConfig,
    ConsoleConfig,
    DatabaseConfig,
    GatewayConfig,
    GuardConfig,
    KeyConfig,
    LogWriterConfig,
    MetricsConfig,
    PartitionsConfig,
    RateLimit,
    RateLimitsConfig,
    RollupsConfig,
    Scope,
    ServerConfig,
)
from gateway.config.settings import (
    DEFAULT_CONFIG_PATH,
    ApiKey,
    EnvSettings,
    Settings,
    load_config_file,
    load_settings,
    resolve_config_path,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STUDENT",
    "SLICE_NAME",
    "AgreementConfig",
    "ApiKey",
    "AuthConfig",
    "Comparator",
    "ConfidenceMethod",
    "ConsoleConfig",
    "CriticalSlice",
    "DatabaseConfig",
    "DistillConfig",
    "DistillLaunch",
    "EnvSettings",
    "ExportConfig",
    "FunctionVerifier",
    "GatewayConfig",
    "GuardConfig",
    "JsonSchemaVerifier",
    "KeyConfig",
    "LengthBuckets",
    "LogWriterConfig",
    "MetricsConfig",
    "NoveltyConfig",
    "PartitionsConfig",
    "RateLimit",
    "RateLimitsConfig",
    "RedactionConfig",
    "RedactionPattern",
    "RegexVerifier",
    "RolloutConfig",
    "RollupsConfig",
    "RouteConfig",
    "Scope",
    "ScopeConfig",
    "ServerConfig",
    "Settings",
    "SliceRule",
    "SliceServing",
    "SlicesConfig",
    "StudentConfig",
    "TeacherConfig",
    "VerifierConfig",
    "load_config_file",
    "load_settings",
    "resolve_config_path",
]
