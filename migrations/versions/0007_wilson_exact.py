"""``agreement_daily``'s 95 % Wilson interval, computed as the reports compute it.

0005 wrote the interval with rounded constants that disagreed with each other (z = 1.959964
beside z² = 3.841459 and z²/2 = 1.920730, worked out in ``numeric``) and with the reports'
full-precision z (``gateway.core.statistics.Z_95``): the view's bounds were off the reports'
for the same counts (by up to 1.6e-7 measured, slices of 1 to 5,000 comparisons), and a slice
where every comparison agreed could get an upper bound above 1 (up to 1.00000015), one where
none did a lower bound above 0.

The view is now the reports' ``wilson_interval`` in SQL: one full-precision z, z² (and z²/2,
z²/4) derived from that one float and written with ``repr`` as ``float8`` literals (exact, no
``numeric`` step), the same operations in the same order, the bounds clamped to [0, 1], and
exactly 0 when nothing agreed, exactly 1 when everything did. The same counts give the same
floats as the reports (bit for bit, measured on the same slices).

``CREATE OR REPLACE VIEW`` keeps the view itself: its columns (names, types, order), its
comments and any grants stay as they are; only the two bounds' expressions change. Downgrade
puts back 0005's definition, read from that migration.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The 95 % z, as gateway.core.statistics.Z_95 (written out: a migration never changes with the
# code); every other constant of the interval is derived from this one float.
Z = 1.959963984540054


def _float8(value: float) -> str:
    """A float as a float8 literal: repr gives the shortest text that reads back exactly."""
    return f"float8 '{value!r}'"


Z_SQL, Z2_SQL = _float8(Z), _float8(Z * Z)
Z2_HALF_SQL, Z2_QUARTER_SQL = _float8(Z * Z / 2), _float8(Z * Z / 4)

# wilson_interval(agreed, compared) of gateway.core.statistics, operation by operation:
# centre = (p + z²/2n) / (1 + z²/n), half = z·sqrt(p(1 - p)/n + z²/4n²) / (1 + z²/n)
CENTRE = f"""(agreed::float8 / compared + {Z2_HALF_SQL} / compared) / (1 + {Z2_SQL} / compared)"""
HALF = f"""{Z_SQL} * sqrt(
                agreed::float8 / compared * (1 - agreed::float8 / compared) / compared
                + {Z2_QUARTER_SQL} / (compared::float8 * compared)
            ) / (1 + {Z2_SQL} / compared)"""

# 0005's columns, names and order; only agreement_low and agreement_high differ. Assembled from
# the float constants above, nothing else.
AGREEMENT_DAILY = f"""
CREATE OR REPLACE VIEW agreement_daily AS
SELECT
    day, route, dimension, value, requests, compared, agreed, compared - agreed AS disagreed,
    CASE WHEN compared > 0 THEN agreed::float8 / compared END AS agreement,
    CASE WHEN compared > 0 THEN
        CASE WHEN agreed = 0 THEN 0 ELSE GREATEST(0,
            {CENTRE}
            - {HALF}
        ) END
    END AS agreement_low,
    CASE WHEN compared > 0 THEN
        CASE WHEN agreed = compared THEN 1 ELSE LEAST(1,
            {CENTRE}
            + {HALF}
        ) END
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
"""  # noqa: S608


def _analyst_views() -> ModuleType:
    """Migration 0005, whose definition of the view downgrade puts back."""
    path = Path(__file__).with_name("0005_analyst_views.py")
    spec = importlib.util.spec_from_file_location("_shadow_gateway_migration_0005", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    op.execute(AGREEMENT_DAILY)


def downgrade() -> None:
    previous: str = _analyst_views().AGREEMENT_DAILY
    op.execute(previous.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
