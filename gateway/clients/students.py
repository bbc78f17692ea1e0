"""The students of every route, each with its own replicas, bound and circuit breaker.

A :class:`Student` is one student model behind one or more base URLs (vLLM replicas, used
round-robin). It keeps what its calls need between requests: how many are in flight (against
``max_concurrency``) and its circuit breaker. Calls go over the students' connection pool,
apart from the teacher's, so a slow student can never take the teacher's connections.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import aiohttp

from gateway.clients.upstream import (
    ENDPOINT_PATHS,
    StudentReply,
    Upstream,
    call_student,
    make_upstream,
)
from gateway.config import RouteConfig, StudentConfig
from gateway.core.breaker import CircuitBreaker
from gateway.core.outputs import Endpoint

DEFAULT_STUDENT = "default"  # the name of a route's single ``student:``


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
    ) -> tuple[Upstream, StudentReply]:
        """One call to the next replica; the caller took a slot (``in_flight``) for it."""
        candidates = self.upstreams[endpoint]
        upstream = candidates[next(self._cursor) % len(candidates)]
        return upstream, await call_student(session, upstream, body, timeout_s=timeout_s)


def make_student(name: str, config: StudentConfig, api_keys: Mapping[str, str]) -> Student:
    key = api_keys.get(config.api_key_env) if config.api_key_env else None
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
    """Each route's student, by route name; routes without one are absent."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        routes: list[RouteConfig],
        api_keys: Mapping[str, str],
    ) -> None:
        self.session = session
        self._students = {
            route.name: make_student(DEFAULT_STUDENT, route.student, api_keys)
            for route in routes
            if route.student is not None
        }

    def of(self, route: str) -> Student | None:
        return self._students.get(route)

    @staticmethod
    def connections(routes: list[RouteConfig]) -> int:
        """The pool's size: every student's calls in flight at once."""
        return sum(route.student.max_concurrency for route in routes if route.student)
