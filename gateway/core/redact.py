"""PII redaction of what the gateway stores: emails, phone numbers, card numbers, custom regexes.

Applied to text on its way to storage only (the request log, the journal, exports read from
the log); never to what goes upstream or back to the app. Redactors run in a fixed order:
custom patterns first (they are the most specific), then emails, card numbers, phone numbers,
so a card number is never half-eaten as a phone number.

- Emails: ``local@domain.tld``.
- Card numbers: 13-19 digits, optionally grouped by single spaces or dashes, that pass the
  Luhn check (and are not all zeros). A digit run that fails Luhn is kept: order ids and
  timestamps are not cards. About one random digit run in ten passes Luhn, so a 13-19 digit
  id can still be redacted; that errs on the side of privacy.
- Phone numbers: 7-15 digits (E.164's bound) written as a phone is written: a leading ``+``
  (``+15551234567``, ``+44 20 7946 0958``), or groups separated by spaces, dots or dashes, with
  an optional parenthesised area code (``(555) 123-4567``, ``555.123.4567``). A bare run of
  digits without ``+`` is not a phone (it is more often an id); dates (``2024-01-15``,
  ``15.01.2024``) and IPv4 addresses are not phones.

Custom replacements are literal text (no ``\\1`` group references).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
REDACTED = "[REDACTED]"

# Starts only where a run of local-part characters starts, and every part is bounded: linear
# time on any input (an unanchored ``[\w.]+@`` is quadratic on a long run without an ``@``).
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,10}[A-Za-z]{2,63}(?![\w-])"
)
# Numbers are matched whole: not preceded by a word character (or a digit and a separator),
# not followed by one. Each pattern starts with its first character and checks what comes
# before it afterwards (``(?<!…)`` after one character): a pattern that begins with a
# lookbehind is tried at every position of the text, several times slower.
_BEFORE = r"(?<![\w+.].)(?<!\d[ .-].)"
_AFTER = r"(?![\w])(?![ .-]\d)"
_CARD_BODY = r"\d" + _BEFORE + r"(?:[ -]?\d){12,18}"
_PHONE_BODY = (
    r"\+" + _BEFORE + r"\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{1,4}){1,5}"
    r"|\(" + _BEFORE + r"\d{1,4}\)[ .-]?\d{2,4}(?:[ .-]\d{2,4}){1,4}"
    r"|\d" + _BEFORE + r"\d{1,3}(?:[ .-]\d{2,4}){1,4}"
)
_CARD = re.compile(f"(?:{_CARD_BODY}){_AFTER}")
_PHONE = re.compile(f"(?:{_PHONE_BODY}){_AFTER}")
# Both in one pass: at each place a card is tried first.
_NUMBER = re.compile(f"(?P<card>{_CARD_BODY}){_AFTER}|(?:{_PHONE_BODY}){_AFTER}")
_DATE = re.compile(r"\d{4}([.-])\d{1,2}\1\d{1,2}|\d{1,2}([./-])\d{1,2}\2\d{4}")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_SHORTEST = 6  # no email (a@b.cd) or phone (7 digits) fits in fewer characters


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (card numbers end in a Luhn check digit)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _is_card(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and luhn_valid(digits) and bool(digits.strip("0"))


def _is_phone(text: str) -> bool:
    return (
        7 <= len(_digits(text)) <= 15
        and _DATE.fullmatch(text) is None
        and _IPV4.fullmatch(text) is None
    )


def _card(match: re.Match[str]) -> str:
    return CARD if _is_card(match.group()) else match.group()


def _phone(match: re.Match[str]) -> str:
    return PHONE if _is_phone(match.group()) else match.group()


def _card_or_phone(match: re.Match[str]) -> str:
    text = match.group()
    if match.group("card") is not None:
        if _is_card(text):
            return CARD
        # a grouped number that is no card may still be a phone (a subset of its characters)
        return PHONE if _PHONE.fullmatch(text) and _is_phone(text) else text
    return PHONE if _is_phone(text) else text


def _emails(text: str) -> str:
    return _EMAIL.sub(EMAIL, text) if "@" in text else text


@dataclass(frozen=True)
class CustomPattern:
    pattern: re.Pattern[str]
    replacement: str = REDACTED


def _custom_step(custom: CustomPattern) -> Callable[[str], str]:
    replacement = custom.replacement

    def step(text: str) -> str:
        return custom.pattern.sub(lambda _: replacement, text)

    return step


class Redactor:
    """Applies the configured redactors to text, and to every string inside a JSON value."""

    def __init__(
        self,
        *,
        emails: bool = False,
        phones: bool = False,
        cards: bool = False,
        patterns: Sequence[CustomPattern] = (),
    ) -> None:
        steps: list[Callable[[str], str]] = []
        steps.extend(_custom_step(custom) for custom in patterns)
        if emails:
            steps.append(_emails)
        if cards and phones:
            steps.append(lambda text: _NUMBER.sub(_card_or_phone, text))
        elif cards:
            steps.append(lambda text: _CARD.sub(_card, text))
        elif phones:
            steps.append(lambda text: _PHONE.sub(_phone, text))
        self._steps = tuple(steps)
        self._shortest = 1 if patterns else _SHORTEST

    @property
    def active(self) -> bool:
        return bool(self._steps)

    def text(self, text: str, cache: dict[str, str] | None = None) -> str:
        """``text`` redacted; ``cache`` remembers answers for texts seen again (a response
        repeats its answer's text)."""
        if len(text) < self._shortest:
            return text
        if cache is not None:
            found = cache.get(text)
            if found is not None:
                return found
        redacted = text
        for step in self._steps:
            redacted = step(redacted)
        if cache is not None:
            cache[text] = redacted
        return redacted

    def value(self, value: Any, cache: dict[str, str] | None = None) -> Any:
        """A copy of a JSON value with every string (object keys too) redacted."""
        if isinstance(value, str):
            return self.text(value, cache)
        if isinstance(value, dict):
            return {
                (self.text(k, cache) if isinstance(k, str) else k): self.value(v, cache)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.value(item, cache) for item in value]
        return value
