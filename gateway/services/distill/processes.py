"""The two child processes of ``distill``: the user's training command and the vLLM server.

The training command is one command line with ``{train}``, ``{eval}`` and ``{output}``
placeholders, each replaced by a shell-quoted path, run by ``/bin/sh`` in a session of its
own with stdout and stderr going to a log file. Ctrl-C (the run's task cancelled) sends its
process group SIGTERM, then SIGKILL after a grace period.

The server is started through :mod:`student_server` (the same arguments and readiness check
as ``python -m student_server serve``) on a free loopback port.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from gateway.config import DistillLaunch
from student_server.args import (
    StudentArgsError,
    StudentOptions,
    readiness_url,
    served_name,
    vllm_args,
    vllm_env,
)
from student_server.launch import LaunchError, StudentProcess, vllm_command

TAIL_LINES = 40
_TAIL_BYTES = 64 * 1024
STUDENT_PYTHON_ENV = "SHADOW_GATEWAY_STUDENT_PYTHON"


class StageFailed(Exception):
    """A stage could not finish; ``details`` go into its record (exit status, log tail…)."""

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _TAIL_BYTES))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def train_command_line(template: str, train: Path, eval_file: Path, output: Path) -> str:
    """The template with its placeholders replaced by shell-quoted paths."""
    if "{output}" not in template:
        raise StageFailed("the train command has no {output}: where should the model go?")
    values = {"train": train, "eval": eval_file, "output": output}
    line = template
    for name, path in values.items():
        line = line.replace("{" + name + "}", shlex.quote(str(path)))
    return line


async def run_training(line: str, log_path: Path, grace_s: float = 10.0) -> int:
    """Run the command line; its exit status. Cancelled: the process group is stopped."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"$ {line}\n".encode())
        log.flush()
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            line,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return await process.wait()
        except BaseException:
            _signal_group(process.pid, signal.SIGTERM)
            with suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(process.wait()), grace_s)
            _signal_group(process.pid, signal.SIGKILL)
            raise


def _signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def student_python(configured: str | None) -> str:
    """vLLM's Python: the config's, else ``$SHADOW_GATEWAY_STUDENT_PYTHON``, else a
    ``.venv-student`` in the working folder, else this Python."""
    if configured:
        return configured
    if os.environ.get(STUDENT_PYTHON_ENV):
        return os.environ[STUDENT_PYTHON_ENV]
    local = Path.cwd() / ".venv-student" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


@dataclass
class Served:
    """A started server: where it answers, and the process (None once handed over)."""

    url: str  # the OpenAI base URL, ending in /v1
    port: int
    log_path: Path
    process: StudentProcess
    seconds_to_ready: float

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stop(grace_s=30.0)


async def launch(
    model_dir: Path,
    name: str,
    settings: DistillLaunch,
    log_path: Path,
    started: Callable[[int], Awaitable[None]] | None = None,
) -> Served:
    """Start vLLM on ``model_dir`` as ``name``, wait until it lists the name; StageFailed with
    the launch error and the log's tail if it does not come up. ``started`` is told the
    server's pid (its process group's) as soon as it runs. Failed or cancelled (Ctrl-C), the
    server and every process of its group are stopped before this returns."""
    if not (model_dir / "config.json").is_file():
        raise StageFailed(
            f"{model_dir} has no config.json: the train command did not write a model vLLM "
            "can load into {output}"
        )
    port = free_port()
    options = StudentOptions(
        model=str(model_dir),
        served_name=name,
        port=port,
        device=settings.device,
        max_model_len=settings.max_model_len,
        dtype=settings.dtype,
        extra_args=tuple(settings.extra_args),
    )
    try:
        arguments = vllm_args(options, settings.device)
    except StudentArgsError as exc:
        raise StageFailed(f"routes[].distill.launch: {exc}") from exc
    python = student_python(settings.python)
    process = StudentProcess(
        [*vllm_command(python), *arguments],
        log_path=log_path,
        ready_url=readiness_url(options),
        served_name=served_name(options),
        env=vllm_env(settings.device),
    )
    stopping = threading.Event()
    try:
        process.start()
    except OSError as exc:
        raise StageFailed(f"cannot start {python}: {exc.strerror or exc}") from exc
    try:
        if started is not None:
            await started(process.pid)
        seconds = await asyncio.to_thread(
            process.wait_ready, settings.ready_timeout_s, should_stop=stopping.is_set
        )
    except LaunchError as exc:
        await asyncio.to_thread(process.stop, 30.0)
        raise StageFailed(
            f"vLLM could not serve {model_dir}: {exc}",
            {"log": str(log_path), "tail": exc.log_tail or tail(log_path)},
        ) from exc
    except BaseException:
        stopping.set()
        await asyncio.to_thread(process.stop, 30.0)
        raise
    url = readiness_url(options).removesuffix("/models")
    return Served(url, port, log_path, process, seconds)
