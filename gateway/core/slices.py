"""Slice labels of a request, from its ``metadata`` object and ``X-Slice-<name>`` headers.

Labels are what every agreement figure is broken down by, so they are kept small and clean:
names are lower-case ``[a-z0-9_.-]``, values are printable text of bounded length. A header
wins over a ``metadata`` key of the same name (the header is usually set by infrastructure the
app does not control). Anything that does not fit is dropped, never an error: a bad label must
not fail an app's request.

Header values arrive as bytes the server decoded as Latin-1; those that are valid UTF-8 are
read as UTF-8 (``X-Slice-City: Zürich`` is stored as ``Zürich``). Control characters (C0, C1,
DEL) and the invisible bidi and zero-width formatting characters are removed from every value,
and values are cut to 128 characters: no label is ever stored raw. Labels are written to the
log as JSON values through bound parameters, so a value that looks like SQL is just text.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

HEADER_PREFIX = "x-slice-"
MAX_LABELS = 16
MAX_VALUE_LENGTH = 128
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")


def _clean_value(value: object) -> str | None:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        return None
    text = _UNPRINTABLE.sub("", text).strip()
    if not text:
        return None
    return text[:MAX_VALUE_LENGTH]


def _from_latin1(value: str) -> str:
    """A header value the server decoded as Latin-1, read as UTF-8 when its bytes are that."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def slice_labels(
    metadata: Mapping[str, object] | None, headers: Iterable[tuple[str, str]]
) -> dict[str, str]:
    labels: dict[str, str] = {}
    candidates: list[tuple[str, object]] = list((metadata or {}).items())
    candidates.extend(
        (name[len(HEADER_PREFIX) :], _from_latin1(value))
        for name, value in headers
        if name.lower().startswith(HEADER_PREFIX)
    )
    for raw_name, raw_value in candidates:
        name = raw_name.strip().lower().replace(" ", "_")
        value = _clean_value(raw_value)
        if value is None or not _NAME.match(name):
            continue
        if name not in labels and len(labels) >= MAX_LABELS:
            continue
        labels[name] = value
    return labels


def last_user_text(body: Mapping[str, object]) -> str:
    """The text a route's slice rules look at: the last user message (chat ``messages``, or the
    Responses API's ``input`` items), the ``input`` string, or the prompt."""
    messages = body.get("messages")
    if messages is None:
        messages = body.get("input")
        if isinstance(messages, str):
            return messages
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    return ""


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def length_bucket(length: int, bounds: Sequence[int]) -> str:
    """``bounds`` [50, 200] → "<50", "50-199", ">=200"."""
    if length < bounds[0]:
        return f"<{bounds[0]}"
    for low, high in itertools.pairwise(bounds):
        if length < high:
            return f"{low}-{high - 1}"
    return f">={bounds[-1]}"


@dataclass(frozen=True)
class RouteSliceRules:
    """A route's own labelling: regex rules, a length dimension, defaults.

    Labels an app sent (metadata, headers) win over the route's rules; rules win over
    defaults. Among rules, the first match per dimension wins.
    """

    rules: tuple[tuple[str, re.Pattern[str], str], ...] = ()
    length_dimension: str | None = None
    length_bounds: tuple[int, ...] = ()
    defaults: tuple[tuple[str, str], ...] = ()

    def apply(self, labels: dict[str, str], text: str) -> dict[str, str]:
        for dimension, pattern, value in self.rules:
            if dimension not in labels and pattern.search(text):
                labels[dimension] = value
        if self.length_dimension and self.length_dimension not in labels:
            labels[self.length_dimension] = length_bucket(len(text), self.length_bounds)
        for dimension, value in self.defaults:
            labels.setdefault(dimension, value)
        return labels


ALL = "all"
OTHER = "other"


def exported_slices(
    labels: Mapping[str, str], allowed: Mapping[str, frozenset[str]]
) -> list[tuple[str, str]]:
    """(dimension, value) pairs to use as metric labels, cardinality bounded by ``allowed``.

    Every request counts under ("all", "all"); each allowed dimension counts once, under its
    value when that is allowed, else "other" (also when the request has no such label).
    """
    pairs = [(ALL, ALL)]
    for dimension, values in allowed.items():
        value = labels.get(dimension)
        pairs.append((dimension, value if value in values else OTHER))
    return pairs
