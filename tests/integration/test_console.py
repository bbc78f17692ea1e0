"""The console from the outside: login and its cookie, CSRF, scopes, and every endpoint the
page reads, on the real Postgres with seeded rows (the browser test drives the page itself).

Seeded rows (:func:`seed_console`), route ``support-bot``, critical slices tier=enterprise and
tier=gold (bar 90 %, 20 samples):

- enterprise: 20 rows on each of the last 4 days (0 to 3 days back, half an hour before the
  hour mark), agreeing 14 of 20 on days 1-3 and 12 of 20 on day 0: 54/80 = 67.5 %, FAIL;
- free: 10 rows a day on the same days, 9 of 10 agree: 36/40;
- gold: 25 rows on day 0, all agree: PASS;
- reference for drift, 10 days back: 60 free rows and 10 enterprise rows;
- for per-slice calibration, 20 days back (outside the last 7 days and the 7 before them, so
  only a 30-day window sees them), labelled ``topic`` only, confidence ``(i % 20) / 20``:
  topic=billing, 200 rows agreeing more the surer the student is; and topic=:data:`LONG_TOPIC`
  (a long name, for the page's labels), 120 rows.

So the last 7 days hold 145 comparisons, 115 agreed; 30 disagreements (26 enterprise, 4 free).
Per slice, for 90 % agreement over at least 30 served: in the last 7 days free reaches it at
threshold 0 as observed (36/40) but not by the low end of its interval, enterprise never, gold
has too few (25); over 30 days billing at 0.3 (128/140) and conservatively at 0.45 (106/110),
the long topic at 0 (111/120) and at 0.1 (105/108), free at 0 both ways (96/100).

Each of those rows is also the champion's (``default``) row of ``student_answers``, and a
candidate, ``rival``, answered the same requests: right on every enterprise and gold request
(better than the champion on enterprise), wrong on every free one (worse there).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import ApiKey, DatabaseConfig, load_settings
from gateway.db.engine import create_engine
from gateway.db.keys import create_key, revoke_key
from gateway.errors import AuthenticationFailed, ConfigError
from gateway.services.sessions import SESSION_COOKIE, Sessions, session_secret
from tests.integration.conftest import ROUTE
from tests.support.db import execute, fetch, wait_for
from tests.support.gateway import GatewayServer, route, write_config

SRE, ANALYST = "console-sre-secret", "console-analyst-secret"
KEYS = [
    {"name": "tests", "key_env": "SGW_TEST_APP_KEY", "scopes": ["app"]},
    {"name": "oncall", "key_env": "SGW_TEST_SRE_KEY", "scopes": ["sre"]},
    {"name": "analyst", "key_env": "SGW_TEST_ANALYST_KEY", "scopes": ["analyst"]},
]
# window_s 60: the guardian judges only the last minute, where nothing is seeded, so it never
# rolls the route back on its own while a test looks at it.
CRITICAL = [
    {"dimension": "tier", "value": v, "min_agreement": 0.9, "min_samples": 20, "window_s": 60}
    for v in ("enterprise", "gold")
]
LONG_TOPIC = "refunds-chargebacks-and-disputes-for-enterprise-customers-in-the-emea-region"
TEACHER = "Refunds take 5 business days to reach your card."
STUDENT = "Refunds take 7 business days to reach your account."


def console_routes() -> list[dict[str, Any]]:
    main = route(
        ROUTE,
        "http://127.0.0.1:9/v1",
        ["http://127.0.0.1:9/v1"],
        mode="rollout",
        rollout={"percent": 10, "threshold": 0.8},
    )
    main["slices"] = {"critical": CRITICAL}
    return [main, route("other", "http://127.0.0.1:9/v1", ["http://127.0.0.1:9/v1"])]


def insert(url: str, count: int, prefix: str, days_ago: float, **columns: str) -> None:
    """``count`` rows ``days_ago`` days (plus half an hour) back; columns: SQL of ``i``."""
    values = {
        "route": f"'{ROUTE}'",
        "endpoint": "'chat'",
        "created_at": f"now() - interval '{days_ago} days' - interval '30 minutes'",
        "mode": "'shadow'",
        "served_by": "'teacher'",
        "student_confidence": "(i % 20) / 20.0",
        "teacher_output": f"'{TEACHER}'",
        "student_output": f"CASE WHEN agree_ THEN '{TEACHER}' ELSE '{STUDENT}' END",
        "agreement_score": "CASE WHEN agree_ THEN 1.0 ELSE 0.4 END",
        "request_payload": (
            "jsonb_build_object('messages', jsonb_build_array(jsonb_build_object("
            "'role', 'user', 'content', 'How long do refunds take? #' || lpad(i::text, 3, '0'))))"
        ),
        **columns,
    }
    agree = values.pop("agree")
    execute(
        url,
        f"INSERT INTO requests (request_id, agree, {', '.join(values)}) "
        f"SELECT '{prefix}-' || i, agree_, {', '.join(values.values())} "
        f"FROM generate_series(0, {count - 1}) AS i, LATERAL (SELECT {agree} AS agree_) AS a",
    )


def seed_console(url: str) -> None:
    enterprise = """'{"tier": "enterprise"}'::jsonb"""
    free = """'{"tier": "free"}'::jsonb"""
    for day in range(4):
        agreeing = 12 if day == 0 else 14
        insert(url, 20, f"ent-d{day}", day, slices=enterprise, agree=f"i < {agreeing}")
        insert(url, 10, f"free-d{day}", day, slices=free, agree="i < 9")
    insert(url, 25, "gold", 0, slices="""'{"tier": "gold"}'::jsonb""", agree="true")
    insert(url, 60, "ref-free", 10, slices=free, agree="true")
    insert(url, 10, "ref-ent", 10, slices=enterprise, agree="true")
    # shadow comparisons (served by the teacher, no fallback) for the per-slice calibration
    billing = """'{"topic": "billing"}'::jsonb"""
    insert(
        url, 200, "cal-billing", 20, slices=billing, agree="i / 20 < LEAST(10, 4 + (i % 20) / 2)"
    )
    disputes = f"""'{{"topic": "{LONG_TOPIC}"}}'::jsonb"""
    insert(url, 120, "cal-disputes", 20, slices=disputes, agree="i % 20 >= 3 OR i / 20 < 3")
    for student, agree in (("default", "agree"), ("rival", "slices->>'tier' <> 'free'")):
        execute(
            url,
            "INSERT INTO student_answers (request_id, student, source, created_at, route, "
            "endpoint, slices, student_status, student_latency_ms, student_confidence, agree) "
            f"SELECT request_id, '{student}', 'live', created_at, route, endpoint, slices, 'ok', "
            f"20, student_confidence, {agree} FROM requests "
            "WHERE created_at > now() - interval '7 days'",
        )


@pytest.fixture
def console_env(monkeypatch: pytest.MonkeyPatch, app_key: str) -> None:
    monkeypatch.setenv("SGW_TEST_SRE_KEY", SRE)
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayServer], console_env: None) -> GatewayServer:
    return make_gateway(console_routes(), auth={"keys": KEYS})


@pytest.fixture
def seeded(gateway: GatewayServer, clean_db: str) -> GatewayServer:
    seed_console(clean_db)
    return gateway


def login(gateway: GatewayServer, key: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/console/login",
        data={"key": key},
        headers=headers,
        follow_redirects=False,
        timeout=10,
    )


class Browser:
    """What a browser holds after logging in: the session cookie and the page's CSRF token."""

    def __init__(self, gateway: GatewayServer, key: str) -> None:
        self.gateway = gateway
        answer = login(gateway, key)
        assert answer.status_code == 303, answer.text
        self.cookie = answer.cookies[SESSION_COOKIE]
        page = self.get("/console")
        assert page.status_code == 200
        found = re.search(r'<meta name="sgw-csrf" content="([^"]+)">', page.text)
        assert found, page.text
        self.csrf = found.group(1)

    def request(
        self, method: str, path: str, csrf: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"cookie": f"{SESSION_COOKIE}={self.cookie}"}
        if csrf is not None:
            headers["x-csrf-token"] = csrf
        return httpx.request(
            method, f"{self.gateway.url}{path}", headers=headers, timeout=10, **kwargs
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.request("GET", path, params=params)

    def json(self, path: str, **params: Any) -> Any:
        answer = self.get(path, **params)
        assert answer.status_code == 200, answer.text
        return answer.json()


# -- login, the cookie, logout --------------------------------------------------------------


def test_login_sets_a_signed_httponly_strict_session_cookie_not_the_key(
    gateway: GatewayServer,
) -> None:
    answer = login(gateway, SRE)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/;" in cookie.lower() + ";"
    assert "secure" not in attributes  # plain http on loopback; set when the request is https
    token = answer.cookies[SESSION_COOKIE]
    assert SRE not in token
    assert token.startswith("v1.")
    page = httpx.get(f"{gateway.url}/console", cookies={SESSION_COOKIE: token}, timeout=10)
    assert page.status_code == 200
    assert 'name="sgw-user" content="oncall"' in page.text
    assert 'name="sgw-scopes" content="sre"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    # behind a TLS proxy (uvicorn trusts X-Forwarded-Proto from loopback): Secure as well
    proxied = login(gateway, SRE, **{"x-forwarded-proto": "https"})
    assert "; secure" in proxied.headers["set-cookie"].lower()


def test_no_key_wrong_key_or_wrong_scope_gets_the_login_form(
    gateway: GatewayServer, app_key: str
) -> None:
    page = httpx.get(f"{gateway.url}/console", timeout=10)
    assert page.status_code == 200
    assert 'action="/console/login"' in page.text
    assert 'name="sgw-csrf"' not in page.text
    wrong = login(gateway, "not-a-key")
    assert (wrong.status_code, SESSION_COOKIE in wrong.cookies) == (401, False)
    assert "Incorrect API key provided." in wrong.text
    empty = login(gateway, "  ")
    assert empty.status_code == 401
    app = login(gateway, app_key)
    assert app.status_code == 403
    assert "lacks the scope" in app.text
    assert SESSION_COOKIE not in app.cookies
    # the API itself: no key and a wrong key are 401s, as ever
    assert httpx.get(f"{gateway.url}/admin/routes", timeout=10).status_code == 401
    bad = httpx.get(f"{gateway.url}/admin/routes", cookies={SESSION_COOKIE: "v1.x.1.y.z"})
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "invalid_api_key"


def test_a_forged_or_tampered_cookie_is_refused_and_cleared(gateway: GatewayServer) -> None:
    token = Browser(gateway, ANALYST).cookie
    version, name, expires, nonce, mac = token.split(".")
    later = ".".join([version, name, str(int(expires) + 86400), nonce, mac])
    oncall = ".".join([version, "b25jYWxs", expires, nonce, mac])  # "oncall", the sre key
    for forged in (later, oncall, token[:-2], "garbage"):
        api = httpx.get(f"{gateway.url}/admin/routes", cookies={SESSION_COOKIE: forged})
        assert api.status_code == 401, forged
        page = httpx.get(f"{gateway.url}/console", cookies={SESSION_COOKIE: forged})
        assert 'action="/console/login"' in page.text
        assert f'{SESSION_COOKIE}=""' in page.headers["set-cookie"]  # cleared


def test_login_from_another_site_is_refused(gateway: GatewayServer) -> None:
    assert login(gateway, SRE, origin="https://evil.example").status_code == 403
    assert login(gateway, SRE, origin=gateway.url).status_code == 303


def test_logout_needs_the_csrf_token_and_clears_the_cookie(gateway: GatewayServer) -> None:
    browser = Browser(gateway, SRE)
    refused = browser.request("POST", "/console/logout", data={"csrf": "wrong"})
    assert refused.status_code == 403
    done = browser.request("POST", "/console/logout", data={"csrf": browser.csrf})
    assert done.status_code == 303
    assert f'{SESSION_COOKIE}=""' in done.headers["set-cookie"]
    assert "max-age=0" in done.headers["set-cookie"].lower()


# -- writes: CSRF and scopes ----------------------------------------------------------------


def test_changes_by_cookie_need_the_csrf_token_and_the_sre_scope(
    gateway: GatewayServer, clean_db: str
) -> None:
    sre, analyst = Browser(gateway, SRE), Browser(gateway, ANALYST)
    path = f"/admin/routes/{ROUTE}"
    change = {"rollout_percent": 25, "reason": "console test"}
    for csrf in (None, "", "forged", analyst.csrf):  # another session's token does not do
        refused = sre.request("PATCH", path, csrf=csrf, json=change)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "csrf_token_invalid"
    denied = analyst.request("PATCH", path, csrf=analyst.csrf, json=change)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "insufficient_scope"
    rollback = analyst.request("POST", f"{path}/rollback", csrf=analyst.csrf, json={"reason": "x"})
    assert rollback.status_code == 403
    assert fetch(clean_db, "SELECT * FROM route_events WHERE actor <> 'config'") == []
    done = sre.request("PATCH", path, csrf=sre.csrf, json=change)
    assert done.status_code == 200, done.text
    assert done.json()["route"]["rollout_percent"] == 25
    missing_reason = sre.request("POST", f"{path}/rollback", csrf=sre.csrf, json={})
    assert missing_reason.status_code == 400
    rolled = sre.request("POST", f"{path}/rollback", csrf=sre.csrf, json={"reason": "bad slice"})
    assert rolled.json()["route"]["mode"] == "shadow"
    events = sre.json(f"{path}/events")["events"]
    assert [(e["action"], e["actor"], e["reason"]) for e in events][:2] == [
        ("rollback", "oncall", "bad slice"),
        ("set", "oncall", "console test"),
    ]
    # a bearer key needs no CSRF token (no browser sends it on its own)
    bearer = httpx.patch(
        f"{gateway.url}{path}",
        json={"rollout_percent": 5, "reason": "cli"},
        headers={"authorization": f"Bearer {SRE}"},
        timeout=10,
    )
    assert bearer.status_code == 200


def test_revoking_a_database_key_ends_its_sessions_at_once(
    gateway: GatewayServer, clean_db: str
) -> None:
    async def create() -> str:
        engine = create_engine(clean_db, gateway.state.settings.config.database)
        try:
            return await create_key(engine, "temp-analyst", ["analyst"], "tests")
        finally:
            await engine.dispose()

    async def revoke() -> None:
        engine = create_engine(clean_db, gateway.state.settings.config.database)
        try:
            await revoke_key(engine, "temp-analyst", "tests")
        finally:
            await engine.dispose()

    key = asyncio.run(create())
    wait_for(lambda: login(gateway, key).status_code == 303, what="the new key in the ring")
    browser = Browser(gateway, key)
    assert browser.get("/admin/routes").status_code == 200
    asyncio.run(revoke())
    assert browser.get("/admin/routes").status_code == 401


# -- the data the page reads ----------------------------------------------------------------


def test_every_read_the_page_makes_works_with_the_session(seeded: GatewayServer) -> None:
    browser = Browser(seeded, ANALYST)
    routes = browser.json("/admin/routes")["routes"]
    main = next(r for r in routes if r["name"] == ROUTE)
    assert (main["mode"], main["rollout_percent"], main["confidence_threshold"]) == (
        "rollout",
        10,
        0.8,
    )
    assert browser.json(f"/admin/routes/{ROUTE}")["critical_slices"][0]["value"] == "enterprise"
    events = browser.json(f"/admin/routes/{ROUTE}/events", limit=50)["events"]
    assert {e["actor"] for e in events} <= {"config"}  # start-up seeds the config's knobs
    slices = browser.json("/admin/reports/slices", route=ROUTE, since="7d")
    enterprise = next(s for s in slices["slices"] if s["value"] == "enterprise")
    assert (enterprise["samples"], enterprise["agreed"], enterprise["verdict"]) == (80, 54, "fail")
    assert (slices["aggregate"]["samples"], slices["aggregate"]["agreed"]) == (145, 115)
    thresholds = browser.json("/admin/reports/thresholds", route=ROUTE, since="7d")
    assert thresholds["comparisons"] == 145
    assert thresholds["current_threshold"] == 0.8
    assert {c["value"] for c in thresholds["curves"]} == {"all", "enterprise", "gold"}
    drift = browser.json("/admin/reports/drift", route=ROUTE, since="7d")
    assert drift["flagged"] == ["tier"]
    assert (drift["current"]["requests"], drift["reference"]["requests"]) == (145, 70)
    page = browser.json("/admin/reports/disagreements", route=ROUTE, since="7d", limit=20)
    assert len(page["disagreements"]) == 20
    assert page["next_cursor"]
    free = browser.json(
        "/admin/reports/disagreements", route=ROUTE, since="7d", slice="tier=free", limit=20
    )
    assert len(free["disagreements"]) == 4
    first = free["disagreements"][0]
    assert (first["teacher_output"], first["student_output"]) == (TEACHER, STUDENT)
    raw = browser.json(f"/console/api/requests/{first['request_id']}")
    assert raw["request_id"] == first["request_id"]
    assert raw["agree"] is False
    assert raw["slices"] == {"tier": "free"}
    assert raw["request_payload"]["messages"][0]["role"] == "user"
    assert raw["created_at"].endswith("Z")


def test_per_slice_calibration_overrides_and_the_ramp_through_the_session(
    seeded: GatewayServer, clean_db: str
) -> None:
    """What the route and calibration sections read and change: per-slice calibration both
    ways, applying the conservative one, the overrides with who set them, a ramp and its
    cancellation; analysts read, SREs change with the CSRF token."""
    sre, analyst = Browser(seeded, SRE), Browser(seeded, ANALYST)
    path = f"/admin/routes/{ROUTE}"

    def by_slice(**params: Any) -> dict[str, Any]:
        result = analyst.json(f"{path}/calibration", **params)
        return {line["value"]: line for line in result["slices"]}

    week, week_safe = by_slice(), by_slice(conservative="true")
    assert (week["free"]["status"], week["free"]["threshold"]) == ("ok", 0.0)
    assert week["free"]["at_threshold"]["agreed"] == 36
    assert week_safe["free"]["status"] == "unreachable"
    assert week["enterprise"]["status"] == week_safe["enterprise"]["status"] == "unreachable"
    assert week["gold"]["status"] == "not_enough_data"
    month, month_safe = by_slice(since="30d"), by_slice(since="30d", conservative="true")
    billing, billing_safe = month["billing"]["at_threshold"], month_safe["billing"]["at_threshold"]
    assert (billing["threshold"], billing["served"], billing["agreed"]) == (0.3, 140, 128)
    assert (billing_safe["threshold"], billing_safe["served"], billing_safe["agreed"]) == (
        0.45,
        110,
        106,
    )
    assert billing_safe["ci_low"] >= 0.9 > billing["ci_low"]
    assert (month[LONG_TOPIC]["threshold"], month_safe[LONG_TOPIC]["threshold"]) == (0.0, 0.1)
    assert month["free"]["threshold"] == month_safe["free"]["threshold"] == 0.0

    body = {"target_agreement": 0.9, "conservative": True, "since": "30d", "reason": "per slice"}
    refused = analyst.request("POST", f"{path}/calibration", csrf=analyst.csrf, json=body)
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert sre.request("POST", f"{path}/calibration", json=body).status_code == 403  # no token
    applied = sre.request("POST", f"{path}/calibration", csrf=sre.csrf, json=body)
    assert applied.status_code == 200, applied.text
    overrides = {o["slice"]: o for o in analyst.json(f"{path}/slices")["slices"]}
    assert sorted(overrides) == sorted(
        ["tier=enterprise", "tier=free", "topic=billing", f"topic={LONG_TOPIC}"]
    )
    assert overrides["topic=billing"]["confidence_threshold"] == 0.45
    assert overrides["tier=enterprise"]["mode"] == "teacher"
    assert {(o["updated_by"], o["reason"]) for o in overrides.values()} == {("oncall", "per slice")}
    live = analyst.json(path)["slices"]
    assert {o["slice"] for o in live} == set(overrides)

    cleared = sre.request(
        "POST", f"{path}/slices/tier/free/clear", csrf=sre.csrf, json={"reason": "not needed"}
    )
    assert cleared.status_code == 200, cleared.text
    assert "tier=free" not in {o["slice"] for o in analyst.json(f"{path}/slices")["slices"]}

    none = sre.request("POST", f"{path}/plan/cancel", csrf=sre.csrf, json={"reason": "x"})
    assert (none.status_code, none.json()["error"]["code"]) == (404, "plan_not_found")
    plan = {"steps": [10, 25, 50, 100], "hold_s": 3600, "reason": "to everyone"}
    assert sre.request("POST", f"{path}/plan", csrf=sre.csrf, json=plan).status_code == 200
    ramp = analyst.json(path)["ramp"]
    assert (ramp["status"], ramp["step"], ramp["steps"]) == ("active", 1, [10, 25, 50, 100])
    assert ramp["last_event"]["action"] == "ramp_planned"
    denied = analyst.request("POST", f"{path}/plan/cancel", csrf=analyst.csrf, json={"reason": "x"})
    assert denied.status_code == 403
    cancel = sre.request("POST", f"{path}/plan/cancel", csrf=sre.csrf, json={"reason": "hold"})
    assert cancel.json()["ramp"]["status"] == "cancelled"
    ramp = analyst.json(path)["ramp"]
    assert (ramp["status"], ramp["last_event"]["action"]) == ("cancelled", "ramp_cancelled")
    actions = [
        row["action"]
        for row in fetch(
            clean_db, "SELECT action FROM route_events WHERE actor = 'oncall' ORDER BY id"
        )
    ]
    assert actions == ["slice_calibration", "slice_cleared", "ramp_planned", "ramp_cancelled"]


def test_agreement_trend_per_slice_per_day_with_bars_and_the_aggregate(
    seeded: GatewayServer,
) -> None:
    browser = Browser(seeded, ANALYST)
    trend = browser.json("/console/api/trend", route=ROUTE, since="7d")
    assert trend["step"] == "day"
    assert len(trend["buckets"]) in (7, 8)  # 7 days from now start mid-day: 8 UTC days
    assert all(b.endswith("T00:00:00Z") for b in trend["buckets"])
    by_name = {s["value"]: s for s in trend["slices"]}
    # the one slice order: the failing critical slice, then by the interval's low end
    assert [s["value"] for s in trend["slices"]] == ["enterprise", "free", "gold"]
    enterprise = by_name["enterprise"]
    assert (enterprise["samples"], enterprise["agreed"], enterprise["verdict"]) == (80, 54, "fail")
    assert (enterprise["bar"], enterprise["min_samples"], enterprise["critical"]) == (0.9, 20, True)
    assert sum(p["samples"] for p in enterprise["points"]) == 80
    assert all(p["below_bar"] for p in enterprise["points"])
    assert by_name["gold"]["verdict"] == "pass"
    assert by_name["free"]["bar"] is None
    assert by_name["free"]["verdict"] is None
    assert {p["agreement"] for p in by_name["free"]["points"]} == {0.9}
    aggregate = trend["aggregate"]
    assert (aggregate["samples"], aggregate["agreed"]) == (145, 115)
    assert aggregate["agreement"] == pytest.approx(115 / 145)
    # the last day holds 20 enterprise rows, 12 agreeing, in one hour
    hourly = browser.json("/console/api/trend", route=ROUTE, since="24h", dimension="tier")
    assert hourly["step"] == "hour"
    day0 = {s["value"]: s for s in hourly["slices"]}["enterprise"]
    assert [(p["samples"], p["agreed"]) for p in day0["points"]] == [(20, 12)]
    assert day0["agreement"] == 0.6
    assert (
        browser.json("/console/api/trend", route=ROUTE, since="7d", max_slices=1)["omitted_slices"]
        == 2
    )


def test_one_slice_order_for_the_charts_and_the_table_thin_slices_last(
    seeded: GatewayServer, clean_db: str
) -> None:
    """Failing critical slices first, then by the interval's low end (a plain slice worse than
    the failing one comes after it), slices with too few comparisons marked and last, even
    with the worst interval of all (one bad sample)."""
    insert(clean_db, 40, "basic", 1, slices="""'{"tier": "basic"}'::jsonb""", agree="i < 20")
    insert(clean_db, 1, "trial", 0, slices="""'{"tier": "trial"}'::jsonb""", agree="false")
    browser = Browser(seeded, ANALYST)
    order = ["enterprise", "basic", "free", "gold", "trial"]
    trend = browser.json("/console/api/trend", route=ROUTE, since="7d")
    table = browser.json("/console/api/slices", route=ROUTE, since="7d")
    assert [s["value"] for s in trend["slices"]] == order
    assert [s["value"] for s in table["slices"]] == order
    marks = {s["value"]: (s["samples_needed"], s["enough_samples"]) for s in table["slices"]}
    assert marks == {
        "enterprise": (20, True),  # its bar's min_samples
        "basic": (30, True),  # the route's gate_min_samples
        "free": (30, True),
        "gold": (20, True),
        "trial": (30, False),
    }
    assert {s["value"]: s["enough_samples"] for s in trend["slices"]} == {
        v: enough for v, (_, enough) in marks.items()
    }
    assert table["aggregate"]["enough_samples"] is True
    assert trend["aggregate"]["samples"] == table["aggregate"]["samples"] == 186
    # the same figures as the slices report, only ordered and marked
    report = browser.json("/admin/reports/slices", route=ROUTE, since="7d")
    by_value = {s["value"]: s for s in report["slices"]}
    for line in table["slices"]:
        assert {k: v for k, v in line.items() if k in by_value[line["value"]]} == by_value[
            line["value"]
        ]
    only_tier = browser.json("/console/api/slices", route=ROUTE, since="7d", dimension="tier")
    assert [s["value"] for s in only_tier["slices"]] == order
    missing = browser.get("/console/api/slices", route="other")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "no_data")


