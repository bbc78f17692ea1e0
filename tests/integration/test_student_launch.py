"""The real launcher against small stand-in servers (real processes, real HTTP, real signals).

vLLM itself takes most of a minute to start and lives in its own environment, so these
tests put a tiny script where vLLM's module would be: the launcher's command is a
parameter. The stand-in gets the same vLLM arguments the launcher would pass, so the test
also shows that the port and served name reach the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from student_server.args import StudentOptions, readiness_url, served_name, vllm_args
from student_server.launch import (
    StudentDied,
    StudentNotReady,
    StudentProcess,
    running_student,
)

ROOT = Path(__file__).resolve().parents[2]

STAND_IN = r'''
"""A stand-in for vLLM's OpenAI server: BEHAVIOUR [vLLM arguments...]."""
import argparse, http.server, json, signal, sys, time

behaviour = sys.argv[1]
parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int)
parser.add_argument("--served-model-name")
args, _ = parser.parse_known_args(sys.argv[2:])


def log(line):
    print(line, flush=True)


class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = "someone-else" if behaviour == "wrong-name" else args.served_model_name
        body = json.dumps({"object": "list", "data": [{"id": name}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def stop(signum, frame):
    log(f"stand-in got signal {signum}")
    raise KeyboardInterrupt


log("stand-in starting: " + json.dumps(sys.argv[2:]))
if behaviour == "die":
    for i in range(60):
        log(f"loading step {i}")
    log("RuntimeError: the stand-in failed on purpose")
    sys.exit(1)
if behaviour == "never":
    while True:
        time.sleep(1)
signal.signal(signal.SIGTERM, signal.SIG_IGN if behaviour == "stubborn" else stop)
signal.signal(signal.SIGINT, stop)
time.sleep(0.5)  # "loading the model"
server = http.server.HTTPServer((args.host, args.port), Models)
log("stand-in serving")
try:
    server.serve_forever()
except KeyboardInterrupt:
    log("stand-in stopped cleanly")
'''

DRIVER = """
import json, sys
from pathlib import Path
from student_server.launch import StudentProcess, run_until_exit
spec = json.loads(sys.argv[1])
process = StudentProcess(
    spec["command"], log_path=Path(spec["log"]), ready_url=spec["url"], served_name=spec["name"]
)
sys.exit(run_until_exit(process, ready_timeout_s=spec["timeout"], out=sys.stderr,
                        url_hint=spec["url"], stop_grace_s=5))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def options() -> StudentOptions:
    return StudentOptions(model="/models/tiny-student", port=free_port())


def stand_in(tmp_path: Path, behaviour: str, options: StudentOptions) -> list[str]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return [sys.executable, str(script), behaviour, *vllm_args(options, "cpu")]


def student(tmp_path: Path, behaviour: str, options: StudentOptions) -> StudentProcess:
    return StudentProcess(
        stand_in(tmp_path, behaviour, options),
        log_path=tmp_path / "student.log",
        ready_url=readiness_url(options),
        served_name=served_name(options),
        env={"HF_HUB_OFFLINE": "1"},
    )


def test_ready_once_models_lists_the_served_name(tmp_path: Path, options: StudentOptions) -> None:
    process = student(tmp_path, "ready", options)
    with running_student(process, ready_timeout_s=20) as running:
        assert running.poll() is None
        log = running.tail()
    assert "--served-model-name" in log
    assert '"--max-logprobs", "20"' in log
    assert process.poll() is not None
    assert "stand-in stopped cleanly" in process.log_path.read_text()


def test_a_server_that_dies_reports_its_last_log_lines(
    tmp_path: Path, options: StudentOptions
) -> None:
    process = student(tmp_path, "die", options)
    with process, pytest.raises(StudentDied, match="status 1") as raised:
        process.wait_ready(20)
    tail = raised.value.log_tail
    assert "the stand-in failed on purpose" in tail
    assert "loading step 59" in tail
    assert "loading step 0\n" not in tail  # only the last lines, not the whole log


def test_a_server_that_never_answers_times_out(tmp_path: Path, options: StudentOptions) -> None:
    process = student(tmp_path, "never", options)
    started = time.monotonic()
    with process, pytest.raises(StudentNotReady, match=r"not ready after 1\.5 s") as raised:
        process.wait_ready(1.5)
    assert time.monotonic() - started < 10
    assert "stand-in starting" in raised.value.log_tail
    assert process.poll() is not None  # stopped on leaving the block


def test_another_server_on_the_port_is_not_mistaken_for_the_student(
    tmp_path: Path, options: StudentOptions
) -> None:
    process = student(tmp_path, "wrong-name", options)
    with process, pytest.raises(StudentNotReady):
        process.wait_ready(2)


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path, options: StudentOptions) -> None:
    process = student(tmp_path, "stubborn", options)
    process.start()
    process.wait_ready(20)
    assert process.stop(grace_s=0.5) == -signal.SIGKILL


def run_driver(
    tmp_path: Path, behaviour: str, options: StudentOptions, timeout_s: float
) -> subprocess.Popen[str]:
    spec = {
        "command": stand_in(tmp_path, behaviour, options),
        "log": str(tmp_path / "student.log"),
        "url": readiness_url(options),
        "name": served_name(options),
        "timeout": timeout_s,
    }
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(spec)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_command_line_flow_fails_with_the_log_tail(tmp_path: Path, options: StudentOptions) -> None:
    driver = run_driver(tmp_path, "die", options, timeout_s=20)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 1
    assert "exited with status 1 before it was ready" in err
    assert "last lines of its log" in err
    assert "the stand-in failed on purpose" in err


def test_command_line_flow_times_out_non_zero(tmp_path: Path, options: StudentOptions) -> None:
    driver = run_driver(tmp_path, "never", options, timeout_s=1)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 1
    assert "not ready after 1 s" in err
    assert "stand-in starting" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_and_end_in_a_clean_stop(
    tmp_path: Path, options: StudentOptions, signum: int
) -> None:
    driver = run_driver(tmp_path, "ready", options, timeout_s=20)
    assert driver.stderr is not None
    lines = []
    for line in driver.stderr:
        lines.append(line)
        if "ready after" in line:
            break
    else:
        pytest.fail("the launcher never reported ready:\n" + "".join(lines))
    driver.send_signal(signum)
    _, err = driver.communicate(timeout=30)
    assert driver.returncode == 0, "".join(lines) + err
    log = (tmp_path / "student.log").read_text()
    assert f"stand-in got signal {int(signum)}" in log
    assert "stand-in stopped cleanly" in log


# The launcher against the real vLLM CPU build, with the demo student and the gateway in front
# of it, is tests/integration/test_demo_vllm.py (one vLLM server for that whole module).
