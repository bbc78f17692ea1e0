"""PII redaction: what each redactor takes, and what it must leave alone."""

from __future__ import annotations

import re

import pytest

from gateway.config import GatewayConfig
from gateway.core.redact import CARD, EMAIL, PHONE, CustomPattern, Redactor, luhn_valid
from gateway.errors import ConfigError
from gateway.shadow.records import redact_record, route_redactors

ALL = Redactor(emails=True, phones=True, cards=True)


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4111111111111111", True),  # Visa test number
        ("4111111111111112", False),
        ("378282246310005", True),  # Amex, 15 digits
        ("6011111111111117", True),  # Discover
        ("5555555555554444", True),  # Mastercard
        ("79927398713", True),  # the textbook example
        ("79927398710", False),
    ],
)
def test_luhn(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1111 please",
        "card 4111-1111-1111-1111 please",
        "card 4111111111111111 please",
        "amex 3782 822463 10005 please",
    ],
)
def test_cards_passing_luhn_are_redacted(text: str) -> None:
    assert ALL.text(text) == f"{text.split()[0]} {CARD} please"


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112 shipped",  # 16 digits, fails Luhn
        "id 12345678901234567890123 ok",  # too long to be a card
        "ts 1700000000123 fails luhn",  # 13-digit timestamp, fails Luhn
        "zeros 0000 0000 0000 0000",  # passes Luhn, but no card is all zeros
        "part of a longer run 41111111111111111111",
        "sum is 3.14159265358979",
    ],
)
def test_digit_runs_that_are_not_cards_are_kept(text: str) -> None:
    assert Redactor(cards=True).text(text) == text


@pytest.mark.parametrize(
    "phone",
    [
        "+1 (555) 123-4567",
        "+15551234567",
        "+44 20 7946 0958",
        "+49 30 1234567",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "555 123 4567",
        "020 7946 0958",
        "+33 1 23 45 67 89",
    ],
)
def test_phone_formats_are_redacted(phone: str) -> None:
    assert Redactor(phones=True).text(f"call {phone} now") == f"call {PHONE} now"


@pytest.mark.parametrize(
    "text",
    [
        "released on 2024-01-15",
        "due 15.01.2024",
        "due 01/15/2024",
        "server 192.168.100.200",
        "version 1.2.3",
        "order 5551234567",  # a bare digit run is an id, not a phone
        "costs 1,299.00",
        "room 42",
        "the year 1999",
    ],
)
def test_non_phones_are_kept(text: str) -> None:
    assert Redactor(phones=True).text(text) == text


def test_emails() -> None:
    redactor = Redactor(emails=True)
    assert redactor.text("mail jane.doe+x@example.co.uk!") == f"mail {EMAIL}!"
    assert redactor.text("a@b") == "a@b"  # no domain
    assert redactor.text("@handle and x@y.z") == "@handle and x@y.z"  # TLD too short


def test_card_is_not_eaten_as_a_phone() -> None:
    assert ALL.text("4111 1111 1111 1111") == CARD
    # a 16-digit run that fails Luhn is neither a card nor (too many digits) a phone
    assert ALL.text("4111 1111 1111 1112") == "4111 1111 1111 1112"


def test_custom_patterns_run_first_and_replace_literally() -> None:
    redactor = Redactor(
        emails=True, patterns=[CustomPattern(re.compile(r"ACCT-\d+"), r"[ACCOUNT \1]")]
    )
    assert redactor.text("ACCT-123456 of a@example.com") == f"[ACCOUNT \\1] of {EMAIL}"


def test_json_values_keys_included() -> None:
    value = {"messages": [{"role": "user", "content": "a@example.com"}], "a@example.com": 3}
    assert ALL.value(value) == {"messages": [{"role": "user", "content": EMAIL}], EMAIL: 3}


def test_inactive_redactor_changes_nothing() -> None:
    assert not Redactor().active
    assert Redactor().text("a@example.com 4111111111111111") == "a@example.com 4111111111111111"


