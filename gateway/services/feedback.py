"""Feedback from apps (``POST /v1/feedback``): stored against the logged request it concerns.

The app names the request by the ``x-request-id`` the gateway returned. A row is written a
moment after its answer (the log writer flushes every ``logging.flush_interval_s``; a stream's
when it ends), so feedback sent right after an answer may arrive first: an id of the gateway's
own form is looked up again for a short while before it is called unknown.

Free text the app sends (comment, corrected answer) goes through the route's redaction, as
prompts and answers do.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.core.redact import Redactor
from gateway.db.tables import feedback, requests
from gateway.errors import RequestNotFound
from gateway.protocol.openai import FeedbackRequest

GATEWAY_ID = re.compile(r"req_[0-9a-f]{32}")


def answered_by(served_by: str | None, served_student: str | None) -> str:
    """Who gave the answer the app judged: the student that served, else the teacher."""
    return (served_student or "student") if served_by == "student" else "teacher"


class FeedbackStore:
    def __init__(
        self, engine: AsyncEngine, redactors: dict[str, Redactor], wait_s: float = 2.0
    ) -> None:
        self._engine = engine
        self._redactors = redactors
        self._wait_s = wait_s

    async def _find(self, request_id: str) -> Any:
        query = (
            select(
                requests.c.request_id,
                requests.c.created_at,
                requests.c.route,
                requests.c.served_by,
                requests.c.served_student,
            )
            .where(requests.c.request_id == request_id)
            .order_by(requests.c.created_at.desc())
            .limit(1)
        )
        deadline = time.monotonic() + (self._wait_s if GATEWAY_ID.fullmatch(request_id) else 0)
        while True:
            async with self._engine.connect() as connection:
                row = (await connection.execute(query)).first()
            if row is not None or time.monotonic() >= deadline:
                return row
            await asyncio.sleep(0.1)

    async def record(self, body: FeedbackRequest, key_name: str) -> dict[str, Any]:
        """Store the feedback; :class:`RequestNotFound` when no logged request has the id."""
        row = await self._find(body.request_id)
        if row is None:
            raise RequestNotFound(
                f"No logged request has the id {body.request_id!r}. Send the x-request-id "
                "header of the gateway's response.",
                param="request_id",
            )
        redactor = self._redactors.get(row.route)

        def clean(text: str | None) -> str | None:
            return redactor.text(text) if redactor is not None and text is not None else text

        values = {
            "request_id": row.request_id,
            "request_created_at": row.created_at,
            "route": row.route,
            "key_name": key_name,
            "source": body.source,
            "answered_by": answered_by(row.served_by, row.served_student),
            "score": body.score,
            "correct": body.correct,
            "label": body.label,
            "comment": clean(body.comment),
            "corrected_output": clean(body.corrected_output),
        }
        statement = insert(feedback).values(values).returning(feedback.c.id, feedback.c.created_at)
        async with self._engine.begin() as connection:
            found = (await connection.execute(statement)).one()
        created: datetime = found.created_at
        return {
            "id": f"fb_{found.id}",
            "object": "feedback",
            "request_id": row.request_id,
            "route": row.route,
            "answered_by": values["answered_by"],
            "created_at": int(created.timestamp()),
        }
