"""Automatic rollback and staged ramps, judged on agreement logged in the real Postgres."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig
from gateway.db.engine import create_engine
from gateway.metrics import Metrics
from gateway.services.control import ControlPlane
from gateway.services.guardian import Guardian
from tests.integration.conftest import ROUTE
from tests.support.db import execute, fetch, wait_for
from tests.support.gateway import GatewayServer, route, write_config
from tests.support.process import BIN
from tests.support.upstream import FakeOpenAI

T = TypeVar("T")
HARD = {
    "dimension": "difficulty",
    "value": "hard",
    "min_agreement": 0.9,
    "min_samples": 10,
    "window_s": 600,
}


def config(critical: list[dict[str, Any]]) -> GatewayConfig:
    spec = route(ROUTE, "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])
    spec["slices"] = {"critical": critical}
    spec["rollout"] = {"gate_min_samples": 10}
    return GatewayConfig.model_validate({"routes": [spec]})


def with_guardian(
    url: str,
    gateway_config: GatewayConfig,
    work: Callable[[ControlPlane, Guardian], Awaitable[T]],
) -> tuple[T, Metrics]:
    metrics = Metrics(CollectorRegistry())

    async def run() -> T:
        engine = create_engine(url, gateway_config.database)
        try:
            control = ControlPlane(engine, gateway_config, metrics)
            await control.seed()
            return await work(control, Guardian(engine, control, gateway_config, metrics))
        finally:
            await engine.dispose()

    return asyncio.run(run()), metrics


def log_comparisons(
    url: str, slice_value: str, agreed: int, disagreed: int, confidence: float = 1.0
) -> None:
    values = ", ".join(
        f"('{slice_value}-{i}-{datetime.now(UTC).timestamp()}', '{ROUTE}', 'chat', now(), "
        f"'rollout', '{{\"difficulty\": \"{slice_value}\"}}'::jsonb, {str(i < agreed).lower()}, "
        f"{confidence})"
        for i in range(agreed + disagreed)
    )
    execute(
        url,
        "INSERT INTO requests (request_id, route, endpoint, created_at, mode, slices, "
        f"agree, student_confidence) VALUES {values}",
    )


def events(url: str) -> list[dict[str, Any]]:
    return fetch(url, "SELECT actor, action, reason, detail FROM route_events ORDER BY id")


def test_a_critical_slice_below_its_bar_goes_back_to_the_teacher_alone(clean_db: str) -> None:
    cfg = config([HARD])

    async def scenario(control: ControlPlane, guardian: Guardian) -> list[tuple[str, Any]]:
        await control.change(
            ROUTE, {"mode": "rollout", "rollout_percent": 20}, actor="alice", reason="start"
        )
        seen = []

        def now() -> tuple[str, Any]:
            state = control.state(ROUTE)
            override = state.slices.get(("difficulty", "hard"))
            return state.mode, override.mode if override else None

        await asyncio.to_thread(
            log_comparisons, clean_db, "hard", agreed=5, disagreed=4
        )  # 9 < min_samples: wait
        await asyncio.to_thread(
            log_comparisons, clean_db, "easy", agreed=60, disagreed=0
        )  # not a critical slice; keeps the route above its own bar
        await guardian.check_once()
        seen.append(now())
        await asyncio.to_thread(
            log_comparisons, clean_db, "hard", agreed=0, disagreed=1
        )  # 5/10 = 50 % < 90 %
        await guardian.check_once()
        seen.append(now())
        await guardian.check_once()  # already on the teacher: nothing more happens
        return seen

    seen, metrics = with_guardian(clean_db, cfg, scenario)
    assert seen == [("rollout", None), ("rollout", "teacher")]
    rollback = [e for e in events(clean_db) if e["action"] == "slice_rollback"]
    assert len(rollback) == 1
    assert rollback[0]["actor"] == "guardian"
    assert "difficulty=hard: agreement 50.0% over 10 comparisons" in rollback[0]["reason"]
    assert '"bar": 0.9' in rollback[0]["detail"]
    assert '"slice": "difficulty=hard"' in rollback[0]["detail"]
    assert not [e for e in events(clean_db) if e["action"] == "auto_rollback"]
    assert (
        metrics.registry.get_sample_value(
            "shadow_gateway_auto_rollbacks_total",
            {"route": ROUTE, "dimension": "difficulty", "slice": "hard"},
        )
        == 1
    )


def test_the_route_below_its_own_bar_goes_back_to_shadow(clean_db: str) -> None:
    """No critical slice at all: the route's own bar still guards it."""

    async def scenario(control: ControlPlane, guardian: Guardian) -> list[str]:
        await control.change(
            ROUTE, {"mode": "rollout", "rollout_percent": 20}, actor="alice", reason="start"
        )
        await asyncio.to_thread(log_comparisons, clean_db, "easy", agreed=5, disagreed=4)
        await guardian.check_once()  # 9 < gate_min_samples (10): wait
        modes = [control.state(ROUTE).mode]
        await asyncio.to_thread(log_comparisons, clean_db, "easy", agreed=0, disagreed=1)
        await guardian.check_once()  # 5/10 < 90 %
        modes.append(control.state(ROUTE).mode)
        return modes

    modes, metrics = with_guardian(clean_db, config([]), scenario)
    assert modes == ["rollout", "shadow"]
    [rollback] = [e for e in events(clean_db) if e["action"] == "auto_rollback"]
    assert "the route is below its own bar: all=all: agreement 50.0%" in rollback["reason"]
    assert (
        metrics.registry.get_sample_value(
            "shadow_gateway_auto_rollbacks_total",
            {"route": ROUTE, "dimension": "all", "slice": "all"},
        )
        == 1
    )


