"""The route's verifier for export: only teacher answers that pass it become examples."""

from __future__ import annotations

import importlib
from typing import Any

from gateway.config import FunctionVerifier, JsonSchemaVerifier, RegexVerifier, VerifierConfig
from gateway.core import verify
from gateway.errors import ConfigError


def build_verifier(config: VerifierConfig | None) -> verify.Verifier | None:
    """The route's verifier; a ``function`` that cannot be imported is a ConfigError."""
    match config:
        case None:
            return None
        case JsonSchemaVerifier():
            return verify.json_schema(config.json_schema)
        case RegexVerifier():
            return verify.regex(config.pattern)
        case FunctionVerifier():
            module_name, _, attribute = config.function.partition(":")
            try:
                found: Any = importlib.import_module(module_name)
                for part in attribute.split("."):
                    found = getattr(found, part)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(
                    f"export.verifier.function {config.function!r} cannot be imported: {exc}"
                ) from exc
            if not callable(found):
                raise ConfigError(f"export.verifier.function {config.function!r} is not callable")
            return verify.function(found)
    raise ConfigError(f"unknown verifier {config!r}")  # pragma: no cover
