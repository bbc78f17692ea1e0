"""The console in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Against a gateway with the rows of :func:`~tests.integration.test_console.seed_console`: log
in, see the charts drawn with the seeded numbers, filter the disagreements, roll the route back
as an SRE, be refused as an analyst; with slice overrides and a ramp set as the CLI would
(:func:`seed_rollout`), see them, set and clear an override, cancel the ramp and apply the
conservative per-slice calibration as an SRE, and see it all without a button as an analyst.
The calibration view's labels are checked not to overlap, at 1400 and at 900 pixels wide.
On rows of their own (:func:`seed_review`), a reviewer draws review tasks and judges them
with the keyboard, one and then a whole group, seeing the review page alone; the SRE and the
analyst then see the quality figures, the analyst without a verdict button.
Screenshots are saved in the test's tmp dir, and copied to ``$SGW_TEST_ARTIFACTS`` when that
is set.

Skipped only when ``/usr/bin/chromium`` is absent (``apt-get install chromium``); Playwright
drives it as it is (no ``playwright install``: nothing is downloaded).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from gateway.core.statistics import wilson_interval
from tests.integration.test_console import (
    ANALYST,
    KEYS,
    LONG_TOPIC,
    SRE,
    STUDENT,
    TEACHER,
    console_routes,
    insert,
    seed_console,
)
from tests.support.db import execute, fetch
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
DASH = "\N{EN DASH}"  # between an interval's ends, and for "the route's value"


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
        self.refused: list[str] = []  # "status path" of each answer of 400 or more
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on(
            "response",
            lambda response: (
                self.refused.append(f"{response.status} {response.url.removeprefix(gateway.url)}")
                if response.status >= 400
                else None
            ),
        )
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
    else:  # the sticky header would be drawn over the section: unstick it meanwhile
        page.evaluate("document.querySelector('header.top').style.position = 'static'")
        page.locator(section).screenshot(path=str(path))
        page.evaluate("document.querySelector('header.top').style.position = ''")
    print(f"screenshot: {path}")  # shown with pytest -s (or -rP)
    if artifacts := os.environ.get("SGW_TEST_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
        print(f"screenshot: {Path(artifacts) / path.name}")


# Every piece of text under a selector that overlaps another on screen (what a reader would see
# printed over something else), and every chart label that leaves its chart. Text clipped by
# an ancestor (an ellipsis, a scrolled box) counts only where it is visible.
OVERLAPS = """(selector) => {
  const root = document.querySelector(selector);
  const box = (r) => ({ left: r.left, top: r.top, right: r.right, bottom: r.bottom });
  const meet = (a, b) => ({ left: Math.max(a.left, b.left), top: Math.max(a.top, b.top),
    right: Math.min(a.right, b.right), bottom: Math.min(a.bottom, b.bottom) });
  const clipOf = (node) => {
    let clip = null;
    for (let e = node.parentElement; e && e !== document.documentElement; e = e.parentElement) {
      const style = getComputedStyle(e);
      if (style.overflowX !== "visible" || style.overflowY !== "visible") {
        clip = clip ? meet(clip, box(e.getBoundingClientRect())) : box(e.getBoundingClientRect());
      }
    }
    return clip;
  };
  const pieces = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!node.textContent.trim() || parent.closest("title, select, option")) continue;
    let rects;
    if (parent instanceof SVGElement) {
      rects = [parent.getBoundingClientRect()];
    } else {
      const range = document.createRange();
      range.selectNodeContents(node);
      rects = [...range.getClientRects()];
    }
    const clip = clipOf(node);
    for (const raw of rects) {
      const r = clip ? meet(box(raw), clip) : box(raw);
      if (r.right - r.left >= 1 && r.bottom - r.top >= 1) {
        pieces.push({ r, node, text: node.textContent.trim().slice(0, 50) });
      }
    }
  }
  const found = [];
  for (let i = 0; i < pieces.length; i++) {
    for (let j = i + 1; j < pieces.length; j++) {
      if (pieces[i].node === pieces[j].node) continue;
      const m = meet(pieces[i].r, pieces[j].r);
      if (m.right - m.left > 1 && m.bottom - m.top > 1) {
        found.push(`${pieces[i].text} | ${pieces[j].text}`);
      }
    }
  }
  for (const text of root.querySelectorAll("svg text")) {
    const holder = text.closest(".chart") ?? text.closest("svg").parentElement;
    const chart = holder.getBoundingClientRect();
    const r = text.getBoundingClientRect();
    if (r.width && (r.left < chart.left - 1 || r.right > chart.right + 1)) {
      found.push(`${text.textContent} leaves its chart`);
    }
  }
  return found;
}"""

# Calibration charts whose labels crowd: live and recommended thresholds close together or
# equal, at the edges, a bar at the top and one at the bottom (drawn by the page's own module).
CROWDED_CHARTS = """async () => {
  const { calibrationChart } = await import("/console/static/charts.js");
  const points = Array.from({ length: 21 }, (_, i) => ({
    threshold: i / 20, served: 100 - 4 * i, total: 100, share: (100 - 4 * i) / 100,
    agreed: 90 - 4 * i + i / 2, agreement: (90 - 4 * i + i / 2) / (100 - 4 * i),
    meets_bar: i > 10 }));
  const holder = document.createElement("div");
  holder.id = "label-check";
  holder.className = "multiples";
  const cases = [
    [0.8, 0.85, 0.9], [0.8, 0.8, 0.99], [1, 0.95, 0.05], [0, 0.05, 0.1], [0.5, 0.55, 1],
  ];
  for (const [live, recommended, bar] of cases) {
    const chart = document.createElement("div");
    chart.className = "chart";
    const curve = { dimension: "tier", value: "x", bar, points };
    chart.append(calibrationChart(curve, live, recommended));
    holder.append(chart);
  }
  document.querySelector("#calibration-section").append(holder);
}"""


def overlapping(page: Page, selector: str) -> list[str]:
    found: list[str] = page.evaluate(OVERLAPS, selector)
    return found


def seed_rollout(gateway: GatewayServer) -> None:
    """Two slice overrides (one with a long name and a long reason) and an active ramp, set
    with the SRE's key as the CLI or a script would."""
    base = f"{gateway.url}/admin/routes/{ROUTE}"
    changes = (
        (
            "PATCH",
            "/slices/tier/gold",
            {"confidence_threshold": 0.95, "reason": "gold: only the surest answers"},
        ),
        (
            "PATCH",
            f"/slices/topic/{LONG_TOPIC}",
            {
                "mode": "teacher",
                "reason": "legal review of EMEA disputes pending; keep them on the teacher "
                "until it is signed off (ticket LEGAL-2231)",
            },
        ),
        ("POST", "/plan", {"steps": [10, 25, 50, 100], "hold_s": 3600, "reason": "to everyone"}),
    )
    for method, path, body in changes:
        answer = httpx.request(
            method, base + path, json=body, headers={"authorization": f"Bearer {SRE}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text


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


def train_champion_on_the_reference(url: str) -> None:
    """A training dataset of the drift reference's rows (ten days back), recorded as the
    champion's, as ``distill`` would."""
    dataset = fetch(
        url,
        "INSERT INTO datasets (route, created_by, kind, manifest, path, sha256, items) "
        "VALUES ($1, 'tests', 'train', '{}'::jsonb, '/tmp/train.jsonl', 'x', 70) RETURNING id",
        ROUTE,
    )[0]["id"]
    execute(
        url,
        "INSERT INTO dataset_items (dataset_id, request_id, request_created_at, prompt_key) "
        f"SELECT {dataset}, request_id, created_at, md5(request_id) FROM requests "
        "WHERE request_id LIKE 'ref-%'",
    )
    execute(
        url,
        f"UPDATE route_students SET train_dataset_id = {dataset} "
        f"WHERE route = '{ROUTE}' AND status = 'champion'",
    )


def test_an_sre_sees_the_seeded_figures_filters_and_rolls_back(
    seeded: GatewayServer, clean_db: str, tmp_path: Path
) -> None:
    train_champion_on_the_reference(clean_db)
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
    # against the champion's training set: the same rows as a dataset, so the same shares
    page.select_option("#drift-reference", "champion")
    expect(page.locator("#drift-note")).to_contain_text(
        "(train, the training set of champion default), 70 of its 70 requests still logged"
    )
    reference_free = tier.locator('rect.ref-bar[data-value="free"]')
    assert float(reference_free.get_attribute("data-share") or "0") == pytest.approx(60 / 70)
    page.select_option("#drift-reference", "window")
    expect(page.locator("#drift-note")).to_contain_text("reference: 70 requests from")

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
    # its row, readable, over the page; the raw JSON one click away; Escape closes it
    first.locator("a.row-link").click()
    view = page.locator("#row-view")
    expect(view).to_be_visible()
    expect(view).to_have_attribute("data-ready", "true")
    expect(page.locator("#row-title")).to_have_text(f"Request {request_id}")
    assert f"row={request_id}" in page.url
    view.locator("#row-raw summary").click()
    expect(view.locator("#row-raw pre")).to_contain_text(f'"request_id": "{request_id}"')
    page.keyboard.press("Escape")
    expect(view).to_be_hidden()
    expect(page).not_to_have_url(re.compile("row="))  # Back, to where it was opened

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


def test_an_sre_sets_and_clears_overrides_cancels_the_ramp_and_applies_the_calibration(
    seeded: GatewayServer, clean_db: str, tmp_path: Path
) -> None:
    seed_rollout(seeded)
    with chromium() as browser:
        rollout_visit(browser, seeded, tmp_path)
    events = fetch(
        clean_db, "SELECT action, reason FROM route_events WHERE actor = 'oncall' ORDER BY id"
    )
    assert [(e["action"], e["reason"]) for e in events][-4:] == [
        ("slice_set", "free tier: half of it"),
        ("slice_cleared", "gold threshold no longer needed"),
        ("ramp_cancelled", "hold at 10% over the weekend"),
        ("slice_calibration", "conservative per-slice thresholds"),
    ]
    assert fetch(clean_db, "SELECT status FROM rollout_plans") == [{"status": "cancelled"}]
    overrides = fetch(
        clean_db,
        "SELECT dimension || '=' || value AS slice, mode, rollout_percent, confidence_threshold "
        "FROM route_slice_overrides ORDER BY 1",
    )
    assert [tuple(o.values()) for o in overrides] == [
        ("tier=enterprise", "teacher", None, None),
        ("tier=free", None, 50.0, 0.0),
        ("topic=billing", None, None, 0.45),
        (f"topic={LONG_TOPIC}", "teacher", None, 0.1),
    ]


def rollout_visit(browser: Browser, seeded: GatewayServer, tmp_path: Path) -> None:
    console = Console(browser, seeded)
    page = console.log_in(SRE)

    # the ramp: its four steps, the first the current one, the gate's last word, Cancel
    ramp = page.locator("#ramp")
    expect(ramp.locator("ol.steps li")).to_have_count(4)
    expect(ramp.locator('li[aria-current="step"]')).to_have_text("10%")
    expect(ramp.locator("[data-field=status]")).to_have_text("active")
    expect(ramp.locator("[data-field=step]")).to_have_text("1 of 4, at 10%")
    expect(ramp.locator("[data-field=next_at]")).to_contain_text("UTC")
    expect(ramp.locator("[data-field=created_by]")).to_have_text("oncall: to everyone")
    expect(ramp.locator("[data-field=gate]")).to_contain_text("ramp_planned (oncall,")
    expect(page.locator("#ramp-cancel-form")).to_be_visible()

    # the overrides, who set them and why; a long name cut short, whole in its tooltip
    overrides = page.locator("#slice-overrides")
    gold = overrides.locator('tr[data-slice="tier=gold"]')
    expect(gold.locator("[data-field=confidence_threshold]")).to_have_text("0.95")
    expect(gold.locator("[data-field=mode]")).to_have_text(DASH)  # the route's
    expect(gold.locator("[data-field=updated_by]")).to_have_text("oncall")
    expect(gold.locator("[data-field=reason]")).to_have_text("gold: only the surest answers")
    long_row = overrides.locator(f'tr[data-slice="topic={LONG_TOPIC}"]')
    expect(long_row.locator("[data-field=mode]")).to_have_text("teacher")
    long_name = long_row.locator("span.clip")
    expect(long_name).to_have_attribute("title", f"topic={LONG_TOPIC}")
    assert long_name.evaluate("e => e.scrollWidth > e.clientWidth")  # cut with an ellipsis

    # set one with the form, clear another, each with a reason
    form = page.locator("#slice-form")
    form.locator("input[name=slice]").fill("tier=free")
    form.locator("input[name=rollout_percent]").fill("50")
    form.locator("input[name=reason]").fill("free tier: half of it")
    form.locator("button[type=submit]").click()
    expect(page.locator("#slices-result")).to_have_text("Set tier=free: percent 50%.")
    free = overrides.locator('tr[data-slice="tier=free"]')
    expect(free.locator("[data-field=rollout_percent]")).to_have_text("50%")
    gold.locator("input[name=reason]").fill("gold threshold no longer needed")
    gold.locator("button", has_text="Clear").click()
    expect(gold).to_have_count(0)
    expect(page.locator("#slices-result")).to_contain_text("Cleared tier=gold")
    cleared = page.locator('#events tr[data-action="slice_cleared"]')
    expect(cleared).to_contain_text("tier=gold: cleared (was threshold 0.95)")
    expect(cleared).to_contain_text("gold threshold no longer needed")

    # cancel the ramp: it stays at its step, no longer active, without a Cancel button
    page.fill("#ramp-cancel-form input[name=reason]", "hold at 10% over the weekend")
    page.click("#ramp-cancel-form button[type=submit]")
    expect(page.locator("#ramp-result")).to_have_text(
        "Ramp cancelled at step 1 of 4; the route stays at 10%."
    )
    expect(ramp.locator("[data-field=status]")).to_have_text("cancelled")
    expect(ramp.locator("[data-field=gate]")).to_contain_text("ramp_cancelled")
    expect(ramp.locator("[data-field=gate]")).to_contain_text("hold at 10% over the weekend")
    expect(page.locator("#ramp-cancel-form")).to_be_hidden()
    expect(page.locator('#events tr[data-action="ramp_cancelled"]')).to_be_visible()

    # per-slice calibration over the last 7 days: free meets 90 % as observed only
    table = page.locator("#slice-calibration")
    expect(table.locator("th[data-group=plain]")).to_have_text(
        "Plain recommendation: observed agreement ≥ 90%"
    )
    expect(table.locator("th[data-group=conservative]")).to_have_text(
        "Conservative recommendation: 95% CI low end ≥ 90%"
    )
    row = table.locator('tr[data-slice="tier=free"]')
    expect(row.locator("[data-field=plain-threshold]")).to_have_text("0")
    expect(row.locator("[data-field=plain-agreement]")).to_have_text(f"90.0% (76.9%{DASH}96.0%)")
    expect(row.locator("[data-field=conservative-threshold]")).to_have_text("none: teacher")
    expect(row.locator("[data-field=override]")).to_have_text("percent 50%")
    gold_line = table.locator('tr[data-slice="tier=gold"]')
    expect(gold_line.locator("[data-field=conservative-threshold]")).to_have_text("not enough data")

    # over 30 days: billing at 0.3 as observed, 0.45 conservatively
    page.select_option("#window", "30d")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    billing = table.locator('tr[data-slice="topic=billing"]')
    expect(billing.locator("[data-field=plain-threshold]")).to_have_text("0.3")
    expect(billing.locator("[data-field=plain-served]")).to_have_text("70.0% (140/200)")
    expect(billing.locator("[data-field=conservative-threshold]")).to_have_text("0.45")
    expect(billing.locator("[data-field=conservative-served]")).to_have_text("55.0% (110/200)")
    expect(billing.locator("[data-field=conservative-agreement]")).to_contain_text(
        f"96.4% (91.0%{DASH}"
    )
    expect(table.locator(f'tr[data-slice="topic={LONG_TOPIC}"] span.clip')).to_have_attribute(
        "title", f"topic={LONG_TOPIC}"
    )
    expect(page.locator("#calibration-preview")).to_contain_text("topic=billing: threshold 0.45")
    expect(page.locator("#calibration-preview")).to_contain_text("tier=enterprise: mode teacher")
    assert overlapping(page, "#calibration-section") == []
    assert overlapping(page, "#route-section") == []
    save_screenshot(page, tmp_path / "console-calibration-1400.png", "#calibration-section")
    save_screenshot(page, tmp_path / "console-route-1400.png", "#route-section")

    # apply the conservative one: the overrides now hold its thresholds
    page.fill("#calibration-apply-form input[name=reason]", "conservative per-slice thresholds")
    page.click("#calibration-apply-form button[type=submit]")
    expect(page.locator("#calibration-result")).to_contain_text(
        "Applied the conservative per-slice thresholds: "
    )
    expect(
        overrides.locator('tr[data-slice="topic=billing"] [data-field=confidence_threshold]')
    ).to_have_text("0.45")
    expect(long_row.locator("[data-field=confidence_threshold]")).to_have_text("0.1")
    expect(long_row.locator("[data-field=mode]")).to_have_text("teacher")
    expect(free.locator("[data-field=confidence_threshold]")).to_have_text("0")
    expect(free.locator("[data-field=rollout_percent]")).to_have_text("50%")
    enterprise = overrides.locator('tr[data-slice="tier=enterprise"]')
    expect(enterprise.locator("[data-field=mode]")).to_have_text("teacher")
    expect(enterprise.locator("[data-field=reason]")).to_have_text(
        "conservative per-slice thresholds"
    )
    expect(billing.locator("[data-field=override]")).to_have_text("threshold 0.45")
    expect(page.locator('#events tr[data-action="slice_calibration"]')).to_contain_text(
        "topic=billing: threshold 0.45"
    )

    # the labels at 900 pixels, and on charts whose markers crowd each other
    page.set_viewport_size({"width": 900, "height": 1000})
    assert page.evaluate("document.documentElement.scrollWidth") <= 900  # tables scroll inside
    assert overlapping(page, "#calibration-section") == []
    assert overlapping(page, "#route-section") == []
    save_screenshot(page, tmp_path / "console-sre-900.png")
    save_screenshot(page, tmp_path / "console-calibration-900.png", "#calibration-section")
    page.evaluate(CROWDED_CHARTS)
    expect(page.locator("#label-check svg")).to_have_count(5)
    assert page.locator("#label-check text[data-lane='1']").count() >= 2  # moved up a lane
    assert overlapping(page, "#label-check") == []
    save_screenshot(page, tmp_path / "console-crowded-labels-900.png", "#label-check")
    page.set_viewport_size({"width": 1400, "height": 1000})
    assert overlapping(page, "#label-check") == []

    assert all(url.startswith(seeded.url) for url in console.requests), console.requests
    # over 30 days drift has no reference (nothing 30 to 60 days back): that 404 is the only
    # refusal, and the browser's only complaint
    assert console.refused == [f"404 /admin/reports/drift?route={ROUTE}&since=30d"]
    assert [p for p in console.problems if "404 (Not Found)" not in p] == []
    console.close()


def test_an_analyst_reads_but_cannot_change(
    seeded: GatewayServer, clean_db: str, tmp_path: Path
) -> None:
    seed_rollout(seeded)
    with chromium() as browser:
        analyst_visit(browser, seeded, tmp_path)
    mode = fetch(clean_db, f"SELECT mode FROM route_state WHERE route = '{ROUTE}'")
    assert mode == [{"mode": "rollout"}]


def analyst_visit(browser: Browser, seeded: GatewayServer, tmp_path: Path) -> None:
    console = Console(browser, seeded)
    page = console.log_in(ANALYST)
    expect(page.locator("#write-panel")).to_be_hidden()
    expect(page.locator("#read-only-note")).to_be_visible()
    # the ramp, the overrides and the per-slice calibration, without a button to change them
    expect(page.locator('#ramp li[aria-current="step"]')).to_have_text("10%")
    expect(page.locator("#ramp [data-field=status]")).to_have_text("active")
    gold = page.locator('#slice-overrides tr[data-slice="tier=gold"]')
    expect(gold.locator("[data-field=updated_by]")).to_have_text("oncall")
    expect(gold.locator("[data-field=confidence_threshold]")).to_have_text("0.95")
    free = page.locator('#slice-calibration tr[data-slice="tier=free"]')
    expect(free.locator("[data-field=plain-threshold]")).to_have_text("0")
    expect(free.locator("[data-field=conservative-threshold]")).to_have_text("none: teacher")
    expect(page.locator("#ramp-cancel-form")).to_be_hidden()
    expect(page.locator("#slice-form")).to_be_hidden()
    expect(page.locator("#calibration-apply-form")).to_be_hidden()
    expect(page.locator("#slice-overrides form, #slice-overrides button")).to_have_count(0)
    expect(page.locator("#route-section button:visible")).to_have_count(0)
    assert page.locator("#calibration-section button:visible").all_inner_texts() == ["Recompute"]
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


# -- reading at a glance: one slice order, the URL, the row view, auto-refresh, a phone -------

# Beside the seeded rows, two slices of the last day: tier=basic, 40 comparisons, half agreeing
# (an interval lower than failing enterprise's, but not critical, so after it), and tier=trial,
# one disagreement (the lowest interval of all, from one sample: too few to rank, so last).
ORDER = ["tier=enterprise", "tier=basic", "tier=free", "tier=gold", "tier=trial"]
ROW = "free-d0-9"  # a tier=free disagreement; it gets the student's token probabilities
# (token, probability, top alternatives with theirs)
TOKENS = [
    ("Refunds", 0.98, []),
    (" take", 0.95, []),
    (" 7", 0.35, [(" 5", 0.55), (" 7", 0.35), (" 10", 0.05)]),
    (" business", 0.9, []),
    (" days", 0.85, []),
    (" to reach your account.", 0.99, []),
]


def seed_glance(url: str) -> None:
    insert(url, 40, "basic", 0, slices="""'{"tier": "basic"}'::jsonb""", agree="i < 20")
    insert(url, 1, "trial", 0, slices="""'{"tier": "trial"}'::jsonb""", agree="false")
    logprobs = [
        {
            "token": token,
            "logprob": math.log(p),
            "top_logprobs": [{"token": t, "logprob": math.log(q)} for t, q in alternatives],
        }
        for token, p, alternatives in TOKENS
    ]
    updated = fetch(
        url,
        "UPDATE requests SET student_logprobs = $1::jsonb WHERE request_id = $2 "
        "RETURNING request_id",
        json.dumps(logprobs),
        ROW,
    )
    assert updated == [{"request_id": ROW}]


# A series with buckets 0, 1, 3 and 4 compared, 2 empty and 5 with requests but no comparison:
# two line segments, nothing drawn across the gap (drawn by the page's own module).
GAPPED_CHART = """async () => {
  const { trendChart } = await import("/console/static/charts.js");
  const day = (i) => new Date(Date.UTC(2024, 4, 1 + i)).toISOString().replace(".000Z", "Z");
  const buckets = Array.from({ length: 8 }, (_, i) => day(i));
  const point = (i, samples, agreed) => ({ at: day(i), requests: samples || 3, samples, agreed,
    agreement: samples ? agreed / samples : null, ci_low: samples ? 0.5 : null,
    ci_high: samples ? 0.95 : null, below_bar: null });
  const series = { dimension: "tier", value: "gaps", bar: null, verdict: null,
    points: [point(0, 40, 36), point(1, 10, 8), point(3, 2, 2), point(4, 40, 30), point(5, 0, 0)] };
  const holder = document.createElement("div");
  holder.id = "gap-check";
  holder.className = "chart";
  holder.append(trendChart(series, buckets, "day", 40));
  document.querySelector("#agreement-section").append(holder);
  const svg = holder.querySelector("svg");
  const found = {
    segments: [...svg.querySelectorAll("polyline.series")].map(
      (l) => [l.dataset.from, l.dataset.to]),
    radii: Object.fromEntries([...svg.querySelectorAll("circle.point")].map(
      (c) => [c.dataset.samples, Number(c.getAttribute("r"))])),
    labels: [...svg.querySelectorAll("text.x-label")].map((t) => t.textContent),
  };
  holder.remove();
  return found;
}"""

HIDE_TAB = """(hidden) => {
  const state = hidden ? "hidden" : "visible";
  for (const [name, value] of [["hidden", hidden], ["visibilityState", state]]) {
    Object.defineProperty(document, name, { configurable: true, get: () => value });
  }
  document.dispatchEvent(new Event("visibilitychange"));
}"""

TEXTS = "nodes => nodes.map(n => n.textContent)"  # SVG text has no innerText
PAGE_WIDER_THAN_VIEWPORT = "document.documentElement.scrollWidth > window.innerWidth"


def test_the_console_reads_at_a_glance_and_keeps_its_state_in_the_url(
    seeded: GatewayServer, clean_db: str, tmp_path: Path
) -> None:
    seed_glance(clean_db)
    with chromium() as browser:
        order_and_charts_visit(browser, seeded, tmp_path)
        url_state_visit(browser, seeded, tmp_path)
        auto_refresh_visit(browser, seeded)
        narrow_visit(browser, seeded, tmp_path)


def order_and_charts_visit(browser: Browser, seeded: GatewayServer, tmp_path: Path) -> None:
    """The one slice order in the charts, the table and the per-slice sections; the thin slice
    marked; points sized by comparisons, lines broken over empty buckets, an x axis that fits."""
    console = Console(browser, seeded)
    page = console.log_in(ANALYST)
    charts = page.locator("#slice-charts .chart")
    expect(charts).to_have_count(len(ORDER))
    assert charts.evaluate_all("cs => cs.map(c => c.dataset.slice)") == ORDER
    rows = page.locator("#slice-table tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.slice)") == [*ORDER, "all"]
    trial = page.locator('#slice-charts .chart[data-slice="tier=trial"]')
    expect(trial).to_have_class("chart thin")
    expect(trial.locator(".badge")).to_have_text("few samples")
    expect(trial.locator(".sub")).to_contain_text("few samples: 1 of 30")
    trial_row = page.locator('#slice-table tr[data-slice="tier=trial"]')
    expect(trial_row).to_have_class("thin")
    expect(trial_row.locator("td").nth(6)).to_have_text("few samples")
    expect(page.locator("#agreement-note")).to_contain_text("1 with too few comparisons to rank")
    # the other per-slice lists follow the same order, the route as a whole last
    curves = page.locator("#calibration-charts .chart")
    assert curves.evaluate_all("cs => cs.map(c => c.dataset.curve)") == [
        "tier=enterprise",
        "tier=gold",
        "all",
    ]
    calibration = page.locator("#slice-calibration tbody tr")
    expect(calibration).to_have_count(len(ORDER))
    assert calibration.evaluate_all("rs => rs.map(r => r.dataset.slice)") == ORDER
    options = page.locator("#disagreement-filter select[name=slice] option")
    assert options.evaluate_all("os => os.map(o => o.value)") == ["", *ORDER]

    # enterprise: four days in a row, one line; each point's size grows with its comparisons
    enterprise = page.locator('#slice-charts .chart[data-slice="tier=enterprise"] svg')
    expect(enterprise.locator("polyline.series")).to_have_count(1)
    radii = enterprise.locator("circle.point").evaluate_all(
        "cs => cs.map(c => [Number(c.dataset.samples), Number(c.getAttribute('r'))])"
    )
    trial_radius = float(trial.locator("circle.point").get_attribute("r") or "0")
    assert all(r > trial_radius for _, r in radii)  # 20 comparisons against 1
    basic = page.locator('#slice-charts .chart[data-slice="tier=basic"] circle.point')
    assert float(basic.get_attribute("r") or "0") == 4.5  # 40 comparisons: the most of any
    assert max(r for _, r in radii) < 4.5  # 20
    labels = enterprise.locator("text.x-label").evaluate_all(TEXTS)
    assert 3 <= len(labels) <= 8, labels
    assert all(re.fullmatch(r"[A-Z][a-z]{2} \d{1,2}", label) for label in labels), labels
    gaps = page.evaluate(GAPPED_CHART)
    assert gaps["segments"] == [
        ["2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"],
        ["2024-05-04T00:00:00Z", "2024-05-05T00:00:00Z"],
    ]
    assert gaps["radii"]["2"] < gaps["radii"]["10"] < gaps["radii"]["40"] == 4.5
    assert "May 1" in gaps["labels"]
    # the hourly axis: times of day between dates, none touching another
    page.select_option("#window", "24h")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    hourly = page.locator("#aggregate-chart svg text.x-label").evaluate_all(TEXTS)
    assert hourly
    assert all(re.fullmatch(r"\d\d:00|[A-Z][a-z]{2} \d{1,2}", t) for t in hourly)
    assert overlapping(page, "#agreement-section") == []
    save_screenshot(page, tmp_path / "console-glance-agreement-24h.png", "#agreement-section")
    assert console.problems == []
    console.close()


def url_state_visit(browser: Browser, seeded: GatewayServer, tmp_path: Path) -> None:
    """A link with a state: through the login, the page in that state, the row in view; a
    reload keeps it, Back and Forward walk it."""
    console = Console(browser, seeded)
    page = console.page
    shared = (
        f"{seeded.url}/console?route={ROUTE}&window=30d&slice=tier%3Dfree&served_by=teacher"
        f"&reference=window&target=0.95&row={ROW}"
    )
    page.goto(shared)
    page.fill("#key", ANALYST)  # not logged in: the form, then straight back to the link
    page.click("button[type=submit]")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    expect(page.locator("#window")).to_have_value("30d")
    expect(page.locator("#disagreement-filter select[name=slice]")).to_have_value("tier=free")
    expect(page.locator("#disagreement-filter select[name=served_by]")).to_have_value("teacher")
    expect(page.locator("#slice-calibration-form input[name=target_agreement]")).to_have_value(
        "0.95"
    )
    expect(page.locator("#slice-calibration-note")).to_contain_text("Target 95%")
    items = page.locator("#disagreements article.disagreement")
    expect(items).to_have_count(4)  # tier=free's over 30 days
    check_row_view(page)
    save_screenshot(page, tmp_path / "console-row-view-1400.png", "#row-view")
    page.keyboard.press("Escape")
    expect(page.locator("#row-view")).to_be_hidden()
    expect(page).not_to_have_url(re.compile("row="))  # closed: out of the URL
    assert "window=30d" in page.url

    # a reload keeps it all; Back and Forward walk the window and a row opened here
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    expect(page.locator("#window")).to_have_value("30d")
    expect(items).to_have_count(4)
    page.select_option("#window", "7d")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    assert "window=7d" in page.url
    items.first.locator("a.row-link").click()
    expect(page.locator("#row-view")).to_be_visible()
    page.go_back()
    expect(page.locator("#row-view")).to_be_hidden()
    expect(page.locator("#window")).to_have_value("7d")
    page.go_back()
    expect(page.locator("#window")).to_have_value("30d")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    page.go_forward()
    expect(page.locator("#window")).to_have_value("7d")

    # the page itself: the old #review link, then the query string
    page.goto(f"{seeded.url}/console#review")
    expect(page.locator("body")).to_have_attribute("data-page", "review")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    assert "page=review" in page.url
    assert "#" not in page.url
    page.goto(f"{seeded.url}/console?page=review&route={ROUTE}&status=judged")
    expect(page.locator("body")).to_have_attribute("data-page", "review")
    expect(page.locator("#review-filter select[name=status]")).to_have_value("judged")
    page.click("#pages a[data-page=overview]")
    expect(page.locator("body")).to_have_attribute("data-page", "overview")
    assert "page=" not in page.url
    assert "status=judged" in page.url
    # 404s only: drift over 30 days has no reference (nothing 30 to 60 days back), and no
    # answer was judged for the quality view
    assert [p for p in console.problems if "404 (Not Found)" not in p] == []
    refused = {r.split("?")[0] for r in console.refused}
    assert refused <= {"404 /admin/reports/drift", "404 /admin/reports/quality"}
    console.close()


def check_row_view(page: Page) -> None:
    """The row as a reader wants it: the prompt, both answers diffed, the verdict, the tokens
    shaded with their alternatives on hover and on focus, the raw JSON a click away."""
    view = page.locator("#row-view")
    expect(view).to_be_visible()
    expect(view).to_have_attribute("data-ready", "true")
    expect(page.locator("#row-title")).to_have_text(f"Request {ROW}")
    expect(view.locator("#row-summary [data-field=slices]")).to_have_text("tier=free")
    expect(view.locator("#row-summary [data-field=served_by]")).to_have_text("teacher")
    expect(view.locator("#row-conversation .turn")).to_have_text(
        ["userHow long do refunds take? #009"]
    )
    expect(view.locator('#row-answers [data-side="teacher"]')).to_contain_text(TEACHER)
    expect(view.locator('#row-answers [data-side="student"]')).to_contain_text(STUDENT)
    assert view.locator("#row-answers ins.diff").all_inner_texts() == ["7", "account."]
    expect(view.locator("#row-verdict [data-field=agree]")).to_have_text("Disagrees")
    expect(view.locator("#row-verdict")).to_contain_text("score 0.40")
    tokens = view.locator("#row-tokens .tokens .tok")
    expect(tokens).to_have_count(len(TOKENS))
    assert tokens.all_inner_texts() == [t for t, _, _ in TOKENS]
    expect(tokens.nth(2)).to_have_class("tok band-3")  # 35%: between 30% and 50%
    expect(tokens.nth(0)).to_have_class("tok band-0")
    expect(view.locator("[data-field=token-summary]")).to_have_text("6 tokens, 1 below 50%.")
    tokens.nth(2).hover()
    detail = view.locator("#row-token-detail")
    expect(detail).to_contain_text('" 7" token 3: probability 35.0%')
    expect(detail.locator("tbody tr")).to_have_count(3)
    expect(detail.locator("tbody tr").first).to_have_text('" 5"55.0%')
    tokens.nth(0).focus()  # the keyboard: one tab stop, the arrows move
    page.keyboard.press("ArrowRight")
    expect(tokens.nth(1)).to_be_focused()
    expect(detail).to_contain_text('" take" token 2: probability 95.0%')
    view.locator("#row-raw summary").click()
    expect(view.locator("#row-raw pre")).to_contain_text(f'"request_id": "{ROW}"')
    raw = view.locator("#row-raw a")
    expect(raw).to_have_attribute("href", f"/console/api/requests/{ROW}")


def auto_refresh_visit(browser: Browser, seeded: GatewayServer) -> None:
    """The toggle refreshes every minute on a fake clock: not while a filter is being typed,
    not while the tab is hidden (it catches up when shown), not once switched off."""
    console = Console(browser, seeded)
    page = console.page
    page.clock.install()
    console.log_in(SRE)
    refreshed = page.locator("body")
    toggle = page.locator("#auto-refresh")
    expect(toggle).to_be_visible()
    expect(toggle).not_to_be_checked()
    toggle.check()
    expect(refreshed).to_have_attribute("data-auto-refresh", "on")
    expect(page.locator("#auto-refresh-state")).to_have_text("every 60 s")
    assert "refresh=on" in page.url
    trends = lambda: sum("/console/api/trend" in u for u in console.requests)  # noqa: E731
    before = trends()
    page.clock.run_for(61_000)
    expect(refreshed).to_have_attribute("data-refreshes", "1")
    assert trends() == before + 1
    expect(page.locator("#slice-charts .chart")).to_have_count(len(ORDER))  # redrawn in place

    # typing in a form (focused, then typed and not sent) holds it back
    page.fill("#disagreement-filter input[name=since]", "36h")
    page.clock.run_for(61_000)
    expect(refreshed).to_have_attribute("data-auto-refresh", "typing")
    expect(page.locator("#auto-refresh-state")).to_have_text("paused while you type")
    page.locator("#agreement-section h2").click()  # the focus leaves; the text is still unsent
    page.clock.run_for(6_000)
    expect(refreshed).to_have_attribute("data-auto-refresh", "typing")
    page.click("#disagreement-filter button[type=submit]")
    page.locator("#agreement-section h2").click()
    page.clock.run_for(6_000)
    expect(refreshed).to_have_attribute("data-refreshes", "2")
    expect(page.locator("#disagreement-filter input[name=since]")).to_have_value("36h")

    # a hidden tab is never refreshed; shown again, it catches up at once
    page.evaluate(HIDE_TAB, True)
    page.clock.run_for(61_000)
    expect(refreshed).to_have_attribute("data-auto-refresh", "hidden")
    page.clock.run_for(120_000)
    assert refreshed.get_attribute("data-refreshes") == "2"
    page.evaluate(HIDE_TAB, False)
    expect(refreshed).to_have_attribute("data-refreshes", "3")

    # off: nothing more; a reload of the link turns it back on
    toggle.uncheck()
    expect(refreshed).to_have_attribute("data-auto-refresh", "off")
    assert "refresh=" not in page.url
    count = trends()
    page.clock.run_for(180_000)
    assert trends() == count
    toggle.check()
    page.reload()
    expect(page.locator("#auto-refresh")).to_be_checked()
    assert console.problems == []
    console.close()


def narrow_visit(browser: Browser, seeded: GatewayServer, tmp_path: Path) -> None:
    """A phone, 390 pixels wide: no sideways page scroll anywhere, the header folded behind
    Menu, wide tables scrolling in their own box, the row view across the screen."""
    console = Console(browser, seeded)
    page = console.page
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{seeded.url}/console")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the login form too
    console.log_in(SRE)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert not page.evaluate(PAGE_WIDER_THAN_VIEWPORT)
    expect(page.locator("#menu-toggle")).to_be_visible()
    expect(page.locator("#route")).to_be_hidden()
    expect(page.locator("#pages")).to_be_hidden()
    page.click("#menu-toggle")
    expect(page.locator("#menu-toggle")).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#route")).to_be_visible()
    expect(page.locator("#pages a[data-page=review]")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.click("#menu-toggle")
    expect(page.locator("#route")).to_be_hidden()
    # the candidates' table is wider than the screen: it scrolls in its box, not the page
    box = page.locator("#candidates-live").locator("xpath=..")
    assert box.evaluate("b => b.scrollWidth > b.clientWidth")
    assert box.evaluate("b => getComputedStyle(b).overflowX") == "auto"
    save_screenshot(page, tmp_path / "console-narrow-390.png")
    page.locator("#disagreements a.row-link").first.click()
    expect(page.locator("#row-view")).to_have_attribute("data-ready", "true")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.keyboard.press("Escape")
    # closing goes Back (history.back()): a goto while that traversal is pending is aborted
    expect(page).not_to_have_url(re.compile("row="))
    page.goto(f"{seeded.url}/console?route={ROUTE}&window=7d&row={ROW}")  # with its tokens
    expect(page.locator("#row-view .tokens .tok")).to_have_count(len(TOKENS))
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    view = page.locator("#row-view")
    assert view.evaluate("v => v.scrollWidth <= v.clientWidth")
    assert (view.bounding_box() or {"width": 0})["width"] <= 390
    save_screenshot(page, tmp_path / "console-narrow-row-390.png", "#row-view")
    page.keyboard.press("Escape")
    page.click("#menu-toggle")
    page.click("#pages a[data-page=review]")
    expect(page.locator("body")).to_have_attribute("data-page", "review")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    expect(page.locator("#route")).to_be_hidden()  # a choice made: the menu folds again
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    save_screenshot(page, tmp_path / "console-narrow-review-390.png")
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.click("#pages a[data-page=overview]")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    expect(page.locator("#menu-toggle")).to_be_hidden()
    save_screenshot(page, tmp_path / "console-desktop-1400.png")
    # the review page's quality view: no answer judged yet, its 404 only
    assert {r.split("?")[0] for r in console.refused} == {"404 /admin/reports/quality"}
    assert [p for p in console.problems if "404 (Not Found)" not in p] == []
    console.close()


# -- the review page -------------------------------------------------------------------------

REVIEWER = "console-reviewer-secret"
CONVERSATION = (
    "jsonb_build_object('messages', jsonb_build_array("
    "jsonb_build_object('role', 'system', 'content', 'You answer questions about refunds.'), "
    "jsonb_build_object('role', 'user', 'content', 'I sent the jacket back.'), "
    "jsonb_build_object('role', 'assistant', 'content', 'Thanks, the return is registered.'), "
    "jsonb_build_object('role', 'user', 'content', 'How long do refunds take? #' || i)))"
)


def seed_review(url: str) -> None:
    """Eight requests of the last day: four enterprise ones where the champion (``default``)
    gave the same other answer (one group of four), and four free ones, a whole conversation
    each, where it agreed once and otherwise answered 7, 8 or 9 days (three groups of one).
    ``rival`` answered every request as the teacher did."""
    enterprise = """'{"tier": "enterprise"}'::jsonb"""
    free = """'{"tier": "free"}'::jsonb"""
    insert(url, 4, "rv-ent", 0.1, slices=enterprise, agree="false", teacher_status="200")
    insert(
        url,
        4,
        "rv-free",
        0.1,
        slices=free,
        agree="i = 0",
        teacher_status="200",
        request_payload=CONVERSATION,
    )
    free_answer = (
        "'Refunds take ' || (6 + right(request_id, 1)::int) || ' business days to reach your card.'"
    )
    for student, output, agree in (
        (
            "default",
            f"CASE WHEN agree THEN teacher_output WHEN slices->>'tier' = 'enterprise' "
            f"THEN '{STUDENT}' ELSE {free_answer} END",
            "agree",
        ),
        ("rival", "teacher_output", "true"),
    ):
        execute(
            url,
            "INSERT INTO student_answers (request_id, student, source, created_at, route, "
            "endpoint, slices, student_status, student_output, agree) "
            f"SELECT request_id, '{student}', 'live', created_at, route, endpoint, slices, 'ok', "
            f"{output}, {agree} FROM requests WHERE request_id LIKE 'rv-%'",
        )


@pytest.fixture
def reviewing(
    make_gateway: Callable[..., GatewayServer],
    monkeypatch: pytest.MonkeyPatch,
    app_key: str,
    clean_db: str,
) -> GatewayServer:
    monkeypatch.setenv("SGW_TEST_SRE_KEY", SRE)
    monkeypatch.setenv("SGW_TEST_ANALYST_KEY", ANALYST)
    monkeypatch.setenv("SGW_TEST_REVIEWER_KEY", REVIEWER)
    reviewer = {"name": "rita", "key_env": "SGW_TEST_REVIEWER_KEY", "scopes": ["reviewer"]}
    gateway = make_gateway(console_routes(), auth={"keys": [*KEYS, reviewer]})
    seed_review(clean_db)
    return gateway


def test_a_reviewer_judges_by_keyboard_and_the_quality_view_counts_it(
    reviewing: GatewayServer, clean_db: str, tmp_path: Path
) -> None:
    with chromium() as browser:
        picked = reviewer_visit(browser, reviewing, tmp_path)
        quality_visit(browser, reviewing, tmp_path)
    tasks = fetch(
        clean_db,
        "SELECT id, request_id, verdict, corrected_output, reviewer FROM reviews ORDER BY id",
    )
    expected = {f"rv-ent-{i}": "student_correct" for i in range(4)}
    expected.update({f"rv-free-{i}": "teacher_correct" for i in (1, 2, 3)})
    expected[picked["corrected"]] = "both_wrong"
    assert {t["request_id"]: t["verdict"] for t in tasks} == expected
    assert {t["reviewer"] for t in tasks} == {"rita"}
    assert [t["corrected_output"] for t in tasks if t["corrected_output"]] == [
        "Refunds take 5 to 7 business days."
    ]
    history = fetch(clean_db, "SELECT review_id, verdict, via_review FROM review_verdicts")
    assert len(history) == 7  # the analyst's key press judged nothing
    group = [h for h in history if h["verdict"] == "student_correct"]
    leader = next(t["id"] for t in tasks if t["request_id"] == picked["group"])
    assert sorted(h["via_review"] or 0 for h in group) == [0, leader, leader, leader]


def focus_task(page: Page, group_open: str) -> str:
    """Press k, then j, until the task in focus is one of a group of ``group_open`` open
    tasks; the task's request id."""
    task = page.locator("#review-task")
    for key in ["k"] * 7 + ["j"] * 7:
        expect(task).to_have_attribute("data-ready", "true")
        if task.get_attribute("data-group-open") == group_open:
            request_id = task.locator("header a, header span.mono").first.inner_text()
            return request_id.removeprefix("request ")
        page.keyboard.press(key)
    raise AssertionError(f"no open task in a group of {group_open}")


def reviewer_visit(browser: Browser, gateway: GatewayServer, tmp_path: Path) -> dict[str, str]:
    console = Console(browser, gateway)
    page = console.log_in(REVIEWER)

    # the review page alone: no other section, no link to one
    expect(page.locator("#review-section")).to_be_visible()
    for hidden in (
        "#route-section",
        "#agreement-section",
        "#disagreements-section",
        "#quality-section",
    ):
        expect(page.locator(hidden)).to_be_hidden()
    expect(page.locator("#pages")).to_be_hidden()
    expect(page.locator("#review-note")).to_contain_text("No open task here")

    # draw every disagreement of the last 7 days
    draw = page.locator("#review-draw")
    draw.locator("input[name=per_slice]").fill("10")
    expect(draw.locator("input[name=disagreements_only]")).to_be_checked()
    draw.locator("button[type=submit]").click()
    expect(page.locator("#review-draw-result")).to_have_text(
        "Drew 7 new tasks for default (tier=enterprise: 4; tier=free: 3)."
    )
    expect(page.locator("#review-queue li")).to_have_count(7)
    students = page.locator("#review-filter select[name=student] option")
    expect(students).to_have_text(["(any)", "default (champion, 7 open)"])
    progress = page.locator("#review-progress")
    expect(progress).to_have_attribute("data-open", "7")

    # a free task: the whole conversation, the answers diffed, every student's answer
    task = page.locator("#review-task")
    corrected = focus_task(page, "1")
    expect(task.locator(".turn")).to_have_count(4)
    roles = task.locator(".turn").evaluate_all("ts => ts.map(t => t.dataset.role)")
    assert roles == ["system", "user", "assistant", "user"]
    expect(task.locator(".turn").last).to_contain_text("How long do refunds take? #")
    assert task.locator('[data-side="teacher"] del.diff').all_inner_texts() == ["5"]
    assert task.locator('[data-side="student"] ins.diff').all_inner_texts() == [
        str(6 + int(corrected[-1]))
    ]
    expect(task.locator('.other[data-student="rival"]')).to_contain_text("agrees")
    expect(task.locator("[data-field=slices]")).to_have_text("tier=free")
    expect(task.locator("#review-group")).to_be_disabled()

    # e: the correction box (keys are text there), Escape leaves it, 4: both wrong
    page.keyboard.press("e")
    expect(page.locator("#review-correction")).to_be_focused()
    page.keyboard.type("Refunds take 5 to 7 business days.")
    page.keyboard.press("Escape")
    expect(page.locator("#review-correction")).not_to_be_focused()
    page.keyboard.press("4")
    expect(page.locator("#review-result")).to_contain_text(": Both wrong.")
    expect(progress).to_have_attribute("data-judged", "1")
    expect(page.locator("#review-queue li")).to_have_count(6)
    expect(task).not_to_have_attribute("data-task-id", "")

    # an enterprise task: its group of four, judged at once with g and 2
    leader = focus_task(page, "4")
    expect(page.locator("#review-group-size")).to_have_text(
        "This answer pair repeats in 4 open tasks (this one and 3 more)."
    )
    assert task.locator('[data-side="student"] ins.diff').all_inner_texts() == ["7", "account."]
    page.keyboard.press("g")
    expect(page.locator("#review-group")).to_be_checked()
    save_screenshot(page, tmp_path / "console-review.png")
    page.keyboard.press("2")
    expect(page.locator("#review-result")).to_contain_text(
        ": Student correct, with 3 more of its group"
    )
    expect(progress).to_have_attribute("data-judged", "5")
    expect(page.locator("#review-queue li")).to_have_count(2)

    # the last two with letters; then nothing is open
    expect(task).to_have_attribute("data-ready", "true")
    page.keyboard.press("t")
    expect(progress).to_have_attribute("data-judged", "6")
    expect(task).to_have_attribute("data-ready", "true")
    page.keyboard.press("1")
    expect(progress).to_have_attribute("data-open", "0")
    expect(progress).to_have_attribute("data-judged", "7")
    expect(task).to_be_hidden()

    # the judged ones: a group member's verdict and its history
    page.select_option("#review-filter select[name=status]", "judged")
    expect(page.locator("#review-queue li")).to_have_count(7)
    page.locator('#review-queue li:not(.current)[data-verdict="student_correct"]').first.click()
    expect(task).to_have_attribute("data-ready", "true")
    expect(task.locator("[data-field=verdict]")).to_contain_text("Judged: Student correct, by rita")
    expect(task.locator("table.history")).to_contain_text("with its group, from task #")
    save_screenshot(page, tmp_path / "console-review-judged.png")

    # no request outside the review API, nothing refused, nothing complained of
    admin = [u for u in console.requests if "/admin/" in u or "/console/api/" in u]
    assert all("/admin/reviews" in u for u in admin), admin
    assert console.refused == []
    assert console.problems == []
    console.close()
    return {"corrected": corrected, "group": leader}


def quality_visit(browser: Browser, gateway: GatewayServer, tmp_path: Path) -> None:
    """As the SRE: the review page with verdict buttons and the quality figures; as the
    analyst: the same figures, no verdict button, and keys that judge nothing."""
    sre = Console(browser, gateway)
    page = sre.log_in(SRE)
    page.click("#pages a[data-page=review]")
    expect(page.locator("body")).to_have_attribute("data-page", "review")
    expect(page.locator("#route-section")).to_be_hidden()
    expect(page.locator("#review-note")).to_contain_text("No open task here")
    page.select_option("#review-filter select[name=status]", "judged")
    expect(page.locator("#review-task")).to_have_attribute("data-ready", "true")
    expect(page.locator("#review-form")).to_be_visible()
    expect(page.locator("#review-draw-panel")).to_be_visible()
    check_quality(page)
    save_screenshot(page, tmp_path / "console-quality.png", "#quality-section")
    # the overview it logged in to has too few rows for drift (400): the review page, nothing
    assert [r for r in sre.refused if "/admin/reviews" in r or "/quality" in r] == []
    sre.close()

    analyst = Console(browser, gateway)
    page = analyst.log_in(ANALYST)
    page.goto(f"{gateway.url}/console#review")
    expect(page.locator("body")).to_have_attribute("data-page", "review")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    expect(page.locator("#review-read-only")).to_be_visible()
    expect(page.locator("#review-form")).to_be_hidden()
    expect(page.locator("#review-draw-panel")).to_be_hidden()
    page.select_option("#review-filter select[name=status]", "judged")
    expect(page.locator("#review-task")).to_have_attribute("data-ready", "true")
    page.locator("body").press("2")  # judges nothing (the verdicts are counted afterwards)
    check_quality(page)
    assert [r for r in analyst.refused if "/admin/reviews" in r or "/quality" in r] == []
    analyst.close()


def check_quality(page: Page) -> None:
    """Judged: enterprise teacher wrong 4/4, default 0/4 (right in all 4 disagreements); free
    teacher wrong 1/3 (both wrong), default 3/3 (right in none); so the route: teacher 5/7,
    default 3/7, default right in 4 of 7 disagreements. Free's default row lies wholly above
    its route-wide rate; enterprise (the teacher's interval highest) comes first."""

    def rate(part: int, whole: int) -> tuple[str, str]:
        low, high = wilson_interval(part, whole)
        return f"{100 * part / whole:.1f}%", f"{100 * low:.1f}%{DASH}{100 * high:.1f}%"

    table = page.locator("#quality")
    expect(table.locator("tbody")).to_have_count(3)
    order = table.locator("tbody").evaluate_all("bs => bs.map(b => b.dataset.slice)")
    assert order == ["tier=enterprise", "tier=free", "all"]
    expected = {
        ("tier=enterprise", "teacher"): (4, 4, None),
        ("tier=enterprise", "default"): (4, 0, (4, 4)),
        ("tier=free", "teacher"): (3, 1, None),
        ("tier=free", "default"): (3, 3, (0, 3)),
        ("all", "teacher"): (7, 5, None),
        ("all", "default"): (7, 3, (4, 7)),
    }
    shown = {
        (row["slice"], row["subject"]): row["cells"]
        for row in table.locator("tr[data-subject]").evaluate_all(
            """rows => rows.map(r => ({slice: r.dataset.slice, subject: r.dataset.subject,
                cells: Object.fromEntries([...r.querySelectorAll("[data-field]")].map(
                    c => [c.dataset.field, c.textContent]))}))"""
        )
    }
    assert set(shown) == set(expected)
    for (slice_, subject), (judged, wrong, right) in expected.items():
        error, error_ci = rate(wrong, judged)
        figures = {
            "subject": subject,
            "judged": str(judged),
            "wrong": str(wrong),
            "error": error,
            "error-ci": error_ci,
            "from-reviews": str(judged),
            "from-feedback": "0",
            "disagreements": DASH,
            "student-right": DASH,
            "student-right-ci": DASH,
        }
        if right is not None:
            share, share_ci = rate(*right)
            figures.update(
                {
                    "disagreements": str(right[1]),
                    "student-right": share,
                    "student-right-ci": share_ci,
                }
            )
        assert shown[(slice_, subject)] == figures, (slice_, subject)
    assert table.locator("tr[data-worse]").evaluate_all(
        "rs => rs.map(r => `${r.dataset.slice} ${r.dataset.subject}`)"
    ) == ["tier=free default"]
    expect(page.locator("#quality-note")).to_contain_text("teacher wrong in 5 of 7 (71.4%)")