def test_answers_the_policy_would_not_serve_never_count_against_the_student(
    clean_db: str,
) -> None:
    """Low-confidence answers and a slice kept on the teacher are the teacher's already."""

    async def scenario(control: ControlPlane, guardian: Guardian) -> tuple[str, Any]:
        await control.change(
            ROUTE, {"mode": "rollout", "confidence_threshold": 0.8}, actor="a", reason="go"
        )
        await control.change_slice(
            ROUTE, "difficulty", "odd", {"mode": "teacher"}, actor="a", reason="bad there"
        )
        await asyncio.to_thread(log_comparisons, clean_db, "easy", 0, 40, confidence=0.3)
        await asyncio.to_thread(log_comparisons, clean_db, "odd", 0, 40)
        await asyncio.to_thread(log_comparisons, clean_db, "easy", 30, 0, confidence=0.9)
        await guardian.check_once()
        state = control.state(ROUTE)
        return state.mode, sorted(state.slices)

    (mode, kept), _ = with_guardian(clean_db, config([]), scenario)
    assert (mode, kept) == ("rollout", [("difficulty", "odd")])
    assert not [e for e in events(clean_db) if e["action"] == "auto_rollback"]


def due(url: str) -> None:
    execute(url, "UPDATE rollout_plans SET next_at = now() - interval '1 second'")


def test_a_ramp_advances_while_bars_hold_and_completes(clean_db: str) -> None:
    async def scenario(control: ControlPlane, guardian: Guardian) -> list[float]:
        seen = [
            (
                await control.start_plan(ROUTE, [5, 50, 100], 60, actor="bob", reason="ramp it")
            ).rollout_percent
        ]
        await guardian.check_once()  # not due yet
        seen.append(control.state(ROUTE).rollout_percent)
        await asyncio.to_thread(due, clean_db)
        await guardian.check_once()  # due, but no data yet: holds
        seen.append(control.state(ROUTE).rollout_percent)
        await asyncio.to_thread(log_comparisons, clean_db, "hard", agreed=10, disagreed=0)
        for _ in range(3):
            await asyncio.to_thread(due, clean_db)
            await guardian.check_once()
            seen.append(control.state(ROUTE).rollout_percent)
        return seen

    seen, _ = with_guardian(clean_db, config([HARD]), scenario)
    assert seen == [5, 5, 5, 50, 100, 100]
    actions = [e["action"] for e in events(clean_db)]
    assert actions == [
        "seed",
        "ramp_planned",
        "ramp_step",
        "ramp_step",
        "ramp_step",
        "ramp_completed",
    ]
    assert fetch(clean_db, "SELECT status FROM rollout_plans")[0]["status"] == "completed"


def test_a_ramp_never_re_enables_a_slice_kept_on_the_teacher(clean_db: str) -> None:
    async def scenario(control: ControlPlane, guardian: Guardian) -> float:
        await control.change_slice(
            ROUTE, "difficulty", "hard", {"mode": "teacher"}, actor="guardian", reason="below"
        )
        await control.start_plan(ROUTE, [5, 50], 60, actor="bob", reason="ramp it")
        # hard is failing, but kept on the teacher: the ramp is gated on what it serves
        await asyncio.to_thread(log_comparisons, clean_db, "hard", agreed=0, disagreed=10)
        await asyncio.to_thread(log_comparisons, clean_db, "easy", agreed=90, disagreed=0)
        await asyncio.to_thread(due, clean_db)
        await guardian.check_once()
        return control.state(ROUTE).rollout_percent

    easy = {**HARD, "value": "easy"}
    percent, _ = with_guardian(clean_db, config([HARD, easy]), scenario)
    assert percent == 50
    [step] = [e for e in events(clean_db) if e["action"] == "ramp_step"][-1:]
    assert "still on the teacher, not re-enabled by the ramp: difficulty=hard" in step["reason"]
    override = fetch(clean_db, "SELECT mode FROM route_slice_overrides")
    assert override == [{"mode": "teacher"}]


