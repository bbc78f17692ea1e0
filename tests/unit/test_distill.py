"""``distill``'s pure pieces: the train command's placeholders, the config section, resume,
and the held-out comparison (its lines, their order, the table)."""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.commands.distill import holdout_lines
from gateway.config import DistillConfig
from gateway.core.paired import MIN_PAIRS, PairedCounts, paired_difference
from gateway.services.distill import DistillRun, StageFailed
from gateway.services.distill.holdout import _line, _worst_first
from gateway.services.distill.processes import train_command_line


def test_placeholders_become_shell_quoted_paths() -> None:
    line = train_command_line(
        "train.py --data {train} --eval {eval} --out {output}",
        Path("/d/it's here/train.jsonl"),
        Path("/d/e.jsonl"),
        Path("/m o/model"),
    )
    words = shlex.split(line)
    assert words == [
        "train.py",
        "--data",
        "/d/it's here/train.jsonl",
        "--eval",
        "/d/e.jsonl",
        "--out",
        "/m o/model",
    ]


def test_a_command_without_output_is_refused() -> None:
    with pytest.raises(StageFailed, match="no \\{output\\}"):
        train_command_line("train.py {train}", Path("t"), Path("e"), Path("o"))


def test_the_config_section() -> None:
    assert DistillConfig().holdout == 0.1
    assert DistillConfig().launch.device == "cpu"
    ok = DistillConfig.model_validate({"limit": 10, "mix": {"tier": {"free": 0.7, "paid": 0.3}}})
    assert ok.mix == {"tier": {"free": 0.7, "paid": 0.3}}
    for bad in (
        {"holdout": 0.6},
        {"holdout": 0},
        {"mix": {"tier": {"free": 1.0}}},  # no limit
        {"limit": 10, "mix": {"tier": {"free": 0.5}}},  # does not add up
        {"limit": 10, "mix": {"tier": {"free": 1.0}, "plan": {"x": 1.0}}},
        {"launch": {"device": "tpu"}},
        {"train_cmd": "x"},  # a misspelt key
    ):
        with pytest.raises(ValidationError):
            DistillConfig.model_validate(bad)


def test_a_stage_is_finished_when_its_latest_entry_is_done() -> None:
    run = DistillRun(1, "r", "s", "me", "failed")
    run.stages = [
        {"stage": "export", "status": "done"},
        {"stage": "train", "status": "failed"},
    ]
    assert run.finished("export") is not None
    assert run.finished("train") is None
    run.stages.append({"stage": "train", "status": "done"})
    assert run.finished("train") is not None
    run.stages.append({"stage": "train", "status": "stopped"})
    assert run.finished("train") is None


def row(dim: str | None, val: str | None, **counts: int) -> SimpleNamespace:
    """A row of the held-out query: the 2x2 pairs, and each side's own figures."""
    both, only_c, only_b, neither = (counts.get(k, 0) for k in ("both", "c", "b", "neither"))
    return SimpleNamespace(
        dim=dim,
        val=val,
        items=counts.get("items", both + only_c + only_b + neither),
        candidate_compared=counts.get("c_compared", both + only_c + only_b + neither),
        candidate_agreed=both + only_c,
        baseline_compared=counts.get("b_compared", both + only_c + only_b + neither),
        baseline_agreed=both + only_b,
        both_agreed=both,
        candidate_only=only_c,
        baseline_only=only_b,
        neither=neither,
    )


def test_a_held_out_line_is_the_paired_comparison_of_the_two_students() -> None:
    line = _line(row("style", "relative", both=2, c=12, b=1, neither=25), MIN_PAIRS)
    expected = paired_difference(PairedCounts(2, 12, 1, 25))
    assert line["paired"]["pairs"] == 40
    assert line["paired"]["difference"] == pytest.approx(11 / 40)
    assert (line["paired"]["ci_low"], line["paired"]["ci_high"]) == (expected.low, expected.high)
    assert line["paired"]["p_value"] == expected.p_value
    assert line["verdict"] == expected.verdict == "better"
    assert line["candidate"]["agreement"] == pytest.approx(14 / 40)
    assert line["baseline"]["agreement"] == pytest.approx(3 / 40)
    assert line["candidate"]["ci_low"] < 14 / 40 < line["candidate"]["ci_high"]
    # a side with nothing compared has no figure, and no pair can be judged
    empty = _line(row(None, None, items=5, c_compared=5, b_compared=0), MIN_PAIRS)
    assert (empty["dimension"], empty["value"]) == ("all", "all")
    assert empty["baseline"]["agreement"] is None
    assert empty["verdict"] == "not_enough_data"


def test_held_out_slices_come_worst_first() -> None:
    judged_bad = _line(row("style", "a", both=20, b=15), MIN_PAIRS)  # worse
    judged_ok = _line(row("style", "b", both=30, c=5), MIN_PAIRS)  # better
    small_low = _line(row("style", "c", neither=5), MIN_PAIRS)  # too few, 0 %
    small_high = _line(row("style", "d", both=5), MIN_PAIRS)  # too few, 100 %
    ordered = sorted([small_high, judged_ok, small_low, judged_bad], key=_worst_first)
    assert [line["value"] for line in ordered] == ["a", "b", "c", "d"]


HOLDOUT: dict[str, Any] = {
    "dataset_id": 7,
    "candidate": "tiny-v2",
    "baseline": "tiny-v1",
    "min_pairs": MIN_PAIRS,
    "items": 40,
    "overall": _line(row(None, None, both=28, c=1, b=3, neither=8), MIN_PAIRS),
    "slices": [_line(row("style", "relative", c=1, b=1, neither=8), MIN_PAIRS)],
}


def test_the_held_out_table_names_both_students_and_shows_the_paired_interval() -> None:
    lines = holdout_lines(HOLDOUT)
    assert lines[0].startswith("== held-out split (dataset 7: 40 requests tiny-v2 was not")
    assert "tiny-v2 against tiny-v1 on the same requests" in lines[0]
    header, relative, overall = lines[2:]
    assert header.split()[:6] == ["SLICE", "REQUESTS", "TINY-V2", "TINY-V1", "PAIRS", "DIFF"]
    assert relative.split()[:2] == ["style=relative", "10"]
    assert relative.endswith("too few pairs")
    assert overall.split()[:8] == [
        "all",
        "40",
        "72.5%",
        "(29/40)",
        "77.5%",
        "(31/40)",
        "40",
        "-5.0%",
    ]
    low, high = HOLDOUT["overall"]["paired"]["ci_low"], HOLDOUT["overall"]["paired"]["ci_high"]
    assert f"{low:+.1%} to {high:+.1%}" in overall
    assert overall.endswith("inconclusive")
    assert holdout_lines(None) == ["== held-out split: none (the export made no eval split)"]
