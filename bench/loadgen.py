"""Open-loop, fixed-rate HTTP load generator for the benchmark (stands in for wrk2).

Debian ships wrk but not wrk2, and wrk has no rate limit: it is closed-loop, each connection
sends its next request as soon as the previous answer arrives. To measure latency at a fixed low
rate, this sends request ``i`` at ``start + i / rate`` whether or not earlier ones have
finished (open loop, so a slow answer cannot hold back the next request and hide its own
latency), over a keep-alive aiohttp connection pool, and prints one JSON line:

    {"sent": 600, "ok": 600, "errors": 0, "statuses": {"200": 600}, "rps": 20.0,
     "p50_ms": 0.61, "p90_ms": ..., "p99_ms": ..., "max_ms": ..., "mean_ms": ...}

Latency is measured from just before the request is handed to the client to the last byte of
the body, with ``time.perf_counter``. The client's own overhead is in every figure, the same
for the direct and the gateway path, so differences between the two are what the gateway adds.

Usage: python bench/loadgen.py URL --rate 20 --duration 30 [--warmup 2] [--model bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter

import aiohttp


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (the value at rank ceil(pct/100 * n))."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def one_request(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            status = str(response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = type(exc).__name__
    return (time.perf_counter() - started) * 1000, status


async def fixed_rate(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    rate: float,
    duration: float,
) -> tuple[list[tuple[float, str]], float]:
    total = round(rate * duration)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks: list[asyncio.Task[tuple[float, str]]] = []
    for index in range(total):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_request(session, url, body, headers)))
    send_span = loop.time() - start
    results = await asyncio.gather(*tasks)
    return list(results), send_span


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    body = json.dumps(
        {"model": args.model, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.api_key}"}
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.max_connections, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if args.warmup > 0:
            await fixed_rate(session, args.url, body, headers, args.rate, args.warmup)
        results, send_span = await fixed_rate(
            session, args.url, body, headers, args.rate, args.duration
        )
    statuses = Counter(status for _, status in results)
    ok_latencies = sorted(ms for ms, status in results if status.startswith("2"))
    ok = len(ok_latencies)
    return {
        "sent": len(results),
        "ok": ok,
        "errors": len(results) - ok,
        "statuses": dict(statuses),
        "rps": round(len(results) / send_span, 2) if send_span > 0 else math.nan,
        "p50_ms": round(percentile(ok_latencies, 50), 3),
        "p90_ms": round(percentile(ok_latencies, 90), 3),
        "p99_ms": round(percentile(ok_latencies, 99), 3),
        "max_ms": round(ok_latencies[-1], 3) if ok_latencies else math.nan,
        "mean_ms": round(sum(ok_latencies) / ok, 3) if ok else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-connections", type=int, default=64)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main_async(args))
    else:
        result = uvloop.run(main_async(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
