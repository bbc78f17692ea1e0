"""Rows of ``student_answers``: one per (request, student, source), every candidate's answer.

A student's call produces the same columns whichever student it was (``student_half``,
``student_skipped``, a verdict half); the champion's also complete the ``requests`` row, and
every student's become its row here, through :func:`answer_row`. Like request rows, an answer
row may arrive in halves (the answer, then the verdict once the teacher's answer is known):
the writer merges them on the key.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.db.tables import student_answers
from gateway.shadow.records import Record

LIVE = "live"
REPLAY = "replay"
_COLUMNS = frozenset(column.name for column in student_answers.columns)


def answer_row(half: Record, student: str, source: str = LIVE) -> Record:
    """A student half of a ``requests`` row (identity columns included) as the student's row of
    ``student_answers``."""
    row = {key: value for key, value in half.items() if key in _COLUMNS}
    row.update(student=student, source=source)
    if any(key.startswith("student_") for key in half):
        row["answered_at"] = datetime.now(UTC)
    return row
