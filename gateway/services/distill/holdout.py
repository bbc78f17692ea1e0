"""The candidate against the champion on the held-out split: paired, per slice and overall.

The held-out split (the run's ``eval`` dataset) holds prompts the new candidate was never
trained on, so it is where the run's verdict belongs; the recent-traffic replay overlaps the
training file. For every request of the split, the candidate's answer (its replayed one, else a
live one) and the champion's (a replayed one, else the one it gave live) are each compared with
the logged teacher's; on the requests where both were compared, the pairs give the difference
in agreement, candidate minus champion, with Newcombe's paired interval, McNemar's p-value and
a verdict (:func:`gateway.core.paired.paired_difference`, as the candidates report judges).
Each side's own agreement has its Wilson interval over every request it was compared on.

One ``GROUP BY`` over the split's ``dataset_items``; slices come from each request's labels,
and the route as a whole is the line with no dimension. Slices are ordered worst first, as the
reports order them: judged ones by the low end of the paired interval, then the rest.
"""

# ruff: noqa: S608  (the SQL below is assembled from constants; every value is a bound parameter)

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.core import statistics as stats
from gateway.core.paired import MIN_PAIRS, PairedCounts, paired_difference, paired_json
from gateway.services.reports.common import LABELS


def _answer(alias: str, student: str) -> str:
    """A student's compared answer to ``r``'s request, a replayed one first."""
    return (
        f"LEFT JOIN LATERAL (SELECT {alias}.agree FROM student_answers AS {alias} "
        f"WHERE {alias}.request_id = r.request_id AND {alias}.created_at = r.created_at "
        f"AND {alias}.student = :{student} AND {alias}.agree IS NOT NULL "
        f"ORDER BY {alias}.source = 'replay' DESC LIMIT 1) AS {alias} ON TRUE"
    )


_HOLDOUT = text(
    "SELECT s.dim, s.val, count(*) AS items, "
    "count(c.agree) AS candidate_compared, count(*) FILTER (WHERE c.agree) AS candidate_agreed, "
    "count(b.agree) AS baseline_compared, count(*) FILTER (WHERE b.agree) AS baseline_agreed, "
    "count(*) FILTER (WHERE c.agree AND b.agree) AS both_agreed, "
    "count(*) FILTER (WHERE c.agree AND NOT b.agree) AS candidate_only, "
    "count(*) FILTER (WHERE NOT c.agree AND b.agree) AS baseline_only, "
    "count(*) FILTER (WHERE NOT c.agree AND NOT b.agree) AS neither "
    "FROM dataset_items AS i JOIN requests AS r ON r.request_id = i.request_id "
    "AND r.created_at = i.request_created_at "
    f"{_answer('c', 'candidate')} {_answer('b', 'baseline')} {LABELS} "
    "WHERE i.dataset_id = :dataset AND r.route = :route GROUP BY 1, 2"
)
_JUDGED = ("better", "worse", "inconclusive")


def _side(compared: int, agreed: int) -> dict[str, Any]:
    low, high = stats.wilson_interval(agreed, compared) if compared else (None, None)
    return {
        "compared": compared,
        "agreed": agreed,
        "agreement": agreed / compared if compared else None,
        "ci_low": low,
        "ci_high": high,
    }


def _line(row: Any, min_pairs: int) -> dict[str, Any]:
    counts = PairedCounts(row.both_agreed, row.candidate_only, row.baseline_only, row.neither)
    comparison = paired_difference(counts, min_pairs=min_pairs)
    return {
        "dimension": "all" if row.dim is None else row.dim,
        "value": "all" if row.dim is None else row.val,
        "items": row.items,
        "candidate": _side(row.candidate_compared, row.candidate_agreed),
        "baseline": _side(row.baseline_compared, row.baseline_agreed),
        "paired": paired_json(counts, comparison),
        "verdict": comparison.verdict,
    }


def _worst_first(line: dict[str, Any]) -> tuple[Any, ...]:
    """Judged slices first, the lowest end of the paired interval leading; then the rest by
    the lowest end of either student's agreement interval (as the candidates report)."""
    judged = line["verdict"] in _JUDGED
    low = line["paired"]["ci_low"] if judged else None
    bounds = [side["ci_low"] for side in (line["candidate"], line["baseline"])]
    return (
        not judged,
        0.0 if low is None else low,
        min((b for b in bounds if b is not None), default=1.0),
        line["dimension"],
        line["value"],
    )


async def holdout_comparison(
    engine: AsyncEngine,
    route: str,
    dataset_id: int,
    candidate: str,
    baseline: str,
    min_pairs: int = MIN_PAIRS,
) -> dict[str, Any]:
    """The candidate against ``baseline`` on the requests of dataset ``dataset_id``."""
    params = {
        "route": route,
        "dataset": dataset_id,
        "candidate": candidate,
        "baseline": baseline,
        "dimension": None,
    }
    async with engine.connect() as connection:
        rows = (await connection.execute(_HOLDOUT, params)).all()
    overall = next((_line(row, min_pairs) for row in rows if row.dim is None), None)
    slices = [_line(row, min_pairs) for row in rows if row.dim is not None]
    slices.sort(key=_worst_first)
    return {
        "dataset_id": dataset_id,
        "candidate": candidate,
        "baseline": baseline,
        "min_pairs": min_pairs,
        "items": overall["items"] if overall else 0,
        "overall": overall,
        "slices": slices,
    }