def _documented(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return _documented(spec["components"]["schemas"][schema["$ref"].split("/")[-1]], spec)
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            return _documented(option, spec)
    return schema


def undocumented(value: Any, schema: dict[str, Any], spec: dict[str, Any], at: str) -> list[str]:
    """Every key of ``value`` its OpenAPI ``schema`` does not name (JSON columns: any)."""
    schema = _documented(schema, spec)
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, inner in value.items():
            if key not in schema["properties"]:
                found.append(f"{at}.{key}")
            else:
                found += undocumented(inner, schema["properties"][key], spec, f"{at}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for inner in value[:3]:
            found += undocumented(inner, schema["items"], spec, f"{at}[]")
    return found


def test_the_console_api_is_documented_in_openapi_field_by_field(seeded: GatewayServer) -> None:
    spec = httpx.get(f"{seeded.url}/openapi.json", timeout=10).json()
    browser = Browser(seeded, ANALYST)
    answers = {
        "/console/api/trend": browser.json("/console/api/trend", route=ROUTE, since="7d"),
        "/console/api/slices": browser.json("/console/api/slices", route=ROUTE, since="7d"),
        "/console/api/requests/{request_id}": browser.json("/console/api/requests/free-d0-1"),
    }
    for path, answer in answers.items():
        documented = spec["paths"][path]["get"]["responses"]
        ok = documented["200"]["content"]["application/json"]
        assert "$ref" in ok["schema"], path
        assert undocumented(answer, ok["schema"], spec, path) == []
        # the errors it answers, in OpenAI's shape; never FastAPI's 422
        assert {"401", "403", "404"} <= set(documented), path
        assert "422" not in documented, path
        error = documented["404"]["content"]["application/json"]["schema"]["$ref"]
        assert error.endswith("/OpenAIError"), path
    models = spec["components"]["schemas"]
    assert {"Trend", "TrendSeries", "TrendPoint", "SliceTable", "SliceLine", "RequestRow"} <= set(
        models
    )
    assert models["RequestRow"]["properties"]["student_logprobs"]["anyOf"][0]["items"][
        "$ref"
    ].endswith("/TokenLogprob")


def test_a_shared_link_survives_the_login_and_the_redirect_stays_on_the_console(
    gateway: GatewayServer,
) -> None:
    page = httpx.get(
        f"{gateway.url}/console", params={"route": ROUTE, "window": "30d", "row": "a<b"}
    )
    assert 'name="next" value="route=support-bot&amp;window=30d&amp;row=a%3Cb"' in page.text
    answer = httpx.post(
        f"{gateway.url}/console/login",
        data={"key": ANALYST, "next": "route=support-bot&window=30d&row=a%3Cb"},
        follow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console?route=support-bot&window=30d&row=a%3Cb"
    for hostile in ("//evil.example", "https://evil.example/x", "\\evil", ""):
        elsewhere = httpx.post(
            f"{gateway.url}/console/login",
            data={"key": ANALYST, "next": hostile},
            follow_redirects=False,
            timeout=10,
        )
        assert elsewhere.headers["location"] == "/console", hostile
    wrong = httpx.post(
        f"{gateway.url}/console/login", data={"key": "nope", "next": "page=review"}, timeout=10
    )
    assert 'name="next" value="page=review"' in wrong.text


def test_trend_and_raw_row_refuse_what_they_cannot_answer(seeded: GatewayServer) -> None:
    browser = Browser(seeded, ANALYST)
    too_fine = browser.get("/console/api/trend", route=ROUTE, since="90d", step="hour")
    assert too_fine.status_code == 400
    assert too_fine.json()["error"]["param"] == "step"
    assert browser.get("/console/api/trend", route=ROUTE, step="week").status_code == 400
    empty = browser.get("/console/api/trend", route="other")
    assert (empty.status_code, empty.json()["error"]["code"]) == (404, "no_data")
    unknown = browser.get("/console/api/trend", route="nope")
    assert unknown.json()["error"]["code"] == "model_not_found"
    for unknown_id in ("no-such-request", "nul%00byte"):
        missing = browser.get(f"/console/api/requests/{unknown_id}")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "no_data")
    assert httpx.get(f"{seeded.url}/console/api/requests/ent-d0-1").status_code == 401
    bearer = httpx.get(
        f"{seeded.url}/console/api/trend",
        params={"route": ROUTE},
        headers={"authorization": f"Bearer {SRE}"},
    )
    assert bearer.status_code == 200


def test_the_page_and_its_files_ship_in_the_package_and_load_nothing_from_elsewhere(
    gateway: GatewayServer,
) -> None:
    assets = Path(__file__).resolve().parents[2] / "gateway" / "console"
    for path in sorted(assets.rglob("*")):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
            assert not urls, f"{path} refers to {urls}"
    for name, kind in (("console.js", "javascript"), ("console.css", "text/css")):
        answer = httpx.get(f"{gateway.url}/console/static/{name}", timeout=10)
        assert answer.status_code == 200
        assert kind in answer.headers["content-type"]
    for name in ("charts.js", "diff.js"):
        assert httpx.get(f"{gateway.url}/console/static/{name}").status_code == 200


# -- sessions, the signer itself ------------------------------------------------------------

KEY = ApiKey(name="cfg", scopes=frozenset({"sre"}), sha256=b"\x01" * 32)


def test_sessions_expire_and_are_bound_to_the_key_digest(clean_db: str) -> None:
    async def check() -> None:
        engine = create_engine(clean_db, DatabaseConfig())
        try:
            sessions = Sessions(b"s" * 32, ttl_s=60, config_keys=(KEY,))
            session = sessions.issue(KEY, now=1_000_000)
            assert session.expires_at == 1_000_060
            found = await sessions.resolve(session.token, engine, now=1_000_059)
            assert found.key == KEY
            with pytest.raises(AuthenticationFailed, match="expired"):
                await sessions.resolve(session.token, engine, now=1_000_060)
            rotated = ApiKey(name="cfg", scopes=KEY.scopes, sha256=b"\x02" * 32)
            elsewhere = Sessions(b"s" * 32, ttl_s=60, config_keys=(rotated,))
            with pytest.raises(AuthenticationFailed, match="not valid"):
                await elsewhere.resolve(session.token, engine, now=1_000_000)
            other_secret = Sessions(b"t" * 32, ttl_s=60, config_keys=(KEY,))
            with pytest.raises(AuthenticationFailed):
                await other_secret.resolve(session.token, engine, now=1_000_000)
        finally:
            await engine.dispose()

    asyncio.run(check())
    with pytest.raises(ConfigError, match="at least 32"):
        Sessions(b"short", ttl_s=60)


def test_the_session_secret_is_made_once_in_data_dir_or_read_from_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "gateway.yaml", console_routes())
    first = session_secret(load_settings(path))
    secret_file = tmp_path / "data" / "console-session.key"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert len(first) == 64
    assert session_secret(load_settings(path)) == first  # another worker: the same one
    assert [p.name for p in secret_file.parent.iterdir()] == ["console-session.key"]
    shared = write_config(
        tmp_path / "shared.yaml",
        console_routes(),
        console={"session_secret_env": "SGW_TEST_CONSOLE_SECRET"},
    )
    with pytest.raises(ConfigError, match="SGW_TEST_CONSOLE_SECRET"):
        session_secret(load_settings(shared))
    monkeypatch.setenv("SGW_TEST_CONSOLE_SECRET", "x" * 40)
    assert session_secret(load_settings(shared)) == b"x" * 40


def test_sessions_outlive_a_restart_and_work_on_every_worker(
    make_gateway: Callable[..., GatewayServer], console_env: None
) -> None:
    first = make_gateway(console_routes(), auth={"keys": KEYS})
    token = Browser(first, ANALYST).cookie
    first.stop()
    second = make_gateway(console_routes(), auth={"keys": KEYS})  # same data_dir
    answer = httpx.get(f"{second.url}/admin/routes", cookies={SESSION_COOKIE: token})
    assert answer.status_code == 200


def test_windows_are_parsed_like_the_reports(seeded: GatewayServer) -> None:
    browser = Browser(seeded, ANALYST)
    until = datetime.now(UTC).replace(microsecond=0)
    since = until - timedelta(days=2)
    trend = browser.json(
        "/console/api/trend", route=ROUTE, since=since.isoformat(), until=until.isoformat()
    )
    assert trend["step"] == "hour"
    bad = browser.get("/console/api/trend", route=ROUTE, since="yesterday")
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "since")
