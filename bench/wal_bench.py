"""What the write-ahead log costs the request path: ``LogWriter.submit`` with and without it.

    .venv/bin/python bench/wal_bench.py [--records 20000] [--rounds 5]

Each submit on the request path serialises the record (orjson) and appends it to the current
segment with one ``write`` (no fsync). This times ``submit`` of realistic records, a teacher
half of about 1.4 kB and one of about 21 kB (an answer with token logprobs), into a writer
that is never started (nothing is flushed, so only the submit is measured), with the log on
and off, alternating rounds; it prints the median µs per record of each. The segments go to a
temporary directory on the same disk as the working directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from gateway.config.sections import LogWriterConfig
from gateway.db.writer import LogWriter
from gateway.metrics import Metrics


def record(i: int, logprobs: int) -> dict[str, Any]:
    text = "The invoice was sent on 2025-03-14 and is due within thirty days. " * 6
    content = [
        {"token": f"tok{t}", "logprob": -0.01 * t, "top_logprobs": [{"token": "x", "logprob": -3}]}
        for t in range(logprobs)
    ]
    return {
        "request_id": f"req_{i:032x}",
        "route": "support-bot",
        "endpoint": "chat",
        "created_at": datetime.now(UTC),
        "mode": "shadow",
        "slices": {"tier": "free", "length": "short"},
        "served_by": "teacher",
        "status_code": 200,
        "request_payload": {
            "model": "support-bot",
            "messages": [{"role": "user", "content": text}],
        },
        "teacher_model": "teacher-model",
        "teacher_status": 200,
        "teacher_output": text,
        "teacher_response": {
            "id": "chatcmpl-1",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": {"content": content} if content else None,
                }
            ],
        },
        "teacher_latency_ms": 812.5,
        "gateway_overhead_ms": 0.9,
    }


def per_record_us(wal: bool, records: list[dict[str, Any]], directory: Path) -> float:
    writer = LogWriter(
        "postgresql://unused",
        directory,
        LogWriterConfig(wal=wal, queue_max=10**9, memory_max=10**9, batch_size=10**9),
        Metrics(CollectorRegistry()),
    )
    fresh = [dict(r) for r in records]  # the writer owns what it is given
    started = time.perf_counter()
    for item in fresh:
        writer.submit(item)
    elapsed = time.perf_counter() - started
    if writer.wal is not None:
        writer.wal.done(s for r in fresh for s in r.get("_wal", ()))
        writer.wal.close()
    return elapsed / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("| record | bytes (JSON) | submit without the log | with it | the log's cost |")
    print("|---|---|---|---|---|")
    for name, logprobs in (("teacher half", 0), ("with logprobs", 160)):
        records = [record(i, logprobs) for i in range(args.records)]
        size = len(orjson.dumps(records[0]))
        timings: dict[bool, list[float]] = {False: [], True: []}
        with tempfile.TemporaryDirectory(dir=Path.cwd()) as directory:
            for _ in range(args.rounds):
                for wal in (False, True):
                    timings[wal].append(per_record_us(wal, records, Path(directory)))
        off, on = statistics.median(timings[False]), statistics.median(timings[True])
        print(f"| {name} | {size:,} | {off:.2f} µs | {on:.2f} µs | +{on - off:.2f} µs |")


if __name__ == "__main__":
    main()
