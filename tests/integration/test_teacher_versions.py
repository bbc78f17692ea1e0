"""Teacher versions through the real gateway: a loopback teacher whose system fingerprint (and
then model) changes mid-run, asked streamed and not through the official openai SDK.

A version new to the route is one ``teacher_changed`` event in ``route_events`` and one
``shadow_gateway_teacher_changes_total`` on ``/metrics``; the route's first version is none,
and neither is a teacher going back to a version it used before. The reports filtered by
``--teacher-version`` (CLI) and ``teacher_version`` (API) count what the test sent, and the
slice report gives agreement per version; the console lists the route's versions. Replicas
that see one new version at once record it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import orjson
import pytest
from playwright.sync_api import expect
from prometheus_client import CollectorRegistry

from gateway import cli
from gateway.config import DatabaseConfig
from gateway.core import statistics as stats
from gateway.db.engine import create_engine
from gateway.metrics import Metrics
from gateway.services.teachers import TeacherVersions
from tests.integration.conftest import ROUTE
from tests.integration.test_console_browser import CHROMIUM, Console, chromium
from tests.support.db import fetch, wait_for
from tests.support.gateway import GatewayServer, route, sdk
from tests.support.upstream import FakeOpenAI

ANALYST = "teacher-versions-analyst"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "analyst", "key_env": "SGW_TEST_ANALYST_KEY", "scopes": ["analyst"]},
]
OLD, NEW = "gpt-teacher-2024-08-06", "gpt-teacher-2025-01-31"
_SERIES = re.compile(r'^shadow_gateway_teacher_changes_total\{route="([^"]+)"\} (\S+)$', re.M)


def same(text: str) -> str:
    return text


def upgraded(text: str) -> str:
    return f"an upgraded answer to {text}"


@pytest.fixture
def gateway(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> GatewayServer:
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)
    student.reset_behavior(answer=same)  # agrees with a teacher that answers the same
    labelled = route(
        ROUTE, teacher.base_url, [student.base_url], slices={"defaults": {"tier": "free"}}
    )
    quiet = route("quiet", teacher.base_url, [student.base_url])
    return make_gateway([labelled, quiet], auth={"keys": KEYS})


@pytest.fixture
def client(gateway: GatewayServer, app_key: str) -> openai.OpenAI:
    return sdk(gateway, app_key)


def teach(
    teacher: FakeOpenAI,
    fingerprint: str | None,
    model: str = OLD,
    answer: Callable[[str], str] = same,
) -> None:
    teacher.reset_behavior(system_fingerprint=fingerprint, reported_model=model, answer=answer)


def send(client: openai.OpenAI, tag: str, plain: int, streamed: int) -> None:
    for i in range(plain):
        client.chat.completions.create(
            model=ROUTE, messages=[{"role": "user", "content": f"{tag} question {i}"}]
        )
    for i in range(streamed):
        chunks = client.chat.completions.create(
            model=ROUTE,
            messages=[{"role": "user", "content": f"{tag} streamed question {i}"}],
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def versions(url: str) -> dict[tuple[str | None, str | None], int]:
    rows = fetch(
        url,
        "SELECT model_reported, fingerprint, requests FROM teacher_versions WHERE route = $1",
        ROUTE,
    )
    return {(row["model_reported"], row["fingerprint"]): row["requests"] for row in rows}


def wait_versions(url: str, expected: dict[tuple[str | None, str | None], int]) -> None:
    wait_for(lambda: versions(url) == expected, what=f"teacher versions {expected}")


def changes(url: str, route_name: str = ROUTE) -> list[dict[str, Any]]:
    rows = fetch(
        url,
        "SELECT actor, old, new, reason, detail FROM route_events "
        "WHERE route = $1 AND action = 'teacher_changed' ORDER BY id",
        route_name,
    )
    decoded = ("old", "new", "detail")
    return [{k: orjson.loads(v) if k in decoded else v for k, v in row.items()} for row in rows]


def exported(gateway: GatewayServer) -> dict[str, float]:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return {found.group(1): float(found.group(2)) for found in _SERIES.finditer(text)}


def get(gateway: GatewayServer, path: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {ANALYST}"},
        timeout=30,
    )


def shell(gateway: GatewayServer, *args: str) -> tuple[int, str, str]:
    """``shadow-gateway …`` in this process, on the gateway's config and database."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([*args, "--config", str(gateway.config_path)])
        except SystemExit as exc:  # argparse's own usage errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_each_new_version_is_one_event_and_one_count_and_going_back_is_none(
    gateway: GatewayServer, client: openai.OpenAI, teacher: FakeOpenAI, clean_db: str
) -> None:
    assert exported(gateway) == {ROUTE: 0.0, "quiet": 0.0}  # every route's series, from start

    teach(teacher, "fp_a")
    send(client, "a", plain=3, streamed=2)
    wait_versions(clean_db, {(OLD, "fp_a"): 5})
    assert changes(clean_db) == []  # the route's first version: nothing changed

    teach(teacher, "fp_b", answer=upgraded)
    send(client, "b", plain=2, streamed=2)
    wait_versions(clean_db, {(OLD, "fp_a"): 5, (OLD, "fp_b"): 4})
    [change] = changes(clean_db)
    assert change["actor"] == "gateway"
    assert change["old"] == {"model": OLD, "fingerprint": "fp_a"}
    assert change["new"] == {"model": OLD, "fingerprint": "fp_b"}
    assert change["reason"] == (
        f"the teacher now reports model {OLD} fingerprint fp_b (was model {OLD} fingerprint fp_a)"
    )
    [first_b] = fetch(
        clean_db,
        "SELECT request_id FROM requests WHERE teacher_fingerprint = 'fp_b' "
        "ORDER BY created_at LIMIT 1",
    )
    assert change["detail"]["first_request_id"] == first_b["request_id"]
    assert exported(gateway) == {ROUTE: 1.0, "quiet": 0.0}

    # Back to the older fingerprint (load-balanced fingerprints alternate): counted, no event.
    teach(teacher, "fp_a")
    send(client, "a again", plain=1, streamed=1)
    wait_versions(clean_db, {(OLD, "fp_a"): 7, (OLD, "fp_b"): 4})
    assert len(changes(clean_db)) == 1
    assert exported(gateway)[ROUTE] == 1.0

    # A new model that reports no fingerprint (vLLM, say) is a version too.
    teach(teacher, None, model=NEW)
    send(client, "c", plain=1, streamed=1)
    wait_versions(clean_db, {(OLD, "fp_a"): 7, (OLD, "fp_b"): 4, (NEW, None): 2})
    latest = changes(clean_db)[-1]
    assert (latest["old"], latest["new"]) == (
        {"model": OLD, "fingerprint": "fp_a"},  # the version used last, not the newest
        {"model": NEW, "fingerprint": None},
    )
    assert latest["reason"].startswith(f"the teacher now reports model {NEW}, no fingerprint")
    assert len(changes(clean_db)) == 2
    assert exported(gateway) == {ROUTE: 2.0, "quiet": 0.0}
    assert changes(clean_db, "quiet") == []

    listed = get(gateway, f"/admin/routes/{ROUTE}/teacher-versions")
    assert listed.status_code == 200, listed.text
    lines = listed.json()["versions"]
    assert [(v["version"], v["model_reported"], v["requests"], v["latest"]) for v in lines] == [
        ("fp_a", OLD, 7, False),
        ("fp_b", OLD, 4, False),
        (NEW, NEW, 2, True),
    ]
    assert all(v["first_seen"] <= v["last_seen"] for v in lines)
    assert get(gateway, "/admin/routes/quiet/teacher-versions").json()["versions"] == []
    missing = get(gateway, "/admin/routes/nope/teacher-versions")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    unauthenticated = httpx.get(f"{gateway.url}/admin/routes/{ROUTE}/teacher-versions")
    assert unauthenticated.status_code == 401


