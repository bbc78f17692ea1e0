"""The demo's two students: the route they make, their cores, and the candidates table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import RouteConfig
from gateway.demo.stack import (
    CANDIDATE,
    CANDIDATE_MODEL,
    CHAMPION,
    STUDENT_MODEL,
    DemoError,
    DemoStack,
    cpu_binds,
    demo_candidate_dir,
    demo_model_dir,
    free_port,
    route_config,
)
from gateway.demo.walkthrough import print_candidates


def test_the_route_has_the_shipped_student_as_champion_and_the_small_one_as_candidate() -> None:
    spec = route_config("http://127.0.0.1:1", "http://127.0.0.1:2", 0.8, "http://127.0.0.1:3")
    route = RouteConfig.model_validate(spec)
    assert route.champion == CHAMPION
    assert [(s.name, s.model, str(s.base_urls[0])) for s in route.students] == [
        (CHAMPION, STUDENT_MODEL, "http://127.0.0.1:2/v1"),
        (CANDIDATE, CANDIDATE_MODEL, "http://127.0.0.1:3/v1"),
    ]
    alone = RouteConfig.model_validate(route_config("http://127.0.0.1:1", "http://x:2", 0.8))
    assert [s.name for s in alone.students] == [CHAMPION]


def test_both_checkpoints_are_in_the_checkout() -> None:
    for model in (demo_model_dir(), demo_candidate_dir()):
        assert (model / "config.json").exists()
        assert (model / "model.safetensors").exists()
        assert (model / "MODEL_CARD.md").exists()


@pytest.mark.parametrize(
    ("cpus", "expected"),
    [
        ([0, 1], ["0", "1"]),  # two cores: one each, none to spare
        ([0, 1, 2], ["0", "1"]),  # one kept for the HTTP servers and the gateway
        (list(range(16)), ["0,1,2,3,4,5,6", "7,8,9,10,11,12,13"]),
        ([0], [None, None]),  # fewer cores than servers: vLLM decides
    ],
)
def test_each_vllm_gets_cores_of_its_own(cpus: list[int], expected: list[str | None]) -> None:
    assert cpu_binds(2, cpus) == expected


def test_a_users_binding_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-3")
    assert cpu_binds(2, [0, 1, 2, 3]) == [None, None]


def test_a_student_server_that_cannot_start_fails_the_demo_and_is_cleaned_up(
    tmp_path: Path,
) -> None:
    """This environment's Python has no vLLM: both servers exit at once."""
    said: list[str] = []
    stack = DemoStack(
        data_dir=tmp_path,
        student_python=Path(sys.executable),
        model_dir=demo_model_dir(),
        student_port=free_port(),
        ready_timeout_s=60,
        say=said.append,
    )
    with pytest.raises(DemoError, match="exited with status"):
        stack.start_students()
    stack.stop()
    assert "stopping students (vLLM)" in said
    assert not any("did not stop cleanly" in line for line in said), said
    assert {path.name for path in tmp_path.glob("*.log")} == {
        f"student-{CHAMPION}.log",
        f"student-{CANDIDATE}.log",
    }


def entry(student: str, compared: int, agreed: int, **extra: Any) -> dict[str, Any]:
    agreement = agreed / compared if compared else None
    return {
        "student": student,
        "baseline": student == CHAMPION,
        "answers": compared,
        "compared": compared,
        "agreed": agreed,
        "agreement": agreement,
        "ci_low": None if agreement is None else max(0.0, agreement - 0.1),
        "ci_high": None if agreement is None else min(1.0, agreement + 0.05),
        "paired": None,
        "verdict": "baseline",
        "latency_p50_ms": 80.0,
        "latency_p95_ms": 400.0,
        "mean_confidence": 0.8,
        **extra,
    }


def paired(pairs: int, difference: float | None, low: float | None, high: float | None) -> Any:
    return {
        "pairs": pairs,
        "both": 0,
        "candidate_only": 0,
        "baseline_only": 0,
        "neither": 0,
        "difference": difference,
        "ci_low": low,
        "ci_high": high,
        "p_value": None if difference is None else 0.01,
    }


REPORT: dict[str, Any] = {
    "route": "dates",
    "since": "2026-01-01T00:00:00+00:00",
    "until": "2026-01-02T00:00:00+00:00",
    "baseline": CHAMPION,
    "min_pairs": 30,
    "students": [
        {"name": CHAMPION, "status": "champion"},
        {"name": CANDIDATE, "status": "candidate"},
    ],
    "sources": [
        {
            "source": "live",
            "overall": {
                "dimension": "all",
                "value": "all",
                "candidates": [
                    entry(CHAMPION, 200, 150),
                    entry(
                        CANDIDATE,
                        198,
                        110,
                        paired=paired(196, -0.2, -0.26, -0.14),
                        verdict="worse",
                    ),
                ],
            },
            "slices": [
                {
                    "dimension": "style",
                    "value": "written",
                    "candidates": [
                        entry(CHAMPION, 60, 59),
                        entry(
                            CANDIDATE,
                            60,
                            20,
                            paired=paired(60, -0.65, -0.76, -0.52),
                            verdict="worse",
                        ),
                    ],
                },
                {
                    "dimension": "style",
                    "value": "iso",
                    "candidates": [
                        entry(CHAMPION, 50, 50),
                        entry(
                            CANDIDATE,
                            50,
                            50,
                            paired=paired(50, 0.0, -0.07, 0.07),
                            verdict="inconclusive",
                        ),
                    ],
                },
                {
                    "dimension": "style",
                    "value": "relative",
                    "candidates": [
                        entry(CHAMPION, 12, 0),
                        entry(
                            CANDIDATE,
                            11,
                            1,
                            paired=paired(11, None, None, None),
                            verdict="not_enough_data",
                        ),
                    ],
                },
            ],
        }
    ],
}


def test_the_candidates_table_has_every_slice_in_the_reports_order_then_the_route() -> None:
    lines: list[str] = []
    print_candidates(REPORT, lines.append)
    text = "\n".join(lines)
    assert f"{CHAMPION} (champion), {CANDIDATE} (candidate)" in text
    assert "under 30 pairs, no verdict" in text
    assert "live answers" in text
    header = next(index for index, line in enumerate(lines) if "VERDICT" in line)
    rows = [line.split() for line in lines[header + 1 :]]
    # Each slice's champion row names the slice; the candidate's row follows it.
    assert [row[0] for row in rows[::2]] == ["style=written", "style=iso", "style=relative", "all"]
    assert [row[0] for row in rows[1::2]] == [CANDIDATE] * 4
    assert " ".join(rows[0]).endswith("60 98% 88% to 100% - - - (baseline)")
    assert " ".join(rows[1]) == f"{CANDIDATE} 60 33% 23% to 38% 60 -65% -76% to -52% WORSE"
    assert " ".join(rows[3]).endswith("50 +0% -7% to +7% inconclusive")
    assert " ".join(rows[5]).endswith("11 - - too few pairs")
    assert " ".join(rows[6]).startswith(f"all {CHAMPION} 200 75%")
    assert " ".join(rows[7]).endswith("196 -20% -26% to -14% WORSE")


def test_replayed_answers_are_a_table_of_their_own() -> None:
    replay = {**REPORT["sources"][0], "source": "replay"}
    lines: list[str] = []
    print_candidates({**REPORT, "sources": [REPORT["sources"][0], replay]}, lines.append)
    assert [line.strip() for line in lines if line.strip().endswith("answers")] == [
        "live answers",
        "replay answers",
    ]
