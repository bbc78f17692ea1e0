"""The operations artefacts in deploy/: alert and recording rules, their promtool tests, the
Grafana dashboard.

Every metric and label they query must be one the gateway exports (read from
``gateway.metrics.Metrics`` on a fresh registry), the files must have the structure Prometheus
and Grafana provisioning expect, and promtool must accept the rules, pass their unit tests and
parse every dashboard query. The promtool checks skip where promtool is not installed; CI
installs it (Debian: ``apt-get install -y --no-install-recommends prometheus``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from gateway.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
RECORDING = PROMETHEUS / "recording.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "shadow-gateway.json"

# What the issue asks the rules to cover; more alerts are welcome.
REQUIRED_ALERTS = {
    "ShadowGatewaySliceBelowBarInRollout",
    "ShadowGatewaySliceBelowBar",
    "ShadowGatewayFallbackRateHigh",
    "ShadowGatewayShadowCallsDropped",
    "ShadowGatewayStudentDown",
    "ShadowGatewayJournalBacklog",
    "ShadowGatewayDatabaseDown",
    "ShadowGatewayDbWriteErrors",
    "ShadowGatewayAutoRollback",
    "ShadowGatewaySliceRolledBack",
    "ShadowGatewayCandidateDown",
    "ShadowGatewayTeacherChanged",
    "ShadowGatewayStudentCircuitOpen",
    "ShadowGatewayLogRecordsDropped",
    "ShadowGatewayJournalUnwritable",
    "ShadowGatewayDrift",
}
# The metrics that concern one student (they carry a `student` label).
PER_STUDENT = {
    "shadow_gateway_student_latency_seconds",
    "shadow_gateway_shadow_calls_total",
    "shadow_gateway_shadow_dropped_total",
    "shadow_gateway_circuit_skipped_total",
    "shadow_gateway_student_circuit_open",
    "shadow_gateway_shadow_in_flight",
    "shadow_gateway_agreement_total",
    "shadow_gateway_agreement_score",
    "shadow_gateway_student_confidence",
    "shadow_gateway_fallbacks_total",
}
CHAMPION = 'shadow_gateway_student_info{status="champion"} == 1'
CANDIDATE = 'shadow_gateway_student_info{status="candidate"} == 1'

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}

_IDENTIFIER = re.compile(r"(?<![\w:$.])[A-Za-z_:][\w:]*")
_SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*([\w:]+)\s*(?:\{[^{}]*\})?\s*,\s*(\w+)\s*\)")
_RECORD_NAME = re.compile(r"^[a-z_]+:shadow_gateway_[a-z0-9_]+:[a-z0-9_]+$")


def _gateway_series() -> dict[str, set[str]]:
    """Every series name the gateway exports, with the label names it carries."""
    metrics = Metrics(CollectorRegistry())
    # Label-less families only render samples once touched, so names come from each family's
    # name and type rather than from the exposition.
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    labels = {
        metric._name: set(metric._labelnames)
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
    }
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for suffix in suffixes.get(family.type, [""]):
            series[family.name + suffix] = labels[family.name] | (
                {"le"} if suffix == "_bucket" else set()
            )
    return series


GATEWAY_SERIES = _gateway_series()


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(path)["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as handle:
        dashboard: dict[str, Any] = json.load(handle)
    return dashboard


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def _dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, query) for every panel target, annotation query and query variable."""
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]
    queries += [
        (f"annotation {annotation['name']!r}", annotation["expr"])
        for annotation in dashboard["annotations"]["list"]
        if "expr" in annotation
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(
                (
                    f"variable {variable['name']}",
                    query["query"] if isinstance(query, dict) else query,
                )
            )
    return queries


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [expr for _, expr in _dashboard_queries(dashboard)]


def _recorded() -> dict[str, set[str]]:
    """Recording-rule names, with their labels: those of the outermost aggregation."""
    recorded: dict[str, set[str]] = {}
    for rule in _rules(RECORDING):
        grouping = _GROUPING.search(rule["expr"])
        assert grouping, f"{rule['record']}: aggregate with `by (...)` so its labels are known"
        recorded[rule["record"]] = {label.strip() for label in grouping.group(1).split(",")}
    return recorded


def _names(expr: str) -> set[str]:
    return {name for name in _IDENTIFIER.findall(expr) if "shadow_gateway" in name}


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL or template text) for everything the rules and the dashboard query."""
    queries = [(f"recording {r['record']}", r["expr"]) for r in _rules(RECORDING)]
    for rule in _rules(ALERTS):
        queries.append((f"alert {rule['alert']}", rule["expr"]))
        queries += [
            (f"alert {rule['alert']} {key}", text) for key, text in rule["annotations"].items()
        ]
    queries += [(f"dashboard {where}", expr) for where, expr in _dashboard_queries(_dashboard())]
    return queries


# -- (a) every name and label queried is exported ----------------------------------------------


def test_the_gateway_exports_what_the_contract_names() -> None:
    # Guards the introspection above: were it to find nothing, every check below would pass.
    for name in (
        "shadow_gateway_requests_total",
        "shadow_gateway_agreement_total",
        "shadow_gateway_fallbacks_total",
        "shadow_gateway_shadow_dropped_total",
        "shadow_gateway_rollout_percent",
        "shadow_gateway_teacher_latency_seconds_bucket",
    ):
        assert name in GATEWAY_SERIES
    assert GATEWAY_SERIES["shadow_gateway_agreement_total"] == {
        "route",
        "student",
        "dimension",
        "slice",
        "verdict",
    }
    assert GATEWAY_SERIES["shadow_gateway_student_info"] == {"route", "student", "status"}
    assert GATEWAY_SERIES["shadow_gateway_slice_requests_total"] == {
        "route",
        "dimension",
        "slice",
        "served_by",
        "reason",
    }
    assert GATEWAY_SERIES["shadow_gateway_slice_override"] == {
        "route",
        "dimension",
        "slice",
        "knob",
    }


def _per_student(name: str) -> bool:
    return any(name == metric or name.startswith(f"{metric}_") for metric in PER_STUDENT)


def test_every_student_metric_carries_the_student_label() -> None:
    found = {name for name in GATEWAY_SERIES if _per_student(name)}
    assert len(found) >= len(PER_STUDENT)
    for name in found:
        assert {"route", "student"} <= GATEWAY_SERIES[name], name


def test_every_metric_queried_is_exported() -> None:
    known = GATEWAY_SERIES.keys() | _recorded().keys()
    problems = [
        f"{where}: not exported by the gateway: {sorted(unknown)}"
        for where, query in _queries()
        if (unknown := _names(query) - known)
    ]
    assert not problems, "\n".join(problems)


def test_every_label_queried_exists() -> None:
    labels_of = GATEWAY_SERIES | _recorded()
    problems = []
    for where, query in _queries():
        for name, matchers in _SELECTOR.findall(query):
            unknown = set(_MATCHER.findall(matchers)) - labels_of.get(name, set()) - TARGET_LABELS
            if name in labels_of and unknown:
                problems.append(f"{where}: {name} has no label(s) {sorted(unknown)}")
        used = set().union(*(labels_of.get(name, set()) for name in _names(query)))
        for grouping in _GROUPING.findall(query):
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            if unknown := labels - used - TARGET_LABELS:
                problems.append(f"{where}: groups or matches on unknown {sorted(unknown)}")
        for name, label in _LABEL_VALUES.findall(query):
            if label not in labels_of.get(name, set()):
                problems.append(f"{where}: {name} has no label {label}")
    assert not problems, "\n".join(problems)


# -- (b) structure -----------------------------------------------------------------------------


def test_alert_rules_have_the_expected_shape() -> None:
    groups = _load_yaml(ALERTS)["groups"]
    assert [group["name"] for group in groups] == ["shadow-gateway"]
    rules = groups[0]["rules"]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        where = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), f"{where}: `for` missing or malformed"
        assert rule["labels"]["severity"] in {"page", "ticket"}, where
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= annotations.keys(), where
        description = annotations["description"]
        assert "$labels" in description or "$value" in description, where
        assert "shadow_gateway_" in rule["expr"], where


def test_slice_alerts_judge_each_slice_against_its_own_bar() -> None:
    for rule in _rules(ALERTS):
        if rule["alert"].startswith("ShadowGatewaySliceBelowBar"):
            expr = " ".join(rule["expr"].split())
            assert "< on (route, dimension, slice)" in expr
            assert "shadow_gateway_slice_bar" in expr
            assert ">= on (route, dimension, slice)" in expr
            assert "shadow_gateway_slice_min_samples" in expr
            assert "[30m]" in expr


def test_route_level_student_numbers_are_the_champions() -> None:
    # A route's agreement, calls, drops and breaker were its one student's; with candidates
    # beside it, every alert and route-level recording rule over them keeps the champion's
    # series (or a candidate's, for the alerts about candidates) by joining on the info metric.
    # Fallbacks are the champion's by construction and need no join.
    def judged(expr: str) -> bool:
        return any(_per_student(name) for name in _names(expr) - {"shadow_gateway_fallbacks_total"})

    for rule in _rules(ALERTS):
        if judged(rule["expr"]):
            expr = " ".join(rule["expr"].split())
            assert "and on (route, student)" in expr, rule["alert"]
            assert CHAMPION in expr or CANDIDATE in expr, rule["alert"]
    for rule in _rules(RECORDING):
        expr = " ".join(rule["expr"].split())
        grouping = _GROUPING.search(expr)
        assert grouping
        if "student" not in grouping.group(1):
            assert "and on (route, student)" in expr, rule["record"]
            assert CHAMPION in expr, rule["record"]


def test_a_rollback_fires_one_alert_the_routes_or_the_slices() -> None:
    # The guardian counts a whole-route rollback under dimension="all" and one slice's under
    # the slice: each alert reads only its own kind, so neither fires for the other's.
    wanted = {
        "ShadowGatewayAutoRollback": 'dimension="all"',
        "ShadowGatewaySliceRolledBack": 'dimension!="all"',
    }
    for rule in _rules(ALERTS):
        selectors = [
            matchers
            for name, matchers in _SELECTOR.findall(rule["expr"])
            if name == "shadow_gateway_auto_rollbacks_total"
        ]
        if rule["alert"] in wanted:
            assert selectors, rule["alert"]
            assert " ".join(rule["expr"].split()).count("shadow_gateway_auto_rollbacks_total") == (
                len(selectors)
            ), f"{rule['alert']}: every auto_rollbacks selector needs its dimension matcher"
            assert all(wanted[rule["alert"]] in m for m in selectors), rule["alert"]
        else:
            assert "shadow_gateway_auto_rollbacks_total" not in rule["expr"], rule["alert"]


def test_recording_rules_are_named_by_convention() -> None:
    records = [rule["record"] for rule in _rules(RECORDING)]
    assert records, "recording.yml defines no rules"
    for record in records:
        assert _RECORD_NAME.match(record), f"{record} is not level:shadow_gateway_metric:operation"
        assert record not in GATEWAY_SERIES


def test_rule_tests_cover_every_alert_firing_and_some_not() -> None:
    suite = _load_yaml(ALERTS_TEST)
    assert sorted(suite["rule_files"]) == ["alerts.yml", "recording.yml"]
    cases = [case for test in suite["tests"] for case in test.get("alert_rule_test", [])]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    assert fired == {rule["alert"] for rule in _rules(ALERTS)}, "every alert must be seen firing"
    assert any(not case.get("exp_alerts") for case in cases), "no case checks an alert stays quiet"
    tested = {t["expr"] for test in suite["tests"] for t in test.get("promql_expr_test", [])}
    for record in _recorded():
        assert any(record in expr for expr in tested), f"recording rule {record} is not tested"


def test_dashboard_has_the_variables_and_layout_grafana_provisions() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    route_query = variables["route"]["query"]
    route_query = route_query["query"] if isinstance(route_query, dict) else route_query
    assert route_query == "label_values(shadow_gateway_requests_total, route)"
    assert "dimension" in variables
    student_query = variables["student"]["query"]
    student_query = student_query["query"] if isinstance(student_query, dict) else student_query
    assert student_query.startswith("label_values(shadow_gateway_student_info")

    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y")), panel["title"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"], panel["title"]
            assert "legendFormat" in target, panel["title"]
            assert target["refId"]


def test_dashboard_shows_every_slice_with_its_bar_and_the_aggregate_beside() -> None:
    exprs = _dashboard_exprs(_dashboard())
    agreement = [e for e in exprs if "agreement" in e and "label_values" not in e]
    assert agreement
    for expr in agreement:
        assert "dimension" in expr, f"agreement query without a dimension filter: {expr}"
    assert any('dimension=~"$dimension"' in e and "agreement:ratio" in e for e in exprs)
    assert any('dimension="all"' in e and "agreement:ratio" in e for e in exprs)
    assert any("shadow_gateway_slice_bar" in e for e in exprs)


def test_dashboard_shows_every_student_beside_the_champion() -> None:
    exprs = [" ".join(e.split()) for e in _dashboard_exprs(_dashboard())]
    per_student = [e for e in exprs if 'student=~"$student"' in e]
    for name in (
        "route_student_dimension_slice:shadow_gateway_agreement:ratio30m",
        "shadow_gateway_student_latency_seconds_bucket",
        "shadow_gateway_student_circuit_open",
        "shadow_gateway_shadow_calls_total",
        "shadow_gateway_student_info",
    ):
        assert any(name in e for e in per_student), f"no per-student panel shows {name}"
    assert any("by (route, student, le)" in e for e in per_student)
    # the route-level panels over per-student metrics show the champion
    for expr in exprs:
        if 'student=~"$student"' in expr or expr.startswith("label_values("):
            continue
        if any(_per_student(name) for name in _names(expr) - {"shadow_gateway_fallbacks_total"}):
            assert CHAMPION in expr, expr


def test_dashboard_covers_what_operators_watch() -> None:
    names = set().union(*(_names(expr) for expr in _dashboard_exprs(_dashboard())))
    for name in (
        "shadow_gateway_requests_total",
        "shadow_gateway_fallbacks_total",
        "shadow_gateway_teacher_latency_seconds_bucket",
        "shadow_gateway_student_latency_seconds_bucket",
        "shadow_gateway_overhead_seconds_bucket",
        "shadow_gateway_rollout_percent",
        "shadow_gateway_route_mode",
        "shadow_gateway_shadow_dropped_total",
        "shadow_gateway_shadow_calls_total",
        "shadow_gateway_log_queue_depth",
        "shadow_gateway_journal_records",
        "shadow_gateway_db_write_errors_total",
        "shadow_gateway_student_confidence_bucket",
        "shadow_gateway_slice_requests_total",
        "shadow_gateway_slice_override",
    ):
        assert name in names, f"the dashboard does not show {name}"
    for expr in _dashboard_exprs(_dashboard()):
        if "histogram_quantile" in expr:
            assert "_bucket" in expr, expr
            assert re.search(r"by \([^)]*\ble\b", expr), f"quantile not grouped by le: {expr}"


def test_dashboard_shows_serving_per_slice_and_the_live_overrides() -> None:
    panels = [p for p in _panels(_dashboard()) if p["type"] != "row"]

    def showing(name: str) -> list[tuple[dict[str, Any], str]]:
        return [
            (panel, " ".join(target["expr"].split()))
            for panel in panels
            for target in panel["targets"]
            if name in target["expr"]
        ]

    served = showing("shadow_gateway_slice_requests_total")
    assert served
    for panel, expr in served:
        # each request counts once per dimension: a panel sums one dimension, never several
        assert 'dimension="all"' in expr or panel.get("repeat") == "dimension", panel["title"]
        assert "served_by, reason)" in expr, panel["title"]
        stacking = panel["fieldConfig"]["defaults"]["custom"]["stacking"]
        assert stacking["mode"] == "normal", panel["title"]
    assert any('dimension=~"$dimension"' in expr for _, expr in served)
    overrides = showing("shadow_gateway_slice_override")
    assert {panel["type"] for panel, _ in overrides} >= {"table", "state-timeline"}
    for panel, expr in overrides:
        # a cleared override reads NaN with several workers (no series can be removed)
        assert expr.endswith(">= 0"), panel["title"]
    knobs = {knob for _, expr in overrides for knob in re.findall(r'knob="(\w+)"', expr)}
    assert knobs == {"teacher_only", "rollout", "percent", "threshold"}


# -- (c) promtool ------------------------------------------------------------------------------

promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed; CI installs it: "
    "apt-get install -y --no-install-recommends prometheus",
)


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    result = subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@promtool
def test_promtool_accepts_the_rules() -> None:
    _promtool("check", "rules", ALERTS.name, RECORDING.name)


@promtool
def test_promtool_rule_unit_tests_pass() -> None:
    _promtool("test", "rules", ALERTS_TEST.name)


@promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Grafana's variables replaced by values of the right shape, each query checked as the
    # expression of a recording rule.
    substitutions = {
        "$__rate_interval": "5m",
        "$__range": "6h",
        "$route": "support-bot",
        "$student": "default",
        "$dimension": "tier",
    }
    rules = []
    for number, expr in enumerate(_dashboard_exprs(_dashboard())):
        if expr.startswith("label_values("):
            continue  # Grafana's own function, not PromQL
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unsubstituted variable in {expr}"
        rules.append({"record": f"dashboard:query_{number}:check", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", str(path), cwd=tmp_path)