def test_reports_split_and_filter_by_teacher_version(
    gateway: GatewayServer, client: openai.OpenAI, teacher: FakeOpenAI, clean_db: str
) -> None:
    teach(teacher, "fp_a")  # the student agrees with this one
    send(client, "a", plain=2, streamed=2)
    teach(teacher, "fp_b", answer=upgraded)  # and with none of these
    send(client, "b", plain=2, streamed=1)
    teach(teacher, None, model=NEW)
    send(client, "c", plain=1, streamed=1)
    wait_versions(clean_db, {(OLD, "fp_a"): 4, (OLD, "fp_b"): 3, (NEW, None): 2})
    wait_for(
        lambda: (
            fetch(clean_db, "SELECT count(agree) AS n FROM student_answers")[0]["n"] == 9
            and fetch(clean_db, "SELECT count(agree) AS n FROM requests")[0]["n"] == 9
        ),
        what="every comparison",
    )

    def slices(**params: Any) -> dict[str, Any]:
        answer = get(gateway, "/admin/reports/slices", route=ROUTE, **params)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    whole = slices()
    assert whole["aggregate"]["requests"] == 9
    by_version = [
        (v["version"], v["model_reported"], v["requests"], v["samples"], v["agreed"])
        for v in whole["teacher_versions"]
    ]
    assert by_version == [("fp_a", OLD, 4, 4, 4), ("fp_b", OLD, 3, 3, 0), (NEW, NEW, 2, 2, 2)]
    fp_b = whole["teacher_versions"][1]
    assert (fp_b["agreement"], fp_b["ci_low"], fp_b["ci_high"]) == (
        0.0,
        *stats.wilson_interval(0, 3),
    )
    only_b = slices(teacher_version="fp_b")
    assert only_b["teacher_version"] == "fp_b"
    assert (only_b["aggregate"]["requests"], only_b["aggregate"]["agreed"]) == (3, 0)
    assert [v["version"] for v in only_b["teacher_versions"]] == ["fp_b"]
    old_model = slices(teacher_version=OLD)  # a model name: each of its fingerprints
    assert (old_model["aggregate"]["requests"], old_model["aggregate"]["agreed"]) == (7, 4)

    listing = get(gateway, "/admin/reports/disagreements", route=ROUTE, teacher_version="fp_b")
    assert listing.status_code == 200, listing.text
    assert len(listing.json()["disagreements"]) == 3
    assert listing.json()["filters"]["teacher_version"] == "fp_b"
    none = get(gateway, "/admin/reports/disagreements", route=ROUTE, teacher_version="fp_a")
    assert none.status_code == 200  # a known version without disagreements: an empty page
    assert none.json()["disagreements"] == []
    candidates = get(gateway, "/admin/reports/candidates", route=ROUTE, teacher_version="fp_a")
    assert candidates.status_code == 200, candidates.text
    [live] = candidates.json()["sources"]
    [champion] = live["overall"]["candidates"]
    assert (champion["compared"], champion["agreed"]) == (4, 4)
    thresholds = get(gateway, "/admin/reports/thresholds", route=ROUTE, teacher_version="fp_b")
    assert thresholds.status_code == 200, thresholds.text
    assert thresholds.json()["comparisons"] == 3

    for path in ("slices", "disagreements", "candidates", "thresholds"):
        unknown = get(gateway, f"/admin/reports/{path}", route=ROUTE, teacher_version="fp_zzz")
        assert unknown.status_code == 404, (path, unknown.text)
        error = unknown.json()["error"]
        assert (error["code"], error["param"]) == ("teacher_version_not_found", "teacher_version")
        assert "no teacher version 'fp_zzz'" in error["message"]
        assert "fp_a, fp_b, " + NEW in error["message"]  # what the route does have
    too_long = get(gateway, "/admin/reports/slices", route=ROUTE, teacher_version="x" * 201)
    assert too_long.status_code == 400
    no_route = get(gateway, "/admin/reports/slices", route="nope", teacher_version="fp_a")
    assert no_route.status_code == 404
    assert no_route.json()["error"]["code"] == "model_not_found"
    long_ago = get(
        gateway,
        "/admin/reports/slices",
        route=ROUTE,
        teacher_version="fp_a",
        until=(datetime.now(UTC) - timedelta(days=3)).isoformat(),
    )
    assert long_ago.status_code == 404  # a known version, but not in that window
    assert long_ago.json()["error"]["code"] == "no_data"
    assert "answered by teacher version 'fp_a'" in long_ago.json()["error"]["message"]

    # The same from the command line.
    code, out, err = shell(
        gateway, "report", "slices", ROUTE, "--teacher-version", "fp_b", "--json"
    )
    assert code == 0, err
    assert orjson.loads(out)["aggregate"]["requests"] == 3
    code, out, err = shell(gateway, "report", "slices", ROUTE)
    assert code == 0, err
    assert "per teacher version" in out
    table = out.split("per teacher version", 1)[1]
    assert re.search(r"^fp_a\s+" + re.escape(OLD) + r"\s+4\s+4\s+100\.0%", table, re.M)
    assert re.search(r"^fp_b\s+" + re.escape(OLD) + r"\s+3\s+3\s+0\.0%", table, re.M)
    code, out, err = shell(
        gateway, "report", "disagreements", ROUTE, "--teacher-version", "fp_b", "--json"
    )
    assert code == 0, err
    assert len(orjson.loads(out)["disagreements"]) == 3
    code, out, err = shell(
        gateway, "report", "candidates", ROUTE, "--teacher-version", NEW, "--json"
    )
    assert code == 0, err
    assert orjson.loads(out)["sources"][0]["overall"]["candidates"][0]["compared"] == 2
    code, out, err = shell(
        gateway, "report", "thresholds", ROUTE, "--teacher-version", "fp_a", "--json"
    )
    assert code == 0, err
    assert orjson.loads(out)["comparisons"] == 4
    code, out, err = shell(gateway, "report", "teacher-versions", ROUTE, "--json")
    assert code == 0, err
    assert [v["requests"] for v in orjson.loads(out)["versions"]] == [4, 3, 2]
    code, out, err = shell(gateway, "report", "teacher-versions", ROUTE)
    assert code == 0, err
    assert re.search(re.escape(NEW) + r" \(latest\)", out)
    code, _, err = shell(gateway, "report", "slices", ROUTE, "--teacher-version", "fp_zzz")
    assert code == 1
    assert "no teacher version 'fp_zzz'" in err
    code, _, err = shell(gateway, "report", "slices", ROUTE, "--teacher-version", " ")
    assert code == 2
    assert "--teacher-version must be" in err
    code, _, err = shell(gateway, "report", "teacher-versions", "nope")
    assert code == 1
    assert "Unknown route 'nope'" in err


