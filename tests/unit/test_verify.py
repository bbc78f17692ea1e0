"""Verifiers of teacher answers for the training-set export (gateway.core.verify)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.core.verify import PASSED, Verification, function, json_schema, regex

REQUEST: dict[str, Any] = {"messages": [{"role": "user", "content": "Is it raining?"}]}
LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["label", "confidence"],
    "properties": {
        "label": {"enum": ["yes", "no"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "when": {"type": "string", "format": "date"},
    },
    "additionalProperties": False,
}

# --- JSON schema -------------------------------------------------------------------------------


def test_schema_accepts_a_valid_answer_fenced_or_not() -> None:
    verify = json_schema(LABEL_SCHEMA)
    assert verify('{"label": "yes", "confidence": 0.9}', REQUEST) == PASSED
    fenced = 'Here you go:\n```json\n{"label": "no", "confidence": 1}\n```'
    assert verify(fenced, REQUEST).ok


@pytest.mark.parametrize(
    ("answer", "check", "message"),
    [
        ("Yes, it is.", "invalid_json", "the answer is not JSON"),
        ('{"label": "yes"}', "schema:required", "$: 'confidence' is a required property"),
        (
            '{"label": "maybe", "confidence": 0.5}',
            "schema:properties.label.enum",
            "$.label: 'maybe' is not one of ['yes', 'no']",
        ),
        (
            '{"label": "no", "confidence": 2}',
            "schema:properties.confidence.maximum",
            "$.confidence: 2 is greater than the maximum of 1",
        ),
        (
            '{"label": "no", "confidence": 1, "why": "x"}',
            "schema:additionalProperties",
            "$: Additional properties are not allowed ('why' was unexpected)",
        ),
        (
            '{"label": "no", "confidence": 1, "when": "yesterday"}',
            "schema:properties.when.format",
            "$.when: 'yesterday' is not a 'date'",
        ),
        ("[1, 2]", "schema:type", "$: [1, 2] is not of type 'object'"),
    ],
)
def test_schema_failures_say_which_check_failed_and_why(
    answer: str, check: str, message: str
) -> None:
    assert json_schema(LABEL_SCHEMA)(answer, REQUEST) == Verification(False, check, message)


def test_an_empty_schema_only_asks_for_json() -> None:
    verify = json_schema({})
    assert verify("42", REQUEST).ok
    assert verify("forty-two", REQUEST).check == "invalid_json"


def test_an_invalid_schema_is_rejected_when_built() -> None:
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        json_schema({"type": "no-such-type"})


def test_an_unresolvable_ref_fails_the_check_instead_of_raising() -> None:
    verify = json_schema({"$ref": "https://example.invalid/schema.json"})
    outcome = verify("{}", REQUEST)
    assert (outcome.ok, outcome.check) == (False, "schema_error")


def test_schema_verifier_is_named_in_the_route_config() -> None:
    route = {
        "name": "r",
        "mode": "teacher",
        "teacher": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
        "export": {"verifier": {"kind": "json_schema", "schema": LABEL_SCHEMA}},
    }
    config = GatewayConfig.model_validate({"routes": [route]})
    verifier = config.routes[0].export.verifier
    assert verifier is not None
    assert verifier.kind == "json_schema"
    bad = {**route, "export": {"verifier": {"kind": "json_schema", "schema": {"type": 3}}}}
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        GatewayConfig.model_validate({"routes": [bad]})


# --- regex -------------------------------------------------------------------------------------


def test_regex_searches_and_anchors_when_asked() -> None:
    anywhere = regex(r"\b(yes|no)\b")
    assert anywhere("I think yes.", REQUEST).ok
    assert anywhere("maybe", REQUEST) == Verification(
        False, "regex", "does not match '\\\\b(yes|no)\\\\b'"
    )
    whole = regex(r"^(yes|no)$")
    assert whole("no", REQUEST).ok
    assert not whole("no, sorry", REQUEST).ok


def test_a_broken_regex_is_rejected_when_built() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        regex("(yes")


# --- the user's function -----------------------------------------------------------------------


def cites_a_source(answer: str, request: Any) -> tuple[bool, str]:
    return "[source]" in answer, "no_source"


def echoes_the_question(answer: str, request: Any) -> bool:
    return str(request["messages"][-1]["content"]) in answer


def test_function_gets_the_answer_and_the_request() -> None:
    assert function(cites_a_source)("It rains [source]", REQUEST).ok
    assert function(cites_a_source)("It rains", REQUEST) == Verification(
        False, "function:no_source", "no_source"
    )
    assert function(echoes_the_question)("Is it raining? Yes.", REQUEST).ok
    assert function(echoes_the_question)("Yes.", REQUEST) == Verification(False, "function", None)


def test_function_may_return_a_verification() -> None:
    def strict(answer: str, request: Any) -> Verification:
        return Verification(False, "too_long", f"{len(answer)} characters")

    assert function(strict)("abc", REQUEST) == Verification(
        False, "function:too_long", "3 characters"
    )


def test_a_function_that_raises_fails_the_check_with_its_error() -> None:
    def broken(answer: str, request: Any) -> bool:
        raise KeyError("label")

    assert function(broken)("x", REQUEST) == Verification(
        False, "function_error", "KeyError: 'label'"
    )


@pytest.mark.parametrize("returned", [None, 1, "yes", (1, "reason"), (True, 3)])
def test_a_function_returning_something_else_fails_the_check(returned: object) -> None:
    outcome = function(lambda answer, request: returned)("x", REQUEST)
    assert (outcome.ok, outcome.check) == (False, "function_error")
    assert outcome.message is not None
    assert "expected a bool or (bool, reason)" in outcome.message


def test_long_reasons_are_cut_so_they_can_be_counted() -> None:
    outcome = function(lambda answer, request: (False, "r" * 500))("x", REQUEST)
    assert outcome.check is not None
    assert len(outcome.check) == 64
    assert outcome.message is not None
    assert len(outcome.message) == 300
