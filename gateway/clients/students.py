"""The students of every route, each with its own replicas, bound and circuit breaker.

A :class:`Student` is one student model behind one or more base URLs (vLLM replicas, used
round-robin). It keeps what its calls need between requests: how many are in flight (against
``max_concurrency``) and its circuit breaker. Calls go over the students' connection pool,
apart from the teacher's, so a slow student can never take the teacher's connections.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp

from gateway import tracing
from gateway.clients.upstream import (
    ENDPOINT_PATHS,
    StudentReply,
    Upstream,
    call_student,
    make_upstream,
)
from gateway.config import StudentConfig
from gateway.core.breaker import CircuitBreaker
from gateway.core.outputs import Endpoint


@dataclass
class Student:
    name: str
    config: StudentConfig
    upstreams: dict[Endpoint, list[Upstream]]
    breaker: CircuitBreaker
    in_flight: int = 0
    _cursor: Iterator[int] = field(default_factory=itertools.count)

    @property
    def full(self) -> bool:
        return self.in_flight >= self.config.max_concurrency

    def allowed_now(self) -> bool:
        """Whether the breaker lets a call through now (in half-open, one probe at a time)."""
        return self.breaker.allow(time.monotonic())

    async def call(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        body: bytes,
        timeout_s: float | None = None,
        route: str = "",
    ) -> tuple[Upstream, StudentReply]:
        """One call to the next replica; the caller took a slot (``in_flight``) for it.
        ``route`` names the call's route in its span (with tracing on)."""
        candidates = self.upstreams[endpoint]
        upstream = candidates[next(self._cursor) % len(candidates)]
        if not tracing.enabled:
            return upstream, await call_student(session, upstream, body, timeout_s=timeout_s)
        span, headers = tracing.start_call(
            f"student {endpoint}",
            upstream.url,
            upstream.headers,
            {"route": route, "student": self.name, "student_model": self.config.model},
        )
        try:
            reply = await call_student(session, upstream, body, timeout_s, headers)
        except BaseException as exc:  # cancelled (a rollout's budget, a shutdown)
            tracing.end_call(span, error=exc)
            raise
        tracing.end_call(span, reply.status, reply.error, reply.outcome)
        return upstream, reply


Secret = Callable[[str], str | None]  # an api_key_env's value, if the process has it


def make_student(name: str, config: StudentConfig, secret: Secret) -> Student:
    key = secret(config.api_key_env) if config.api_key_env else None
    return Student(
        name=name,
        config=config,
        upstreams={
            endpoint: [
                make_upstream(str(url), path, key, config.timeout_s, config.connect_timeout_s)
                for url in config.base_urls
            ]
            for endpoint, path in ENDPOINT_PATHS.items()
        },
        breaker=CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s),
    )


class StudentPool:
    """Each route's live students, the champion first; routes without one have none.

    The set changes while the gateway runs (students are added, promoted, retired: see
    :mod:`gateway.services.students`): :meth:`update` swaps a route's list in one assignment,
    and a student whose knobs did not change keeps its object, so its breaker, its calls in
    flight and its replica rotation carry on. Calls already running on a replaced student
    finish on the object they started with.
    """

    def __init__(self, session: aiohttp.ClientSession, secret: Secret) -> None:
        self.session = session
        self._secret = secret
        self._students: dict[str, tuple[Student, ...]] = {}

    def update(self, route: str, students: Sequence[tuple[str, StudentConfig]]) -> None:
        """The route's live students, champion first."""
        kept = {student.name: student for student in self._students.get(route, ())}
        self._students[route] = tuple(
            kept[name]
            if name in kept and kept[name].config == config
            else make_student(name, config, self._secret)
            for name, config in students
        )

    def of(self, route: str) -> tuple[Student, ...]:
        return self._students.get(route, ())

    def champion(self, route: str) -> Student | None:
        students = self._students.get(route)
        return students[0] if students else None

    def is_live(self, route: str, name: str) -> bool:
        """Whether the route still calls a student of that name (a call may outlive its
        student's retirement; a student whose knobs changed is live under its name)."""
        return any(student.name == name for student in self._students.get(route, ()))
