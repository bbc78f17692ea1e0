"""Measure what one logged request costs in Postgres: bytes per row of ``requests``.

Runs the real gateway app (in-process, as the integration tests do) against a fresh database
on a real Postgres, with loopback teacher and student servers that answer with prose of a
realistic length, BPE-sized tokens and varied logprobs, sends N chat requests per scenario,
waits until every row has both halves, and reads ``pg_total_relation_size('requests')``
(heap + TOAST + indexes) divided by the row count, as written and after ``VACUUM FULL``.

    .venv/bin/python deploy/tools/measure_log_volume.py [--requests 1000]

Needs the tests' Postgres (``SGW_TEST_ADMIN_URL``, default postgres@127.0.0.1:5432) and the
dev extra. docs/deploy.md ("Log volume") quotes its output.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from gateway.db.engine import plain_dsn  # noqa: E402
from gateway.db.migrate import upgrade  # noqa: E402
from tests.support import upstream  # noqa: E402
from tests.support.db import fetch, wait_for  # noqa: E402
from tests.support.gateway import GatewayServer, route, write_config  # noqa: E402
from tests.support.upstream import FakeOpenAI  # noqa: E402

ADMIN_URL = os.environ.get("SGW_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SYSTEM_PROMPT = (
    "You are the support assistant of an online subscription service. Answer the customer's "
    "question in a friendly, concise way. If the question is about billing, explain the "
    "relevant policy and the next step. Never invent order numbers, prices or dates; when you "
    "do not know, say so and offer to hand the conversation to a human agent. Answer in the "
    "language of the question."
)


def _corpus() -> list[str]:
    """English sentences from the project's own prose (varied, compresses like real text)."""
    text = " ".join(
        (ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "docs/benchmarks.md")
    )
    text = re.sub(r"[`|*#>_\[\]()]+", " ", text)
    sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in sentences if 40 <= len(s) <= 400]


def _bpe_tokens(text: str) -> list[str]:
    """Pieces of about four characters, as a BPE tokenizer cuts English (~1.3 per word)."""
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        word = word if i == 0 else " " + word
        pieces += [word[j : j + 4] for j in range(0, len(word), 4)] or [word]
    return pieces


def _varied_logprobs(rng: random.Random) -> Callable[[list[str], int], dict[str, Any]]:
    def chat_logprobs(tokens: list[str], top: int) -> dict[str, Any]:
        content = []
        for token in tokens:
            probability = min(0.999, rng.betavariate(8, 1.2))
            logprob = math.log(probability)
            alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
            rest = 1 - probability
            for _ in range(max(top - 1, 0)):
                share = rest * rng.uniform(0.2, 0.7)
                rest -= share
                alt = " " + rng.choice(("the", "a", "your", "we", "it", "this", "to", "and"))
                alternatives.append(
                    {"token": alt, "logprob": math.log(share), "bytes": list(alt.encode())}
                )
            content.append({**alternatives[0], "top_logprobs": alternatives[:top]})
        return {"content": content}

    return chat_logprobs


def _answer(rng: random.Random, corpus: list[str], target_chars: int) -> Callable[[str], str]:
    def answer(_question: str) -> str:
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < target_chars * rng.uniform(0.6, 1.4):
            parts.append(rng.choice(corpus))
        return " ".join(parts)

    return answer


async def _send(url: str, bodies: list[dict[str, Any]]) -> None:
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        semaphore = asyncio.Semaphore(16)

        async def one(body: dict[str, Any]) -> None:
            async with semaphore:
                response = await client.post(
                    "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": "Bearer test-app-key"},
                )
                response.raise_for_status()

        await asyncio.gather(*(one(body) for body in bodies))


