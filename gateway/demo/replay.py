"""Send the demo's traffic through the gateway: task prompts with the demo's slice mix.

Requests go out ``concurrency`` at a time, as an app's would, with the app key; each answer
is counted by who served it (``x-served-by``) and why the teacher stepped in
(``x-fallback-reason``). Progress is printed as it goes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from gateway.demo.task import DEMO_MIX, Example, examples


@dataclass
class ReplayResult:
    sent: int = 0
    status: Counter[int] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    right: Counter[str] = field(default_factory=Counter)  # by style: the answer was correct
    by_style: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def chat_body(route: str, prompt: str) -> dict[str, object]:
    return {
        "model": route,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 16,
    }


async def _replay(
    gateway_url: str,
    api_key: str,
    route: str,
    prompts: list[Example],
    concurrency: int,
    progress: Callable[[int, int], None],
) -> ReplayResult:
    result = ReplayResult()
    queue: asyncio.Queue[Example] = asyncio.Queue()
    for item in prompts:
        queue.put_nowait(item)
    headers = {"authorization": f"Bearer {api_key}"}
    started = time.monotonic()

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            item = queue.get_nowait()
            response = await client.post(
                f"{gateway_url}/v1/chat/completions",
                json=chat_body(route, item.prompt),
                headers=headers,
            )
            result.sent += 1
            result.status[response.status_code] += 1
            result.by_style[item.style] += 1
            if response.status_code == 200:
                result.served_by[response.headers.get("x-served-by", "?")] += 1
                answer = response.json()["choices"][0]["message"]["content"] or ""
                result.right[item.style] += answer.strip() == item.answer
            reason = response.headers.get("x-fallback-reason")
            if reason:
                result.fallbacks[reason] += 1
            progress(result.sent, len(prompts))

    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    result.seconds = time.monotonic() - started
    return result


def replay(
    gateway_url: str,
    api_key: str,
    route: str,
    *,
    count: int,
    seed: int,
    mix: Mapping[str, float] = DEMO_MIX,
    concurrency: int = 8,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> ReplayResult:
    prompts = examples(seed, count, mix)
    return asyncio.run(_replay(gateway_url, api_key, route, prompts, concurrency, progress))
