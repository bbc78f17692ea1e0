"""The committed demo student reproduces its model card (transformers, greedy, on CPU)."""

from __future__ import annotations

import json

import pytest

from gateway.demo.stack import demo_model_dir
from student_server.demo import charlm
from student_server.demo.evaluate import evaluate, summary, table

MODEL = demo_model_dir()
FIGURES = json.loads((MODEL / "eval.json").read_text())
# Different CPUs sum float32 in different orders; a near-tie may go the other way.
ACCURACY_TOLERANCE = 0.02
AUROC_TOLERANCE = 0.03


def test_the_card_shows_the_recorded_figures() -> None:
    card = (MODEL / "MODEL_CARD.md").read_text()
    assert table(FIGURES) in card


def test_the_tokenizer_is_one_character_a_token_with_the_trained_chat_format() -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(MODEL)
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
def test_the_committed_weights_reproduce_the_cards_accuracy_per_slice() -> None:
    pytest.importorskip("transformers")
    figures = summary(evaluate(MODEL))
    for name, recorded in FIGURES.items():
        got = figures[name]
        assert got["n"] == recorded["n"]
        assert got["accuracy"] == pytest.approx(recorded["accuracy"], abs=ACCURACY_TOLERANCE)
        if recorded["auroc"] is not None and got["auroc"] is not None:
            assert got["auroc"] == pytest.approx(recorded["auroc"], abs=AUROC_TOLERANCE)
