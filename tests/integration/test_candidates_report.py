"""The candidates report on live traffic: three loopback students that differ on known slices.

The champion is wrong on half of the ``pro`` prompts; ``good`` is right everywhere (better on
``pro``, no different on ``free``); ``bad`` is right where the champion is except on ``free``,
where it is always wrong (worse there). ``gold`` has too few requests for a verdict. The
report's figures are checked against counts the test knows and against scipy.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from scipy.stats import binomtest  # type: ignore[import-untyped]

from tests.integration.conftest import ROUTE
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.process import run_command
from tests.support.upstream import FakeOpenAI

ANALYST = "analyst-secret"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "analyst", "key_env": "SGW_TEST_ANALYST_KEY", "scopes": ["analyst"]},
]
PER_TIER = {"free": 40, "pro": 40, "gold": 5}
Z = 1.959963984540054


def champion_answer(text: str) -> str:
    tier, number = text.split()
    return "wrong" if tier == "pro" and int(number) % 2 == 0 else text.upper()


def bad_answer(text: str) -> str:
    return "wrong" if text.startswith("free") else champion_answer(text)


@pytest.fixture
def students() -> Iterator[dict[str, FakeOpenAI]]:
    servers = {name: FakeOpenAI(name).start() for name in ("champ", "good", "bad")}
    servers["champ"].reset_behavior(answer=champion_answer)
    servers["good"].reset_behavior(answer=lambda text: text.upper())
    servers["bad"].reset_behavior(answer=bad_answer)
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def reported(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    students: dict[str, FakeOpenAI],
    clean_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> GatewayServer:
    """A gateway whose three students answered every request of every tier."""
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)
    teacher.reset_behavior(answer=lambda text: text.upper())
    spec = route(ROUTE, teacher.base_url, None)
    spec["students"] = [
        {"name": name, "base_urls": [server.base_url], "model": f"{name}-model", "timeout_s": 2}
        for name, server in students.items()
    ]
    spec["champion"] = "champ"
    gateway = make_gateway([spec], auth={"keys": KEYS})
    client = sdk(gateway, app_key)
    total = 0
    for tier, count in PER_TIER.items():
        for i in range(count):
            client.chat.completions.create(
                model=ROUTE,
                messages=[{"role": "user", "content": f"{tier} {i}"}],
                extra_headers={"X-Slice-Tier": tier},
            )
            total += 1
    expected = total * len(students)
    wait_for(
        lambda: (
            fetch(clean_db, "SELECT count(agree) AS n FROM student_answers")[0]["n"] == expected
        ),
        what=f"{expected} compared answers",
    )
    return gateway


def get(gateway: GatewayServer, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}/admin/reports/candidates",
        params={"route": ROUTE, **params},
        headers={"Authorization": f"Bearer {ANALYST}"},
        timeout=30,
    )


def by_student(line: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["student"]: entry for entry in line["candidates"]}


def newcombe_reference(both: int, first: int, second: int, neither: int) -> tuple[float, float]:
    """Newcombe's method 10 from scipy's Wilson intervals (the paper's formulas, written out)."""
    n = both + first + second + neither
    p1, p2 = (both + first) / n, (both + second) / n
    l1, u1 = binomtest(both + first, n).proportion_ci(method="wilson")
    l2, u2 = binomtest(both + second, n).proportion_ci(method="wilson")
    margins = [both + first, second + neither, both + second, first + neither]
    cross = both * neither - first * second
    adjusted = max(cross - n / 2, 0) if cross > 0 else cross
    phi = 0.0 if 0 in margins else adjusted / math.sqrt(math.prod(margins))
    difference = (first - second) / n

    def combine(x: float, y: float) -> float:
        return math.sqrt(x * x - 2 * phi * x * y + y * y)

    return (
        max(-1.0, difference - combine(p1 - l1, u2 - p2)),
        min(1.0, difference + combine(u1 - p1, p2 - l2)),
    )


def test_candidates_report_judges_each_student_per_slice(reported: GatewayServer) -> None:
    answer = get(reported)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["baseline"] == "champ"
    assert report["students"] == [
        {"name": "champ", "status": "champion"},
        {"name": "bad", "status": "candidate"},
        {"name": "good", "status": "candidate"},
    ]
    assert [source["source"] for source in report["sources"]] == ["live"]
    live = report["sources"][0]
    slices = {(line["dimension"], line["value"]): by_student(line) for line in live["slices"]}
    assert set(slices) == {("tier", "free"), ("tier", "pro"), ("tier", "gold")}
    # worst first: bad on free is worse; gold (no verdict) last
    assert [line["value"] for line in live["slices"]] == ["free", "pro", "gold"]

    free, pro, gold = slices["tier", "free"], slices["tier", "pro"], slices["tier", "gold"]
    assert free["champ"]["verdict"] == "baseline"
    assert free["champ"]["paired"] is None
    assert free["champ"]["agreement"] == 1.0
    assert free["bad"]["verdict"] == "worse"
    assert free["bad"]["paired"]["baseline_only"] == 40
    assert free["good"]["verdict"] == "inconclusive"
    assert free["good"]["paired"]["both"] == 40
    assert pro["good"]["verdict"] == "better"
    cells = ("pairs", "both", "candidate_only", "baseline_only", "neither", "difference")
    assert [pro["good"]["paired"][cell] for cell in cells] == [40, 20, 20, 0, 0, 0.5]
    assert pro["bad"]["verdict"] == "inconclusive"  # the champion's own answers there
    assert {gold[name]["verdict"] for name in ("good", "bad")} == {"not_enough_data"}
    assert gold["good"]["paired"]["pairs"] == 5

    # the figures, against scipy
    pair = pro["good"]["paired"]
    low, high = newcombe_reference(20, 20, 0, 0)
    assert pair["ci_low"] == pytest.approx(low, abs=1e-9)
    assert pair["ci_high"] == pytest.approx(high, abs=1e-9)
    assert pair["p_value"] == pytest.approx(binomtest(20, 20).pvalue, rel=1e-9)
    champion = pro["champ"]
    wilson = binomtest(20, 40).proportion_ci(method="wilson")
    assert (champion["ci_low"], champion["ci_high"]) == pytest.approx(
        (wilson.low, wilson.high), abs=1e-9
    )
    # overall: all 85 requests; bad is wrong on 40 where the champion was right
    overall = by_student(live["overall"])
    assert overall["bad"]["paired"]["pairs"] == 85
    assert overall["bad"]["paired"]["baseline_only"] == 40
    assert overall["bad"]["paired"]["candidate_only"] == 0
    low, high = newcombe_reference(25, 0, 40, 20)
    assert overall["bad"]["paired"]["ci_low"] == pytest.approx(low, abs=1e-9)
    assert overall["bad"]["paired"]["ci_high"] == pytest.approx(high, abs=1e-9)
    assert overall["bad"]["verdict"] == "worse"
    assert overall["good"]["verdict"] == "better"
    for entry in overall.values():
        assert entry["answers"] == 85
        assert entry["compared"] == 85
        assert entry["latency_p50_ms"] is not None
        assert entry["latency_p50_ms"] <= entry["latency_p95_ms"]
        assert 0 < entry["mean_confidence"] <= 1

    # another baseline: good is the reference, the champion becomes a candidate
    against_good = get(reported, baseline="good").json()
    pro = {
        (line["dimension"], line["value"]): by_student(line)
        for line in against_good["sources"][0]["slices"]
    }["tier", "pro"]
    assert pro["good"]["verdict"] == "baseline"
    assert pro["champ"]["verdict"] == "worse"


def test_candidates_report_refuses_bad_input(reported: GatewayServer) -> None:
    for params, status, code, words in (
        ({"baseline": "nope"}, 404, "student_not_found", "has no student 'nope'"),
        ({"min_pairs": "0"}, 400, None, "min_pairs"),
        ({"since": "2001-01-01", "until": "2001-01-02"}, 404, None, "no student answers"),
        ({"route": "nope"}, 404, "model_not_found", "Unknown route"),
        ({"since": "yesterday-ish"}, 400, "invalid_value", "is not a time"),
    ):
        answer = get(reported, **params)
        assert answer.status_code == status, (params, answer.text)
        error = answer.json()["error"]
        assert words in json.dumps(error), (params, error)
        if code is not None:
            assert error["code"] == code, (params, error)
    denied = httpx.get(
        f"{reported.url}/admin/reports/candidates",
        params={"route": ROUTE},
        headers={"Authorization": "Bearer test-app-key"},
        timeout=10,
    )
    assert denied.status_code == 403


def test_candidates_report_from_the_command_line(reported: GatewayServer, clean_db: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_command(reported.config_path, clean_db, "report", "candidates", ROUTE, *args)

    table = cli()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "each student against champ" in lines[1]
    free = next(i for i, line in enumerate(lines) if line.startswith("tier=free"))
    assert "(baseline)" in lines[free]
    assert any("bad" in line and "WORSE" in line for line in lines[free : free + 3])
    assert "too few pairs" in table.stdout  # gold
    as_json = cli("--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["baseline"] == "champ"
    for args, code, words in (
        (["--baseline", "nope"], 1, "has no student 'nope'"),
        (["--min-pairs", "0"], 2, "--min-pairs must be above 0"),
        (["--since", "2001-01-01", "--until", "2001-01-02"], 1, "no student answers"),
    ):
        done = cli(*args)
        assert done.returncode == code, (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)
