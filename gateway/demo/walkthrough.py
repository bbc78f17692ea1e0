"""What ``shadow-gateway demo`` does once everything runs: shadow, reports, rollout, report.

1. Replay ``shadow_requests`` prompts in shadow mode: the teacher answers, both students (the
   champion and the candidate) are called in the background, and all three answers are
   logged with each student's confidence.
2. Wait until the log holds them, then print the candidates report (the reports'
   :meth:`~gateway.services.reports.Reports.candidates`): per slice, each student's agreement
   with the teacher and the candidate's paired difference to the champion, with a verdict.
3. Print the threshold calibration (:meth:`~gateway.services.reports.Reports.thresholds`):
   the lowest confidence threshold at which every critical slice keeps its agreement bar.
4. Calibrate per slice through the admin API and apply it (one audited change): each style
   gets the lowest threshold at which the champion's served answers agree with the teacher
   at least 95 % of the time, and a style no threshold makes good enough (relative dates,
   which the student never learned) goes back to the teacher.
5. Switch the route to rollout at the route's threshold through the admin API (audited, with
   a reason, under the demo's admin key) and replay ``rollout_requests`` more: the champion
   now answers where its slice and its confidence allow, the teacher otherwise (and the
   candidate is shadowed where the teacher answers).
6. Print the slice report (agreement, fallbacks, student share, requests kept per style).
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
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


def _answered(url: str, since: float) -> dict[str, dict[str, int]]:
    """Live answer rows of the demo route since ``since``, by student and ``student_status``."""
    from datetime import UTC, datetime

    import asyncpg

    from gateway.db.engine import plain_dsn

    async def count() -> dict[str, dict[str, int]]:
        connection = await asyncpg.connect(plain_dsn(url), timeout=10)
        try:
            found = await connection.fetch(
                "SELECT student, student_status, count(*) AS n FROM student_answers "
                "WHERE route = $1 AND created_at >= $2 AND source = 'live' "
                "AND student_status IS NOT NULL GROUP BY 1, 2",
                ROUTE,
                datetime.fromtimestamp(since, UTC),
            )
        finally:
            await connection.close()
        counts: dict[str, dict[str, int]] = {}
        for row in found:
            counts.setdefault(row["student"], {})[row["student_status"]] = int(row["n"])
        return counts

    return asyncio.run(count())


def wait_answered(
    stack: DemoStack, expected: int, since: float, timeout_s: float = 180
) -> dict[str, dict[str, int]]:
    """Wait until every student has an answer row (made, failed or dropped) for ``expected``
    requests: a candidate's calls may still run when the champion's are in."""
    names = [student.name for student in stack.students]
    deadline = time.monotonic() + timeout_s
    while True:
        answered = _answered(stack.database_url, since)
        short = {name: expected - sum(answered.get(name, {}).values()) for name in names}
        if all(missing <= 0 for missing in short.values()):
            return answered
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{name} {n}" for name, n in short.items() if n > 0)
            raise DemoError(f"answers still missing after {timeout_s:g} s: {waiting}")
        time.sleep(0.5)


def print_statuses(answered: dict[str, dict[str, int]], say: Callable[[str], None]) -> None:
    say("      the students' shadow calls:")
    for student, statuses in answered.items():
        counts = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
        say(f"        {student:<12} {counts}")
    if any(statuses.get("dropped") for statuses in answered.values()):
        say(
            "      (dropped: more calls in flight than the student's max_concurrency; it "
            "could not keep up, so those requests have no comparison for it)"
        )


def reports(stack: DemoStack, which: str) -> dict[str, Any]:
    """The ``slices``, ``thresholds`` or ``candidates`` report of the demo route over the
    last day."""
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
            if which == "candidates":
                return await service.candidates(ROUTE, span)
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


# The CLI's words (``report candidates``), so the demo reads like the command it points to.
_VERDICTS = {
    "baseline": "(baseline)",
    "better": "BETTER",
    "worse": "WORSE",
    "inconclusive": "inconclusive",
    "not_enough_data": "too few pairs",
}


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0%}"


def _interval(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None:
        return "-"
    if signed:
        return f"{low:+.0%} to {high:+.0%}"
    return f"{low:.0%} to {high:.0%}"


def print_candidates(result: dict[str, Any], say: Callable[[str], None]) -> None:
    """Per source, the slices (worst first, as the report orders them), then the whole route:
    each student's agreement with the teacher, and each candidate's paired difference to the
    baseline on the requests both were compared on, with its verdict."""
    students = ", ".join(f"{s['name']} ({s['status']})" for s in result["students"])
    say(f"Students: {students}.")
    say(
        f"Each against {result['baseline']} on the requests both answered: the difference in "
        f"agreement with the teacher, 95% interval; under {result['min_pairs']} pairs, no verdict."
    )
    for source in result["sources"]:
        say(f"  {source['source']} answers")
        header = f"  {'SLICE':<16}{'STUDENT':<12}{'COMPARED':>9}{'AGREEMENT':>10}  {'95% CI':<12}"
        say(f"{header}{'PAIRS':>6}{'DIFF':>6}  {'95% CI':<13} VERDICT")
        for line in [*source["slices"], source["overall"]]:
            name = "all" if line["dimension"] == "all" else f"{line['dimension']}={line['value']}"
            for entry in line["candidates"]:
                paired = entry["paired"] or {}
                say(
                    f"  {name:<16}{entry['student']:<12}{entry['compared']:>9}"
                    f"{_pct(entry['agreement']):>10}  "
                    f"{_interval(entry['ci_low'], entry['ci_high']):<12}"
                    f"{paired.get('pairs', '-'):>6}{_signed(paired.get('difference')):>6}  "
                    f"{_interval(paired.get('ci_low'), paired.get('ci_high'), True):<13} "
                    f"{_VERDICTS.get(entry['verdict'], entry['verdict'])}"
                )
                name = ""


def print_slices(result: dict[str, Any], say: Callable[[str], None]) -> None:
    header = f"  {'SLICE':<18}{'REQUESTS':>9}{'COMPARED':>9}{'AGREEMENT':>10}"
    say(f"{header}{'BAR':>6}  {'VERDICT':<16}{'FALLBACKS':>9}{'STUDENT':>8}{'KEPT':>6}")
    for line in [*result["slices"], result["aggregate"]]:
        name = "all" if line is result["aggregate"] else f"{line['dimension']}={line['value']}"
        say(
            f"  {name:<18}{line['requests']:>9}{line['samples']:>9}"
            f"{_pct(line['agreement']):>10}{_pct(line['bar']):>6}  "
            f"{(line['verdict'] or '-'):<16}{_pct(line['fallback_rate']):>9}"
            f"{_pct(line['student_share']):>8}"
            f"{line['out_of_scope'] + line['slice_teacher_only']:>6}"
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


CALIBRATION_TARGET = 0.95


def calibrate_slices(stack: DemoStack) -> dict[str, Any]:
    """Per-slice calibration, applied through the admin API as an SRE would."""
    response = httpx.post(
        f"{stack.gateway_url}/admin/routes/{ROUTE}/calibration",
        headers={"authorization": f"Bearer {stack.admin_key}"},
        json={
            "target_agreement": CALIBRATION_TARGET,
            "since": "1d",
            "min_served": 10,  # the demo's scale: a few dozen requests per style
            "reason": "demo: per-style thresholds from the shadow comparisons",
        },
        timeout=30,
        trust_env=False,
    )
    if response.status_code != 200:
        raise DemoError(f"the admin API refused the calibration: {response.text}")
    result: dict[str, Any] = response.json()
    return result


def print_slice_calibration(result: dict[str, Any], say: Callable[[str], None]) -> None:
    notes = {"ok": "", "not_enough_data": "too few comparisons", "unreachable": "-> teacher"}
    say(f"  {'SLICE':<18}{'COMPARED':>9}{'THRESHOLD':>10}{'SERVED':>8}{'AGREEMENT':>10}  NOTE")
    for line in result["slices"]:
        at = line["at_threshold"] or {}
        threshold = "-" if line["threshold"] is None else f"{line['threshold']:g}"
        say(
            f"  {line['dimension'] + '=' + line['value']:<18}{line['comparisons']:>9}"
            f"{threshold:>10}{_pct(at.get('share')):>8}{_pct(at.get('agreement')):>10}"
            f"  {notes[line['status']]}"
        )
    kept = [o["slice"] for o in result["applied"] if o["mode"] == "teacher"]
    say(
        f"      applied to {len(result['applied'])} slice(s) in one audited change"
        + (f"; back on the teacher: {', '.join(kept)}" if kept else "")
    )


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
    """Steps 1-6 of the module docstring; returns what happened, for tests and callers."""
    say(f"\n== 1. shadow: {shadow_requests} requests (the teacher answers, both students shadow)")
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
    say("      waiting for the log to hold every answer of every request ...")
    wait_logged(stack, shadow.sent, since)
    print_statuses(wait_answered(stack, shadow.sent, since), say)

    say("\n== 2. candidates: each student against the champion, paired, worst slice first")
    candidates = reports(stack, "candidates")
    print_candidates(candidates, say)

    say("\n== 3. threshold calibration (the champion's shadow comparisons, by style)")
    calibration = reports(stack, "thresholds")
    threshold = print_thresholds(calibration, say)
    if threshold is None:
        threshold = stack.threshold
        say(f"      keeping the configured threshold {threshold:g}")

    say(
        f"\n== 4. calibration per style: the lowest threshold whose served answers agree "
        f"{CALIBRATION_TARGET:.0%} of the time (admin API, applied)"
    )
    per_slice = calibrate_slices(stack)
    print_slice_calibration(per_slice, say)

    say(f"\n== 5. rollout: 100% of users at confidence threshold {threshold:g} (admin API)")
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

    say("\n== 6. slice report (both phases), worst slice first")
    slices = reports(stack, "slices")
    print_slices(slices, say)
    return {
        "shadow": shadow,
        "rollout": rollout,
        "threshold": threshold,
        "candidates": candidates,
        "calibration": calibration,
        "slice_calibration": per_slice,
        "slices": slices,
        "route": live,
    }


def runnable_cli() -> str:
    """The command line that runs ``shadow-gateway`` from any shell: the script beside this
    Python when there is one (its venv need not be active), else ``python -m gateway``."""
    script = Path(sys.executable).with_name("shadow-gateway")
    return (
        shlex.quote(str(script)) if script.exists() else f"{shlex.quote(sys.executable)} -m gateway"
    )


def try_it(stack: DemoStack, say: Callable[[str], None] = print) -> None:
    cli, python = runnable_cli(), shlex.quote(sys.executable)
    base = stack.gateway_url
    key = stack.app_key
    students = "\n".join(
        f"  {'students' if index == 0 else '':<12} {student.name:<11}{student.url}/v1  "
        f"(vLLM, model {student.served_name})"
        for index, student in enumerate(stack.students)
    )
    say(
        f"""