def test_replicas_seeing_new_versions_at_once_record_each_once(clean_db: str) -> None:
    """Three replicas (trackers with engines of their own) see the same versions in the same
    instant: one event per new version in all, counted in one replica's metric."""
    now = datetime.now(UTC)

    def row(request_id: str, route_name: str, fingerprint: str) -> dict[str, Any]:
        return {
            "request_id": request_id,
            "route": route_name,
            "created_at": now,
            "teacher_model_reported": OLD,
            "teacher_fingerprint": fingerprint,
        }

    async def run() -> list[Metrics]:
        engines = [create_engine(clean_db, DatabaseConfig()) for _ in range(3)]
        registries = [Metrics(CollectorRegistry()) for _ in engines]
        replicas = [TeacherVersions(e, m) for e, m in zip(engines, registries, strict=True)]
        try:
            for replica in replicas:
                await replica.seed()
            for index, replica in enumerate(replicas):
                replica.saw([row(f"a{index}", "r", "fp_1")])
            await asyncio.gather(*(replica.flush() for replica in replicas))
            for index, replica in enumerate(replicas):
                replica.saw([row(f"b{index}", "r", "fp_2")])
                # a route whose first versions come in together: one of them is its first
                replica.saw([row(f"c{index}", "s", f"fp_s{index}")])
            await asyncio.gather(*(replica.flush() for replica in replicas))
        finally:
            for engine in engines:
                await engine.dispose()
        return registries

    registries = asyncio.run(run())
    counted = fetch(
        clean_db,
        "SELECT route, fingerprint, requests, first_request_id FROM teacher_versions "
        "ORDER BY route, fingerprint",
    )
    assert [(r["route"], r["fingerprint"], r["requests"]) for r in counted] == [
        ("r", "fp_1", 3),
        ("r", "fp_2", 3),
        ("s", "fp_s0", 1),
        ("s", "fp_s1", 1),
        ("s", "fp_s2", 1),
    ]
    assert counted[1]["first_request_id"] in {"b0", "b1", "b2"}
    events = fetch(
        clean_db,
        "SELECT route, count(*) AS n FROM route_events WHERE action = 'teacher_changed' "
        "GROUP BY route ORDER BY route",
    )
    assert events == [{"route": "r", "n": 1}, {"route": "s", "n": 2}]
    for name, expected in (("r", 1.0), ("s", 2.0)):
        total = sum(
            m.registry.get_sample_value("shadow_gateway_teacher_changes_total", {"route": name})
            or 0.0
            for m in registries
        )
        assert total == expected, name


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}")
def test_the_console_lists_the_routes_teacher_versions(
    gateway: GatewayServer, client: openai.OpenAI, teacher: FakeOpenAI, clean_db: str
) -> None:
    teach(teacher, "fp_a")
    send(client, "a", plain=2, streamed=1)
    teach(teacher, "fp_b", answer=upgraded)
    send(client, "b", plain=1, streamed=0)
    wait_versions(clean_db, {(OLD, "fp_a"): 3, (OLD, "fp_b"): 1})
    with chromium() as browser:  # after the database helpers: Playwright holds the loop
        console = Console(browser, gateway)
        try:
            page = console.log_in(ANALYST)
            rows = page.locator("#teacher-versions tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.nth(0)).to_have_attribute("data-version", "fp_a")
            expect(rows.nth(0)).to_contain_text(OLD)
            expect(rows.nth(1)).to_contain_text("fp_b (latest)")
            expect(page.locator("#events")).to_contain_text("teacher_changed")
            assert not [p for p in console.problems if "teachers.js" in p]
        finally:
            console.close()
