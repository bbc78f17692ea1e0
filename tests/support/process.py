"""Run ``shadow-gateway`` as a real process (the CLI, uvicorn, signals and all)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayProcess:
    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self._log_handle = log.open("wb")
        self.proc = subprocess.Popen(
            [
                str(BIN / "shadow-gateway"),
                "serve",
                "--config",
                str(config),
                "--port",
                str(self.port),
            ],
            env={**os.environ, **env},
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the gateway did not come up:\n{self.output()}")

    def terminate(self, timeout_s: float = 30, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log_handle.close()

    def output(self) -> str:
        if not self._log_handle.closed:
            self._log_handle.flush()
        return self.log.read_text(errors="replace")


def run_command(
    config: Path, database_url: str, *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``shadow-gateway ARGS --config CONFIG`` as a process on ``database_url``; its exit
    status and output, never raising for a non-zero status."""
    return subprocess.run(
        [str(BIN / "shadow-gateway"), *args, "--config", str(config)],
        env={**os.environ, "DATABASE_URL": database_url, "SGW_TEST_APP_KEY": "x"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
