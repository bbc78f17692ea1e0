"""What people and apps said was right: the rules that turn reviews and feedback into judgements.

One place for them, so the quality report, the export and the console read a verdict the same
way:

- A review verdict judges both answers: ``teacher_correct`` (the teacher right, the student
  wrong), ``student_correct`` (the reverse), ``both_correct``, ``both_wrong``.
- A feedback row judges the answer the app was given (``answered_by``: the teacher or the
  student that served): its ``correct`` flag when given; else a corrected answer means it was
  wrong; else its ``score`` (0.5 or more is right). A row with only a label or a comment
  judges nothing.
- A request's teacher answer is judged by its latest review verdict (any student's task); with
  no verdict, by the latest feedback on a teacher-given answer. People who review outrank apps.
  Its correction is the latest reviewer's corrected answer, else the latest app's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, case, false, literal_column, select, true

from gateway.db.tables import VERDICTS, feedback, requests, reviews

TEACHER_RIGHT = ("teacher_correct", "both_correct")
TEACHER_WRONG = ("student_correct", "both_wrong")
STUDENT_RIGHT = ("student_correct", "both_correct")
STUDENT_WRONG = ("teacher_correct", "both_wrong")
assert set(TEACHER_RIGHT) | set(TEACHER_WRONG) == set(VERDICTS)


def feedback_correct_sql(alias: str) -> str:
    """SQL for a feedback row's judgement of the answer the app got: true right, false wrong,
    NULL none (a label or a comment alone)."""
    return (
        f"CASE WHEN {alias}.correct IS NOT NULL THEN {alias}.correct"
        f" WHEN {alias}.corrected_output IS NOT NULL THEN false"
        f" WHEN {alias}.score IS NOT NULL THEN {alias}.score >= 0.5 END"
    )


def verdicts_sql(verdicts: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{verdict}'" for verdict in verdicts) + ")"


FEEDBACK_CORRECT: ColumnElement[Any] = literal_column(feedback_correct_sql("feedback"), Boolean)


def _of_request(table: Any) -> ColumnElement[bool]:
    # the route too, though the key alone finds the request: it lets the lookup use
    # ux_reviews_request_student (route, request_id, student) instead of reading every review
    return and_(
        table.c.route == requests.c.route,
        table.c.request_id == requests.c.request_id,
        table.c.request_created_at == requests.c.created_at,
    )


def _latest_verdict() -> Any:
    return (
        select(reviews.c.verdict)
        .where(_of_request(reviews), reviews.c.verdict.is_not(None))
        .order_by(reviews.c.judged_at.desc(), reviews.c.id.desc())
        .limit(1)
        .correlate(requests)
        .scalar_subquery()
    )


def _latest_teacher_feedback() -> Any:
    return (
        select(FEEDBACK_CORRECT)
        .where(
            _of_request(feedback),
            feedback.c.answered_by == "teacher",
            FEEDBACK_CORRECT.is_not(None),
        )
        .order_by(feedback.c.created_at.desc(), feedback.c.id.desc())
        .limit(1)
        .correlate(requests)
        .scalar_subquery()
    )


def teacher_judged_wrong() -> ColumnElement[bool]:
    """True for a ``requests`` row whose teacher answer was judged wrong (correlated)."""
    verdict = _latest_verdict()
    by_feedback = _latest_teacher_feedback()
    return case(
        (verdict.in_(TEACHER_WRONG), true()),
        (verdict.is_not(None), false()),
        (by_feedback.is_(False), true()),
        else_=false(),
    )


def judged_by_review() -> ColumnElement[bool]:
    """Whether the row's teacher answer has a review verdict (else feedback judged it)."""
    found: ColumnElement[bool] = _latest_verdict().is_not(None)
    return found


def teacher_correction() -> ColumnElement[Any]:
    """The corrected answer for a ``requests`` row: the latest reviewer's, else the latest
    app's (on a teacher-given answer); NULL when nobody gave one (correlated)."""
    by_review = (
        select(reviews.c.corrected_output)
        .where(_of_request(reviews), reviews.c.corrected_output.is_not(None))
        .order_by(reviews.c.judged_at.desc(), reviews.c.id.desc())
        .limit(1)
        .correlate(requests)
        .scalar_subquery()
    )
    by_feedback = (
        select(feedback.c.corrected_output)
        .where(
            _of_request(feedback),
            feedback.c.answered_by == "teacher",
            feedback.c.corrected_output.is_not(None),
        )
        .order_by(feedback.c.created_at.desc(), feedback.c.id.desc())
        .limit(1)
        .correlate(requests)
        .scalar_subquery()
    )
    return case((by_review.is_not(None), by_review), else_=by_feedback)
