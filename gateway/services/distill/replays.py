"""The replay stage (:class:`ReplayPasses`): the held-out split's requests, then recent traffic.

:class:`~gateway.services.replay.Replay` chooses requests by window, slices and limit; the
held-out split is a list of requests (``dataset_items`` of the eval dataset), so
:class:`HoldoutReplay` is the same replay with another choice of rows: every request of the
dataset that the teacher answered and whose body was logged, newest first, in keyset pages.
Answers are ``source = 'replay'`` rows like any replay's, so a rerun skips what is done.

The champion is replayed on the split too, but only where it has no compared answer yet
(``answered_anyhow``: a live one counts): shadowed at a sample, or with calls dropped under
load, it answered only some of those requests live, and the held-out comparison pairs the two
students on the same requests (:mod:`.holdout`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.clients.students import Student, make_student
from gateway.clients.upstream import new_session
from gateway.config import RouteConfig, Settings
from gateway.db.engine import plain_dsn
from gateway.metrics import Metrics
from gateway.protocol.reports import Window
from gateway.services.distill.processes import StageFailed
from gateway.services.replay import Replay, ReplayOutcome
from gateway.services.students import StudentState
from gateway.shadow.analysis import RouteAnalysis
from gateway.shadow.records import RedactingWriter, route_redactors

REPLAY_CONCURRENCY = 4

_IN_DATASET = (
    "FROM requests AS r JOIN dataset_items AS i ON i.request_id = r.request_id "
    "AND i.request_created_at = r.created_at WHERE i.dataset_id = :dataset "
    "AND r.route = :route AND r.teacher_status BETWEEN 200 AND 299 "
    "AND r.request_payload IS NOT NULL"
)
_REPLAYED = (
    "EXISTS (SELECT 1 FROM student_answers AS a WHERE a.request_id = r.request_id "
    "AND a.created_at = r.created_at AND a.student = :student AND a.source = 'replay' "
    "AND a.student_status = 'ok')"
)
_COMPARED = (
    "EXISTS (SELECT 1 FROM student_answers AS a WHERE a.request_id = r.request_id "
    "AND a.created_at = r.created_at AND a.student = :student AND a.agree IS NOT NULL)"
)


def _queries(done: str) -> tuple[TextClause, TextClause]:
    plan = text(f"SELECT count(*) AS chosen, count(*) FILTER (WHERE {done}) AS done {_IN_DATASET}")
    page = text(
        "SELECT r.request_id, r.created_at, r.endpoint, r.mode, r.slices, r.sticky_bucket, "
        "r.client_request_id, r.request_payload, r.teacher_output, r.teacher_tool_calls, "
        f"r.teacher_refusal, {done} AS done {_IN_DATASET} "
        "AND (CAST(:after_at AS timestamptz) IS NULL "
        "OR (r.created_at, r.request_id) < (CAST(:after_at AS timestamptz), "
        "CAST(:after_id AS text))) "
        "ORDER BY r.created_at DESC, r.request_id DESC LIMIT :page"
    )
    return plan, page


_BY_REPLAY = _queries(_REPLAYED)
_BY_ANY_ANSWER = _queries(_COMPARED)


class HoldoutReplay(Replay):
    """A replay of one dataset's requests (see the module's docstring)."""

    _plan_query, _page_query = _BY_REPLAY

    def for_dataset(self, dataset_id: int, *, answered_anyhow: bool = False) -> HoldoutReplay:
        """``answered_anyhow``: skip the requests the student has any compared answer to."""
        self._params = {**self._params, "dataset": dataset_id}
        if answered_anyhow:
            self._plan_query, self._page_query = _BY_ANY_ANSWER
        return self


class ReplayPasses:
    """The replay stage: the candidate on the held-out split, the champion on the held-out
    requests it has no answer to (best effort: if it stops answering, the stage goes on and
    the held-out comparison pairs fewer requests), then the candidate on recent traffic.
    Answers go through a redacting, journaled writer of their own, as ``replay``'s do."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        route: RouteConfig,
        span: Window,
        progress: Callable[[str], None],
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._route = route
        self._span = span
        self._progress = progress
        self._analysis = RouteAnalysis(route, settings.config.metrics, settings.config_path.parent)

    def _client(self, state: StudentState) -> Student:
        secrets = {k: v.get_secret_value() for k, v in self._settings.upstream_keys.items()}
        return make_student(
            state.name, state.config, lambda key: secrets.get(key) or os.environ.get(key)
        )

    def _recent(self, student: Student, limit: int | None) -> Replay:
        return Replay(self._engine, self._route, self._analysis, student, self._span, limit=limit)

    def _holdout(self, student: Student) -> HoldoutReplay:
        return HoldoutReplay(self._engine, self._route, self._analysis, student, self._span)

    async def run(
        self,
        candidate: StudentState,
        champion: StudentState | None,
        eval_dataset_id: int | None,
        recent_limit: int | None,
    ) -> dict[str, Any]:
        """Each pass's plan and outcome, by pass (``holdout``, ``champion_holdout``,
        ``recent``); StageFailed when the candidate stops answering."""
        student = self._client(candidate)
        # (label, replay, whether the stage fails when the student stops answering)
        passes: list[tuple[str, Replay, bool]] = []
        if eval_dataset_id is not None:
            passes.append(("holdout", self._holdout(student).for_dataset(eval_dataset_id), True))
            if champion is not None:
                theirs = self._holdout(self._client(champion))
                chosen = theirs.for_dataset(eval_dataset_id, answered_anyhow=True)
                passes.append(("champion_holdout", chosen, False))
        passes.append(("recent", self._recent(student, recent_limit), True))
        settings, config = self._settings, self._settings.config
        writer = RedactingWriter(
            plain_dsn(self._engine.url.render_as_string(hide_password=False)),
            settings.data_dir / "journal",
            config.log_writer,
            Metrics(CollectorRegistry()),
            redactors=route_redactors(config),
            connect_timeout_s=config.database.connect_timeout_s,
        )
        details: dict[str, Any] = {}
        await writer.start()
        try:
            async with new_session(max_connections=REPLAY_CONCURRENCY) as session:
                for label, replay, required in passes:
                    plan = await replay.plan()
                    outcome: ReplayOutcome = await replay.run(session, writer, REPLAY_CONCURRENCY)
                    details[label] = {"chosen": plan.chosen, **outcome.as_json()}
                    if label == "champion_holdout":
                        assert champion is not None
                        details[label]["student"] = champion.name
                        done = (
                            f"{outcome.answered} answered of the {plan.to_do} it had no answer to"
                            if plan.to_do
                            else f"it had answered all {plan.chosen} live"
                        )
                        self._progress(f"replay holdout to the champion {champion.name}: {done}")
                    else:
                        earlier = f" ({outcome.skipped} already)" if outcome.skipped else ""
                        self._progress(
                            f"replay {label}: {outcome.answered} answered of {plan.chosen}{earlier}"
                        )
                    if outcome.stopped and required:
                        raise StageFailed(outcome.stopped, details)
                    if outcome.stopped:
                        self._progress(f"{outcome.stopped}: the holdout pairs fewer requests")
        finally:
            await writer.close()
        return details
