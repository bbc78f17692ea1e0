"""Datasets and re-distillation: ``datasets``, ``dataset_items``, ``distill_runs``, and what
each student was trained on.

- ``datasets``: every export registers one: its route, kind (``train``, or ``eval`` for a
  held-out split, which names its training set in ``split_of``), the manifest (filters, time
  range, verifier, exclusions, teacher versions, config hash, per-slice counts), the file
  written and its sha256.
- ``dataset_items``: the requests a dataset holds, each with its normalised prompt's key, so
  a later export can leave out prompts an earlier dataset used, and drift can compare live
  traffic with what a student learned.
- ``distill_runs``: one row per ``distill`` run: its stages (export, train, launch, add,
  replay, report) with their outcome, the datasets made, the model directory, the candidate
  added; a failed run resumes from its last finished stage.
- ``route_students.train_dataset_id``: the dataset a student was trained on, when known.

Downgrade drops the three tables, with their rows, and the column.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = {
    "datasets": (
        "Datasets the export wrote: one per file, with its manifest; eval splits name their "
        "training set in split_of",
        {
            "id": "Identity (datasets show ID, export --exclude-dataset ID)",
            "route": "The route whose traffic it holds",
            "created_at": "When it was written",
            "created_by": "Who wrote it (the CLI user, or distill)",
            "kind": "train, or eval (a held-out split)",
            "split_of": "For an eval split: the training dataset written with it",
            "manifest": "The export's manifest: filters, window, verifier, exclusions, teacher "
            "versions, config hash, per-slice and per-stratum counts, live frequencies",
            "path": "The file written (as given to the export, made absolute)",
            "sha256": "SHA-256 of the file's bytes",
            "items": "How many examples it holds",
        },
    ),
    "dataset_items": (
        "The requests each dataset holds, with their normalised prompt's key",
        {
            "dataset_id": "The dataset (datasets.id)",
            "request_id": "The request the example came from",
            "request_created_at": "The request's created_at (joins requests on both columns)",
            "prompt_key": "SHA-256 of the normalised prompt: the same prompt, the same key",
            "frequency": "How many live requests in the window had this normalised prompt",
        },
    ),
    "distill_runs": (
        "Runs of distill: what was made from what, stage by stage",
        {
            "id": "Identity",
            "route": "The route",
            "student": "The candidate's name",
            "created_at": "When the run started",
            "updated_at": "When a stage last finished or failed",
            "created_by": "Who started it",
            "status": "running, failed, stopped (Ctrl-C) or done",
            "stage": "The last stage finished (or the one that failed)",
            "stages": "Each stage's outcome, times and details, in order",
            "options": "The run's options (train command, mix, holdout, launch settings)",
            "train_dataset_id": "The training set it exported",
            "eval_dataset_id": "The held-out split it exported",
            "output_dir": "The model directory the training command filled",
            "error": "Why the last failed stage failed",
        },
    ),
}


def _comment(target: str, comment: str) -> None:
    quoted = comment.replace("'", "''")
    op.execute(f"COMMENT ON {target} IS '{quoted}'")


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("split_of", sa.BigInteger(), sa.ForeignKey("datasets.id", ondelete="SET NULL")),
        sa.Column("manifest", postgresql.JSONB(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.CheckConstraint("kind IN ('train', 'eval')", name="datasets_kind"),
    )
    op.create_index("ix_datasets_route_created_at", "datasets", ["route", "created_at"])
    op.create_table(
        "dataset_items",
        sa.Column(
            "dataset_id",
            sa.BigInteger(),
            sa.ForeignKey("datasets.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("request_id", sa.Text(), primary_key=True),
        sa.Column("request_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prompt_key", sa.Text(), nullable=False),
        sa.Column("frequency", sa.Integer(), nullable=False, server_default="1"),
    )
    op.create_index("ix_dataset_items_prompt_key", "dataset_items", ["prompt_key"])
    op.create_table(
        "distill_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("student", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text()),
        sa.Column(
            "stages", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")
        ),
        sa.Column(
            "options", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column(
            "train_dataset_id", sa.BigInteger(), sa.ForeignKey("datasets.id", ondelete="SET NULL")
        ),
        sa.Column(
            "eval_dataset_id", sa.BigInteger(), sa.ForeignKey("datasets.id", ondelete="SET NULL")
        ),
        sa.Column("output_dir", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.CheckConstraint(
            "status IN ('running', 'failed', 'stopped', 'done')", name="distill_runs_status"
        ),
    )
    op.create_index("ix_distill_runs_route_student", "distill_runs", ["route", "student"])
    op.add_column(
        "route_students",
        sa.Column(
            "train_dataset_id",
            sa.BigInteger(),
            sa.ForeignKey("datasets.id", ondelete="SET NULL"),
        ),
    )
    _comment(
        "COLUMN route_students.train_dataset_id",
        "The dataset the student was trained on, when known (distill sets it; drift compares "
        "live traffic with it)",
    )
    for table, (comment, columns) in TABLES.items():
        _comment(f"TABLE {table}", comment)
        for column, text in columns.items():
            _comment(f"COLUMN {table}.{column}", text)


def downgrade() -> None:
    op.drop_column("route_students", "train_dataset_id")
    op.drop_table("distill_runs")
    op.drop_table("dataset_items")
    op.drop_table("datasets")
