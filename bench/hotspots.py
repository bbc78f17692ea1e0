"""Where the gateway's time goes: py-spy's folded stacks summarised by part of the request.

    .venv/bin/python bench/hotspots.py PROFILE.folded      # a file py-spy wrote (-f raw)

bench/bench.py --profile records one during its soak (py-spy must be installed:
``pip install py-spy``; the file stays in the workdir, out of git). Each sample is charged to
the first frame of its stack (innermost first) that belongs to a part below, else "other"
(py-spy leaves idle samples out). The transport parts (aiohttp, the HTTP server, asyncio) are
what the bare reference proxy pays too; the others are the gateway's own work.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# (part, a substring of a frame "function (file:line)"), innermost match wins
PARTS = [
    ("log writer: batch encoding (_json, rows)", "_json (gateway/db/writer.py"),
    ("log writer: batch encoding (_json, rows)", "_Target.row"),
    ("log writer: write-ahead log append", "gateway/db/wal.py"),
    ("log writer: Postgres driver", "asyncpg/"),
    ("log writer: other", "gateway/db/writer.py"),
    ("row building and redaction", "gateway/shadow/records.py"),
    ("row building and redaction", "gateway/core/redact.py"),
    ("agreement and confidence", "gateway/shadow/analysis.py"),
    ("agreement and confidence", "gateway/core/agreement.py"),
    ("metrics", "prometheus_client/"),
    ("metrics", "gateway/metrics.py"),
    ("request validation (pydantic)", "pydantic"),
    ("student call (aiohttp)", "call_student"),
    ("teacher call (aiohttp)", "call_teacher"),
    ("aiohttp client", "aiohttp/"),
    ("gateway request handling", "gateway/"),
    ("HTTP server (uvicorn, starlette, fastapi)", "uvicorn/"),
    ("HTTP server (uvicorn, starlette, fastapi)", "starlette/"),
    ("HTTP server (uvicorn, starlette, fastapi)", "fastapi/"),
    ("asyncio", "asyncio/"),
]


def summarise(path: Path) -> list[tuple[str, int, float]]:
    parts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        part = "other"
        for frame in reversed(frames):
            found = next((name for name, marker in PARTS if marker in frame), None)
            if found is not None:
                part = found
                break
        parts[part] += samples
    return [(part, n, n / total if total else 0.0) for part, n in parts.most_common()]


def table(rows: list[tuple[str, int, float]]) -> str:
    lines = ["| part | samples | share of busy time |", "|---|---:|---:|"]
    lines += [f"| {part} | {n:,} | {share:.1%} |" for part, n, share in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    print(table(summarise(parser.parse_args().profile)))


if __name__ == "__main__":
    main()
