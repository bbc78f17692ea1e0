"""``shadow-gateway replay``: a new student tried on logged traffic, resumable, judged.

Real gateway, real Postgres, the real CLI as a process (SIGINT and all); the teacher and the
students are loopback servers. The champion answers live; the candidate is registered with a
shadow share of 0, so every answer it gives comes from replay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROUTE, rows
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.process import BIN, run_command
from tests.support.upstream import FakeOpenAI

ANALYST = "analyst-secret"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "analyst", "key_env": "SGW_TEST_ANALYST_KEY", "scopes": ["analyst"]},
]
TIERS = ("free", "pro")
PER_TIER = 15


@pytest.fixture
def candidate() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI("candidate").start()
    # right on pro, wrong on free
    server.reset_behavior(answer=lambda text: "wrong" if text.startswith("free") else text.upper())
    yield server
    server.stop()


@pytest.fixture
def logged(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    candidate: FakeOpenAI,
    clean_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> GatewayServer:
    """30 logged requests (15 per tier) answered by the teacher and the champion; the candidate
    registered but never shadowed."""
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)
    teacher.reset_behavior(answer=lambda text: text.upper())
    student.reset_behavior(answer=lambda text: text.upper())
    spec = route(ROUTE, teacher.base_url, None)
    spec["students"] = [
        {"name": "champ", "base_urls": [student.base_url], "model": "champ-model"},
        {
            "name": "cand",
            "base_urls": [candidate.base_url],
            "model": "cand-model",
            "shadow_sample": 0,
        },
    ]
    spec["champion"] = "champ"
    gateway = make_gateway([spec], auth={"keys": KEYS})
    client = sdk(gateway, app_key)
    for tier in TIERS:
        for i in range(PER_TIER):
            client.chat.completions.create(
                model=ROUTE,
                messages=[{"role": "user", "content": f"{tier} question {i}"}],
                extra_headers={"X-Slice-Tier": tier},
            )
    wait_for(lambda: len(rows(clean_db, "agree IS NOT NULL")) == 2 * PER_TIER, what="30 rows")
    assert candidate.received == []
    return gateway


def replay(
    gateway: GatewayServer, url: str, *args: str, student: str = "cand", route: str = ROUTE
) -> subprocess.CompletedProcess[str]:
    return run_command(gateway.config_path, url, "replay", route, "--student", student, *args)


def replayed(url: str) -> list[dict[str, Any]]:
    return fetch(
        url, "SELECT * FROM student_answers WHERE source = 'replay' ORDER BY created_at DESC"
    )


def test_replay_judges_a_new_student_on_logged_traffic(
    logged: GatewayServer, candidate: FakeOpenAI, clean_db: str
) -> None:
    done = replay(logged, clean_db, "--concurrency", "3", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["chosen"] == 30
    assert (summary["answered"], summary["compared"], summary["agreed"]) == (30, 30, 15)
    assert summary["skipped"] == 0
    assert "30 logged requests" in done.stderr  # the plan
    assert "30/30" in done.stderr  # the progress bar's last state

    answers = replayed(clean_db)
    assert len(answers) == 30
    requests = {r["request_id"]: r for r in rows(clean_db)}
    for answer in answers:
        request = requests[answer["request_id"]]
        assert answer["student"] == "cand"
        assert answer["student_model"] == "cand-model"
        assert answer["created_at"] == request["created_at"]  # the request's time
        assert answer["slices"] == request["slices"]
        assert answer["agree"] is ('"tier": "pro"' in request["slices"])
        assert answer["student_confidence"] is not None
    # the student was sent what a live shadow call sends: the logged body, its own model,
    # not streamed, logprobs on
    sent = candidate.received[0].body
    assert sent["model"] == "cand-model"
    assert sent["stream"] is False
    assert sent["logprobs"] is True

    # a second run has nothing left to do
    again = replay(logged, clean_db, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["skipped"] == 30
    assert len(candidate.received) == 30

    # the candidates report shows the replay apart from live answers, paired with the
    # champion's live answers to the same requests
    report = httpx.get(
        f"{logged.url}/admin/reports/candidates",
        params={"route": ROUTE, "min_pairs": 10},
        headers={"Authorization": f"Bearer {ANALYST}"},
        timeout=30,
    ).json()
    sources = {source["source"]: source for source in report["sources"]}
    assert set(sources) == {"live", "replay"}
    assert [e["student"] for e in sources["live"]["overall"]["candidates"]] == ["champ"]
    verdicts = {
        line["value"]: {e["student"]: e["verdict"] for e in line["candidates"]}
        for line in sources["replay"]["slices"]
    }
    assert verdicts["free"]["cand"] == "worse"
    assert verdicts["pro"]["cand"] == "inconclusive"
    overall = {e["student"]: e for e in sources["replay"]["overall"]["candidates"]}
    assert overall["cand"]["paired"]["pairs"] == 30
    assert overall["cand"]["paired"]["baseline_only"] == 15


def test_replay_filters_by_slice_and_limit_newest_first(
    logged: GatewayServer, clean_db: str
) -> None:
    done = replay(logged, clean_db, "--slice", "tier=free", "--limit", "4", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answered"] == 4
    newest_free = fetch(
        clean_db,
        "SELECT request_id FROM requests WHERE slices->>'tier' = 'free' "
        "ORDER BY created_at DESC LIMIT 4",
    )
    assert {a["request_id"] for a in replayed(clean_db)} == {r["request_id"] for r in newest_free}


def test_replay_interrupted_resumes_where_it_stopped(
    logged: GatewayServer, candidate: FakeOpenAI, clean_db: str
) -> None:
    candidate.reset_behavior(answer=lambda text: text.upper(), latency_s=0.2)
    process = subprocess.Popen(
        [
            str(BIN / "shadow-gateway"),
            "replay",
            ROUTE,
            "--student",
            "cand",
            "--concurrency",
            "2",
            "--config",
            str(logged.config_path),
        ],
        env={**os.environ, "DATABASE_URL": clean_db, "SGW_TEST_APP_KEY": "x"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(candidate.received) >= 8, timeout_s=60, what="8 calls")
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "run the same command again to resume" in err
    first = replayed(clean_db)
    assert 6 <= len(first) < 30
    # every row written is whole: answered and judged, none half-done
    assert all(a["student_status"] == "ok" and a["agree"] is True for a in first)
    sent_before = len(candidate.received)

    done = replay(logged, clean_db, "--concurrency", "4", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["skipped"] == len(first)
    assert summary["answered"] == 30 - len(first)
    assert len(replayed(clean_db)) == 30
    # the first run's answers were not asked again (calls cut off by Ctrl-C may be)
    assert len(candidate.received) - sent_before == 30 - len(first)


def test_replay_stops_when_the_student_keeps_failing(
    logged: GatewayServer, candidate: FakeOpenAI, clean_db: str
) -> None:
    candidate.reset_behavior(status=500)
    done = replay(logged, clean_db, "--concurrency", "1")
    assert done.returncode == 1, done.stderr
    assert "failed 20 calls in a row (http_error: 20); stopped" in done.stderr
    assert replayed(clean_db) == []  # failed calls are not rows: the next run tries them


def test_replay_refuses_bad_input(logged: GatewayServer, clean_db: str) -> None:
    for args, student, code, words in (
        ([], "nope", 1, "has no student 'nope'"),
        (["--slice", "tier"], "cand", 2, "is not a slice"),
        (["--concurrency", "0"], "cand", 2, "must be at least 1"),
        (["--concurrency", "1000"], "cand", 2, "at most 256"),
        (["--since", "soon"], "cand", 2, "is not a time"),
        (["--limit", "-3"], "cand", 2, "at least 1"),
    ):
        done = replay(logged, clean_db, *args, student=student)
        assert done.returncode == code, (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)
    unknown_route = replay(logged, clean_db, route="nope")
    assert unknown_route.returncode == 1
    assert "Unknown route 'nope'" in unknown_route.stderr
    assert replayed(clean_db) == []
