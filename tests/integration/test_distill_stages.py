"""``distill``'s later stages without vLLM: resume after the add, Ctrl-C while the server starts,
``--keep-serving``, and the held-out comparison with the champion.

The server ``distill`` launches is a stand-in for vLLM's Python (:data:`FAKE_VLLM`), a real
process on a real port: it serves ``/v1/models`` and answers chat requests with the task's
exact answer (or 503 while a flag file exists), or, asked to hang, never gets ready and keeps
an "engine" child in its process group that ignores SIGTERM, as vLLM's engine process may
linger. The champion is a fake OpenAI server that gets relative dates wrong; half its answers
are already logged as live ones, so the replay stage asks it only for the rest. Last, the name
``demo --redistill`` gives its candidate on a database that already has some.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.config import DatabaseConfig
from gateway.db.engine import create_engine
from gateway.demo.redistill import _the_run
from gateway.demo.task import solve, style_of
from gateway.services.distill import save_run
from tests.integration.test_distill import COPY_MODEL, ROUTE, alive, runs, stages, traffic
from tests.integration.test_export import insert
from tests.support.db import execute, fetch
from tests.support.gateway import write_config
from tests.support.process import BIN
from tests.support.upstream import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
FAKE_VLLM = f"""#!{sys.executable}
import json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, {str(ROOT)!r})
from gateway.demo.task import solve

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
name = args[args.index("--served-model-name") + 1]
with open(os.environ["FAKE_VLLM_PIDS"], "a") as pids:
    if os.environ.get("FAKE_VLLM_HANG"):
        engine = os.fork()
        if engine == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(1)
        pids.write(f"{{os.getpid()}} {{engine}}\\n")
    else:
        pids.write(f"{{os.getpid()}}\\n")
