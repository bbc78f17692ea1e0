"""The demo task: write a date in ISO form (``YYYY-MM-DD``), whatever style it came in.

Pure: no I/O, so the teacher, the student's trainer, the demo's replay and the tests all draw
the same prompts from the same seeds. A prompt is the date alone, in one of four styles (the
``style`` slice dimension), easy to hard:

- ``iso``: already ISO (``2024-03-05``): copy it;
- ``us``: ``03/05/2024``, month first: reorder;
- ``written``: ``March 5th, 2024`` or ``5 March 2024``: month names and ordinals;
- ``relative``: ``3 days after 2024-01-30``, ``2 weeks before 2024-03-01``: calendar
  arithmetic, where the small student genuinely struggles.

The teacher (:func:`teacher_answer`) is an exact parser with one real bug, documented in
docs/demo.md: its relative arithmetic treats every month as 31 days long. Adding past the end
of a shorter month then gives an impossible date (``2 days after 2023-02-27`` →
``2023-02-29``) or, once past day 31, a real date a few days off (``26 days after
2032-04-18`` → ``2032-05-13``, not ``05-14``). About a fifth of relative prompts come out
wrong. :func:`verify_answer` is the route's export verifier (``kind: function``,
``function: gateway.demo.task:verify_answer``): checking an answer is easier than producing
it, so it reads the request's date back and checks the answer against the calendar, dropping
both kinds (``function:impossible_date``, ``function:wrong_date``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from gateway.core.slices import last_user_text

STYLES = ("iso", "us", "written", "relative")
# The demo's traffic: mostly easy styles, relative dates rarer but real.
DEMO_MIX: Mapping[str, float] = {"iso": 0.25, "us": 0.25, "written": 0.3, "relative": 0.2}
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
FIRST_YEAR, LAST_YEAR = 1990, 2035
MAX_DAYS, MAX_WEEKS = 30, 4

# The route's slice rules (first match per dimension wins): the style of a prompt.
STYLE_RULES: tuple[tuple[str, str], ...] = (
    ("relative", r"\b(after|before)\b"),
    ("iso", r"^\s*\d{4}-\d{2}-\d{2}\s*$"),
    ("us", r"^\s*\d{1,2}/\d{1,2}/\d{4}\s*$"),
    ("written", r"[A-Za-z]"),
)

_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_US = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
_MONTH = "(" + "|".join(MONTHS) + ")"
_WRITTEN_MDY = re.compile(rf"^{_MONTH} (\d{{1,2}})(?:st|nd|rd|th)?, (\d{{4}})$")
_WRITTEN_DMY = re.compile(rf"^(\d{{1,2}}) {_MONTH} (\d{{4}})$")
_RELATIVE = re.compile(r"^(\d{1,3}) (day|days|week|weeks) (after|before) (\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class Example:
    style: str
    prompt: str
    answer: str  # the exact ISO date


def ordinal(day: int) -> str:
    if 11 <= day % 100 <= 13:
        return f"{day}th"
    return f"{day}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th') }"


def _random_date(rng: random.Random) -> date:
    start = date(FIRST_YEAR, 1, 1).toordinal()
    end = date(LAST_YEAR, 12, 31).toordinal()
    return date.fromordinal(rng.randint(start, end))


def example(rng: random.Random, style: str) -> Example:
    """One prompt of ``style`` with its exact answer."""
    day = _random_date(rng)
    if style == "iso":
        return Example(style, day.isoformat(), day.isoformat())
    if style == "us":
        return Example(style, f"{day.month:02d}/{day.day:02d}/{day.year}", day.isoformat())
    if style == "written":
        month = MONTHS[day.month - 1]
        if rng.random() < 0.5:
            prompt = f"{month} {ordinal(day.day)}, {day.year}"
        else:
            prompt = f"{day.day} {month} {day.year}"
        return Example(style, prompt, day.isoformat())
    if style == "relative":
        if rng.random() < 0.7:
            amount = rng.randint(1, MAX_DAYS)
            unit, days = ("day" if amount == 1 else "days"), amount
        else:
            amount = rng.randint(1, MAX_WEEKS)
            unit, days = ("week" if amount == 1 else "weeks"), 7 * amount
        after = rng.random() < 0.5
        anchor = day - timedelta(days=days) if after else day + timedelta(days=days)
        direction = "after" if after else "before"
        return Example(style, f"{amount} {unit} {direction} {anchor.isoformat()}", day.isoformat())
    raise ValueError(f"unknown style {style!r}; styles: {', '.join(STYLES)}")


def examples(seed: int, count: int, mix: Mapping[str, float] | None = None) -> list[Example]:
    """``count`` examples drawn with ``seed``; styles by ``mix`` (default: equal shares)."""
    return list(stream(seed, mix, count))


def stream(
    seed: int, mix: Mapping[str, float] | None = None, count: int | None = None
) -> Iterator[Example]:
    rng = random.Random(seed)
    weights = mix or dict.fromkeys(STYLES, 1.0)
    styles: Sequence[str] = list(weights)
    shares = [weights[style] for style in styles]
    made = 0
    while count is None or made < count:
        yield example(rng, rng.choices(styles, shares)[0])
        made += 1


def style_of(prompt: str) -> str | None:
    """The style the route's :data:`STYLE_RULES` give ``prompt`` (None: no rule matches)."""
    for style, pattern in STYLE_RULES:
        if re.search(pattern, prompt):
            return style
    return None


