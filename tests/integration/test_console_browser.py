"""The console in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Against a gateway with the rows of :func:`~tests.integration.test_console.seed_console`: log
in, see the charts drawn with the seeded numbers, filter the disagreements, roll the route back
as an SRE, be refused as an analyst. A full-page screenshot is saved in the test's tmp dir,
and copied to ``$SGW_TEST_ARTIFACTS`` when that is set.

Skipped only when ``/usr/bin/chromium`` is absent (``apt-get install chromium``); Playwright
drives it as it is (no ``playwright install``: nothing is downloaded).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.integration.test_console import (
    ANALYST,
    KEYS,
    SRE,
    STUDENT,
    TEACHER,
    console_routes,
    seed_console,
)
from tests.support.db import fetch
from tests.support.gateway import GatewayServer

CHROMIUM = Path(os.environ.get("SGW_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}")
ROUTE = "support-bot"


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Playwright's sync API runs an event loop on this thread while it is open, so the
    database helpers (``asyncio.run``) are called before or after it, never inside."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Console:
    """One browser context on the console, recording what the page fetched and complained of."""

    def __init__(self, browser: Browser, gateway: GatewayServer) -> None:
        self.gateway = gateway
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.set_default_timeout(15_000)
        self.page: Page = self.context.new_page()
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on(
            "console",
            lambda message: self.problems.append(message.text) if message.type == "error" else None,
        )
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))

    def log_in(self, key: str) -> Page:
        page = self.page
        page.goto(f"{self.gateway.url}/console")
        page.fill("#key", key)
        page.click("button[type=submit]")
        expect(page.locator("body")).to_have_attribute("data-loaded", "true")
        return page

    def close(self) -> None:
        self.context.close()


def save_screenshot(page: Page, path: Path, section: str | None = None) -> None:
    """The whole page (or one section of it), into the test's tmp dir and
    ``$SGW_TEST_ARTIFACTS`` when set."""
    if section is None:
        page.evaluate("window.scrollTo(0, 0)")  # the sticky header at the top of the picture
        page.screenshot(path=str(path), full_page=True)
    else:
        page.locator(section).screenshot(path=str(path))
    if artifacts := os.environ.get("SGW_TEST_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)


@pytest.fixture
def seeded(
    make_gateway: Callable[..., GatewayServer],
    monkeypatch: pytest.MonkeyPatch,
    app_key: str,
    clean_db: str,
) -> GatewayServer:
    monkeypatch.setenv("SGW_TEST_SRE_KEY", SRE)
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)
    gateway = make_gateway(console_routes(), auth={"keys": KEYS})
    seed_console(clean_db)
    return gateway


def test_an_sre_sees_the_seeded_figures_filters_and_rolls_back(
    seeded: GatewayServer, clean_db: str, tmp_path: Path
) -> None:
    with chromium() as browser:
        sre_visit(browser, seeded, tmp_path)
    events = fetch(clean_db, "SELECT actor, action, reason FROM route_events ORDER BY id")
    assert events[-2:] == [
        {"actor": "oncall", "action": "set", "reason": "calibration says 0.85"},
        {"actor": "oncall", "action": "rollback", "reason": "enterprise below its bar"},
    ]


def sre_visit(browser: Browser, seeded: GatewayServer, tmp_path: Path) -> None:
    console = Console(browser, seeded)
    page = console.page
    page.goto(f"{seeded.url}/console")
    page.fill("#key", "not-a-key")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("Incorrect API key provided.")
    assert console.context.cookies() == []
    console.problems.clear()  # the browser logs the 401 of that answer: expected
    console.log_in(SRE)
    session = next(c for c in console.context.cookies() if c["name"] == "sgw_console")
    assert (session["httpOnly"], session["sameSite"]) == (True, "Strict")
    assert SRE not in session["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's script cannot read it

    # the route's state
    expect(page.locator("#route-state [data-field=mode]")).to_have_text("rollout")
    expect(page.locator("#route-state [data-field=rollout_percent]")).to_have_text("10%")
    expect(page.locator("#route-state [data-field=confidence_threshold]")).to_have_text("0.8")

    # agreement by slice over time: enterprise fails its bar, gold passes, the aggregate beside
    enterprise = page.locator('#slice-charts .chart[data-slice="tier=enterprise"]')
    expect(enterprise).to_have_class("chart failing")
    expect(enterprise.locator(".sub")).to_contain_text("54/80 agree · 67.5%")
    expect(enterprise.locator("svg")).to_have_attribute("data-verdict", "fail")
    expect(enterprise.locator("line.bar-line")).to_have_attribute("data-bar", "0.9")
    dots = enterprise.locator("circle.point.below")
    expect(dots).to_have_count(4)
    assert sorted(float(v) for v in dots.evaluate_all("ds => ds.map(d => d.dataset.agreement)"))[
        :2
    ] == [0.6, 0.7]
    expect(page.locator('#slice-charts .chart[data-slice="tier=gold"]')).to_have_class("chart")
    expect(page.locator("#aggregate-chart .sub")).to_contain_text("115/145 agree")
    expect(page.locator('#slice-table tr.fail[data-slice="tier=enterprise"]')).to_have_count(1)
    expect(page.locator("#agreement-note")).to_contain_text("Below their bar: tier=enterprise.")

    # calibration: the enterprise curve, its bar, the live threshold
    curve = page.locator('#calibration-charts .chart[data-curve="tier=enterprise"]')
    expect(curve.locator("line.marker").first).to_have_attribute("data-threshold", "0.8")
    assert curve.locator("circle.point").count() >= 10
    expect(page.locator("#calibration-note")).to_contain_text("145 shadow comparisons")

    # candidates: rival is worse than the champion on free, better on enterprise
    live = page.locator("#candidates-live")
    worse = live.locator('tr.fail[data-slice="tier=free"][data-student="rival"]')
    expect(worse).to_contain_text("worse")
    better = live.locator('tr[data-slice="tier=enterprise"][data-student="rival"]')
    expect(better.locator("td.verdict-better")).to_have_text("better")
    expect(live.locator("tbody tr").first).to_have_attribute("data-slice", "tier=free")
    expect(page.locator("#candidates-note")).to_contain_text("Baseline default")

    # drift: tier is flagged; free was 60 of 70 in the reference window
    tier = page.locator('#drift-charts .chart.flagged[data-dimension="tier"]')
    expect(tier).to_have_count(1)
    reference_free = tier.locator('rect.ref-bar[data-value="free"]')
    assert float(reference_free.get_attribute("data-share") or "0") == pytest.approx(60 / 70)
    expect(page.locator("#drift-note")).to_contain_text("Flagged (PSI ≥ 0.2): tier.")

    # disagreements: a first page of 20, then only tier=free's 4, the answers diffed
    items = page.locator("#disagreements article.disagreement")
    expect(items).to_have_count(20)
    expect(page.locator("#more")).to_be_visible()
    page.select_option("#disagreement-filter select[name=slice]", "tier=free")
    page.click("#disagreement-filter button[type=submit]")
    expect(items).to_have_count(4)
    expect(page.locator("#more")).to_be_hidden()
    page.fill("#disagreement-filter input[name=since]", "36h")  # the last two days' rows
    page.click("#disagreement-filter button[type=submit]")
    expect(items).to_have_count(2)
    page.fill("#disagreement-filter input[name=since]", "")
    page.click("#disagreement-filter button[type=submit]")
    expect(items).to_have_count(4)
    first = items.first
    expect(first.locator('[data-side="teacher"]')).to_contain_text(TEACHER)
    expect(first.locator('[data-side="student"]')).to_contain_text(STUDENT)
    assert first.locator("del.diff").all_inner_texts() == ["5", "card."]
    assert first.locator("ins.diff").all_inner_texts() == ["7", "account."]
    request_id = first.get_attribute("data-request-id")
    assert request_id is not None
    assert request_id.startswith("free-")
    with console.context.expect_page() as opened:
        first.locator("a", has_text="raw row").click()
    raw = opened.value
    raw.wait_for_load_state()
    assert f'"request_id":"{request_id}"' in raw.inner_text("body")
    raw.close()

    save_screenshot(page, tmp_path / "console-sre.png")
    save_screenshot(page, tmp_path / "console-agreement.png", "#agreement-section")
    save_screenshot(page, tmp_path / "console-candidates.png", "#candidates-section")

    # change the threshold, then roll back, each with a reason, through the admin API
    page.fill("#change-form input[name=confidence_threshold]", "0.85")
    page.fill("#change-form input[name=reason]", "calibration says 0.85")
    page.click("#change-form button[type=submit]")
    expect(page.locator("#route-state [data-field=confidence_threshold]")).to_have_text("0.85")
    page.fill("#rollback-form input[name=reason]", "enterprise below its bar")
    page.click("#rollback-form button[type=submit]")
    expect(page.locator("#write-result")).to_contain_text("support-bot is now shadow")
    expect(page.locator("#route-state [data-field=mode]")).to_have_text("shadow")
    expect(page.locator("#events tr[data-action=rollback]")).to_contain_text(
        "enterprise below its bar"
    )

    page.click("header form button[type=submit]")  # log out
    expect(page.locator("#key")).to_be_visible()
    assert all(url.startswith(seeded.url) for url in console.requests), console.requests
    assert console.problems == []
    console.close()


def test_an_analyst_reads_but_cannot_change(
    seeded: GatewayServer, clean_db: str, tmp_path: Path
) -> None:
    with chromium() as browser:
        analyst_visit(browser, seeded, tmp_path)
    mode = fetch(clean_db, f"SELECT mode FROM route_state WHERE route = '{ROUTE}'")
    assert mode == [{"mode": "rollout"}]


def analyst_visit(browser: Browser, seeded: GatewayServer, tmp_path: Path) -> None:
    console = Console(browser, seeded)
    page = console.log_in(ANALYST)
    expect(page.locator("#write-panel")).to_be_hidden()
    expect(page.locator("#read-only-note")).to_be_visible()
    expect(page.locator('#slice-charts .chart[data-slice="tier=enterprise"]')).to_have_class(
        "chart failing"
    )
    # the page's own fetch, with the session's CSRF token: the API still says no
    status = page.evaluate(
        """async (route) => {
            const csrf = document.querySelector('meta[name="sgw-csrf"]').content;
            const answer = await fetch(`/admin/routes/${route}/rollback`, {
                method: "POST",
                headers: {"content-type": "application/json", "x-csrf-token": csrf},
                body: JSON.stringify({reason: "analyst tries"}),
            });
            return [answer.status, (await answer.json()).error.code];
        }""",
        ROUTE,
    )
    assert status == [403, "insufficient_scope"]
    save_screenshot(page, tmp_path / "console-analyst.png")
    # 403 in the console is expected above; nothing else went wrong
    assert [p for p in console.problems if "403" not in p] == []
    console.close()
