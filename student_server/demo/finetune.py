"""Fine-tune a demo student on an exported training file: ``distill``'s train command for the demo.

``python -m student_server.demo.finetune --train {train} --eval {eval} --output {output}``
reads ``shadow-gateway export``'s OpenAI chat JSONL (one ``{"messages": [...]}`` per line: the
last user message is the prompt, the last assistant message the answer the route's verifier
passed), starts from a demo student's weights (``--base``, default the shipped champion,
``student_server/demo/model``) and trains it a few epochs on those examples, the loss on the
answer's characters and ``</s>`` only, as :mod:`.train` does. Then it decodes the held-out
file (``--eval``) greedily with the base and with the result and prints the exact-match
accuracy of each, per style, so the log says at once whether the new weights learnt anything.

It writes what vLLM loads into ``--output``: the weights, the tokenizer, the configs, and a
``train_info.json`` recording the run (base, examples, epochs, steps, seconds, the losses and
both accuracies). Runs on CPU (torch + transformers: ``.venv-student`` has both), on one
thread by default; a few hundred examples take well under a minute. ``--max-seconds`` caps the
training time (the epoch running when it passes is the last).

Exit status: 0 done, 2 bad arguments or an unusable training file (no example in it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.demo.task import style_of
from student_server.demo import charlm
from student_server.demo.train import IGNORE, encode

SHIPPED = Path(__file__).resolve().parent / "model"


@dataclass(frozen=True)
class Pair:
    prompt: str
    answer: str


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: their text, joined
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str)) or None
    return None


def read_pairs(path: Path) -> list[Pair]:
    """(prompt, answer) of each line: the last user message and the last assistant one."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        messages = json.loads(line).get("messages") or []
        prompt = answer = None
        for message in messages:
            if message.get("role") == "user":
                prompt = _text(message.get("content"))
            elif message.get("role") == "assistant":
                answer = _text(message.get("content"))
        if prompt is not None and answer is not None:
            pairs.append(Pair(prompt, answer.strip()))
    return pairs


def encoded(pair: Pair) -> tuple[list[int], list[int]] | None:
    """(input ids, labels), the loss on the answer and ``</s>``; None when it does not fit."""
    prompt = encode(charlm.prompt_text(pair.prompt))
    target = [*encode(pair.answer), charlm.vocabulary()[charlm.EOS]]
    if len(prompt) + len(target) > charlm.MAX_POSITIONS:
        return None
    return [*prompt, *target], [IGNORE] * len(prompt) + target


def accuracy(model_dir: Path, pairs: Sequence[Pair], threads: int) -> dict[str, dict[str, Any]]:
    """Greedy exact-match accuracy against the file's answers, per style and for all."""
    from student_server.demo.evaluate import decode

    if not pairs:
        return {}
    answers = decode(model_dir, [pair.prompt for pair in pairs], threads)
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for pair, (text, _confidence) in zip(pairs, answers, strict=True):
        for group in (style_of(pair.prompt) or "other", "all"):
            total[group] += 1
            right[group] += text.strip() == pair.answer
    return {
        group: {"n": total[group], "right": right[group], "accuracy": right[group] / total[group]}
        for group in sorted(total, key=lambda g: (g == "all", g))
    }


def _show(name: str, figures: dict[str, dict[str, Any]]) -> str:
    return f"{name}: " + ", ".join(
        f"{group} {row['right']}/{row['n']}" for group, row in figures.items()
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m student_server.demo.finetune",
        description="Fine-tune a demo student on an exported chat JSONL (distill's {train}).",
    )
    parser.add_argument("--train", type=Path, required=True, help="the training JSONL")
    parser.add_argument("--eval", type=Path, help="the held-out JSONL (accuracy before/after)")
    parser.add_argument("--output", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--base", type=Path, default=SHIPPED, help="the weights to start from")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    # One thread: beside the demo's vLLM servers on a small machine, two torch threads spend
    # their time waiting for each other (measured: 4x slower than one on a loaded 2-core box).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="training time cap")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.max_seconds <= 0:
        parser.error("--epochs, --batch-size, --lr and --max-seconds must be positive")
    if not (args.base / "config.json").is_file():
        parser.error(f"--base {args.base}: no config.json (not a demo student)")
    try:
        pairs = read_pairs(args.train)
        held_out = read_pairs(args.eval) if args.eval and args.eval.is_file() else []
    except (OSError, ValueError, AttributeError) as exc:
        parser.exit(2, f"{parser.prog}: cannot read the data: {exc}\n")
    rows = [row for pair in pairs if (row := encoded(pair)) is not None]
    if not rows:
        parser.exit(2, f"{parser.prog}: no usable example in {args.train}\n")

    # The log is the train command's output, which distill keeps: no progress bars in it.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    print(f"{len(rows)} examples from {args.train} ({len(pairs) - len(rows)} too long)")
    print(f"base: {args.base}", flush=True)
    before = accuracy(args.base, held_out, args.threads)
    if before:
        print(_show("held-out, base", before), flush=True)
    model = LlamaForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01
    )
    per_epoch = math.ceil(len(rows) / args.batch_size)
    steps = per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    pad = charlm.vocabulary()[charlm.PAD]
    shuffle = random.Random(args.seed)
    started = time.monotonic()
    done = 0
    losses: list[float] = []
    for epoch in range(args.epochs):
        order = list(rows)
        shuffle.shuffle(order)
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
            labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in batch])
            lengths = torch.tensor([len(ids) for ids, _ in batch])
            mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
            done += 1
        losses.append(round(total / len(order), 4))
        elapsed = time.monotonic() - started
        print(f"epoch {epoch + 1}/{args.epochs}  loss {losses[-1]:.4f}  {elapsed:.0f}s", flush=True)
        if elapsed > args.max_seconds:
            print(f"stopping: past --max-seconds {args.max_seconds:g}", flush=True)
            break
    seconds = time.monotonic() - started

    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    # The base's greedy generation_config.json (top_k 1 without sampling: what makes vLLM's
    # default greedy) fails transformers' strict check on save; the demo's own is written after.
    model.generation_config.top_k = None
    model.save_pretrained(out, safe_serialization=True)
    charlm.build_tokenizer(out)
    charlm.write_generation_config(out)
    after = accuracy(out, held_out, args.threads)
    if after:
        print(_show("held-out, fine-tuned", after), flush=True)
    info: dict[str, Any] = {
        "base": str(args.base),
        "train_file": str(args.train),
        "eval_file": str(args.eval) if args.eval else None,
        "examples": len(rows),
        "epochs_run": len(losses),
        "steps": done,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "train_seconds": round(seconds, 1),
        "epoch_losses": losses,
        "eval_base": before,
        "eval_finetuned": after,
        "torch": torch.__version__,
    }
    (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}: {done} steps in {seconds:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
