"""Process, /proc and Postgres helpers for the benchmark (bench/bench.py).

Every process started through ``Processes`` leads its own process group, so stopping it stops
whatever it spawned; ``PostgresPin`` moves the machine's Postgres to the load cores and back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from configs import nginx_conf

REPO = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


# --------------------------------------------------------------------------- processes


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM


@dataclass
class Processes:
    """Every process the benchmark started; each leads its own process group."""

    items: list[Started] = field(default_factory=list)

    def start(
        self,
        name: str,
        cmd: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Started:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO
            )
        started = Started(name, proc, log, stop_signal)
        self.items.append(started)
        return started

    def stop(self, started: Started, grace_s: float = 20.0) -> float:
        """Signal the process group, wait up to grace_s, then kill it; returns seconds waited."""
        began = time.monotonic()
        if started.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.proc.pid, started.stop_signal)
            try:
                started.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                print(f"  {started.name} did not stop in {grace_s:.0f} s; killing it", flush=True)
        # Whatever is left of the group (workers of a stopped master, a killed-off parent's
        # children) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(started.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.proc.wait(5)
        if started in self.items:
            self.items.remove(started)
        return time.monotonic() - began

    def stop_all(self) -> None:
        for started in reversed(list(self.items)):
            self.stop(started, grace_s=10.0)


class Interrupted(Exception):
    pass


def raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def trap_signals() -> None:
    """SIGTERM and SIGHUP raise :class:`Interrupted`, SIGINT KeyboardInterrupt: a shell starts
    background jobs with SIGINT ignored, and Ctrl-C / kill -INT must still clean up."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def interrupted(exc: BaseException) -> int:
    """Say a run was interrupted (by what); the exit status to return."""
    print(f"\ninterrupted ({str(exc) or 'SIGINT'}); cleaning up", file=sys.stderr, flush=True)
    return 130


