"""``distill``'s pure pieces: the train command's placeholders, the config section, resume."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import DistillConfig
from gateway.services.distill import DistillRun, StageFailed
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
