"""Truth beyond agreement: ``feedback``, ``reviews``, ``review_verdicts``, and which student served.

- ``feedback``: what an app said of an answer it was given (``POST /v1/feedback``): a score,
  a correct/incorrect flag, a label, a comment, a corrected answer. Several per request (from
  different sources). ``answered_by`` is who gave the answer the app judged: ``teacher`` or the
  student's name, read from the request's row when the feedback came.
- ``reviews``: review tasks, one per (request, student) a ``review sample`` drew: the teacher's
  answer beside the student's, for a person to judge. ``verdict`` is the latest judgement
  (``teacher_correct``, ``student_correct``, ``both_correct``, ``both_wrong``); ``group_key``
  groups tasks whose teacher and student answers are the same pair (normalised), so one
  verdict can cover the group.
- ``review_verdicts``: every verdict ever given, the later ones winning in ``reviews``;
  ``via_review`` names the task a group verdict was given on.
- ``requests.served_student``: the name of the student that answered the app (NULL when the
  teacher did), so feedback on a served answer concerns the right student.

Downgrade drops the three tables, with their rows, and the column.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERDICTS = ("teacher_correct", "student_correct", "both_correct", "both_wrong")

TABLES = {
    "feedback": (
        "What apps said of the answers they were given (POST /v1/feedback); several per request",
        {
            "id": "Identity",
            "request_id": "The gateway's request id (requests.request_id)",
            "request_created_at": "The request's created_at (joins requests on both columns)",
            "route": "The request's route",
            "created_at": "When the feedback came",
            "key_name": "The app key that sent it",
            "source": "Where the app says it came from (e.g. thumbs, grader); free text",
            "answered_by": "Who gave the judged answer: teacher, or the student's name",
            "score": "A score from 0 (bad) to 1 (good)",
            "correct": "Whether the answer was correct",
            "label": "A label the app gave (free text)",
            "comment": "A comment (redacted like prompts)",
            "corrected_output": "The answer that would have been right (redacted like prompts)",
        },
    ),
    "reviews": (
        "Review tasks: a teacher answer (and one student's) drawn by review sample for a "
        "person to judge; the latest verdict here, every verdict in review_verdicts",
        {
            "id": "Identity",
            "route": "The request's route",
            "request_id": "The gateway's request id",
            "request_created_at": "The request's created_at",
            "student": "The student whose answer is judged beside the teacher's",
            "slices": "The request's slice labels",
            "disagreement": "Whether the student's answer disagreed with the teacher's",
            "group_key": "Hash of the normalised teacher and student answers: tasks with the "
            "same pair share it",
            "batch": "The review sample run that drew the task",
            "created_at": "When the task was drawn",
            "created_by": "Who drew it",
            "verdict": "The latest verdict: teacher_correct, student_correct, both_correct or "
            "both_wrong; NULL while open",
            "corrected_output": "The answer the reviewer says is right, if given",
            "reviewer": "Who gave the latest verdict",
            "judged_at": "When the latest verdict was given",
        },
    ),
    "review_verdicts": (
        "Every verdict given on a review task, in order; reviews holds the latest",
        {
            "id": "Identity",
            "review_id": "The task (reviews.id)",
            "at": "When it was given",
            "reviewer": "Who gave it",
            "verdict": "teacher_correct, student_correct, both_correct or both_wrong",
            "corrected_output": "The corrected answer given with it, if any",
            "via_review": "The task the verdict was given on, when it covered a group",
        },
    ),
}


def _comment(target: str, comment: str) -> None:
    quoted = comment.replace("'", "''")
    op.execute(f"COMMENT ON {target} IS '{quoted}'")


def _verdict_check(name: str) -> sa.CheckConstraint:
    listed = ", ".join(f"'{verdict}'" for verdict in VERDICTS)
    return sa.CheckConstraint(f"verdict IN ({listed})", name=name)


def _now() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


def upgrade() -> None:
    op.add_column("requests", sa.Column("served_student", sa.Text()))
    _comment(
        "COLUMN requests.served_student",
        "The student that answered the app (x-student); NULL when the teacher did",
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("request_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        _now(),
        sa.Column("key_name", sa.Text(), nullable=False),
        sa.Column("source", sa.Text()),
        sa.Column("answered_by", sa.Text(), nullable=False),
        sa.Column("score", sa.Float()),
        sa.Column("correct", sa.Boolean()),
        sa.Column("label", sa.Text()),
        sa.Column("comment", sa.Text()),
        sa.Column("corrected_output", sa.Text()),
        sa.CheckConstraint("score BETWEEN 0 AND 1", name="feedback_score"),
        sa.CheckConstraint(
            "score IS NOT NULL OR correct IS NOT NULL OR label IS NOT NULL "
            "OR comment IS NOT NULL OR corrected_output IS NOT NULL",
            name="feedback_something",
        ),
    )
    op.create_index("ix_feedback_route_created_at", "feedback", ["route", "created_at"])
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("request_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("student", sa.Text(), nullable=False),
        sa.Column(
            "slices", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("disagreement", sa.Boolean()),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("batch", sa.Text(), nullable=False),
        _now(),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("verdict", sa.Text()),
        sa.Column("corrected_output", sa.Text()),
        sa.Column("reviewer", sa.Text()),
        sa.Column("judged_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("route", "request_id", "student", name="ux_reviews_request_student"),
        _verdict_check("reviews_verdict"),
    )
    op.create_index("ix_reviews_route_verdict", "reviews", ["route", "verdict"])
    op.create_index("ix_reviews_group_key", "reviews", ["route", "group_key"])
    op.create_table(
        "review_verdicts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "review_id",
            sa.BigInteger(),
            sa.ForeignKey("reviews.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("reviewer", sa.Text(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("corrected_output", sa.Text()),
        sa.Column("via_review", sa.BigInteger()),
        _verdict_check("review_verdicts_verdict"),
    )
    op.create_index("ix_review_verdicts_review_id", "review_verdicts", ["review_id"])
    for table, (comment, columns) in TABLES.items():
        _comment(f"TABLE {table}", comment)
        for column, text in columns.items():
            _comment(f"COLUMN {table}.{column}", text)


def downgrade() -> None:
    op.drop_table("review_verdicts")
    op.drop_table("reviews")
    op.drop_table("feedback")
    op.drop_column("requests", "served_student")