def clean_up(procs: Processes, workdir: Path, *, keep: bool) -> None:
    """Stop every process started, further Ctrl-C ignored meanwhile so none is left behind;
    then remove ``workdir``, unless ``keep`` (a failed run, or --keep-workdir): its path is
    printed instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    procs.stop_all()
    if keep:
        print(f"configs and logs kept in {workdir}", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_checked(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO, check=False
    )
    if result.returncode != 0:
        raise BenchError(
            f"{' '.join(cmd)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http(
    method: str, url: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    # Only ever http://127.0.0.1 URLs this script builds itself.
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def chat_request(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()


def wait_until(what: str, check: Any, timeout_s: float, alive: Started | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if alive is not None and alive.proc.poll() is not None:
            raise BenchError(
                f"{alive.name} exited with {alive.proc.returncode} while waiting "
                f"for {what}; last log lines:\n{tail(alive.log)}"
            )
        try:
            if check():
                return
        except (OSError, urllib.error.URLError) as exc:
            last_error = str(exc)
        time.sleep(0.2)
    log = f"\nlast log lines:\n{tail(alive.log)}" if alive else ""
    raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what} {last_error}{log}")


# --------------------------------------------------------------------------- /proc readings


def children_of(pid: int) -> list[int]:
    """All descendants of pid, found through /proc/*/stat parent ids."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def process_tree(pid: int) -> list[int]:
    return [pid, *children_of(pid)]


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def cpu_busy_jiffies() -> dict[str, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies since boot, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if re.fullmatch(r"cpu\d+", name):
            numbers = [int(v) for v in values[:8]]
            idle = numbers[3] + numbers[4]
            out[name] = (sum(numbers) - idle, sum(numbers))
    return out


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return "?"


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    return raw.strip()[:120]


@dataclass
class CpuWindow:
    """CPU use of the gateway and of each core across one measured run."""

    gateway_pids: list[int]
    wall0: float = 0.0
    gateway0: float = 0.0
    cores0: dict[str, tuple[int, int]] = field(default_factory=dict)
    gateway_cpu: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> CpuWindow:
        self.wall0 = time.monotonic()
        self.gateway0 = cpu_seconds(self.gateway_pids)
        self.cores0 = cpu_busy_jiffies()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = time.monotonic() - self.wall0
        self.gateway_cpu = (cpu_seconds(self.gateway_pids) - self.gateway0) / wall
        cores1 = cpu_busy_jiffies()
        self.cores = {
            name: (cores1[name][0] - busy) / max(1, cores1[name][1] - total)
            for name, (busy, total) in self.cores0.items()
        }


# --------------------------------------------------------------------------- Postgres


def psql(pg_url: str, sql: str, database: str = "postgres") -> str:
    result = run_checked(
        ["psql", f"{pg_url}/{database}", "-v", "ON_ERROR_STOP=1", "-Atc", sql], timeout=60
    )
    return result.stdout.strip()


def postgres_pids(pg_url: str) -> list[int]:
    data_dir = Path(psql(pg_url, "show data_directory"))
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    return process_tree(postmaster)


def thread_ids(pid: int) -> list[int]:
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


@dataclass
class PostgresPin:
    """Moves the running Postgres to the load cores for the benchmark and back afterwards."""

    pg_url: str
    cpus: set[int]
    saved: dict[int, set[int]] = field(default_factory=dict)
    default: set[int] = field(default_factory=set)

    def pin(self) -> None:
        pids = postgres_pids(self.pg_url)
        self.default = os.sched_getaffinity(pids[0])
        for pid in pids:
            for tid in thread_ids(pid):
                with contextlib.suppress(OSError):
                    self.saved[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, self.cpus)

    def restore(self) -> None:
        if not self.saved:
            return
        # Backends forked during the run inherited the pinned mask: restore those too.
        try:
            current = postgres_pids(self.pg_url)
        except (BenchError, OSError, ValueError, subprocess.TimeoutExpired):
            current = []
        for pid in set(current) | set(self.saved):
            for tid in thread_ids(pid) or [pid]:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, self.saved.get(tid, self.default))
        self.saved.clear()


def alive(pid: int) -> bool:
    """Running: a zombie (dead, its new parent not reaping it yet) is not."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def postmaster_tree(pgdata: Path) -> list[int]:
    """The postmaster of the cluster in pgdata (from its postmaster.pid) and every child of it."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    children = psutil.Process(postmaster).children(recursive=True)
    return [postmaster, *(child.pid for child in children)]


def signal_each(pids: list[int], signum: int) -> int:
    """Send signum to each pid in order; returns how many were still there to get it."""
    sent = 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
            sent += 1
    return sent


# --------------------------------------------------------------------------- a small disk


def mount_tmpfs(path: Path, size_mib: int) -> None:
    """A tmpfs of size_mib at path (needs root, or CAP_SYS_ADMIN): a disk that can fill up."""
    path.mkdir(parents=True, exist_ok=True)
    run_checked(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path)])


def unmount(path: Path) -> None:
    result = subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if result.returncode != 0:  # still busy: detach it now, the kernel frees it when unused
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill_disk(path: Path) -> int:
    """Write path until the filesystem refuses (ENOSPC); returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12):  # 1 MiB blocks, then pages for what is left
            block = b"\0" * chunk
            while True:
                try:
                    written += os.write(fd, block)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written


def start_nginx(procs: Processes, workdir: Path, load_cpus: str, port: int) -> Started:
    """The benchmark's upstream (bench/configs.py): nginx answering at once on ``port`` and
    after 50 ms on the next one, pinned to ``load_cpus`` ('' for no pinning); returns once
    both answer."""
    (workdir / "nginx-tmp").mkdir()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, port + 1))
    cmd = ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx-error.log")]
    pinned = ["taskset", "-c", load_cpus] if load_cpus else []
    nginx = procs.start(
        "nginx",
        [*pinned, *cmd, "-g", "daemon off;"],
        workdir / "nginx.log",
        stop_signal=signal.SIGQUIT,
    )
    for each in (port, port + 1):
        url = f"http://127.0.0.1:{each}/v1/chat/completions"
        wait_until(
            f"nginx at {url}",
            lambda u=url: http("POST", u, chat_request("bench"))[0] == 200,
            10,
            alive=nginx,
        )
    return nginx
