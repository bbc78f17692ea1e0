"""``shadow-gateway distill``: export → train → launch → add → replay → report, on real Postgres.

The traffic is the demo's task (dates → ISO), inserted as logged rows with the exact answer
as the teacher's. The training command is a Python one-liner that copies the shipped demo
student into ``{output}``: the project embeds no trainer, and what matters here is the loop.

The failure paths run without vLLM: a training command that fails, then ``--resume`` with a
fixed one (the export is not redone), then a launch that fails (a stand-in for vLLM's Python
that dies with an error: the launch error and the log's tail, no candidate). The whole loop
starts the real vLLM CPU build once, and Ctrl-C interrupts another start of it; both are
skipped without ``.venv-student``. The later stages' paths (resume after the add,
``--keep-serving``, the held-out comparison) are in ``test_distill_stages.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.demo.stack import demo_model_dir
from gateway.demo.task import examples
from tests.integration.test_export import insert
from tests.support.db import fetch
from tests.support.gateway import write_config
from tests.support.process import BIN

ROOT = Path(__file__).resolve().parents[2]
STUDENT_PYTHON = ROOT / ".venv-student" / "bin" / "python"
ROUTE = "dates"
MODEL = demo_model_dir()
COPY_MODEL = (
    f"{sys.executable} -c 'import shutil, sys; "
    f'shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)\' "{MODEL}" {{output}}'
)
FAILING = (
    f"{sys.executable} -c 'import sys; print(\"loss is nan at step 3\"); sys.exit(3)' {{output}}"
)
# A stand-in for vLLM's Python: it cannot load the model, as vLLM says when it cannot.
BROKEN_VLLM = """#!/bin/sh
echo "INFO starting the server"
echo "ValueError: the model's config.json names an architecture vLLM does not know"
exit 1
"""


def traffic(count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    rows = []
    for i, example in enumerate(examples(seed=7, count=count)):
        messages = [{"role": "user", "content": example.prompt}]
        payload = {"model": ROUTE, "messages": messages, "max_tokens": 16}
        rows.append(
            {
                "request_id": f"dates-{i:04d}",
                "route": ROUTE,
                "endpoint": "chat",
                "created_at": now - timedelta(hours=2, minutes=i),
                "mode": "shadow",
                "served_by": "teacher",
                "status_code": 200,
                "slices": orjson.dumps({"style": example.style}).decode(),
                "request_payload": orjson.dumps(payload).decode(),
                "teacher_status": 200,
                "teacher_output": example.answer,
                "teacher_finish_reason": "stop",
            }
        )
    return rows


def config(tmp_path: Path, launch: dict[str, Any] | None = None) -> Path:
    route = {
        "name": ROUTE,
        "teacher": {"base_url": "http://127.0.0.1:9/v1", "model": "t"},
        "students": [{"name": "champion", "base_urls": ["http://127.0.0.1:9/v1"], "model": "m"}],
        "agreement": {"comparator": "exact"},
        "export": {"verifier": {"kind": "regex", "pattern": r"^\d{4}-\d{2}-\d{2}$"}},
        "distill": {
            "train_command": COPY_MODEL,
            "holdout": 0.25,
            "since": "1d",
            "launch": launch or {"device": "cpu"},
        },
    }
    quiet = {"name": "quiet", "teacher": route["teacher"], "students": route["students"]}
    return write_config(tmp_path / "gateway.yaml", [route, quiet])


def cli(url: str, path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "SGW_TEST_APP_KEY": "test-app-key"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [str(BIN / "shadow-gateway"), "distill", "--config", str(path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def runs(url: str) -> list[dict[str, Any]]:
    found = fetch(url, "SELECT * FROM distill_runs ORDER BY id")
    for run in found:
        if isinstance(run["stages"], str):
            run["stages"] = orjson.loads(run["stages"])
    return found


def stages(run: dict[str, Any]) -> list[tuple[str, str]]:
    return [(stage["stage"], stage["status"]) for stage in run["stages"]]


def test_an_empty_export_stops_with_the_exports_reason(clean_db: str, tmp_path: Path) -> None:
    path = config(tmp_path)
    done = cli(clean_db, path, "quiet", "--name", "next", "--train-command", "true {output}")
    assert done.returncode == 1, done
    assert "failed at export" in done.stderr
    assert "Traceback" not in done.stderr
    (run,) = runs(clean_db)
    assert run["status"] == "failed"
    assert stages(run) == [("export", "failed")]
    assert "quiet" in run["error"]


def test_a_failed_train_resumes_without_a_new_export_and_a_bad_launch_adds_nothing(
    clean_db: str, tmp_path: Path
) -> None:
    insert(clean_db, traffic(40))
    broken = tmp_path / "broken-python"
    broken.write_text(BROKEN_VLLM)
    broken.chmod(0o755)
    path = config(tmp_path, {"device": "cpu", "python": str(broken), "ready_timeout_s": 60})

    failed = cli(clean_db, path, ROUTE, "--name", "next", "--train-command", FAILING)
    assert failed.returncode == 1, failed
    assert "the train command exited with status 3" in failed.stderr
    assert "loss is nan at step 3" in failed.stderr  # the tail of its output
    (run,) = runs(clean_db)
    assert run["status"] == "failed"
    assert run["stage"] == "train"
    assert stages(run) == [("export", "done"), ("train", "failed")]
    train = run["stages"][1]
    assert train["details"]["exit_status"] == 3
    assert "loss is nan" in train["details"]["tail"]
    datasets = fetch(clean_db, "SELECT id, kind, created_by FROM datasets ORDER BY id")
    assert [d["kind"] for d in datasets] == ["train", "eval"]
    assert run["train_dataset_id"] == datasets[0]["id"]
    assert run["eval_dataset_id"] == datasets[1]["id"]

    # The same name again, the route's (fixed) command: export not redone, train done, and
    # the launch fails as vLLM does when it cannot load the output.
    resumed = cli(clean_db, path, ROUTE, "--name", "next", "--resume")
    assert resumed.returncode == 1, resumed
    assert "export: done in an earlier attempt, not redone" in resumed.stderr
    assert "failed at launch" in resumed.stderr
    assert "architecture vLLM does not know" in resumed.stderr  # the log's tail
    (run,) = runs(clean_db)
    assert stages(run) == [
        ("export", "done"),
        ("train", "failed"),
        ("train", "done"),
        ("launch", "failed"),
    ]
    assert "architecture vLLM does not know" in run["stages"][-1]["details"]["tail"]
    assert (Path(run["output_dir"]) / "config.json").is_file()
    assert len(fetch(clean_db, "SELECT id FROM datasets")) == 2  # no second export
    names = [s["name"] for s in fetch(clean_db, "SELECT name FROM route_students")]
    assert "next" not in names

    status = cli(clean_db, path, "status", ROUTE, "--json")
    assert status.returncode == 0, status
    (listed,) = orjson.loads(status.stdout)
    assert listed["status"] == "failed"
    assert listed["stage"] == "launch"
    table = cli(clean_db, path, "status", ROUTE)
    assert "launch: failed" in table.stdout


def test_an_output_without_a_model_fails_the_launch(clean_db: str, tmp_path: Path) -> None:
    insert(clean_db, traffic(20))
    done = cli(
        clean_db, config(tmp_path), ROUTE, "--name", "empty", "--train-command", "true {output}"
    )
    assert done.returncode == 1, done
    assert "has no config.json" in done.stderr
    (run,) = runs(clean_db)
    assert stages(run)[-1] == ("launch", "failed")
    assert not fetch(clean_db, "SELECT name FROM route_students WHERE name = 'empty'")

    taken = cli(clean_db, config(tmp_path), ROUTE, "--name", "champion")
    assert taken.returncode == 1, taken
    assert "already has a student 'champion'" in taken.stderr
    assert len(runs(clean_db)) == 1  # no run for it


@pytest.mark.slow
@pytest.mark.skipif(
    not STUDENT_PYTHON.exists(), reason="no .venv-student (bash student_server/install-cpu.sh)"
)
def test_the_whole_loop_on_vllm_adds_a_candidate_and_reports(clean_db: str, tmp_path: Path) -> None:
    insert(clean_db, traffic(40))
    launch = {
        "device": "cpu",
        "python": str(STUDENT_PYTHON),
        "max_model_len": 64,
        "extra_args": ["--enforce-eager"],
    }
    path = config(tmp_path, launch)
    done = cli(clean_db, path, ROUTE, "--name", "next", "--replay-limit", "10", timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    assert "replay answers" in done.stdout  # the candidates report, source replay
    assert "== held-out split" in done.stdout  # and the held-out comparison, apart
    (run,) = runs(clean_db)
    assert run["status"] == "done"
    assert [name for name, _ in stages(run)] == [
        "export",
        "train",
        "launch",
        "add",
        "replay",
        "report",
    ]
    assert all(status == "done" for _, status in stages(run))
    (student,) = fetch(
        clean_db,
        "SELECT status, shadow_sample, train_dataset_id FROM route_students WHERE name = 'next'",
    )
    assert student["status"] == "candidate"  # never promoted
    assert student["shadow_sample"] == 0
    assert student["train_dataset_id"] == run["train_dataset_id"]
    replayed = fetch(
        clean_db,
        "SELECT count(*) AS n FROM student_answers WHERE student = 'next' AND source = 'replay'",
    )
    assert replayed[0]["n"] >= 10
    # the server is stopped at the end (no --keep-serving)
    url = run["stages"][2]["details"]["url"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/models", timeout=2)


def test_ctrl_c_stops_the_training_and_marks_the_run_stopped(clean_db: str, tmp_path: Path) -> None:
    insert(clean_db, traffic(20))
    marker = tmp_path / "training.pid"
    slow = f"sh -c 'echo $$ > {marker}; exec sleep 60' {{output}}"
    env = {**os.environ, "DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": "test-app-key"}
    command = [str(BIN / "shadow-gateway"), "distill", "--config", str(config(tmp_path))]
    process = subprocess.Popen(
        [*command, ROUTE, "--name", "next", "--train-command", slow],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text().strip():
        assert time.monotonic() < deadline
        assert process.poll() is None
        time.sleep(0.1)
    training = int(marker.read_text())
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "is stopped" in err
    assert "Traceback" not in err
    (run,) = runs(clean_db)
    assert run["status"] == "stopped"
    assert stages(run) == [("export", "done"), ("train", "stopped")]
    assert not alive(training)  # the training command was stopped with the run


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie nobody reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def process_group(pgid: int) -> list[int]:
    """The live processes of a process group (vLLM's server and the engine it spawns)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


@pytest.mark.slow
@pytest.mark.skipif(
    not STUDENT_PYTHON.exists(), reason="no .venv-student (bash student_server/install-cpu.sh)"
)
def test_ctrl_c_while_vllm_starts_leaves_no_vllm_process(clean_db: str, tmp_path: Path) -> None:
    """Ctrl-C once vLLM has spawned its engine process: the run is stopped, resumable, and no
    process of the server's group is left (resuming it, and --keep-serving, are tested with a
    stand-in server in test_distill_stages.py: the same code, without a second vLLM start)."""
    insert(clean_db, traffic(40))
    launch = {
        "device": "cpu",
        "python": str(STUDENT_PYTHON),
        "max_model_len": 64,
        "extra_args": ["--enforce-eager"],
    }
    path = config(tmp_path, launch)
    env = {**os.environ, "DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": "test-app-key"}
    command = [str(BIN / "shadow-gateway"), "distill", "--config", str(path), ROUTE]
    process = subprocess.Popen(
        [*command, "--name", "next"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = 0
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "vLLM never spawned its engine"
            found = runs(clean_db)
            launched = found[0]["stages"][-1] if found and found[0]["stages"] else {}
            server = launched.get("details", {}).get("pid", 0) if launched else 0
            if launched.get("stage") == "launch" and server and len(process_group(server)) > 1:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "is stopped" in err
    assert "Traceback" not in err
    assert process_group(server) == []  # the server and its engine process, all gone
    (run,) = runs(clean_db)
    assert run["status"] == "stopped"
    assert stages(run) == [("export", "done"), ("train", "done"), ("launch", "stopped")]
    status = cli(clean_db, path, "status", ROUTE)
    assert "launch: stopped" in status.stdout
