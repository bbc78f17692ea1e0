"""The replay stage's two passes: the held-out split's requests, then recent traffic.

:class:`~gateway.services.replay.Replay` chooses requests by window, slices and limit; the
held-out split is a list of requests (``dataset_items`` of the eval dataset), so
:class:`HoldoutReplay` is the same replay with another choice of rows: every request of the
dataset that the teacher answered and whose body was logged, newest first, in keyset pages.
Answers are ``source = 'replay'`` rows like any replay's, so a rerun skips what is done.
"""

from __future__ import annotations

from sqlalchemy import text

from gateway.services.replay import Replay

_IN_DATASET = (
    "FROM requests AS r JOIN dataset_items AS i ON i.request_id = r.request_id "
    "AND i.request_created_at = r.created_at WHERE i.dataset_id = :dataset "
    "AND r.route = :route AND r.teacher_status BETWEEN 200 AND 299 "
    "AND r.request_payload IS NOT NULL"
)
_DONE = (
    "EXISTS (SELECT 1 FROM student_answers AS a WHERE a.request_id = r.request_id "
    "AND a.created_at = r.created_at AND a.student = :student AND a.source = 'replay' "
    "AND a.student_status = 'ok')"
)
_PLAN = text(f"SELECT count(*) AS chosen, count(*) FILTER (WHERE {_DONE}) AS done {_IN_DATASET}")
_PAGE = text(
    "SELECT r.request_id, r.created_at, r.endpoint, r.mode, r.slices, r.sticky_bucket, "
    "r.client_request_id, r.request_payload, r.teacher_output, r.teacher_tool_calls, "
    f"r.teacher_refusal, {_DONE} AS done {_IN_DATASET} "
    "AND (CAST(:after_at AS timestamptz) IS NULL "
    "OR (r.created_at, r.request_id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS text))) "
    "ORDER BY r.created_at DESC, r.request_id DESC LIMIT :page"
)
# Agreement with the teacher on a dataset's requests, per student (any source).
HOLDOUT_AGREEMENT = text(
    "SELECT a.student, count(a.agree) AS compared, count(*) FILTER (WHERE a.agree) AS agreed "
    "FROM student_answers AS a JOIN dataset_items AS i ON i.request_id = a.request_id "
    "AND i.request_created_at = a.created_at WHERE i.dataset_id = :dataset "
    "AND a.route = :route AND a.agree IS NOT NULL GROUP BY a.student ORDER BY a.student"
)


class HoldoutReplay(Replay):
    """A replay of one dataset's requests (see the module's docstring)."""

    _plan_query = _PLAN
    _page_query = _PAGE

    def for_dataset(self, dataset_id: int) -> HoldoutReplay:
        self._params = {**self._params, "dataset": dataset_id}
        return self
