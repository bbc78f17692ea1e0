"""The committed demo students (the shipped one and the small candidate) reproduce their model
cards (transformers, greedy, on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.demo.stack import demo_candidate_dir, demo_model_dir
from student_server.demo import charlm
from student_server.demo.evaluate import evaluate, summary, table

MODELS = pytest.mark.parametrize(
    "model", [demo_model_dir(), demo_candidate_dir()], ids=["model", "model-small"]
)
# Different CPUs sum float32 in different orders; a near-tie may go the other way.
ACCURACY_TOLERANCE = 0.02
AUROC_TOLERANCE = 0.03


def figures(model: Path) -> dict[str, dict[str, float]]:
    recorded: dict[str, dict[str, float]] = json.loads((model / "eval.json").read_text())
    return recorded


@MODELS
def test_the_card_shows_the_recorded_figures(model: Path) -> None:
    card = (model / "MODEL_CARD.md").read_text()
    assert table(figures(model)) in card


@MODELS
def test_the_recorded_shape_is_the_one_trained(model: Path) -> None:
    """``train_info.json`` names the shape when it is not the default (the shipped model's)."""
    info = json.loads((model / "train_info.json").read_text())
    shape = {
        key: info[key] for key in ("hidden_size", "layers", "intermediate_size") if key in info
    }
    expected = charlm.model_config(len(charlm.vocabulary()), **shape)
    config = json.loads((model / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "head_dim", "vocab_size"):
        assert config[key] == expected[key], key


@MODELS
def test_the_tokenizer_is_one_character_a_token_with_the_trained_chat_format(model: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(model)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "ignored"}, {"role": "user", "content": "May 1st, 2020"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == charlm.prompt_text("May 1st, 2020")
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    assert len(ids) == len(text)  # no BOS, one token a character
    assert tokenizer.decode(ids) == text


@pytest.mark.slow
@MODELS
def test_the_committed_weights_reproduce_the_cards_accuracy_per_slice(model: Path) -> None:
    pytest.importorskip("transformers")
    measured = summary(evaluate(model))
    for name, recorded in figures(model).items():
        got = measured[name]
        assert got["n"] == recorded["n"]
        assert got["accuracy"] == pytest.approx(recorded["accuracy"], abs=ACCURACY_TOLERANCE)
        if recorded["auroc"] is not None and got["auroc"] is not None:
            assert got["auroc"] == pytest.approx(recorded["auroc"], abs=AUROC_TOLERANCE)
