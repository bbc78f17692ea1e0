"""Building fine-tuning examples from logged requests: pure, no I/O (see services.export)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.core.agreement import normalize_text


def prompt_messages(endpoint: str, payload: object) -> list[Any] | None:
    """The conversation the teacher answered, or None when the app's body was not stored."""
    if not isinstance(payload, dict):
        return None
    if endpoint == "text":
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0]  # the first choice answers the first prompt
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else None
    messages = payload.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        return messages
    return None


def _content_key(content: object) -> str:
    if isinstance(content, str):
        return normalize_text(content)
    if isinstance(content, list):  # content parts: text normalised, images & co. verbatim
        return " ".join(
            normalize_text(part["text"])
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else orjson.dumps(part, option=orjson.OPT_SORT_KEYS).decode()
            for part in content
        )
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()


def prompt_key(messages: Sequence[Mapping[str, Any]]) -> int:
    """64 bits of the normalised conversation: who said what, case and spacing aside."""
    canonical = "\x1e".join(
        f"{message.get('role')}\x1f{_content_key(message.get('content'))}" for message in messages
    )
    digest = hashlib.blake2b(canonical.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def allocate(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` in proportion to ``weights`` by largest remainders (ties by key)."""
    weight_sum = sum(weights.values())
    if weight_sum <= 0:
        return dict.fromkeys(weights, 0)
    exact = {key: total * weight / weight_sum for key, weight in weights.items()}
    quotas = {key: math.floor(value) for key, value in exact.items()}
    by_remainder = sorted(exact, key=lambda key: (quotas[key] - exact[key], key))
    for key in by_remainder[: total - sum(quotas.values())]:
        quotas[key] += 1
    return quotas
