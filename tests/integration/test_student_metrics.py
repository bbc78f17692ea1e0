"""The student metrics carry a bounded ``student`` label: every student's calls under its own
name, the champion's untouched by a failing candidate, an info series naming the champion
that follows a promotion, and a retired student's series gone.

Real gateway, real Postgres, loopback teacher and students; student changes made the way the
CLI makes them (a registry of its own; the gateway learns of them by NOTIFY).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.config import GatewayConfig
from gateway.db.engine import create_engine
from gateway.services.students import StudentRegistry
from tests.integration.conftest import ROUTE, closed_port_url
from tests.support.db import wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.upstream import FakeOpenAI

INFO = "shadow_gateway_student_info"
CALLS = "shadow_gateway_shadow_calls_total"
SKIPPED = "shadow_gateway_circuit_skipped_total"
AGREEMENT = "shadow_gateway_agreement_total"


def students_route(teacher: FakeOpenAI, champion: str, candidate: str, **knobs: Any) -> Any:
    """A route whose champion ``small`` answers at ``champion`` and candidate ``tiny`` at
    ``candidate`` (with ``knobs``)."""
    spec = route(ROUTE, teacher.base_url, None)
    spec["students"] = [
        {"name": "small", "base_urls": [champion], "model": "small-model", "timeout_s": 1},
        {"name": "tiny", "base_urls": [candidate], "model": "tiny-model", "timeout_s": 1, **knobs},
    ]
    spec["champion"] = "small"
    return spec


def ask(gateway: GatewayServer, key: str, count: int) -> None:
    client = sdk(gateway, key)
    for i in range(count):
        client.chat.completions.create(model=ROUTE, messages=[{"role": "user", "content": f"q{i}"}])


def sample(gateway: GatewayServer, name: str, **labels: str) -> float | None:
    """A sample's value, None when the series is not exported at all."""
    return gateway.metrics.registry.get_sample_value(name, {"route": ROUTE, **labels})


def students_exported(gateway: GatewayServer) -> set[str]:
    """Every ``student`` label value the gateway exports, over all its metrics."""
    return {
        found.labels["student"]
        for family in gateway.metrics.registry.collect()
        for found in family.samples
        if "student" in found.labels
    }


def change(url: str, config: GatewayConfig, method: str, *args: Any, **kwargs: Any) -> Any:
    async def run() -> Any:
        engine = create_engine(url, config.database)
        try:
            return await getattr(StudentRegistry(engine, config), method)(*args, **kwargs)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_a_failing_candidate_moves_its_own_series_only(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    # tiny is down: two failures open its breaker for the rest of the test
    spec = students_route(
        teacher, student.base_url, closed_port_url(), breaker_failures=2, breaker_cooldown_s=600
    )
    gateway = make_gateway([spec])
    assert sample(gateway, INFO, student="small", status="champion") == 1
    assert sample(gateway, INFO, student="tiny", status="candidate") == 1
    assert sample(gateway, INFO, student="tiny", status="champion") is None

    ask(gateway, app_key, 5)
    wait_for(lambda: gateway.metric(CALLS, route=ROUTE, student="small", outcome="ok") == 5)

    def failed() -> float:
        return gateway.metric(CALLS, route=ROUTE, student="tiny", outcome="unreachable")

    def skipped() -> float:
        return gateway.metric(SKIPPED, route=ROUTE, student="tiny")

    # Every request's call to tiny failed or was skipped once its breaker opened after two
    # failures; a call already in flight when it opened fails too (requests can outrun the
    # failures on a busy machine), so "at least two".
    wait_for(lambda: failed() + skipped() == 5, what="tiny's five calls failed or skipped")
    assert failed() >= 2
    assert sample(gateway, "shadow_gateway_student_circuit_open", student="tiny") == 1
    # the champion's series: as if the candidate were not there
    assert sample(gateway, "shadow_gateway_student_circuit_open", student="small") == 0
    assert sample(gateway, SKIPPED, student="small") is None
    assert sample(gateway, CALLS, student="small", outcome="unreachable") is None
    assert sample(gateway, "shadow_gateway_student_latency_seconds_count", student="small") == 5
    assert sample(gateway, "shadow_gateway_student_latency_seconds_count", student="tiny") is None
    wait_for(lambda: sample(gateway, "shadow_gateway_shadow_in_flight", student="small") == 0)
    assert sample(gateway, "shadow_gateway_shadow_in_flight", student="tiny") == 0
    # the candidate never answered: nothing of it was compared
    assert sample(gateway, AGREEMENT, student="tiny", dimension="all", slice="all") is None
    assert students_exported(gateway) == {"small", "tiny"}


def test_the_info_series_follow_a_promotion_and_a_retirement(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    rival: FakeOpenAI,
    clean_db: str,
) -> None:
    # the champion agrees with the teacher, the candidate never does
    teacher.reset_behavior(answer=lambda text: text.upper())
    student.reset_behavior(answer=lambda text: text.upper())
    gateway = make_gateway([students_route(teacher, student.base_url, rival.base_url)])
    config = gateway.state.settings.config
    everything = {"dimension": "all", "slice": "all"}

    ask(gateway, app_key, 4)
    wait_for(
        lambda: (
            gateway.metric(AGREEMENT, route=ROUTE, student="tiny", verdict="disagree", **everything)
            == 4
        ),
        what="the candidate's four disagreements",
    )
    wait_for(
        lambda: (
            gateway.metric(AGREEMENT, route=ROUTE, student="small", verdict="agree", **everything)
            == 4
        )
    )
    assert sample(gateway, AGREEMENT, student="small", verdict="disagree", **everything) is None
    assert (
        sample(
            gateway, "shadow_gateway_student_confidence_count", student="tiny", verdict="disagree"
        )
        == 4
    )

    change(clean_db, config, "promote", ROUTE, "tiny", actor="tests", reason="it is cheaper")
    wait_for(
        lambda: sample(gateway, INFO, student="tiny", status="champion") == 1,
        what="the info series to follow the promotion",
    )
    assert sample(gateway, INFO, student="small", status="candidate") == 1
    assert sample(gateway, INFO, student="small", status="champion") is None
    assert sample(gateway, INFO, student="tiny", status="candidate") is None
    # the counts stay with each student's name, whatever its status
    ask(gateway, app_key, 1)
    wait_for(lambda: gateway.metric(CALLS, route=ROUTE, student="tiny", outcome="ok") == 5)
    wait_for(lambda: gateway.metric(CALLS, route=ROUTE, student="small", outcome="ok") == 5)

    change(clean_db, config, "retire", ROUTE, "small", actor="tests", reason="replaced")
    wait_for(
        lambda: students_exported(gateway) == {"tiny"},
        what="every series of the retired student to go",
    )
    assert sample(gateway, INFO, student="tiny", status="champion") == 1
    assert gateway.metric(CALLS, route=ROUTE, student="tiny", outcome="ok") == 5
