"""A user-supplied comparator, as a route's ``agreement.function`` names one."""

from __future__ import annotations


def same_length(teacher: str, student: str) -> tuple[float, str | None]:
    """Score by how close the lengths are; says why when they are not equal."""
    longest = max(len(teacher), len(student), 1)
    score = 1 - abs(len(teacher) - len(student)) / longest
    return score, None if score == 1 else "lengths_differ"
