"""What one upstream call costs the gateway's client, alone: CPU per aiohttp POST.

Starts the benchmark's nginx upstream (bench/configs.py) on the load core and, in this process
pinned to the other, POSTs the chat request ``--calls`` times, ``--in-flight`` at a time, with
the bare proxy's session and options and with the gateway's (``gateway.clients.upstream``:
its connector, cookie jar, headers and timeouts), alternating; prints CPU microseconds per
call. The figure explains the bare proxy's cost per request (docs/benchmarks.md).

    .venv/bin/python bench/client_cost.py [--calls 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from sysutil import Processes, chat_request, start_nginx

from gateway.clients.upstream import make_upstream, new_session


async def cost(style: str, url: str, calls: int, in_flight: int) -> float:
    body = chat_request("bench")
    if style == "bare":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        options: dict[str, Any] = {"headers": {"content-type": "application/json"}}
    else:
        session = new_session(max_connections=0)
        upstream = make_upstream(url, "", None, 30.0, 5.0)
        options = {"headers": upstream.headers, "timeout": upstream.timeout}
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots, session.post(url, data=body, **options) as response:
            await response.read()

    try:
        await asyncio.gather(*(one() for _ in range(500)))  # connections open, caches warm
        began = time.process_time()
        await asyncio.gather(*(one() for _ in range(calls)))
        return 1e6 * (time.process_time() - began) / calls
    finally:
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=18181)
    parser.add_argument("--cpu", type=int, default=0, help="this process's core")
    parser.add_argument("--load-cpus", default="1", help="nginx's")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="sgw-client-cost-"))
    try:
        start_nginx(procs, workdir, args.load_cpus, args.port)
        url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
        found: dict[str, list[float]] = {"bare": [], "gateway": []}
        for _ in range(args.rounds):
            for style in found:
                found[style].append(uvloop.run(cost(style, url, args.calls, args.in_flight)))
        for style, figures in found.items():
            print(
                f"{style} client: {statistics.median(figures):.1f} us of CPU per call "
                f"(median of {args.rounds} rounds of {args.calls:,}, {args.in_flight} in flight)"
            )
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