def _admin(sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(plain_dsn(ADMIN_URL), timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def measure(
    name: str, requests: int, answer_chars: int, top_logprobs: int, store_payloads: bool
) -> dict[str, Any]:
    rng = random.Random(name)
    corpus = _corpus()
    upstream._tokens = _bpe_tokens  # type: ignore[attr-defined]
    upstream._chat_logprobs = _varied_logprobs(rng)  # type: ignore[attr-defined]
    database = f"sgw_volume_{secrets.token_hex(4)}"
    _admin(f'CREATE DATABASE "{database}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    teacher = FakeOpenAI("teacher").start()
    student = FakeOpenAI("student").start()
    teacher.reset_behavior(answer=_answer(rng, corpus, answer_chars))
    student.reset_behavior(answer=_answer(rng, corpus, answer_chars))
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory() as tmp:
            spec = route("support-bot", teacher.base_url, [student.base_url])
            spec["student"].update(timeout_s=10, max_concurrency=64, top_logprobs=top_logprobs)
            config = write_config(
                Path(tmp) / "config.yaml",
                [spec],
                log_writer={"flush_interval_s": 0.1, "store_payloads": store_payloads},
            )
            os.environ["DATABASE_URL"] = url
            os.environ["SGW_TEST_APP_KEY"] = "test-app-key"
            gateway = GatewayServer(config).start()
            try:
                bodies = [
                    {
                        "model": "support-bot",
                        "user": f"user-{rng.randrange(10_000)}",
                        "metadata": {
                            "tier": rng.choice(["free", "pro", "enterprise"]),
                            "locale": rng.choice(["en-US", "en-GB", "de-DE"]),
                        },
                        "messages": [
                            {"role": "system", "content": SYSTEM_PROMPT},
                            {"role": "user", "content": " ".join(rng.sample(corpus, 3))},
                        ],
                        "temperature": 0.2,
                        "max_tokens": 512,
                    }
                    for _ in range(requests)
                ]
                asyncio.run(_send(gateway.url, bodies))
                wait_for(
                    lambda: (
                        fetch(
                            url,
                            "SELECT count(*) AS n FROM requests WHERE student_status IS NOT NULL",
                        )[0]["n"]
                        == requests
                    ),
                    timeout_s=120,
                    what="every row complete",
                )
            finally:
                gateway.stop()
        sizes = """
            WITH parts AS (  -- requests is partitioned: its size is its partitions'
                SELECT relid FROM pg_partition_tree('requests') WHERE isleaf
            )
            SELECT count(*) AS rows,
                   (SELECT sum(pg_total_relation_size(relid)) FROM parts)::bigint AS total,
                   (SELECT sum(pg_relation_size(relid)) FROM parts)::bigint AS heap,
                   (SELECT sum(pg_indexes_size(relid)) FROM parts)::bigint AS indexes,
                   avg(student_completion_tokens) AS tokens,
                   avg(length(teacher_output)) AS chars,
                   avg(pg_column_size(student_logprobs)) AS logprobs_stored,
                   avg(pg_column_size(request_payload)) AS payload_stored,
                   avg(octet_length(student_logprobs::text)) AS logprobs_text
            FROM requests
        """
        before = fetch(url, sizes)[0]
        _admin_db(url, "VACUUM FULL requests")
        after = fetch(url, sizes)[0]
        return {"name": name, "before": before, "after": after}
    finally:
        teacher.stop()
        student.stop()
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _admin_db(url: str, sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(plain_dsn(url), timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


SCENARIOS = [
    # name, answer length (chars), top_logprobs, store_payloads
    ("long answers, top_logprobs 5 (the defaults)", 1000, 5, True),
    ("long answers, top_logprobs 0", 1000, 0, True),
    ("long answers, top_logprobs 5, store_payloads false", 1000, 5, False),
    ("short answers, top_logprobs 5", 250, 5, True),
    ("short answers, top_logprobs 0", 250, 0, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per scenario")
    args = parser.parse_args()
    print(
        "| scenario | answer chars | answer tokens | bytes/row as written "
        "| bytes/row after VACUUM FULL | of which student_logprobs |"
    )
    print("|---|---|---|---|---|---|")
    for name, chars, top, payloads in SCENARIOS:
        result = measure(name, args.requests, chars, top, payloads)
        before, after = result["before"], result["after"]
        print(
            f"| {name} | {float(before['chars']):.0f} | {float(before['tokens']):.0f} "
            f"| {before['total'] // before['rows']:,} "
            f"| {after['total'] // after['rows']:,} "
            f"| {float(before['logprobs_stored'] or 0):,.0f} |",
            flush=True,
        )
        print(
            f"<!-- {name}: rows={before['rows']} heap={before['heap']} "
            f"indexes={before['indexes']} total={before['total']} "
            f"after_vacuum_full={after['total']} chars={float(before['chars']):.0f} "
            f"logprobs_stored={float(before['logprobs_stored'] or 0):.0f} "
            f"logprobs_text={float(before['logprobs_text'] or 0):.0f} "
            f"payload_stored={float(before['payload_stored'] or 0):.0f} -->",
            flush=True,
        )


if __name__ == "__main__":
    main()
