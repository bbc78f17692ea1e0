"""Per-slice serving: overrides of a route's knobs for one slice, live on every replica.

Real gateways (two replicas on one database), real Postgres, the CLI as a process; the
teacher and the student are loopback servers. The student's confidence is about 0.85 on these
answers (the fake's token logprobs), so a threshold of 0.95 sends it to the teacher.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from scipy.stats import binomtest  # type: ignore[import-untyped]

from tests.integration.conftest import ROUTE
from tests.support.db import execute, fetch, wait_for
from tests.support.gateway import GatewayServer, route, write_config
from tests.support.process import run_command
from tests.support.upstream import FakeOpenAI

SRE = "sre-secret"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "oncall", "key_env": "SGW_TEST_SRE_KEY", "scopes": ["sre"]},
]


def spec(teacher: FakeOpenAI, student: FakeOpenAI, mode: str = "rollout", **rollout: Any) -> Any:
    """Everyone chosen, any confidence served, unless a slice says otherwise."""
    found = route(ROUTE, teacher.base_url, [student.base_url], mode=mode)
    found["rollout"] = {"percent": 100, "threshold": 0.0, "audit_sample": 0.0, **rollout}
    return found


def ask(gateway: GatewayServer, key: str, text: str = "how long?", **slices: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    headers.update({f"X-Slice-{dimension}": value for dimension, value in slices.items()})
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": ROUTE, "messages": [{"role": "user", "content": text}]},
        headers=headers,
        timeout=10,
    )
    answer.raise_for_status()
    return answer


def served(answer: httpx.Response) -> tuple[str, str | None]:
    return answer.headers["x-served-by"], answer.headers.get("x-fallback-reason")


@pytest.fixture
def sre_env(monkeypatch: pytest.MonkeyPatch, app_key: str) -> None:
    monkeypatch.setenv("SGW_TEST_SRE_KEY", SRE)


def test_slices_from_the_config_keep_raise_and_open_the_student(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
) -> None:
    slices = [
        {"dimension": "tier", "value": "free", "mode": "teacher"},
        {"dimension": "tier", "value": "pro", "threshold": 0.95},
        {"dimension": "lang", "value": "de", "threshold": 0.5, "percent": 0},
    ]
    gateway = make_gateway([spec(teacher, student, slices=slices)])
    assert served(ask(gateway, app_key)) == ("student", None)
    assert served(ask(gateway, app_key, tier="basic")) == ("student", None)
    # a teacher-only slice: the teacher answers and says why; the student is still shadowed
    kept = ask(gateway, app_key, tier="free")
    assert served(kept) == ("teacher", "slice_teacher_only")
    # its own threshold: above the student's confidence
    assert served(ask(gateway, app_key, tier="pro")) == ("teacher", "low_confidence")
    # its own percent (0): nobody chosen, a plain shadow request
    assert served(ask(gateway, app_key, lang="de")) == ("teacher", None)
    # several overrides: the most conservative of each knob (0.95 from pro, 0 % from de)
    assert served(ask(gateway, app_key, tier="pro", lang="de")) == ("teacher", None)
    assert served(ask(gateway, app_key, tier="free", lang="de")) == ("teacher", None)

    request_id = kept.headers["x-request-id"]
    wait_for(
        lambda: (
            fetch(
                clean_db, f"SELECT student_status FROM requests WHERE request_id = '{request_id}'"
            )
            == [{"student_status": "ok"}]
        ),
        what="the kept request shadowed",
    )
    [row] = fetch(
        clean_db,
        f"SELECT served_by, fallback_reason, mode FROM requests WHERE request_id = '{request_id}'",
    )
    assert row == {
        "served_by": "teacher",
        "fallback_reason": "slice_teacher_only",
        "mode": "rollout",
    }
    assert (
        gateway.metric(
            "shadow_gateway_fallbacks_total",
            route=ROUTE,
            student="default",
            reason="slice_teacher_only",
        )
        == 1
    )
    seeded = fetch(
        clean_db,
        "SELECT action, actor, detail->>'slice' AS slice FROM route_events "
        "WHERE action = 'slice_seed' ORDER BY detail->>'slice'",
    )
    assert [(e["actor"], e["slice"]) for e in seeded] == [
        ("config", "lang=de"),
        ("config", "tier=free"),
        ("config", "tier=pro"),
    ]


def test_a_rollout_slice_is_served_while_the_route_only_shadows(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
) -> None:
    slices = [{"dimension": "tier", "value": "gold", "mode": "rollout"}]
    gateway = make_gateway([spec(teacher, student, mode="shadow", slices=slices)])
    assert served(ask(gateway, app_key, tier="gold")) == ("student", None)
    assert served(ask(gateway, app_key, tier="basic")) == ("teacher", None)
    assert served(ask(gateway, app_key)) == ("teacher", None)


def test_overrides_change_on_one_replica_and_apply_on_another(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    sre_env: None,
) -> None:
    first = make_gateway([spec(teacher, student)], auth={"keys": KEYS})
    second = make_gateway([spec(teacher, student)], auth={"keys": KEYS})
    assert served(ask(second, app_key, tier="free")) == ("student", None)

    changed = httpx.patch(
        f"{first.url}/admin/routes/{ROUTE}/slices/tier/free",
        json={"mode": "teacher", "reason": "free users complain"},
        headers={"Authorization": f"Bearer {SRE}"},
        timeout=10,
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["changed"] is True
    assert body["slice"] == {
        "slice": "tier=free",
        "dimension": "tier",
        "value": "free",
        "mode": "teacher",
        "rollout_percent": None,
        "confidence_threshold": None,
    }
    assert body["route"]["slices"] == [body["slice"]]

    def kept_on(gateway: GatewayServer) -> bool:
        override = gateway.state.control.state(ROUTE).slices.get(("tier", "free"))
        return override is not None and override.mode == "teacher"

    wait_for(lambda: kept_on(second), timeout_s=5, what="the override on the other replica")
    assert served(ask(second, app_key, tier="free")) == ("teacher", "slice_teacher_only")

    # the CLI: a threshold for another slice, then clear the first
    config = first.config_path
    done = run_command(
        config, clean_db, "rollout", "set", ROUTE, "--slice", "tier=pro", "--threshold", "0.95",
        "--reason", "pro needs surer answers", "--actor", "ana",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{ROUTE} tier=pro: threshold=0.95" in done.stdout
    assert "warning:" not in done.stderr  # tier has been seen by now
    wait_for(lambda: ("tier", "pro") in second.state.control.state(ROUTE).slices)
    assert served(ask(second, app_key, tier="pro")) == ("teacher", "low_confidence")
    status = run_command(config, clean_db, "rollout", "status", "--json")
    [row] = json.loads(status.stdout)
    assert [(o["slice"], o["updated_by"], o["reason"]) for o in row["slices"]] == [
        ("tier=free", "oncall", "free users complain"),
        ("tier=pro", "ana", "pro needs surer answers"),
    ]
    table = run_command(config, clean_db, "rollout", "status")
    assert f"{ROUTE} tier=free: mode=teacher; by oncall: free users complain" in table.stdout

    cleared = run_command(
        config, clean_db, "rollout", "clear", ROUTE, "--slice", "tier=free", "--reason", "fixed"
    )
    assert cleared.returncode == 0, cleared.stderr
    wait_for(lambda: ("tier", "free") not in second.state.control.state(ROUTE).slices)
    assert served(ask(second, app_key, tier="free")) == ("student", None)
    actions = fetch(
        clean_db,
        "SELECT action, actor, detail->>'slice' AS slice FROM route_events "
        "WHERE action LIKE 'slice%' ORDER BY id",
    )
    assert [(e["action"], e["actor"], e["slice"]) for e in actions][:2] == [
        ("slice_set", "oncall", "tier=free"),
        ("slice_set", "ana", "tier=pro"),
    ]
    assert [(e["action"], e["slice"]) for e in actions][2:] == [("slice_cleared", "tier=free")]


def test_bad_slice_changes_are_refused_and_change_nothing(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    sre_env: None,
) -> None:
    gateway = make_gateway([spec(teacher, student)], auth={"keys": KEYS})
    config = gateway.config_path

    def cli(*args: str) -> Any:
        return run_command(config, clean_db, "rollout", *args)

    for args, code, words in (
        (
            ["set", ROUTE, "--slice", "tier", "--mode", "teacher", "--reason", "x"],
            2,
            "is not a slice",
        ),
        (
            ["set", ROUTE, "--slice", "tier=free", "--mode", "shadow", "--reason", "x"],
            2,
            "teacher or rollout",
        ),
        (
            ["set", ROUTE, "--slice", "tier=free", "--threshold", "2", "--reason", "x"],
            2,
            "from 0 to 1",
        ),
        (["set", ROUTE, "--slice", "tier=free", "--reason", "x"], 1, "nothing to set"),
        (
            ["set", ROUTE, "--slice", "tier=free", "--method", "min_prob", "--reason", "x"],
            2,
            "--method",
        ),
        (
            ["set", ROUTE, "--slice", "Tier=free", "--mode", "teacher", "--reason", "x"],
            2,
            "is not a slice",
        ),
        (
            ["clear", ROUTE, "--slice", "tier=free", "--reason", "x"],
            1,
            "has no override for slice tier=free",
        ),
        (
            ["set", "nope", "--slice", "tier=free", "--mode", "teacher", "--reason", "x"],
            1,
            "Unknown route",
        ),
    ):
        done = cli(*args)
        assert done.returncode == code, (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)

    headers = {"Authorization": f"Bearer {SRE}"}
    for path, body, status, words in (
        ("slices/tier/free", {"mode": "shadow", "reason": "x"}, 400, "mode"),
        (
            "slices/tier/free",
            {"confidence_threshold": 1.5, "reason": "x"},
            400,
            "confidence_threshold",
        ),
        ("slices/tier/free", {"reason": "x"}, 400, "nothing to set"),
        ("slices/Tier/free", {"mode": "teacher", "reason": "x"}, 400, "not a slice dimension"),
        ("slices/tier/free", {"mode": "teacher"}, 400, "reason"),
        ("slices/tier/free/clear", {"reason": "x"}, 404, "slice_not_found"),
    ):
        method = httpx.post if path.endswith("/clear") else httpx.patch
        answer = method(
            f"{gateway.url}/admin/routes/{ROUTE}/{path}", json=body, headers=headers, timeout=10
        )
        assert answer.status_code == status, (path, body, answer.text)
        assert words in answer.text, (path, body, answer.text)
    assert fetch(clean_db, "SELECT count(*) AS n FROM route_slice_overrides") == [{"n": 0}]
    assert fetch(clean_db, "SELECT count(*) AS n FROM route_events WHERE action LIKE 'slice%'") == [
        {"n": 0}
    ]

    # an unknown dimension is not an error, but the change says it applies to nothing yet
    warned = cli("set", ROUTE, "--slice", "colour=blue", "--mode", "teacher", "--reason", "x")
    assert warned.returncode == 0
    assert "no request of route" in warned.stderr


def seed_comparisons(url: str) -> dict[str, list[tuple[float, bool]]]:
    """Shadow comparisons per tier, (confidence, agreed): what calibration is computed from."""
    data = {
        "free": [(i / 100, i >= 40 or i % 3 == 0) for i in range(100)],
        "pro": [(0.5 + i / 200, True) for i in range(60)],
        "bad": [(i / 50, i % 2 == 0) for i in range(50)],
        "tiny": [(0.99, True)] * 5,
    }
    values = ", ".join(
        f"('{tier}-{n}', '{ROUTE}', 'chat', now() - interval '1 hour', 'shadow', 'teacher', "
        f'\'{{"tier": "{tier}"}}\'::jsonb, {confidence}, {str(agree).lower()})'
        for tier, rows in data.items()
        for n, (confidence, agree) in enumerate(rows)
    )
    execute(
        url,
        "INSERT INTO requests (request_id, route, endpoint, created_at, mode, served_by, slices, "
        f"student_confidence, agree) VALUES {values}",
    )
    return data


def reference(rows: list[tuple[float, bool]], target: float, conservative: bool) -> float | None:
    """The lowest of 0, 0.05, ..., 1 whose served rows (30 at least) reach the target."""
    for step in range(21):
        threshold = step / 20
        served = [agree for confidence, agree in rows if confidence >= threshold - 1e-9]
        if len(served) < 30:
            continue
        if conservative:
            judged = binomtest(sum(served), len(served)).proportion_ci(method="wilson").low
        else:
            judged = sum(served) / len(served)
        if judged >= target:
            return threshold
    return None


@pytest.mark.parametrize("conservative", [False, True])
def test_calibration_per_slice_matches_a_reference_and_applies_in_one_change(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    conservative: bool,
) -> None:
    gateway = make_gateway([spec(teacher, student)])
    data = seed_comparisons(clean_db)
    flags = ["--conservative"] if conservative else []
    shown = run_command(
        gateway.config_path, clean_db, "rollout", "calibrate", ROUTE, "--json", *flags
    )
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout)
    by_slice = {line["value"]: line for line in result["slices"]}
    assert set(by_slice) == {"free", "pro", "bad", "tiny"}
    for tier in ("free", "pro"):
        expected = reference(data[tier], 0.9, conservative)
        assert expected is not None
        assert by_slice[tier]["status"] == "ok"
        assert by_slice[tier]["threshold"] == pytest.approx(expected)
    assert by_slice["bad"]["status"] == "unreachable"
    assert by_slice["tiny"]["status"] == "not_enough_data"
    assert result["applied"] is None
    assert fetch(clean_db, "SELECT count(*) AS n FROM route_slice_overrides") == [{"n": 0}]

    applied = run_command(
        gateway.config_path, clean_db, "rollout", "calibrate", ROUTE, *flags,
        "--apply", "--reason", "weekly calibration", "--actor", "ana",
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert "applied to 3 slice(s) in one audited change" in applied.stdout
    overrides = fetch(
        clean_db,
        "SELECT value, mode, confidence_threshold AS t FROM route_slice_overrides ORDER BY value",
    )
    assert overrides == [
        {"value": "bad", "mode": "teacher", "t": None},
        {"value": "free", "mode": None, "t": pytest.approx(by_slice["free"]["threshold"])},
        {"value": "pro", "mode": None, "t": pytest.approx(by_slice["pro"]["threshold"])},
    ]
    [event] = fetch(
        clean_db,
        "SELECT actor, reason, detail FROM route_events WHERE action = 'slice_calibration'",
    )
    assert (event["actor"], event["reason"]) == ("ana", "weekly calibration")
    assert json.loads(event["detail"])["slices"] == ["tier=bad", "tier=free", "tier=pro"]
    wait_for(lambda: len(gateway.state.control.state(ROUTE).slices) == 3, what="applied")

    refused = run_command(gateway.config_path, clean_db, "rollout", "calibrate", ROUTE, "--apply")
    assert refused.returncode == 2
    assert "--apply needs --reason" in refused.stderr


# -- the scope gate ---------------------------------------------------------------------------

BILLING = [
    "where is my invoice for last month",
    "how do I download the invoice as a pdf",
    "my card was charged twice for the same invoice",
    "can I change the billing address on my invoice",
    "why was my invoice higher than usual this month",
]


def write_reference(path: Path, prompts: list[str]) -> Path:
    path.write_text(
        "\n".join(
            json.dumps({"messages": [{"role": "user", "content": prompt}]}) for prompt in prompts
        )
    )
    return path


def test_the_scope_gate_keeps_the_student_on_its_job(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    tmp_path: Path,
) -> None:
    reference = write_reference(tmp_path / "train.jsonl", BILLING)
    scope = {"allow": {"tier": ["free", "pro"]}, "novelty": {"reference": "train.jsonl"}}
    scope["novelty"]["max_distance"] = 0.5  # type: ignore[index]
    gateway = make_gateway([{**spec(teacher, student), "scope": scope}])
    assert reference.parent == gateway.config_path.parent  # relative to the config file

    in_scope = "where can I download my invoice"
    assert served(ask(gateway, app_key, in_scope, tier="free")) == ("student", None)
    # not an allowed value, or no label at all
    assert served(ask(gateway, app_key, in_scope, tier="gold")) == ("teacher", "out_of_scope")
    assert served(ask(gateway, app_key, in_scope)) == ("teacher", "out_of_scope")
    # allowed labels, but text unlike anything the student learned
    far = ask(
        gateway, app_key, "def fib(n): return n if n < 2 else fib(n-1) + fib(n-2)", tier="pro"
    )
    assert served(far) == ("teacher", "out_of_scope")

    # the student was not asked for an answer to serve; it is shadowed once the teacher answered
    def calls(upstream: FakeOpenAI) -> list[Any]:
        return [r for r in upstream.received if "fib(n)" in json.dumps(r.body)]

    wait_for(lambda: len(calls(student)) == 1, what="the shadow call")
    assert calls(student)[0].arrived >= calls(teacher)[0].arrived

    request_id = far.headers["x-request-id"]
    wait_for(
        lambda: (
            fetch(
                clean_db,
                "SELECT fallback_reason, student_status FROM requests "
                f"WHERE request_id = '{request_id}'",
            )
            == [{"fallback_reason": "out_of_scope", "student_status": "ok"}]
        ),
        what="the row",
    )
    report = run_command(
        gateway.config_path, clean_db, "report", "slices", ROUTE, "--dimension", "tier", "--json"
    )
    lines = {line["value"]: line for line in json.loads(report.stdout)["slices"]}
    assert (lines["gold"]["out_of_scope"], lines["pro"]["out_of_scope"]) == (1, 1)
    assert lines["free"]["out_of_scope"] == 0


@pytest.mark.parametrize(
    ("content", "scope", "words"),
    [
        (None, {"novelty": {"reference": "missing.jsonl", "max_distance": 0.5}}, "No such file"),
        ("", {"novelty": {"reference": "train.jsonl", "max_distance": 0.5}}, "no prompt"),
        ("{not json", {"novelty": {"reference": "train.jsonl", "max_distance": 0.5}}, "line 1"),
        ("", {"novelty": {"reference": "train.jsonl", "max_distance": 0}}, "max_distance"),
        ("", {"allow": {"Tier": ["x"]}}, "not a slice dimension name"),
        ("", {"allow": {"tier": []}}, "at least one value"),
    ],
)
def test_a_bad_scope_stops_the_gateway_with_a_clear_error(
    tmp_path: Path,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    content: str | None,
    scope: dict[str, Any],
    words: str,
    clean_db: str,
) -> None:
    if content is not None:
        (tmp_path / "train.jsonl").write_text(content)
    config = write_config(tmp_path / "gateway.yaml", [{**spec(teacher, student), "scope": scope}])
    done = run_command(config, clean_db, "serve", "--port", "1")
    assert done.returncode == 2, done.stderr
    assert words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# -- what an SRE sees and does: the ramp, calibration over HTTP ------------------------------


def test_a_ramp_is_visible_and_can_be_cancelled(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    sre_env: None,
) -> None:
    gateway = make_gateway([spec(teacher, student, mode="shadow")], auth={"keys": KEYS})
    headers = {"Authorization": f"Bearer {SRE}"}
    base = f"{gateway.url}/admin/routes/{ROUTE}"
    assert httpx.get(base, headers=headers, timeout=10).json()["ramp"] is None
    planned = httpx.post(
        f"{base}/plan",
        json={"steps": [5, 50, 100], "hold_s": 600, "reason": "slowly"},
        headers=headers,
        timeout=10,
    )
    assert planned.status_code == 200, planned.text
    ramp = httpx.get(base, headers=headers, timeout=10).json()["ramp"]
    assert {k: ramp[k] for k in ("steps", "step", "percent", "status", "hold_s")} == {
        "steps": [5, 50, 100],
        "step": 1,
        "percent": 5,
        "status": "active",
        "hold_s": 600,
    }
    assert ramp["last_event"]["action"] == "ramp_step"
    assert ramp["created_by"] == "oncall"
    status = run_command(gateway.config_path, clean_db, "rollout", "status")
    assert f"{ROUTE}: active, step 1 of 3 (5%, 50%, 100%), holding 600s" in status.stdout

    cancelled = httpx.post(
        f"{base}/plan/cancel", json={"reason": "holiday"}, headers=headers, timeout=10
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["ramp"]["status"] == "cancelled"
    assert cancelled.json()["route"]["rollout_percent"] == 5  # stays where it was
    ramp = httpx.get(base, headers=headers, timeout=10).json()["ramp"]
    assert (ramp["status"], ramp["last_event"]["action"]) == ("cancelled", "ramp_cancelled")
    again = httpx.post(f"{base}/plan/cancel", json={"reason": "x"}, headers=headers, timeout=10)
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "plan_not_found"
    cli = run_command(gateway.config_path, clean_db, "rollout", "cancel", ROUTE, "--reason", "x")
    assert cli.returncode == 1
    assert "no active ramp" in cli.stderr


def test_calibration_over_http(
    make_gateway: Callable[..., GatewayServer],
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    clean_db: str,
    sre_env: None,
) -> None:
    gateway = make_gateway([spec(teacher, student)], auth={"keys": KEYS})
    seed_comparisons(clean_db)
    headers = {"Authorization": f"Bearer {SRE}"}
    base = f"{gateway.url}/admin/routes/{ROUTE}/calibration"
    shown = httpx.get(base, params={"conservative": "true"}, headers=headers, timeout=10)
    assert shown.status_code == 200, shown.text
    changes = {change["slice"]: change for change in shown.json()["changes"]}
    assert set(changes) == {"tier=bad", "tier=free", "tier=pro"}
    assert changes["tier=bad"]["mode"] == "teacher"
    bad = httpx.get(base, params={"target_agreement": "2"}, headers=headers, timeout=10)
    assert bad.status_code == 400
    denied = httpx.post(
        base, json={"reason": "x"}, headers={"Authorization": "Bearer test-app-key"}, timeout=10
    )
    assert denied.status_code in (401, 403)
    applied = httpx.post(
        base, json={"conservative": True, "reason": "weekly"}, headers=headers, timeout=10
    )
    assert applied.status_code == 200, applied.text
    assert sorted(o["slice"] for o in applied.json()["applied"]) == sorted(changes)
    assert len(applied.json()["route"]["slices"]) == 3
    [event] = fetch(clean_db, "SELECT actor FROM route_events WHERE action = 'slice_calibration'")
    assert event == {"actor": "oncall"}


def test_a_slice_value_with_a_slash_can_be_set_and_cleared(
    make_gateway: Callable[..., GatewayServer],
    app_key: str,
    teacher: FakeOpenAI,
    student: FakeOpenAI,
    sre_env: None,
) -> None:
    gateway = make_gateway([spec(teacher, student)], auth={"keys": KEYS})
    headers = {"Authorization": f"Bearer {SRE}"}
    base = f"{gateway.url}/admin/routes/{ROUTE}/slices/path/a/b"
    changed = httpx.patch(
        base, json={"mode": "teacher", "reason": "x"}, headers=headers, timeout=10
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["slice"]["value"] == "a/b"
    assert served(ask(gateway, app_key, path="a/b")) == ("teacher", "slice_teacher_only")
    cleared = httpx.post(f"{base}/clear", json={"reason": "x"}, headers=headers, timeout=10)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["cleared"]["slice"] == "path=a/b"
