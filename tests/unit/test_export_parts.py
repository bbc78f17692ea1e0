"""The export's parts: the held-out split's quotas and choice, live-frequency summaries."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.core.examples import prompt_digest, prompt_key, short_key
from gateway.services.export.model import ExportError
from gateway.services.export.parts import (
    Frequency,
    Spool,
    SpooledItem,
    eval_path,
    held_out,
    holdout_quotas,
)

AT = datetime(2026, 11, 1, tzinfo=UTC)


def item(n: int, stratum: str) -> SpooledItem:
    key = prompt_digest([{"role": "user", "content": f"question {n}"}]).hex()
    return SpooledItem(f"r{n}", AT, key, stratum, {"tier": stratum}, False, "m", None)


def test_holdout_quotas_share_the_eval_examples_by_stratum() -> None:
    assert holdout_quotas(0.2, {"free": 60, "paid": 30, "enterprise": 10}) == {
        "free": 12,
        "paid": 6,
        "enterprise": 2,
    }
    quotas = holdout_quotas(0.25, {"a": 7, "b": 5, "c": 3})  # 3.75 → 4, by largest remainders
    assert sum(quotas.values()) == 4
    assert all(
        quotas[s] in (int(n * 0.25), int(n * 0.25) + 1) for s, n in {"a": 7, "b": 5, "c": 3}.items()
    )
    with pytest.raises(ExportError, match="leaves the held-out \\(eval\\) file empty"):
        holdout_quotas(0.1, {"a": 4})
    with pytest.raises(ExportError, match="leaves the training file empty"):
        holdout_quotas(0.5, {"a": 1})


def test_the_split_depends_on_the_seed_and_the_prompts_not_their_order(tmp_path: Path) -> None:
    items = [item(n, "free" if n % 3 else "paid") for n in range(90)]

    def chosen(order: list[SpooledItem], seed: int) -> set[str]:
        spool = Spool(tmp_path, seed)
        try:
            for one in order:
                spool.add(one)
            mask = held_out(spool, 0.2)
        finally:
            spool.close()
        return {one.request_id for one, side in zip(order, mask, strict=True) if side}

    held = chosen(items, seed=1)
    assert len(held) == 18
    assert Counter("paid" if int(r[1:]) % 3 == 0 else "free" for r in held) == {
        "free": 12,
        "paid": 6,
    }
    assert chosen(list(reversed(items)), seed=1) == held
    assert chosen(items, seed=2) != held


def test_the_spool_gives_its_items_back_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0)
    try:
        written = [item(n, "s") for n in range(3)]
        for one in written:
            spool.add(one)
        assert list(spool.items()) == written
        assert list(spool.items()) == written  # from the start each time
    finally:
        spool.close()
    assert list(tmp_path.iterdir()) == []  # an unnamed file: nothing left behind


def test_frequency_summary_buckets_and_top_prompts() -> None:
    frequency = Frequency()
    for n, count in enumerate([1, 1, 2, 4, 7, 50, 500, 5000] + [1] * 10):
        frequency.add(count, f"key{n:02d}", f"r{n}")
    summary = frequency.as_json()
    assert summary["prompts"] == 18
    assert summary["live_requests"] == 5000 + 500 + 50 + 7 + 4 + 2 + 12
    assert summary["max"] == 5000
    assert summary["by_frequency"] == {
        "1": 12,
        "2": 1,
        "3-5": 1,
        "6-10": 1,
        "11-100": 1,
        "101-1000": 1,
        ">1000": 1,
    }
    assert [entry["frequency"] for entry in summary["top"]] == [5000, 500, 50, 7, 4, 2, 1, 1, 1, 1]
    assert summary["top"][0] == {"prompt_key": "key07", "request_id": "r7", "frequency": 5000}
    assert summary["top_share"] == round(5567 / summary["live_requests"], 4)
    assert Frequency().as_json()["top"] == []


def test_eval_path_and_keys() -> None:
    assert eval_path(Path("/x/train.jsonl")) == Path("/x/train.eval.jsonl")
    assert eval_path(Path("/x/data")) == Path("/x/data.eval.jsonl")
    messages = [{"role": "user", "content": "Hello"}]
    assert prompt_key(messages) == short_key(prompt_digest(messages))
    assert prompt_digest(messages) == prompt_digest([{"role": "user", "content": "hello!"}])
