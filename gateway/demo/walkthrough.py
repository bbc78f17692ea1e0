"""What ``shadow-gateway demo`` does once everything runs: shadow, report, rollout, report.

1. Replay ``shadow_requests`` prompts in shadow mode: the teacher answers, the student is
   called in the background and both are logged with the student's confidence.
2. Wait until the log holds them, then print the threshold calibration (the reports'
   :meth:`~gateway.services.reports.Reports.thresholds`): the lowest confidence threshold
   at which every critical slice keeps its agreement bar.
3. Switch the route to rollout at that threshold through the admin API (audited, with a
   reason, under the demo's admin key) and replay ``rollout_requests`` more: the student now
   answers when its confidence reaches the threshold, the teacher otherwise.
4. Print the slice report (agreement, fallbacks, student share per style).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from gateway.demo.replay import ReplayResult, replay
from gateway.demo.stack import ROUTE, DemoError, DemoStack
from gateway.demo.task import STYLES


def _progress(say: Callable[[str], None], what: str) -> Callable[[int, int], None]:
    step = [0]

    def show(done: int, total: int) -> None:
        tenth = done * 10 // total
        if tenth > step[0] or done == total:
            step[0] = tenth
            say(f"      {what}: {done}/{total}")

    return show


def _logged(url: str, since: float) -> dict[str | None, int]:
    """Rows of the demo route since ``since``, by ``student_status`` (None: not in yet)."""
    from datetime import UTC, datetime

    import asyncpg

    from gateway.db.engine import plain_dsn

    async def count() -> dict[str | None, int]:
        connection = await asyncpg.connect(plain_dsn(url), timeout=10)
        try:
            found = await connection.fetch(
                "SELECT student_status, count(*) AS n FROM requests "
                "WHERE route = $1 AND created_at >= $2 GROUP BY 1",
                ROUTE,
                datetime.fromtimestamp(since, UTC),
            )
        finally:
            await connection.close()
        return {row["student_status"]: int(row["n"]) for row in found}

    return asyncio.run(count())


def wait_logged(
    stack: DemoStack, expected: int, since: float, timeout_s: float = 180
) -> dict[str | None, int]:
    """Wait until ``expected`` rows have the student's half; their counts by student status."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = _logged(stack.database_url, since)
        pending = statuses.get(None, 0)
        rows = sum(statuses.values())
        if rows >= expected and not pending:
            return statuses
        if time.monotonic() > deadline:
            raise DemoError(
                f"only {rows - pending} of {expected} requests were logged with the student's "
                f"half after {timeout_s:g} s"
            )
        time.sleep(0.5)


def print_statuses(statuses: dict[str | None, int], say: Callable[[str], None]) -> None:
    counts = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()) if status)
    say(f"      the student's shadow calls: {counts}")
    if statuses.get("dropped"):
        say(
            "      (dropped: more calls in flight than student.max_concurrency; the student "
            "could not keep up, so those requests have no comparison)"
        )


def reports(stack: DemoStack, which: str) -> dict[str, Any]:
    """The ``slices`` or ``thresholds`` report of the demo route over the last day."""
    from gateway.config import load_settings
    from gateway.db.engine import create_engine
    from gateway.protocol.reports import DAY, window
    from gateway.services.reports import Reports

    assert stack.config_path is not None
    settings = load_settings(stack.config_path)

    async def run() -> dict[str, Any]:
        engine = create_engine(stack.database_url, settings.config.database)
        try:
            service = Reports(engine, settings.config)
            span = window(None, None, DAY)
            if which == "thresholds":
                return await service.thresholds(ROUTE, span)
            return await service.slices(ROUTE, span, "style")
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def print_thresholds(result: dict[str, Any], say: Callable[[str], None]) -> float | None:
    recommendation = result["recommendation"]
    threshold: float | None = recommendation["threshold"]
    say(f"{result['comparisons']} shadow comparisons with a student confidence (min_prob).")
    bars = ", ".join(
        f"{bar['dimension']}={bar['value']} >= {bar['min_agreement']:.0%}" for bar in result["bars"]
    )
    say(f"Bars: {bars}")
    if threshold is None:
        say(f"No recommended threshold: {recommendation['reason']}")
        return None
    say(f"Recommended threshold: {threshold:g}: {recommendation['reason']}. At it:")
    for served in recommendation["served"]:
        name = "all" if served["dimension"] == "all" else f"{served['dimension']}={served['value']}"
        say(
            f"  {name:<18} the student would serve {_pct(served['share']):>4} "
            f"({served['served']} of {served['total']}), agreeing with the teacher on "
            f"{_pct(served['agreement'])}"
        )
    return threshold


def print_slices(result: dict[str, Any], say: Callable[[str], None]) -> None:
    header = f"  {'SLICE':<18}{'REQUESTS':>9}{'COMPARED':>9}{'AGREEMENT':>10}"
    say(f"{header}{'BAR':>6}  {'VERDICT':<16}{'FALLBACKS':>9}{'STUDENT':>8}")
    for line in [*result["slices"], result["aggregate"]]:
        name = "all" if line is result["aggregate"] else f"{line['dimension']}={line['value']}"
        say(
            f"  {name:<18}{line['requests']:>9}{line['samples']:>9}"
            f"{_pct(line['agreement']):>10}{_pct(line['bar']):>6}  "
            f"{(line['verdict'] or '-'):<16}{_pct(line['fallback_rate']):>9}"
            f"{_pct(line['student_share']):>8}"
        )