def test_a_ramp_stops_when_a_bar_fails(clean_db: str) -> None:
    async def scenario(control: ControlPlane, guardian: Guardian) -> tuple[str, float]:
        await control.start_plan(ROUTE, [1, 10], 60, actor="bob", reason="ramp it")
        await asyncio.to_thread(log_comparisons, clean_db, "hard", agreed=8, disagreed=4)
        await asyncio.to_thread(due, clean_db)
        await guardian.check_once()
        state = control.state(ROUTE)
        return state.mode, state.rollout_percent

    # the route's own bar (no critical slices): 8/12 = 67 % < 90 %: rolled back, ramp stopped
    (mode, percent), _ = with_guardian(clean_db, config([]), scenario)
    assert (mode, percent) == ("shadow", 1)
    stopped = [e for e in events(clean_db) if e["action"] == "ramp_stopped"]
    assert len(stopped) == 1
    assert "rolled back automatically" in stopped[0]["reason"]
    assert fetch(clean_db, "SELECT status FROM rollout_plans")[0]["status"] == "stopped"


def test_bad_plans_are_refused(clean_db: str) -> None:
    from gateway.errors import InvalidRequest

    async def scenario(control: ControlPlane, _guardian: Guardian) -> list[str]:
        messages = []
        for steps, hold in (
            ([], 60.0),
            ([10, 5], 60.0),
            ([0, 5], 60.0),
            ([5, 150], 60.0),
            ([5], 0.0),
        ):
            with pytest.raises(InvalidRequest) as caught:
                await control.start_plan(ROUTE, steps, hold, actor="bob", reason="x")
            messages.append(caught.value.message)
        return messages

    messages, _ = with_guardian(clean_db, config([]), scenario)
    assert "ascending" in messages[1]
    assert fetch(clean_db, "SELECT count(*) AS n FROM rollout_plans")[0]["n"] == 0


def test_end_to_end_rollback_from_live_traffic(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    teacher.reset_behavior(answer=lambda text: f"answer to {text}")
    student.reset_behavior(answer=lambda text: "wrong" if "hard" in text else f"answer to {text}")
    spec = route(ROUTE, teacher.base_url, [student.base_url], mode="rollout")
    spec["rollout"] = {"percent": 0}  # everyone still shadowed: the student is only judged
    spec["slices"] = {"critical": [{**HARD, "min_samples": 5}]}
    gateway = make_gateway([spec], guard={"interval_s": 0.2})
    for i in range(6):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": ROUTE, "messages": [{"role": "user", "content": f"hard {i}"}]},
            headers={"Authorization": f"Bearer {app_key}", "X-Slice-Difficulty": "hard"},
        ).raise_for_status()

    def hard_on_teacher() -> bool:
        override = gateway.state.control.state(ROUTE).slices.get(("difficulty", "hard"))
        return override is not None and override.mode == "teacher"

    wait_for(hard_on_teacher, timeout_s=15, what="the slice's automatic rollback")
    assert gateway.state.control.state(ROUTE).mode == "rollout"  # the rest still served
    assert (
        gateway.metric(
            "shadow_gateway_auto_rollbacks_total", route=ROUTE, dimension="difficulty", slice="hard"
        )
        == 1
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1,5,2", "--hold", "30m"], "ascending"),
        (["1,abc", "--hold", "30m"], "must be numbers"),
        (["1,5,200", "--hold", "30m"], "at most 100"),
        (["1,5", "--hold", "soon"], "a duration"),
        (["1,5"], "--hold"),
    ],
)
def test_plan_cli_errors(
    tmp_path: Path, clean_db: str, app_key: str, args: list[str], message: str
) -> None:
    import os

    path = write_config(
        tmp_path / "gw.yaml", [route(ROUTE, "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])]
    )
    result = subprocess.run(
        [
            str(BIN / "shadow-gateway"),
            "rollout",
            "plan",
            ROUTE,
            *args,
            "--reason",
            "r",
            "--config",
            str(path),
        ],
        env={**os.environ, "DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": app_key},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_plan_cli_starts_the_ramp(tmp_path: Path, clean_db: str, app_key: str) -> None:
    import os

    path = write_config(
        tmp_path / "gw.yaml", [route(ROUTE, "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])]
    )
    result = subprocess.run(
        [
            str(BIN / "shadow-gateway"),
            "rollout",
            "plan",
            ROUTE,
            "1,5,25,50,100",
            "--hold",
            "30m",
            "--reason",
            "weekly ramp",
            "--config",
            str(path),
        ],
        env={**os.environ, "DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": app_key},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "now at 1%" in result.stdout
    plan = fetch(clean_db, "SELECT steps, hold_s, status FROM rollout_plans")[0]
    assert plan == {"steps": [1, 5, 25, 50, 100], "hold_s": 1800, "status": "active"}
