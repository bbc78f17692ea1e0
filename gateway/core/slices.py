"""Slice labels of a request, from its ``metadata`` object and ``X-Slice-<name>`` headers.

Labels are what every agreement figure is broken down by, so they are kept small and clean:
names are lower-case ``[a-z0-9_.-]``, values are printable text of bounded length. A header
wins over a ``metadata`` key of the same name (the header is usually set by infrastructure the
app does not control). Anything that does not fit is dropped, never an error: a bad label must
not fail an app's request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

HEADER_PREFIX = "x-slice-"
MAX_LABELS = 16
MAX_VALUE_LENGTH = 128
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


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


def slice_labels(
    metadata: Mapping[str, object] | None, headers: Iterable[tuple[str, str]]
) -> dict[str, str]:
    labels: dict[str, str] = {}
    candidates: list[tuple[str, object]] = list((metadata or {}).items())
    candidates.extend(
        (name[len(HEADER_PREFIX) :], value)
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