def print_replay(result: ReplayResult, say: Callable[[str], None]) -> None:
    served = ", ".join(f"{who} {n}" for who, n in sorted(result.served_by.items()))
    say(f"      {result.sent} requests in {result.seconds:.1f} s; answered by: {served}")
    if result.fallbacks:
        reasons = ", ".join(f"{why} {n}" for why, n in sorted(result.fallbacks.items()))
        say(f"      the teacher stepped in: {reasons}")
    errors = {code: n for code, n in result.status.items() if code != 200}
    if errors:
        say(f"      errors: {errors}")
    correct = ", ".join(
        f"{style} {result.right[style]}/{result.by_style[style]}"
        for style in STYLES
        if result.by_style[style]
    )
    say(f"      right answers the app got, by style: {correct}")


def switch_to_rollout(stack: DemoStack, threshold: float) -> dict[str, Any]:
    response = httpx.patch(
        f"{stack.gateway_url}/admin/routes/{ROUTE}",
        headers={"authorization": f"Bearer {stack.admin_key}"},
        json={
            "mode": "rollout",
            "rollout_percent": 100,
            "confidence_threshold": threshold,
            "confidence_method": "min_prob",
            "reason": f"demo: the shadow comparisons recommend threshold {threshold:g}",
        },
        timeout=30,
        trust_env=False,
    )
    if response.status_code != 200:
        raise DemoError(f"the admin API refused the rollout: {response.text}")
    route: dict[str, Any] = response.json()["route"]
    return route


def walkthrough(
    stack: DemoStack,
    *,
    shadow_requests: int,
    rollout_requests: int,
    seed: int,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns what happened, for tests and callers."""
    say(f"\n== 1. shadow: {shadow_requests} requests (the teacher answers, the student shadows)")
    since = time.time() - 1
    shadow = replay(
        stack.gateway_url,
        stack.app_key,
        ROUTE,
        count=shadow_requests,
        seed=seed,
        progress=_progress(say, "shadow"),
    )
    print_replay(shadow, say)
    say("      waiting for the log to hold both answers of every request ...")
    print_statuses(wait_logged(stack, shadow.sent, since), say)

    say("\n== 2. threshold calibration (shadow comparisons, by style)")
    calibration = reports(stack, "thresholds")
    threshold = print_thresholds(calibration, say)
    if threshold is None:
        threshold = stack.threshold
        say(f"      keeping the configured threshold {threshold:g}")

    say(f"\n== 3. rollout: 100% of users at confidence threshold {threshold:g} (admin API)")
    live = switch_to_rollout(stack, threshold)
    say(
        f"      route {ROUTE}: mode={live['mode']} percent={live['rollout_percent']:g} "
        f"threshold={live['confidence_threshold']:g} (version {live['version']}, audited)"
    )
    time.sleep(1.5)  # every gateway replica picks the change up within about a second
    rollout = replay(
        stack.gateway_url,
        stack.app_key,
        ROUTE,
        count=rollout_requests,
        seed=seed + 1,
        progress=_progress(say, "rollout"),
    )
    print_replay(rollout, say)
    wait_logged(stack, shadow.sent + rollout.sent, since)

    say("\n== 4. slice report (both phases), worst slice first")
    slices = reports(stack, "slices")
    print_slices(slices, say)
    return {
        "shadow": shadow,
        "rollout": rollout,
        "threshold": threshold,
        "calibration": calibration,
        "slices": slices,
        "route": live,
    }


def try_it(stack: DemoStack, say: Callable[[str], None] = print) -> None:
    base = stack.gateway_url
    key = stack.app_key
    say(
        f"""
== running: try it (Ctrl-C stops everything)

  gateway      {base}/v1            app key:   {key}
  admin        {base}/admin/routes  admin key: {stack.admin_key}
  metrics      {base}/metrics
  student      {stack.student_url}/v1  (vLLM, model demo-student)
  config       {stack.config_path}

  curl {base}/v1/chat/completions \\
    -H 'authorization: Bearer {key}' -H 'content-type: application/json' \\
    -d '{{"model": "{ROUTE}", "messages": [{{"role": "user", "content": "July 4th, 2025"}}]}}' -i

  # with the openai package (pip install openai):
  python -c 'import openai; c = openai.OpenAI(base_url="{base}/v1", api_key="{key}"); \\
print(c.chat.completions.create(model="{ROUTE}", \\
messages=[{{"role": "user", "content": "9 days after 2024-02-25"}}]).choices[0].message.content)'

  SHADOW_GATEWAY_CONFIG={stack.config_path} DATABASE_URL='{stack.database_url}' \\
    shadow-gateway report slices {ROUTE} --dimension style
  (likewise: report thresholds {ROUTE}, export --route {ROUTE} -o dates.jsonl, rollout status)
"""
    )
