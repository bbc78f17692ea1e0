"""Answers that are not plain text: tool calls and refusals, the teacher's reported version,
and the app's own request id.

A chat answer may carry ``tool_calls`` or a ``refusal`` instead of (or beside) its text; until
now only the text reached a column, so a tool-call answer left ``teacher_output`` NULL and was
never compared. The new columns hold each side's calls (``[{id, name, arguments}]``, the
arguments as the raw JSON text the model wrote) and refusal. ``teacher_model_reported`` and
``teacher_fingerprint`` are the ``model`` and ``system_fingerprint`` the teacher's answer named
(a provider may serve a new snapshot under the same model name). ``client_request_id`` is the
``X-Request-Id`` / ``X-Client-Request-Id`` the app sent, when it was sane; ``request_id`` stays
the key. All are NULL on older rows, so adding them rewrites nothing.

The ``disagreements`` view gains the new answer columns at its end (``CREATE OR REPLACE`` keeps
the earlier columns and their order) and reads the prompt of Responses API requests
(``input``) too.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {
    "client_request_id": (
        sa.Text(),
        "The X-Request-Id (or X-Client-Request-Id) the app sent, if sane; echoed back as "
        "x-client-request-id",
    ),
    "teacher_tool_calls": (
        postgresql.JSONB(),
        "Tool calls of the teacher's answer (first choice): [{id, name, arguments}], arguments "
        "as the raw JSON text",
    ),
    "teacher_refusal": (sa.Text(), "The teacher's refusal (message.refusal), if it refused"),
    "teacher_model_reported": (sa.Text(), "The model the teacher's answer reported"),
    "teacher_fingerprint": (sa.Text(), "The system_fingerprint of the teacher's answer"),
    "student_tool_calls": (
        postgresql.JSONB(),
        "Tool calls of the student's answer (first choice), as teacher_tool_calls",
    ),
    "student_refusal": (sa.Text(), "The student's refusal, if it refused"),
}

PROMPT = """
    CASE WHEN endpoint = 'text' THEN
        CASE jsonb_typeof(request_payload -> 'prompt')
            WHEN 'string' THEN request_payload ->> 'prompt'
            WHEN 'array' THEN request_payload -> 'prompt' ->> 0
        END
    WHEN endpoint = 'responses' AND jsonb_typeof(request_payload -> 'input') = 'string' THEN
        request_payload ->> 'input'
    ELSE (
        SELECT CASE jsonb_typeof(message -> 'content')
            WHEN 'string' THEN message ->> 'content'
            WHEN 'array' THEN (
                SELECT string_agg(part ->> 'text', ' ')
                FROM jsonb_array_elements(message -> 'content') AS p(part)
                WHERE jsonb_typeof(part -> 'text') = 'string'
            )
        END
        FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(request_payload -> 'messages') = 'array'
                THEN request_payload -> 'messages'
            WHEN jsonb_typeof(request_payload -> 'input') = 'array'
                THEN request_payload -> 'input'
            ELSE '[]'::jsonb
            END
        ) WITH ORDINALITY AS m(message, position)
        WHERE message ->> 'role' = 'user'
        ORDER BY position DESC
        LIMIT 1
    ) END AS prompt,"""

OLD_PROMPT = """
    CASE WHEN endpoint = 'text' THEN
        CASE jsonb_typeof(request_payload -> 'prompt')
            WHEN 'string' THEN request_payload ->> 'prompt'
            WHEN 'array' THEN request_payload -> 'prompt' ->> 0
        END
    ELSE (
        SELECT message ->> 'content'
        FROM jsonb_array_elements(
            CASE jsonb_typeof(request_payload -> 'messages')
                WHEN 'array' THEN request_payload -> 'messages'
                ELSE '[]'::jsonb
            END
        ) WITH ORDINALITY AS m(message, position)
        WHERE message ->> 'role' = 'user'
        ORDER BY position DESC
        LIMIT 1
    ) END AS prompt,"""

HEAD = """
CREATE OR REPLACE VIEW disagreements AS
SELECT
    request_id,
    route,
    endpoint,
    created_at,
    (created_at AT TIME ZONE 'UTC')::date AS day,
    mode,
    served_by,
    slices,"""

TAIL = """
    teacher_output,
    student_output,
    agreement_score,
    agreement_reason,
    agreement_detail,
    student_confidence,
    fallback_reason,
    teacher_model,
    student_model,
    request_payload{extra}
FROM requests
WHERE agree = false
"""

NEW_VIEW_COLUMNS = """,
    teacher_tool_calls,
    student_tool_calls,
    teacher_refusal,
    student_refusal,
    client_request_id"""

VIEW_COMMENTS = {
    "COLUMN disagreements.prompt": "The last user message (text parts joined), the prompt of "
    "/v1/completions, or the input of /v1/responses",
    "COLUMN disagreements.teacher_tool_calls": "Tool calls of the teacher's answer, if any",
    "COLUMN disagreements.student_tool_calls": "Tool calls of the student's answer, if any",
}


def _comment(target: str, comment: str) -> None:
    quoted = comment.replace("'", "''")
    op.execute(f"COMMENT ON {target} IS '{quoted}'")


def upgrade() -> None:
    for name, (type_, comment) in COLUMNS.items():
        op.add_column("requests", sa.Column(name, type_))
        _comment(f"COLUMN requests.{name}", comment)
    op.execute(HEAD + PROMPT + TAIL.format(extra=NEW_VIEW_COLUMNS))
    for target, comment in VIEW_COMMENTS.items():
        _comment(target, comment)


def downgrade() -> None:
    # A view cannot lose columns in place: make it again as 0005 had it.
    op.execute("DROP VIEW disagreements")
    op.execute(HEAD.replace("CREATE OR REPLACE", "CREATE") + OLD_PROMPT + TAIL.format(extra=""))
    _comment("VIEW disagreements", _OLD_VIEW_COMMENT)
    _comment("COLUMN disagreements.day", "UTC calendar day of created_at")
    _comment(
        "COLUMN disagreements.prompt", "The last user message, or the prompt of /v1/completions"
    )
    for name in reversed(COLUMNS):
        op.drop_column("requests", name)


_OLD_VIEW_COMMENT = (
    "Requests where teacher and student disagreed (agree = false), both answers side by side; "
    "prompt is the last user message (or the completion prompt)"
)
