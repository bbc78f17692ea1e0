"""One request on its way through the gateway: everything each step of the path needs.

The request path (:mod:`gateway.services.proxy`) and the rollout
(:mod:`gateway.services.rollout`) pass one :class:`Exchange` between their steps instead of
the route, its live state, the row's identity, the body and the decision one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import RouteConfig
from gateway.core.outputs import Endpoint, Output
from gateway.core.routing import Decision, RouteState, Serving
from gateway.services.answers import RequestContext
from gateway.shadow.records import RowIdentity


@dataclass(frozen=True)
class Fallback:
    """The teacher must answer a request the rollout gave the student: why; whether the
    student was asked first; and its answer (if it gave one) with its confidence, to judge
    against the teacher's."""

    reason: str
    asked: bool = True
    asker: str | None = None  # the student asked (the champion)
    student: Output | None = None
    confidence: float | None = None


@dataclass
class Exchange:
    ctx: RequestContext
    route: RouteConfig
    state: RouteState  # the route's live knobs when the request arrived
    serving: Serving  # the knobs that apply to this request (its slices' overrides folded in)
    identity: RowIdentity  # the row's identity columns, on every half of it
    body: dict[str, Any]  # the app's request, as it sent it
    decision: Decision
    # May the app get the student's answer at all? (Not a Responses request the teacher's
    # server keeps: gateway.core.routing.student_may_answer.)
    student_may_answer: bool
    fallback: Fallback | None = None  # set when the teacher answers for a chosen student

    @property
    def endpoint(self) -> Endpoint:
        return self.ctx.endpoint

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def fallback_reason(self) -> str | None:
        return self.fallback.reason if self.fallback else None