== running: try it (Ctrl-C stops everything)

  gateway      {base}/v1            app key:   {key}
  admin        {base}/admin/routes  admin key: {stack.admin_key}
  metrics      {base}/metrics
{students}
  config       {stack.config_path}

  curl {base}/v1/chat/completions \\
    -H 'authorization: Bearer {key}' -H 'content-type: application/json' \\
    -d '{{"model": "{ROUTE}", "messages": [{{"role": "user", "content": "July 4th, 2025"}}]}}' -i

  # with the openai package (pip install openai, if this Python lacks it):
  {python} -c 'import openai; c = openai.OpenAI(base_url="{base}/v1", api_key="{key}"); \\
print(c.chat.completions.create(model="{ROUTE}", \\
messages=[{{"role": "user", "content": "9 days after 2024-02-25"}}]).choices[0].message.content)'

  SHADOW_GATEWAY_CONFIG={stack.config_path} DATABASE_URL='{stack.database_url}' \\
    {cli} report candidates {ROUTE}
  (likewise: report slices {ROUTE} --dimension style, report thresholds {ROUTE},
   students list {ROUTE}, export --route {ROUTE} -o dates.jsonl, rollout status,
   distill {ROUTE} --name tiny-next: the re-distillation loop --redistill runs)
"""
    )
