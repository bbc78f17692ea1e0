"""Measure the demo student per slice: accuracy, and how well its confidence ranks its answers.

``python -m student_server.demo.evaluate --model student_server/demo/model`` decodes a fixed
set of prompts (``--seed``, ``--per-style`` of each style) greedily with transformers on CPU,
the way vLLM serves it: the chat template's text, no BOS, one character a token, the answer
ending at EOS. For each answer it takes the gateway's ``min_prob`` confidence (the least
likely generated token's probability, EOS included, as vLLM's logprobs report it) and gives,
per slice, the accuracy and the AUROC of that confidence for telling right answers from
wrong ones (0.5: no better than chance; undefined when a slice has no wrong answer or no
right one). ``--json`` prints the figures as JSON, which the model card's table comes from.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.core.confidence import min_prob
from gateway.demo.task import STYLES, Example, example, is_correct
from student_server.demo import charlm

EVAL_SEED = 20240
PER_STYLE = 250
MAX_ANSWER_TOKENS = 16


@dataclass(frozen=True)
class Answer:
    style: str
    prompt: str
    expected: str
    answer: str
    confidence: float | None
    correct: bool


def eval_set(seed: int = EVAL_SEED, per_style: int = PER_STYLE) -> list[Example]:
    """``per_style`` prompts of every style, the same for a given seed on every machine."""
    import random

    rng = random.Random(seed)
    return [example(rng, style) for style in STYLES for _ in range(per_style)]


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """P(a random right answer scores above a random wrong one), ties count half."""
    pairs = sorted(zip(scores, positives, strict=True))
    wins = 0.0
    right = sum(positives)
    wrong = len(positives) - right
    if not right or not wrong:
        return None
    index = 0
    wrong_below = 0  # wrong answers with a strictly lower score than the current group
    while index < len(pairs):
        end = index
        while end < len(pairs) and pairs[end][0] == pairs[index][0]:
            end += 1
        group = [positive for _, positive in pairs[index:end]]
        group_right = sum(group)
        group_wrong = len(group) - group_right
        wins += group_right * (wrong_below + 0.5 * group_wrong)
        wrong_below += group_wrong
        index = end
    return wins / (right * wrong)


def decode(model_dir: Path, prompts: Sequence[str], threads: int = 2) -> list[tuple[str, float]]:
    """Greedy answers and their min_prob, prompts of one length batched (so no padding)."""
    import torch
    from transformers import LlamaForCausalLM

    from student_server.demo.train import encode

    torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train(False)  # inference: no dropout (eval() is untyped)
    vocabulary = charlm.vocabulary()
    characters = {index: token for token, index in vocabulary.items()}
    eos = vocabulary[charlm.EOS]
    by_length: dict[int, list[int]] = {}
    encoded = [encode(charlm.prompt_text(prompt)) for prompt in prompts]
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    results: list[tuple[str, float]] = [("", 0.0)] * len(prompts)
    with torch.no_grad():
        for indexes in by_length.values():
            # No KV cache: the sequences are a few dozen characters, and a full forward pass
            # per step keeps clear of the cache API, which changes between versions.
            sequence = torch.tensor([encoded[i] for i in indexes])
            texts = [""] * len(indexes)
            logprobs: list[list[float]] = [[] for _ in indexes]
            done = [False] * len(indexes)
            for _ in range(MAX_ANSWER_TOKENS):
                logits = model(input_ids=sequence, use_cache=False).logits[:, -1, :]
                log_softmax = torch.log_softmax(logits.float(), dim=-1)
                chosen = log_softmax.argmax(dim=-1)
                for row, token in enumerate(chosen.tolist()):
                    if done[row]:
                        continue
                    logprobs[row].append(float(log_softmax[row, token]))
                    if token == eos:
                        done[row] = True
                    else:
                        texts[row] += characters.get(token, "")
                if all(done):
                    break
                sequence = torch.cat([sequence, chosen[:, None]], dim=1)
            for row, index in enumerate(indexes):
                score = min_prob([{"logprob": value} for value in logprobs[row]])
                results[index] = (texts[row], score if score is not None else 0.0)
    return results


def evaluate(model_dir: Path, seed: int = EVAL_SEED, per_style: int = PER_STYLE) -> list[Answer]:
    examples = eval_set(seed, per_style)
    decoded = decode(model_dir, [item.prompt for item in examples])
    return [
        Answer(
            item.style,
            item.prompt,
            item.answer,
            text,
            confidence,
            is_correct(item.prompt, text),
        )
        for item, (text, confidence) in zip(examples, decoded, strict=True)
    ]


def summary(answers: Sequence[Answer]) -> dict[str, dict[str, Any]]:
    """Per style and overall: n, accuracy, AUROC of min_prob for right vs wrong."""
    groups: dict[str, list[Answer]] = {style: [] for style in STYLES}
    for answer in answers:
        groups[answer.style].append(answer)
    groups["all"] = list(answers)
    figures: dict[str, dict[str, Any]] = {}
    for name, group in groups.items():
        scores = [a.confidence or 0.0 for a in group]
        right = [a.correct for a in group]
        area = auroc(scores, right)
        figures[name] = {
            "n": len(group),
            "accuracy": round(sum(right) / len(group), 4) if group else math.nan,
            "auroc": None if area is None else round(area, 4),
            "mean_confidence": round(sum(scores) / len(group), 4) if group else math.nan,
        }
    return figures


def table(figures: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| slice | prompts | accuracy | AUROC of min_prob | mean min_prob |",
        "|---|---|---|---|---|",
    ]
    for name, row in figures.items():
        area = "n/a" if row["auroc"] is None else f"{row['auroc']:.3f}"
        lines.append(
            f"| {name} | {row['n']} | {row['accuracy']:.1%} | {area} | "
            f"{row['mean_confidence']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m student_server.demo.evaluate")
    parser.add_argument("--model", type=Path, default=Path(__file__).parent / "model")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--per-style", type=int, default=PER_STYLE)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--answers", type=Path, help="also write every answer as JSON lines")
    args = parser.parse_args(argv)
    answers = evaluate(args.model, args.seed, args.per_style)
    figures = summary(answers)
    if args.answers:
        args.answers.write_text("".join(json.dumps(asdict(a)) + "\n" for a in answers))
    print(json.dumps(figures, indent=2) if args.json else table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
