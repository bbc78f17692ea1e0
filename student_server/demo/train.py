"""Train the demo student on the demo teacher's verified answers (a distillation).

``python -m student_server.demo.train --out student_server/demo/model`` draws prompts with
the demo traffic's slice mix (:data:`gateway.demo.task.DEMO_MIX`) from ``--seed``, asks the
teacher (:func:`gateway.demo.task.teacher_answer`, the same code the demo teacher serves),
keeps the answers the route's export verifier passes (as ``shadow-gateway export`` would)
and trains a tiny Llama from scratch on them, the loss on the answer's characters only. Every
batch is fresh prompts, so there is no epoch and no overfitting to a fixed set.

``--hidden-size``, ``--layers`` and ``--intermediate-size`` set the model's shape; the
defaults are the shipped ``model``'s. ``model-small``, the demo's candidate, is the same recipe
at one layer of 128 and far fewer steps (its ``MODEL_CARD.md`` has the command).

Runs on CPU (torch + transformers: the ``semantic`` extra's environment). The weights it
writes, with the tokenizer and configs, are what vLLM serves; ``train_info.json`` records
the run (steps, seed, shape, time, verifier drops) for the model card.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.demo.task import DEMO_MIX, stream, teacher_answer, verify_answer
from student_server.demo import charlm

IGNORE = -100


def encode(text: str) -> list[int]:
    vocabulary = charlm.vocabulary()
    unknown = vocabulary[charlm.UNK]
    return [vocabulary.get(character, unknown) for character in text]


def training_rows(seed: int, drops: Counter[str]) -> Iterator[tuple[list[int], list[int]]]:
    """(input ids, labels) of verified teacher answers; ``drops`` counts the verifier's drops."""
    eos = charlm.vocabulary()[charlm.EOS]
    for example in stream(seed, DEMO_MIX):
        answer = teacher_answer(example.prompt)
        request = {"messages": [{"role": "user", "content": example.prompt}]}
        ok, reason = verify_answer(answer, request)
        if not ok:
            drops[f"{example.style}:{reason}"] += 1
            continue
        prompt = encode(charlm.prompt_text(example.prompt))
        target = [*encode(answer), eos]
        yield [*prompt, *target], [IGNORE] * len(prompt) + target


def main(argv: Sequence[str] | None = None) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    parser = argparse.ArgumentParser(prog="python -m student_server.demo.train")
    parser.add_argument("--out", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=100)
    # The model's shape; the defaults are the shipped model's (model-small's card has its own).
    parser.add_argument("--hidden-size", type=int, default=256, help="a multiple of 64 (256)")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers (2)")
    parser.add_argument("--intermediate-size", type=int, default=768, help="MLP width (768)")
    args = parser.parse_args(argv)
    shape = {
        "hidden_size": args.hidden_size,
        "layers": args.layers,
        "intermediate_size": args.intermediate_size,
    }
    try:
        model_config = charlm.model_config(len(charlm.vocabulary()), **shape)
    except ValueError as exc:
        parser.error(str(exc))

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    vocabulary = charlm.vocabulary()
    config = LlamaConfig(**model_config)
    model = LlamaForCausalLM(config)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01
    )

    warmup: int = args.warmup
    steps: int = args.steps

    def schedule(step: int) -> float:
        """Linear warm-up, then a cosine decay to a tenth of the peak."""
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    drops: Counter[str] = Counter()
    rows = training_rows(args.seed, drops)
    pad = vocabulary[charlm.PAD]
    started = time.monotonic()
    kept = 0
    loss_sum = 0.0
    for step in range(args.steps):
        batch = [next(rows) for _ in range(args.batch_size)]
        kept += len(batch)
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in batch])
        mask = torch.arange(width)[None, :] < torch.tensor([len(i) for i, _ in batch])[:, None]
        loss = model(input_ids=input_ids, attention_mask=mask.long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_sum += float(loss.detach())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.monotonic() - started
            print(
                f"step {step + 1}/{args.steps}  loss {loss_sum / args.log_every:.4f}  "
                f"lr {scheduler.get_last_lr()[0]:.2e}  {elapsed:.0f}s",
                flush=True,
            )
            loss_sum = 0.0
    seconds = time.monotonic() - started

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    charlm.build_tokenizer(out)
    charlm.write_generation_config(out)
    info: dict[str, Any] = {
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup": args.warmup,
        "threads": args.threads,
        **shape,
        "train_seconds": round(seconds, 1),
        "examples_kept": kept,
        "examples_dropped_by_verifier": dict(sorted(drops.items())),
        "mix": dict(DEMO_MIX),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }
    (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out} in {seconds:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
