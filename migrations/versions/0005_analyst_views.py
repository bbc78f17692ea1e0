"""Views for analysts (disagreements, agreement per slice per day, fallbacks per day) and the
indexes that keep them fast on a large table.

Days are UTC calendar days, whatever the session's TimeZone, so a figure never moves with the
client that reads it. ``ix_requests_day_route`` indexes exactly the expression the daily views
group by, so ``WHERE day >= …`` on a view is an index range scan (Postgres pushes the condition
through the views' GROUP BY). ``ix_requests_disagreements`` is partial: it holds only the
disagreements, a small share of the rows, so listing them is cheap at any table size.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DAY = "((created_at AT TIME ZONE 'UTC')::date)"  # the UTC day: the views group by it

DISAGREEMENTS = """
CREATE VIEW disagreements AS
SELECT
    request_id,
    route,
    endpoint,
    created_at,
    (created_at AT TIME ZONE 'UTC')::date AS day,
    mode,
    served_by,
    slices,
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
    ) END AS prompt,
    teacher_output,
    student_output,
    agreement_score,
    agreement_reason,
    agreement_detail,
    student_confidence,
    fallback_reason,
    teacher_model,
    student_model,
    request_payload
FROM requests
WHERE agree = false
"""

# agreement_low/high: the 95 % Wilson interval (z = 1.959964, z^2 = 3.841459)
AGREEMENT_DAILY = """
CREATE VIEW agreement_daily AS
SELECT
    day, route, dimension, value, requests, compared, agreed, compared - agreed AS disagreed,
    CASE WHEN compared > 0 THEN agreed::float8 / compared END AS agreement,
    CASE WHEN compared > 0 THEN
        (agreed::float8 / compared + 1.920730 / compared - 1.959964 * sqrt(
            (agreed::float8 / compared) * (1 - agreed::float8 / compared) / compared
            + 0.960365 / (compared::float8 * compared)
        )) / (1 + 3.841459 / compared)
    END AS agreement_low,
    CASE WHEN compared > 0 THEN
        (agreed::float8 / compared + 1.920730 / compared + 1.959964 * sqrt(
            (agreed::float8 / compared) * (1 - agreed::float8 / compared) / compared
            + 0.960365 / (compared::float8 * compared)
        )) / (1 + 3.841459 / compared)
    END AS agreement_high,
    mean_score, mean_confidence, student_served, fallbacks
FROM (
    SELECT
        (r.created_at AT TIME ZONE 'UTC')::date AS day,
        r.route,
        label.dimension,
        label.value,
        count(*) AS requests,
        count(r.agree) AS compared,
        count(*) FILTER (WHERE r.agree) AS agreed,
        avg(r.agreement_score) AS mean_score,
        avg(r.student_confidence) AS mean_confidence,
        count(*) FILTER (WHERE r.served_by = 'student') AS student_served,
        count(r.fallback_reason) AS fallbacks
    FROM requests AS r
    CROSS JOIN LATERAL (
        SELECT '(all)'::text, '(all)'::text
        UNION ALL
        SELECT key, value FROM jsonb_each_text(r.slices)
    ) AS label(dimension, value)
    GROUP BY 1, 2, 3, 4
) AS counts
"""

FALLBACKS_DAILY = """
CREATE VIEW fallbacks_daily AS
SELECT day, route, fallback_reason, fallbacks, student_chosen,
       fallbacks::float8 / student_chosen AS share
FROM (
    SELECT day, route, fallback_reason, count(*) AS fallbacks,
           (sum(count(*)) OVER (PARTITION BY day, route))::bigint AS student_chosen
    FROM (
        SELECT (created_at AT TIME ZONE 'UTC')::date AS day, route, fallback_reason
        FROM requests
        WHERE served_by = 'student' OR fallback_reason IS NOT NULL
    ) AS chosen
    GROUP BY day, route, fallback_reason
) AS per_reason
WHERE fallback_reason IS NOT NULL
"""

COMMENTS = {
    "VIEW disagreements": "Requests where teacher and student disagreed (agree = false), both "
    "answers side by side; prompt is the last user message (or the completion prompt)",
    "COLUMN disagreements.day": "UTC calendar day of created_at",
    "COLUMN disagreements.prompt": "The last user message, or the prompt of /v1/completions",
    "VIEW agreement_daily": "Agreement per UTC day, route and slice (dimension, value); "
    "dimension = value = '(all)' is the route's total. A request with several labels counts "
    "once in each of its dimensions",
    "COLUMN agreement_daily.requests": "Requests logged",
    "COLUMN agreement_daily.compared": "Requests with an agreement verdict (both answered)",
    "COLUMN agreement_daily.agreed": "Compared requests where the answers agreed",
    "COLUMN agreement_daily.agreement": "agreed / compared; NULL when nothing was compared",
    "COLUMN agreement_daily.agreement_low": "95 % Wilson interval of agreement: lower bound",
    "COLUMN agreement_daily.agreement_high": "95 % Wilson interval of agreement: upper bound",
    "COLUMN agreement_daily.student_served": "Requests the student's answer was served for",
    "COLUMN agreement_daily.fallbacks": "Requests where the teacher answered for a chosen student",
    "VIEW fallbacks_daily": "Why the teacher answered in place of a chosen student, per UTC day "
    "and route; share = fallbacks / student_chosen",
    "COLUMN fallbacks_daily.student_chosen": "Requests the rollout chose the student for "
    "(served by the student, or fallen back) that day on that route",
}


def upgrade() -> None:
    op.create_index("ix_requests_day_route", "requests", [sa.text(DAY), "route"])
    op.create_index(
        "ix_requests_disagreements",
        "requests",
        ["route", "created_at"],
        postgresql_where=sa.text("agree = false"),
    )
    op.execute(DISAGREEMENTS)
    op.execute(AGREEMENT_DAILY)
    op.execute(FALLBACKS_DAILY)
    for target, comment in COMMENTS.items():
        quoted = comment.replace("'", "''")
        op.execute(f"COMMENT ON {target} IS '{quoted}'")


def downgrade() -> None:
    op.execute("DROP VIEW fallbacks_daily")
    op.execute("DROP VIEW agreement_daily")
    op.execute("DROP VIEW disagreements")
    op.drop_index("ix_requests_disagreements", table_name="requests")
    op.drop_index("ix_requests_day_route", table_name="requests")