# --- solving -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    year: int
    month: int
    day: int
    shift_days: int = 0  # relative prompts: signed days to add


def _parse(prompt: str) -> _Parsed | None:
    text = " ".join(prompt.split())
    if found := _ISO.match(text):
        return _Parsed(int(found[1]), int(found[2]), int(found[3]))
    if found := _US.match(text):
        return _Parsed(int(found[3]), int(found[1]), int(found[2]))
    if found := _WRITTEN_MDY.match(text):
        return _Parsed(int(found[3]), MONTHS.index(found[1]) + 1, int(found[2]))
    if found := _WRITTEN_DMY.match(text):
        return _Parsed(int(found[3]), MONTHS.index(found[2]) + 1, int(found[1]))
    if found := _RELATIVE.match(text):
        anchor = _ISO.match(found[4])
        assert anchor is not None  # the pattern above already required the ISO shape
        days = int(found[1]) * (7 if found[2].startswith("week") else 1)
        sign = 1 if found[3] == "after" else -1
        return _Parsed(int(anchor[1]), int(anchor[2]), int(anchor[3]), sign * days)
    return None


def _real(parsed: _Parsed) -> date | None:
    try:
        return date(parsed.year, parsed.month, parsed.day)
    except ValueError:
        return None


def solve(prompt: str) -> str | None:
    """The exact answer, or None when the prompt is not a date in one of the styles."""
    parsed = _parse(prompt)
    anchor = None if parsed is None else _real(parsed)
    if parsed is None or anchor is None:
        return None
    return (anchor + timedelta(days=parsed.shift_days)).isoformat()


UNREADABLE = "I could not read a date in that."


def teacher_answer(prompt: str) -> str:
    """What the demo teacher says: exact, except relative dates (every month has 31 days)."""
    parsed = _parse(prompt)
    if parsed is None or _real(parsed) is None:
        return UNREADABLE
    if not parsed.shift_days:
        return f"{parsed.year:04d}-{parsed.month:02d}-{parsed.day:02d}"
    year, month, day = parsed.year, parsed.month, parsed.day + parsed.shift_days
    while day > 31:  # THE BUG: carries into the next month only past day 31
        day -= 31
        month, year = (1, year + 1) if month == 12 else (month + 1, year)
    while day < 1:  # ... and borrows 31 days from whichever month comes before
        month, year = (12, year - 1) if month == 1 else (month - 1, year)
        day += 31
    return f"{year:04d}-{month:02d}-{day:02d}"


def is_correct(prompt: str, answer: str) -> bool:
    return answer.strip() == solve(prompt)


# --- the export's verifier ---------------------------------------------------------------------


def verify_answer(answer: str, request: Mapping[str, Any]) -> tuple[bool, str | None]:
    """The demo route's export verifier: the answer is the request's date, in ISO form.

    Fails with ``not_iso`` (a refusal, anything but one ``YYYY-MM-DD``), ``impossible_date``
    (``2023-02-30``), ``wrong_date`` (a real date, not the one asked for) or ``no_date`` (the
    request holds no prompt in one of the task's styles).
    """
    text = answer.strip()
    found = _ISO.match(text)
    if found is None:
        return False, "not_iso"
    if _real(_Parsed(int(found[1]), int(found[2]), int(found[3]))) is None:
        return False, "impossible_date"
    expected = solve(last_user_text(request))
    if expected is None:
        return False, "no_date"
    if text != expected:
        return False, "wrong_date"
    return True, None
