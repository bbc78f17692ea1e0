"""Verifiers: does a teacher answer deserve to become a training example?

A distilled student copies its teacher, errors included, so the training-set export keeps only
answers that pass the route's verifier: a JSON schema, a regular expression, or the user's own
``module:function`` checker. A verifier takes ``(answer, request)`` — the teacher's text and the
app's request body — and returns a :class:`Verification`: passed, or which check failed
(``check``, few distinct values, so the export can count drops by it) and why (``message``, for
people).

Like the agreement comparators, a verifier never raises on its input: unreadable JSON or a
checker that throws is a failed check with a reason, never a crash halfway through an export.
Bad configuration (a schema that is not a schema, a broken regex) raises ``ValueError`` at
factory time instead. The user's checker is injected already imported, so this module stays
free of I/O; ``jsonschema`` is imported only when a schema verifier is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.agreement import parse_json

_MAX_MESSAGE = 300
_MAX_CHECK = 64


@dataclass(frozen=True)
class Verification:
    ok: bool
    check: str | None = None  # which check failed, e.g. "invalid_json", "schema:required"
    message: str | None = None  # what exactly, for the person reading the manifest


PASSED = Verification(True)
Request = Mapping[str, Any]
Verifier = Callable[[str, Request], Verification]


def _failed(check: str, message: str | None) -> Verification:
    text = None if message is None else message[:_MAX_MESSAGE]
    return Verification(False, check[:_MAX_CHECK], text)


def _error_text(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # an exception whose __str__ itself fails
        return type(exc).__name__


# --- JSON schema -------------------------------------------------------------------------------


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``schema`` is a valid JSON schema (of its ``$schema`` draft)."""
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None


def json_schema(schema: dict[str, Any]) -> Verifier:
    """The answer is JSON (a markdown fence around it is accepted) valid against ``schema``.

    Fails with ``invalid_json``, or ``schema:<where in the schema>`` (``schema:required``,
    ``schema:properties.label.enum``) for the most relevant violation; ``format`` keywords are
    checked too.
    """
    from jsonschema import validators
    from jsonschema.exceptions import best_match

    check_schema(schema)
    cls = validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    def verify(answer: str, request: Request) -> Verification:
        ok, document = parse_json(answer)
        if not ok:
            return _failed("invalid_json", "the answer is not JSON")
        try:
            error = best_match(validator.iter_errors(document))
        except Exception as exc:  # an unresolvable $ref, a pathological pattern
            return _failed("schema_error", _error_text(exc))
        if error is None:
            return PASSED
        where = ".".join(str(part) for part in error.relative_schema_path) or "schema"
        return _failed(f"schema:{where}", f"{error.json_path}: {error.message}")

    return verify


# --- regex -------------------------------------------------------------------------------------


def regex(pattern: str) -> Verifier:
    """The pattern is found in the answer (``re.search``); anchor it (``^…$``) for all of it."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None

    def verify(answer: str, request: Request) -> Verification:
        if compiled.search(answer):
            return PASSED
        return _failed("regex", f"does not match {pattern!r}")

    return verify


# --- the user's own checker --------------------------------------------------------------------


def _function_result(result: object) -> Verification:
    if isinstance(result, Verification):
        if isinstance(result.ok, bool) and isinstance(result.check, str | None):
            if result.ok:
                return PASSED
            check = f"function:{result.check}" if result.check else "function"
            return _failed(check, result.message if isinstance(result.message, str) else None)
        return _failed("function_error", "returned a Verification that cannot be read")
    reason: object = None
    if isinstance(result, tuple) and len(result) == 2:
        result, reason = result
    if isinstance(result, bool) and isinstance(reason, str | None):
        if result:
            return PASSED
        return _failed(f"function:{reason}" if reason else "function", reason)
    shape = type(result).__name__ if reason is None else f"({type(result).__name__}, ...)"
    return _failed("function_error", f"returned {shape}; expected a bool or (bool, reason)")


def function(checker: Callable[[str, Request], object]) -> Verifier:
    """``checker(answer, request)`` returns a bool, ``(bool, reason)`` or a Verification.

    A failing answer is counted under ``function`` (or ``function:<reason>``; keep reasons to a
    few fixed words, they are counted); an exception or an unreadable result is a failure under
    ``function_error`` with the message, so a buggy checker drops answers instead of stopping
    the export (the manifest shows how many and why).
    """

    def verify(answer: str, request: Request) -> Verification:
        try:
            return _function_result(checker(answer, request))
        except Exception as exc:
            return _failed("function_error", _error_text(exc))

    return verify


# --- tool calls --------------------------------------------------------------------------------


def _declared_functions(request: Request) -> dict[str, Any] | None:
    """The functions the request offered, by name, with their parameter schemas (None when it
    declared no tools: then any name goes). Chat nests ``function``; the Responses API does not.
    """
    tools = request.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    found: dict[str, Any] = {}
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        nested = tool.get("function")
        spec: dict[str, Any] = nested if isinstance(nested, dict) else tool
        if isinstance(spec.get("name"), str):
            found[spec["name"]] = spec.get("parameters")
    return found


def tool_calls(calls: Sequence[Mapping[str, Any]], request: Request) -> Verification:
    """A tool-call answer is a training example only if every call names a function the request
    offered and its arguments are a JSON object valid against that function's ``parameters``.

    Checks: ``tool_call:unknown_function``, ``tool_call:invalid_json``,
    ``tool_call:schema:<where in the schema>``. Applied to every tool-call answer, whatever the
    route's own verifier (which judges text answers).
    """
    from jsonschema import validators
    from jsonschema.exceptions import best_match

    declared = _declared_functions(request)
    for call in calls:
        name = call.get("name")
        if declared is not None and name not in declared:
            return _failed("tool_call:unknown_function", f"{name!r} is not among the tools offered")
        arguments = call.get("arguments")
        ok, document = parse_json(arguments) if isinstance(arguments, str) else (False, None)
        if not ok or not isinstance(document, dict):
            return _failed("tool_call:invalid_json", f"{name}: the arguments are not a JSON object")
        schema = declared.get(str(name)) if declared is not None else None
        if not isinstance(schema, dict):
            continue
        try:
            cls = validators.validator_for(schema)
            error = best_match(cls(schema).iter_errors(document))
        except Exception as exc:  # the app's own schema may be broken or pathological
            return _failed("tool_call:schema_error", _error_text(exc))
        if error is not None:
            where = ".".join(str(part) for part in error.relative_schema_path) or "schema"
            return _failed(f"tool_call:schema:{where}", f"{name}: {error.message}")
    return PASSED