print("INFO loading the model", flush=True)
if os.environ.get("FAKE_VLLM_HANG"):
    while True:
        time.sleep(1)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send(200, {{"object": "list", "data": [{{"id": name, "object": "model"}}]}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if os.path.exists(os.environ["FAKE_VLLM_FAIL"]):
            self.send(503, {{"error": {{"message": "overloaded", "type": "server_error"}}}})
            return
        answer = solve(body["messages"][-1]["content"]) or ""
        self.send(200, {{
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": name,
            "choices": [{{"index": 0, "finish_reason": "stop",
                         "message": {{"role": "assistant", "content": answer}}}}],
            "usage": {{"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}},
        }})


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""
REQUESTS = 160  # a quarter held out: 40 pairs, past the 30 a verdict needs


def champion_answer(prompt: str) -> str:
    """The champion: right, except on relative dates (as the demo's champion)."""
    return "1999-01-01" if style_of(prompt) == "relative" else solve(prompt) or ""


@pytest.fixture
def setup(clean_db: str, tmp_path: Path, student: FakeOpenAI) -> Iterator[dict[str, Any]]:
    """Logged traffic, the champion's live answers to every other request, the fake vLLM."""
    insert(clean_db, traffic(REQUESTS))
    execute(
        clean_db,
        "INSERT INTO student_answers (request_id, student, source, created_at, route, endpoint, "
        "slices, student_status, student_output, agree) "
        "SELECT request_id, 'champion', 'live', created_at, route, endpoint, slices, 'ok', "
        "'x', slices->>'style' <> 'relative' FROM requests "
        "WHERE right(request_id, 1) IN ('0', '2', '4', '6', '8')",
    )
    student.reset_behavior(answer=champion_answer)
    fake = tmp_path / "fake-vllm"
    fake.write_text(FAKE_VLLM)
    fake.chmod(0o755)
    route = {
        "name": ROUTE,
        "teacher": {"base_url": "http://127.0.0.1:9/v1", "model": "t"},
        "students": [{"name": "champion", "base_urls": [student.base_url], "model": "m"}],
        "agreement": {"comparator": "exact"},
        "export": {"verifier": {"kind": "regex", "pattern": r"^\d{4}-\d{2}-\d{2}$"}},
        "distill": {
            "train_command": COPY_MODEL,
            "holdout": 0.25,
            "since": "1d",
            "launch": {"device": "cpu", "python": str(fake), "ready_timeout_s": 60},
        },
    }
    env = {**os.environ, "DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": "test-app-key"}
    env["FAKE_VLLM_PIDS"] = str(tmp_path / "pids")
    env["FAKE_VLLM_FAIL"] = str(tmp_path / "fail")
    state = {"url": clean_db, "config": write_config(tmp_path / "gateway.yaml", [route])}
    state |= {"env": env, "pids": tmp_path / "pids", "fail": tmp_path / "fail"}
    yield state
    for line in state["pids"].read_text().splitlines() if state["pids"].exists() else []:
        for pid in map(int, line.split()):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def distill(setup: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "shadow-gateway"), "distill", "--config", str(setup["config"]), *args],
        env=setup["env"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def server_pids(setup: dict[str, Any]) -> list[list[int]]:
    if not setup["pids"].exists():
        return []
    return [[int(p) for p in line.split()] for line in setup["pids"].read_text().splitlines()]


def events(url: str) -> list[tuple[str, str]]:
    found = fetch(
        url,
        "SELECT action, actor FROM route_events WHERE coalesce(new, old) ->> 'name' = 'next' "
        "ORDER BY id",
    )
    return [(row["action"], row["actor"]) for row in found]


def test_a_rerun_after_the_add_neither_adds_twice_nor_redoes_it(setup: dict[str, Any]) -> None:
    setup["fail"].write_text("")  # the new server answers nothing but 503s
    failed = distill(setup, ROUTE, "--name", "next", "--replay-limit", "40")
    assert failed.returncode == 1, failed.stderr
    assert "failed at replay" in failed.stderr
    assert "failed 20 calls in a row" in failed.stderr
    (run,) = runs(setup["url"])
    assert stages(run) == [
        ("export", "done"),
        ("train", "done"),
        ("launch", "done"),
        ("add", "done"),
        ("replay", "failed"),
    ]
    first_url = run["stages"][2]["details"]["url"]
    (first_pid,) = server_pids(setup)[0]
    assert not alive(first_pid)  # the server stopped with the failed run
    assert [kind for kind, _ in events(setup["url"])] == ["student_added"]

    setup["fail"].unlink()
    resumed = distill(setup, ROUTE, "--name", "next", "--replay-limit", "40", "--json")
    assert resumed.returncode == 0, resumed.stderr
    for stage in ("export", "train", "add"):
        assert f"{stage}: done in an earlier attempt, not redone" in resumed.stderr
    (run,) = runs(setup["url"])
    assert stages(run)[5:] == [
        ("launch", "done"),
        ("replay", "done"),
        ("report", "done"),
    ]
    second_url = run["stages"][5]["details"]["url"]
    assert second_url != first_url
    (student,) = fetch(
        setup["url"],
        "SELECT status, base_urls, train_dataset_id FROM route_students WHERE name = 'next'",
    )
    assert student["status"] == "candidate"
    assert student["base_urls"] == [second_url]  # pointed at the new server, not added again
    assert student["train_dataset_id"] == run["train_dataset_id"]
    assert events(setup["url"]) == [("student_added", "distill"), ("student_changed", "distill")]
    assert not any(alive(pid) for pids in server_pids(setup) for pid in pids)

    # The held-out comparison: the candidate (always right) against the champion (wrong on
    # relative dates) on the same held-out requests, paired.
    report = orjson.loads(resumed.stdout)["report"]
    holdout = report["holdout"]
    items = fetch(
        setup["url"],
        "SELECT count(*) AS n FROM dataset_items WHERE dataset_id = $1",
        run["eval_dataset_id"],
    )[0]["n"]
    assert holdout["dataset_id"] == run["eval_dataset_id"]
    assert holdout["candidate"] == "next"
    assert holdout["baseline"] == "champion"
    overall = holdout["overall"]
    assert overall["items"] == items == REQUESTS // 4
    assert overall["candidate"]["compared"] == items
    assert overall["candidate"]["agreement"] == 1.0
    # every held-out request paired: the champion was replayed where it had no live answer
    assert overall["baseline"]["compared"] == items
    assert overall["paired"]["pairs"] == items
    relative = next(line for line in holdout["slices"] if line["value"] == "relative")
    assert relative["candidate"]["agreement"] == 1.0
    assert relative["baseline"]["agreement"] == 0.0
    assert overall["paired"]["candidate_only"] == relative["items"] > 0
    assert overall["paired"]["baseline_only"] == 0
    assert overall["paired"]["difference"] == pytest.approx(relative["items"] / items)
    assert overall["paired"]["ci_low"] > 0
    assert overall["verdict"] == "better"
    assert holdout["slices"][0]["value"] == "relative"  # worst first: the champion's 0%
    replay = run["stages"][-2]["details"]
    asked = replay["champion_holdout"]
    assert asked["student"] == "champion"
    assert 0 < asked["answered"] < items  # only where it had no live answer
    assert replay["holdout"]["answered"] == items
    champion_replayed = fetch(
        setup["url"],
        "SELECT count(*) AS n FROM student_answers WHERE student = 'champion' "
        "AND source = 'replay'",
    )[0]["n"]
    assert champion_replayed == asked["answered"]
    assert run["stages"][-1]["details"]["holdout"]["verdict"] == "better"


def test_ctrl_c_while_the_server_starts_stops_its_group_and_the_run_resumes(
    setup: dict[str, Any],
) -> None:
    env = {**setup["env"], "FAKE_VLLM_HANG": "1"}
    command = [str(BIN / "shadow-gateway"), "distill", "--config", str(setup["config"])]
    process = subprocess.Popen(
        [*command, ROUTE, "--name", "next"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not server_pids(setup) or not runs(setup["url"])[0]["stages"][-1].get("details"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the server never started"
            time.sleep(0.2)
        ((server, engine),) = server_pids(setup)
        (run,) = runs(setup["url"])
        assert run["stages"][-1]["stage"] == "launch"
        assert run["stages"][-1]["details"]["pid"] == server  # recorded before it is ready
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "is stopped" in err
    assert "Traceback" not in err
    assert not alive(server)
    assert not alive(engine)  # it ignored SIGTERM: killed with the process group
    (run,) = runs(setup["url"])
    assert run["status"] == "stopped"
    assert stages(run) == [("export", "done"), ("train", "done"), ("launch", "stopped")]
    assert not fetch(setup["url"], "SELECT name FROM route_students WHERE name = 'next'")

    resumed = distill(setup, ROUTE, "--name", "next", "--replay-limit", "10")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run" in resumed.stderr
    assert "train: done in an earlier attempt, not redone" in resumed.stderr
    (run,) = runs(setup["url"])
    assert run["status"] == "done"
    assert [name for name, _ in stages(run)][3:] == ["launch", "add", "replay", "report"]


def test_keep_serving_leaves_the_server_running_after_the_command(setup: dict[str, Any]) -> None:
    done = distill(setup, ROUTE, "--name", "next", "--replay-limit", "10", "--keep-serving")
    assert done.returncode == 0, done.stderr
    (run,) = runs(setup["url"])
    launch = run["stages"][2]["details"]
    assert f"keeps serving at {launch['url']} (pid {launch['pid']}" in done.stderr
    assert alive(launch["pid"])
    models = httpx.get(f"{launch['url']}/models", timeout=5, trust_env=False)
    assert models.json()["data"][0]["id"] == "next"
    (student,) = fetch(setup["url"], "SELECT base_urls FROM route_students WHERE name = 'next'")
    assert student["base_urls"] == [launch["url"]]  # the candidate points at the live server
    # the text report: recent traffic and the held-out split, each under its own heading
    assert "== recent traffic, replayed" in done.stdout
    assert "== held-out split" in done.stdout
    assert done.stdout.index("== recent traffic") < done.stdout.index("== held-out split")
    os.kill(launch["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while alive(launch["pid"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_the_demo_names_its_next_candidate_or_resumes_a_broken_run(clean_db: str) -> None:
    """``demo --redistill --keep-data``: tiny-v2 first, the next free name after a run that
    finished, and a run that failed or was stopped is resumed rather than left behind."""

    async def names() -> list[tuple[str, bool]]:
        engine = create_engine(clean_db, DatabaseConfig())
        try:
            chosen = []
            first, resumed = await _the_run(engine, "demo")
            chosen.append((first.student, resumed))
            first.status = "done"
            await save_run(engine, first)
            second, resumed = await _the_run(engine, "demo")
            chosen.append((second.student, resumed))
            second.status = "stopped"
            await save_run(engine, second)
            again, resumed = await _the_run(engine, "demo")
            assert again.id == second.id
            chosen.append((again.student, resumed))
            return chosen
        finally:
            await engine.dispose()

    assert asyncio.run(names()) == [("tiny-v2", False), ("tiny-v3", False), ("tiny-v3", True)]
