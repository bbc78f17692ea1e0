"""The demo student's shape: a character-level tokenizer, a chat template, a tiny Llama config.

One token per character: vLLM reports each answer character's logprob on its own, so the
confidence (``min_prob``) points at the one doubtful digit, and a ``top_logprobs`` entry is a
readable character (with byte-level BPE the alternatives of a merged token collapse).

The chat template keeps the last user message and appends :data:`ANSWER_CUE`; training formats
prompts with :func:`prompt_text`, the same string, so what vLLM feeds the model on
``/v1/chat/completions`` is exactly what it was trained on. No BOS token: vLLM does not add
one to a chat prompt, and the trainer must not either.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
ANSWER_CUE = " => "
CHARACTERS = string.printable[:95]  # digits, letters, punctuation, space; no newline or tab
CHAT_TEMPLATE = (
    "{% set ns = namespace(last='') %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set ns.last = message['content'] %}{% endif %}"
    "{% endfor %}{{ ns.last }}{% if add_generation_prompt %}" + ANSWER_CUE + "{% endif %}"
)
MAX_POSITIONS = 64
HEAD_DIM = 64  # vLLM's CPU attention rejects smaller heads


def prompt_text(prompt: str) -> str:
    """What the model sees for a one-message chat: the chat template's output."""
    return prompt + ANSWER_CUE


def vocabulary() -> dict[str, int]:
    tokens = [PAD, UNK, EOS, *CHARACTERS]
    return {token: index for index, token in enumerate(tokens)}


def model_config(
    vocab_size: int, *, hidden_size: int = 256, layers: int = 2, intermediate_size: int = 768
) -> dict[str, Any]:
    """The Llama config; the defaults are the shipped ``model``'s shape.

    Heads are always 64 wide (vLLM's CPU attention needs 64 or more), so ``hidden_size`` must
    be a multiple of 64 and sets the number of heads.
    """
    if hidden_size <= 0 or hidden_size % HEAD_DIM:
        raise ValueError(
            f"hidden_size must be a positive multiple of {HEAD_DIM}, not {hidden_size}"
        )
    if layers < 1 or intermediate_size < 1:
        raise ValueError("layers and intermediate_size must be positive")
    ids = vocabulary()
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden_size // HEAD_DIM,
        "num_key_value_heads": hidden_size // HEAD_DIM,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "pad_token_id": ids[PAD],
        "eos_token_id": ids[EOS],
        "bos_token_id": None,
        "torch_dtype": "float32",
    }


def build_tokenizer(directory: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (transformers and vLLM read both)."""
    from tokenizers import Tokenizer, decoders, models

    # BPE with no merges: every character is its own token, unknown ones map to <unk>.
    backend = Tokenizer(models.BPE(vocab=vocabulary(), merges=[], unk_token=UNK))
    backend.add_special_tokens([PAD, UNK, EOS])
    backend.decoder = decoders.Fuse()
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD,
        "unk_token": UNK,
        "eos_token": EOS,
        "model_max_length": MAX_POSITIONS,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": PAD, "unk_token": UNK, "eos_token": EOS}, indent=2) + "\n"
    )


def write_generation_config(directory: Path) -> None:
    """Greedy by default, so a request without ``temperature`` gets the trained answer.

    vLLM takes its default sampling parameters from this file but ignores ``do_sample``;
    ``top_k: 1`` is what makes its default greedy.
    """
    ids = vocabulary()
    config = {
        "do_sample": False,
        "top_k": 1,
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "max_new_tokens": 16,
    }
    (directory / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")
