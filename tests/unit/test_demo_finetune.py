"""``demo --redistill``'s trainer (``student_server.demo.finetune``) and the demo route's
``distill`` section: the train command ``distill`` runs, on a few exported examples."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from gateway.config import RouteConfig
from gateway.demo.stack import distill_section, route_config
from gateway.demo.task import DEMO_MIX, examples, teacher_answer, verify_answer
from gateway.services.distill.processes import train_command_line
from student_server.demo import charlm
from student_server.demo.finetune import Pair, encoded, main, read_pairs


def exported(path: Path, seed: int, count: int) -> Path:
    """What ``export`` writes for the demo route: verified teacher answers, chat JSONL."""
    with path.open("w") as out:
        for item in examples(seed, count, DEMO_MIX):
            answer = teacher_answer(item.prompt)
            if verify_answer(answer, {"messages": [{"role": "user", "content": item.prompt}]})[0]:
                messages = [
                    {"role": "user", "content": item.prompt},
                    {"role": "assistant", "content": answer},
                ]
                out.write(json.dumps({"messages": messages}) + "\n")
    return path


def test_the_pairs_are_the_last_user_message_and_the_assistants_answer(tmp_path: Path) -> None:
    lines = [
        {
            "messages": [
                {"role": "user", "content": "2024-03-05"},
                {"role": "assistant", "content": "2024-03-05 "},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "March 5th, 2024"}]},
                {"role": "assistant", "content": "2024-03-05"},
            ]
        },
        {"messages": [{"role": "user", "content": "no answer"}]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert read_pairs(path) == [
        Pair("2024-03-05", "2024-03-05"),
        Pair("March 5th, 2024", "2024-03-05"),
    ]
    ids, labels = encoded(Pair("2024-03-05", "2024-03-05")) or ([], [])
    prompt = len(charlm.prompt_text("2024-03-05"))
    assert len(ids) == prompt + 11  # the answer and </s>
    assert labels[:prompt] == [-100] * prompt  # no loss on the prompt
    assert labels[prompt:] == ids[prompt:]
    assert encoded(Pair("x" * 60, "2024-03-05")) is None  # past the model's 64 positions


def test_the_demo_routes_distill_section_runs_the_finetune_script() -> None:
    python = Path("/opt/my envs/student/bin/python")
    spec = route_config(
        "http://127.0.0.1:1", "http://127.0.0.1:2", 0.8, None, distill_section(python)
    )
    section = RouteConfig.model_validate(spec).distill
    assert section.launch.python == str(python)
    assert section.launch.device == "cpu"
    assert section.launch.max_model_len == 64
    assert section.train_command is not None
    line = train_command_line(
        section.train_command, Path("/d/train.jsonl"), Path("/d/eval.jsonl"), Path("/d/model")
    )
    assert shlex.split(line) == [
        str(python),
        "-m",
        "student_server.demo.finetune",
        "--train",
        "/d/train.jsonl",
        "--eval",
        "/d/eval.jsonl",
        "--output",
        "/d/model",
    ]
    without = RouteConfig.model_validate(route_config("http://127.0.0.1:1", "http://x:2", 0.8))
    assert without.distill.train_command is None


def test_a_fine_tune_writes_a_model_vllm_can_serve_and_says_how_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = exported(tmp_path / "train.jsonl", seed=7, count=48)
    held_out = exported(tmp_path / "eval.jsonl", seed=8, count=12)
    output = tmp_path / "model"
    argv = ["--train", str(train), "--eval", str(held_out), "--output", str(output)]
    assert main([*argv, "--epochs", "1", "--batch-size", "16"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (output / name).is_file(), name
    greedy = json.loads((output / "generation_config.json").read_text())
    assert greedy["top_k"] == 1  # vLLM's default stays greedy
    info = json.loads((output / "train_info.json").read_text())
    assert info["examples"] == len(read_pairs(train))
    assert info["steps"] == 3
    assert info["base"].endswith("student_server/demo/model")
    for figures in (info["eval_base"], info["eval_finetuned"]):
        assert figures["all"]["n"] == len(read_pairs(held_out))
    shown = capsys.readouterr().out
    assert "held-out, base: " in shown
    assert "held-out, fine-tuned: " in shown


def test_an_empty_training_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit) as exited:
        main(["--train", str(empty), "--output", str(tmp_path / "m")])
    assert exited.value.code == 2
    assert not (tmp_path / "m").exists()
