"""The bare reference: the least a Python gateway doing this job can do, and no more.

One teacher call on the response path and one student call in the background, both with
aiohttp (the gateway's client), served by uvicorn with uvloop and httptools (the gateway's
server); no logging, no metrics, no parsing beyond finding the model. bench/bench.py measures
it beside the gateway in the same run: its figures are the floor the gateway's are compared
with (docs/benchmarks.md).

    python bench/bare_proxy.py --port 18091 --upstream bench=http://127.0.0.1:18081 \
        --upstream bench-50ms=http://127.0.0.1:18082
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def app(upstreams: dict[str, str]) -> Starlette:
    session: aiohttp.ClientSession | None = None
    background: set[asyncio.Task[None]] = set()

    async def student(url: str, body: bytes) -> None:
        assert session is not None
        async with session.post(url, data=body, headers={"content-type": "application/json"}):
            pass

    async def chat(request: Request) -> Response:
        body = await request.body()
        url = upstreams[json.loads(body)["model"]] + "/v1/chat/completions"
        assert session is not None
        async with session.post(
            url, data=body, headers={"content-type": "application/json"}
        ) as answer:
            payload = await answer.read()
        task = asyncio.create_task(student(url, body))
        background.add(task)
        task.add_done_callback(background.discard)
        return Response(payload, answer.status, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await session.close()

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", default=[], help="MODEL=BASE_URL")
    args = parser.parse_args()
    upstreams = dict(item.split("=", 1) for item in args.upstream)
    uvicorn.run(
        app(upstreams),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
