"""``python -m student_server serve``: run the student with the flags the gateway needs.

Run it with the Python of the environment vLLM is installed in (the CPU build lives in its
own virtual environment: its torch is not the gateway's). Arguments after ``--`` go to vLLM
unchanged. Exit status: 2 for bad arguments, 1 when the server failed to start or died,
0 after a clean stop by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from student_server.args import (
    DTYPES,
    GATEWAY_MAX_TOP_LOGPROBS,
    StudentArgsError,
    StudentOptions,
    readiness_url,
    served_name,
    vllm_args,
    vllm_env,
)
from student_server.builds import installed_builds, resolve_device
from student_server.launch import StudentProcess, run_until_exit, vllm_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m student_server",
        description="Run the distilled student on vLLM's OpenAI server for shadow-gateway.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="start vLLM's OpenAI server and wait until it answers",
        description="Start vLLM's OpenAI server for a student model and keep it running. "
        "Arguments after '--' are passed to vLLM unchanged.",
    )
    serve.add_argument("--model", required=True, help="the model directory")
    serve.add_argument("--served-name", help="the route's student.model (default: dir name)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    serve.add_argument(
        "--max-logprobs",
        type=int,
        default=GATEWAY_MAX_TOP_LOGPROBS,
        help=f"at least {GATEWAY_MAX_TOP_LOGPROBS}, the most a gateway route asks for",
    )
    serve.add_argument("--max-model-len", type=int)
    serve.add_argument("--dtype", choices=DTYPES, help="default: auto on cuda, float32 on cpu")
    serve.add_argument("--gpu-memory-utilization", type=float, help="cuda only (default 0.9)")
    serve.add_argument(
        "--kv-cache-gib", type=float, help="KV cache size (default on cpu: 1; cuda: by share)"
    )
    serve.add_argument("--tensor-parallel-size", type=int, default=1, help="cuda only")
    serve.add_argument(
        "--no-prefix-caching", action="store_true", help="turn vLLM's prefix caching off"
    )
    serve.add_argument(
        "--ready-timeout", type=float, default=600.0, help="seconds to wait for /v1/models"
    )
    serve.add_argument("--log-file", type=Path, help="default: student-server-PORT.log in TMPDIR")
    return parser


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    own, passthrough = _split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    kv_cache_gib: float | None = args.kv_cache_gib
    options = StudentOptions(
        model=str(Path(args.model).resolve()),
        served_name=args.served_name,
        host=args.host,
        port=args.port,
        device=args.device,
        max_logprobs=args.max_logprobs,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_bytes=None if kv_cache_gib is None else int(kv_cache_gib * (1 << 30)),
        tensor_parallel_size=args.tensor_parallel_size,
        prefix_caching=not args.no_prefix_caching,
        extra_args=tuple(passthrough),
    )
    try:
        if not Path(options.model).is_dir():
            raise StudentArgsError(f"--model {options.model}: no such directory")
        if args.ready_timeout <= 0:
            raise StudentArgsError("--ready-timeout must be positive")
        device = resolve_device(options.device, installed_builds())
        server_args = vllm_args(options, device)
    except StudentArgsError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    default_log = Path(tempfile.gettempdir()) / f"student-server-{args.port}.log"
    log_path: Path = args.log_file or default_log
    process = StudentProcess(
        [*vllm_command(), *server_args],
        log_path=log_path,
        ready_url=readiness_url(options),
        served_name=served_name(options),
        env=vllm_env(device),
    )
    return run_until_exit(
        process,
        ready_timeout_s=args.ready_timeout,
        out=sys.stderr,
        url_hint=readiness_url(options).removesuffix("/models"),
    )


if __name__ == "__main__":
    sys.exit(main())
