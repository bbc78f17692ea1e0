"""The disagreement listing: one page of comparisons that disagreed, with both answers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Text, literal_column, or_, select, tuple_

from gateway.core.outputs import Output
from gateway.db.tables import requests
from gateway.protocol.reports import Window, encode_cursor, iso_time
from gateway.services.reports.common import ReportsBase, last_user_text_sql


class DisagreementReport(ReportsBase):
    async def disagreements(
        self,
        name: str,
        window: Window,
        *,
        slices: Sequence[tuple[str, str]] = (),
        served_by: str | None = None,
        score: tuple[float | None, float | None] = (None, None),
        confidence: tuple[float | None, float | None] = (None, None),
        limit: int = 50,
        cursor: tuple[datetime, str] | None = None,
        teacher_version: str | None = None,
    ) -> dict[str, Any]:
        """One page of comparisons that disagreed, newest first, with both answers.
        ``teacher_version``: only rows whose teacher reported that fingerprint or model."""
        route = self.route(name)
        r = requests.c
        prompt = literal_column(last_user_text_sql("requests.request_payload"), Text).label(
            "prompt"
        )
        query = select(
            r.request_id,
            r.created_at,
            r.served_by,
            r.slices,
            prompt,
            r.teacher_output,
            r.student_output,
            r.teacher_tool_calls,
            r.student_tool_calls,
            r.teacher_refusal,
            r.student_refusal,
            r.student_confidence,
            r.agreement_score,
            r.agreement_reason,
        ).where(
            r.route == name,
            r.agree.is_(False),
            r.created_at >= window.since,
            r.created_at < window.until,
        )
        if slices:
            query = query.where(r.slices.contains(dict(slices)))
        if served_by is not None:
            query = query.where(r.served_by == served_by)
        if teacher_version is not None:
            query = query.where(
                or_(
                    r.teacher_fingerprint == teacher_version,
                    r.teacher_model_reported == teacher_version,
                )
            )
        for column, (low, high) in ((r.agreement_score, score), (r.student_confidence, confidence)):
            if low is not None:
                query = query.where(column >= low)
            if high is not None:
                query = query.where(column <= high)
        if cursor is not None:
            query = query.where(tuple_(r.created_at, r.request_id) < tuple_(*cursor))
        query = query.order_by(r.created_at.desc(), r.request_id.desc()).limit(limit + 1)
        async with self._reading() as connection:
            rows = (await connection.execute(query)).all()
            if not rows:
                for dimension, _ in slices:
                    await self._check_dimension(connection, route, dimension)
                await self._check_teacher_version(connection, route, teacher_version)
        page = rows[:limit]
        next_cursor = (
            encode_cursor(page[-1].created_at, page[-1].request_id) if len(rows) > limit else None
        )
        return {
            "route": name,
            **window.as_json(),
            "filters": {
                "slices": dict(slices),
                "served_by": served_by,
                "min_score": score[0],
                "max_score": score[1],
                "min_confidence": confidence[0],
                "max_confidence": confidence[1],
                "teacher_version": teacher_version,
            },
            "disagreements": [
                {
                    "request_id": row.request_id,
                    "created_at": iso_time(row.created_at),
                    "served_by": row.served_by,
                    "slices": row.slices,
                    "prompt": row.prompt,
                    "teacher_output": row.teacher_output,
                    "student_output": row.student_output,
                    "teacher_tool_calls": row.teacher_tool_calls,
                    "student_tool_calls": row.student_tool_calls,
                    "teacher_refusal": row.teacher_refusal,
                    "student_refusal": row.student_refusal,
                    # one readable line each: the text, name(arguments) calls, or the refusal
                    "teacher_answer": Output.from_columns(
                        row.teacher_output, row.teacher_tool_calls, row.teacher_refusal
                    ).describe(),
                    "student_answer": Output.from_columns(
                        row.student_output, row.student_tool_calls, row.student_refusal
                    ).describe(),
                    "student_confidence": row.student_confidence,
                    "agreement_score": row.agreement_score,
                    "agreement_reason": row.agreement_reason,
                }
                for row in page
            ],
            "next_cursor": next_cursor,
        }