def test_record_redaction_covers_stored_text_and_drops_leaky_tokens() -> None:
    record = {
        "request_id": "r1",
        "route": "bot",
        "request_payload": {"messages": [{"role": "user", "content": "I am a@example.com"}]},
        "teacher_output": "hello a@example.com",
        "teacher_response": {
            "choices": [{"message": {"content": "hello a@example.com"}, "logprobs": {"x": 1}}]
        },
        "student_output": "hi a@example.com",
        "student_logprobs": [
            {"token": "a@", "logprob": -0.1, "top_logprobs": [{"token": "a@", "logprob": -0.1}]}
        ],
        "error_message": "bad a@example.com",
        "slices": {"user": "a@example.com"},
    }
    out = redact_record(record, ALL)
    assert out["request_payload"]["messages"][0]["content"] == f"I am {EMAIL}"
    assert out["teacher_output"] == f"hello {EMAIL}"
    assert out["teacher_response"]["choices"][0] == {"message": {"content": f"hello {EMAIL}"}}
    assert out["student_output"] == f"hi {EMAIL}"
    assert out["student_logprobs"] == [
        {"token": None, "logprob": -0.1, "top_logprobs": [{"token": None, "logprob": -0.1}]}
    ]
    assert out["error_message"] == f"bad {EMAIL}"
    assert out["slices"] == {"user": EMAIL}
    assert record["teacher_output"] == "hello a@example.com"  # the caller's record is untouched


def _config(**extra: object) -> GatewayConfig:
    route = {"name": "a", "mode": "teacher", "teacher": {"base_url": "http://t/v1", "model": "m"}}
    return GatewayConfig.model_validate({"routes": [route, {**route, "name": "b"}], **extra})


def test_route_redactors_from_config() -> None:
    config = _config(
        redaction={"emails": True, "patterns": [{"pattern": "x+y", "replacement": "[XY]"}]}
    )
    assert set(route_redactors(config)) == {"a", "b"}
    assert route_redactors(config)["a"].text("xxy b@example.com") == f"[XY] {EMAIL}"
    assert route_redactors(_config()) == {}  # off by default


def test_route_section_replaces_the_top_level_one() -> None:
    route = {"name": "a", "mode": "teacher", "teacher": {"base_url": "http://t/v1", "model": "m"}}
    config = GatewayConfig.model_validate(
        {
            "redaction": {"emails": True},
            "routes": [{**route, "redaction": {"cards": True}}, {**route, "name": "b"}],
        }
    )
    redactors = route_redactors(config)
    assert redactors["a"].text("a@example.com") == "a@example.com"
    assert redactors["b"].text("a@example.com") == EMAIL


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("(unclosed", "not a valid regular expression"), ("a*", "matches the empty string")],
)
def test_bad_custom_patterns_are_config_errors(
    tmp_path: object, pattern: str, message: str
) -> None:
    from pathlib import Path

    from gateway.config import load_config_file

    path = Path(str(tmp_path)) / "c.yaml"
    path.write_text(
        "redaction: {patterns: [{pattern: '" + pattern + "'}]}\n"
        "routes: [{name: a, mode: teacher, teacher: {base_url: 'http://t/v1', model: m}}]\n"
    )
    with pytest.raises(ConfigError, match=message) as caught:
        load_config_file(path)
    assert "redaction.patterns.0.pattern" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "a" * 200_000 + "@",  # quadratic for an unanchored email pattern
        "x@" + "a." * 100_000,
        "1-" * 100_000,
        "9" * 200_000,
        "+1 " * 60_000,
        "(1) " * 50_000,
    ],
)
def test_adversarial_inputs_take_linear_time(text: str) -> None:
    # No clock assertion: a quadratic pattern would make this test take minutes, not ms.
    assert ALL.text(text).count("@") == text.count("@")
