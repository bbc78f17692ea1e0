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

With ``--interval S`` it also prints, every S seconds while it runs, one JSON line for the
requests that *completed* in that interval (a time series, for long runs such as bench/soak.py):

    {"kind": "interval", "index": 0, "t_s": 30.0, "at": 1764600000.0, "sent": 3000,
     "in_flight": 5, "done": 2995, "ok": 2995, "errors": 0, "statuses": {"200": 2995},
     "p50_ms": 51.2, "p99_ms": 53.4, "max_ms": 60.1}

(``sent`` counts the measured requests sent so far, ``t_s`` the seconds since the first), and
``--ids-file PATH`` writes ``x-request-id<TAB>status`` of every measured request to PATH. The
summary stays the last line either way.

Usage: python bench/loadgen.py URL --rate 20 --duration 30 [--warmup 2] [--model bench]
                              [--interval 30] [--ids-file ids.tsv]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

# One finished request: latency in ms, status ("200", or the client error's name), x-request-id.
Sample = tuple[float, str, str]


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (the value at rank ceil(pct/100 * n))."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Progress:
    """What the interval reporter reads while a measured run goes on."""

    start: float = 0.0  # loop time of the first measured request
    started: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    done: int = 0
    window: list[Sample] = field(default_factory=list)  # completed since the last report


async def one_request(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    progress: Progress | None = None,
) -> Sample:
    started = time.perf_counter()
    request_id = ""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            status = str(response.status)
            request_id = response.headers.get("x-request-id", "")
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = type(exc).__name__
    sample = ((time.perf_counter() - started) * 1000, status, request_id)
    if progress is not None:
        progress.done += 1
        progress.window.append(sample)
    return sample


async def fixed_rate(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    rate: float,
    duration: float,
    progress: Progress | None = None,
) -> tuple[list[Sample], float]:
    total = round(rate * duration)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    if progress is not None:
        progress.start = start
        progress.started.set()
    tasks: list[asyncio.Task[Sample]] = []
    for index in range(total):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_request(session, url, body, headers, progress)))
        if progress is not None:
            progress.sent += 1
    send_span = loop.time() - start
    results = await asyncio.gather(*tasks)
    return list(results), send_span


def interval_line(index: int, t_s: float, progress: Progress) -> str:
    batch, progress.window = progress.window, []
    ok = sorted(ms for ms, status, _ in batch if status.startswith("2"))
    return json.dumps(
        {
            "kind": "interval",
            "index": index,
            "t_s": round(t_s, 3),
            "at": round(time.time(), 3),
            "sent": progress.sent,
            "in_flight": progress.sent - progress.done,
            "done": len(batch),
            "ok": len(ok),
            "errors": len(batch) - len(ok),
            "statuses": dict(Counter(status for _, status, _ in batch)),
            "p50_ms": round(percentile(ok, 50), 3),
            "p99_ms": round(percentile(ok, 99), 3),
            "max_ms": round(ok[-1], 3) if ok else math.nan,
        }
    )


async def report_intervals(progress: Progress, interval: float) -> None:
    """Print one interval line every ``interval`` seconds of the measured run, until cancelled."""
    loop = asyncio.get_running_loop()
    await progress.started.wait()
    index = 0
    while True:
        tick = progress.start + (index + 1) * interval
        await asyncio.sleep(max(0.0, tick - loop.time()))
        print(interval_line(index, tick - progress.start, progress), flush=True)
        index += 1


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
        progress = Progress() if args.interval > 0 else None
        reporter = None
        if progress is not None:
            reporter = asyncio.create_task(report_intervals(progress, args.interval))
        results, send_span = await fixed_rate(
            session, args.url, body, headers, args.rate, args.duration, progress
        )
        if reporter is not None and progress is not None:
            reporter.cancel()
            loop = asyncio.get_running_loop()
            if progress.window:  # the last, partial interval
                last = math.floor((loop.time() - progress.start) / args.interval)
                print(interval_line(last, loop.time() - progress.start, progress), flush=True)
    if args.ids_file is not None:
        lines = (f"{request_id}\t{status}\n" for _, status, request_id in results)
        args.ids_file.write_text("".join(lines))
    statuses = Counter(status for _, status, _ in results)
    ok_latencies = sorted(ms for ms, status, _ in results if status.startswith("2"))
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
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="also print a JSON line of the requests completed every this many seconds (0: no)",
    )
    parser.add_argument(
        "--ids-file", type=Path, help="write x-request-id<TAB>status of each measured request"
    )
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
