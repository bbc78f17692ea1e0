"""The Helm chart in deploy/helm/shadow-gateway, rendered offline with Helm's own Go SDK.

``helm-python-sdk`` binds Helm v4's SDK as a native library, so no ``helm`` binary, cluster or
network is needed. What is checked:

- ``helm lint --strict`` (the SDK's ``lint``) finds no warning or error, for Kubernetes 1.29.
- values.yaml validates against values.schema.json (jsonschema, and Helm's own check), and a
  mistyped or misspelt value is refused by the schema and by the render.
- The chart renders (``helm template``) with the defaults, with every optional part on
  (student, NetworkPolicy, ServiceMonitor, autoscaling off with a fixed replica count) and
  with the student off; every object validates against the Kubernetes schemas as
  tests/test_deploy_k8s.py validates the kustomize base (the ServiceMonitor gets its
  structural check there), and the pods run unprivileged.
- Parity with deploy/k8s/base: the gateway's env var names, probes, ports, resources and
  securityContexts; the HPA, PDB, migrations Job and student as written there; no ``replicas``
  under the HPA; the ConfigMap's config.yaml is the base's config and loads with the gateway's
  own config loader; the NetworkPolicies and ServiceMonitors match their components.
- NOTES.txt renders, and its Secret command creates every key the pods require.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import load_config_file
from gateway.shadow.analysis import build_analyses
from tests.test_deploy_k8s import (
    BASE,
    K8S,
    OLDEST_SUPPORTED,
    SECRET,
    _check_no_replicas_under_an_hpa,
    _check_unprivileged,
    _secret_key_refs,
    _validate,
    base_objects,
    container_named,
    load_yaml,
    secret_command_literals,
    yaml_documents,
)

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk (the dev extra) renders the chart without helm"
)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "shadow-gateway"
RELEASE = "shadow-gateway"  # the documented release name: the base's object names
NAMESPACE = "shadow-gateway"

Objects = dict[tuple[str, str], dict[str, Any]]

ALL_ON: dict[str, Any] = {
    "student": {"enabled": True},
    "networkPolicy": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "autoscaling": {"enabled": False},
    "replicaCount": 3,
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-optional-parts-on": ALL_ON,
    "student-off": {"student": {"enabled": False}},
}


def render(values: dict[str, Any] | None = None, name: str = RELEASE) -> dict[str, str]:
    """``helm template``: template path -> rendered text (empty for a template that is off)."""
    with helm.Chart.load(CHART) as chart:
        rendered: dict[str, str] = chart.render(
            values or {}, name=name, namespace=NAMESPACE, is_install=True
        )
    return rendered


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [
        document
        for path, text in sorted(rendered.items())
        if path.endswith((".yaml", ".yml"))
        for document in yaml.safe_load_all(text)
        if document
    ]


def objects(values: dict[str, Any] | None = None, name: str = RELEASE) -> Objects:
    rendered = documents(render(values, name))
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in rendered}


def _notes(rendered: dict[str, str]) -> str:
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


# -- lint and values --------------------------------------------------------------------------


def test_helm_lint_strict_finds_nothing() -> None:
    report = helm.lint(CHART, strict=True, kube_version=f"v{OLDEST_SUPPORTED}.0")
    assert report["errors"] == []
    assert report["total_charts_linted"] == 1
    # Severity 1 is information ("icon is recommended"); 2 a warning, 3 an error.
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert problems == []


def test_chart_yaml_has_what_helm_requires() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert {"name", "version", "appVersion", "description", "type"} <= set(chart)
    assert chart["name"] == CHART.name
    # The images' tag defaults to appVersion: the tag the kustomize base pins.
    pinned = {
        image["name"]: image["newTag"] for image in load_yaml(BASE / "kustomization.yaml")["images"]
    }
    assert set(pinned.values()) == {chart["appVersion"]}


def test_values_validate_against_the_values_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator_class(schema).validate(load_yaml(CHART / "values.yaml"))
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})
        chart.validate_schema(ALL_ON)


@pytest.mark.parametrize(
    "bad",
    [
        {"autoscaling": {"minReplicas": "two"}},
        {"autoscalng": {"enabled": False}},  # misspelt: refused, not ignored
        {"replicaCount": -1},
        {"resources": {"limits": {"memory": "2 GB"}}},
        {"secretEnv": ["SHADOW_GATEWAY_APP_KEY"]},  # no DATABASE_URL
        {"config": {"routes": []}},
    ],
    ids=str,
)
def test_a_bad_value_is_refused_by_the_schema_and_by_render(bad: dict[str, Any]) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    merged = _merge(load_yaml(CHART / "values.yaml"), bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged, schema)
    with pytest.raises(helm.HelmValuesError):
        render(bad)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of user values over the chart's (maps merge, the rest replaces)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- what it renders --------------------------------------------------------------------------


@pytest.mark.parametrize("values", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_chart_renders_valid_manifests(values: dict[str, Any]) -> None:
    rendered = render(values)
    docs = documents(rendered)
    where = f"helm template {CHART.relative_to(ROOT)}"
    for document in docs:
        _validate(document, where)
        if document["kind"] in ("Deployment", "Job"):
            _check_unprivileged(document, where)
    _check_no_replicas_under_an_hpa(docs, where)
    kinds = {doc["kind"] for doc in docs}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Job"} <= kinds
    # Every mounted ConfigMap and every selector's pods are in the release.
    config_maps = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ConfigMap"}
    pod_labels = [
        doc["spec"]["template"]["metadata"]["labels"]
        for doc in docs
        if doc["kind"] in ("Deployment", "Job")
    ]
    for document in docs:
        labels = document["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"].startswith("shadow-gateway-")
        assert "app.kubernetes.io/version" in labels
        spec = document.get("spec", {})
        for volume in spec.get("template", {}).get("spec", {}).get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, volume
        selector = spec.get("selector", {}).get("matchLabels", spec.get("selector"))
        if document["kind"] in ("Service", "PodDisruptionBudget", "ServiceMonitor"):
            assert any(selector.items() <= labels.items() for labels in pod_labels), document
    assert _notes(rendered).strip()


def test_optional_parts_follow_their_values() -> None:
    default = objects()
    assert {kind for kind, _ in default} >= {"HorizontalPodAutoscaler"}
    assert not {"NetworkPolicy", "ServiceMonitor"} & {kind for kind, _ in default}
    assert ("Deployment", "shadow-gateway-student") in default
    everything = objects(ALL_ON)
    assert "HorizontalPodAutoscaler" not in {kind for kind, _ in everything}
    assert everything[("Deployment", "shadow-gateway")]["spec"]["replicas"] == 3
    assert {name for kind, name in everything if kind == "NetworkPolicy"} == {
        "shadow-gateway",
        "shadow-gateway-student",
        "shadow-gateway-migrate",
    }
    assert {name for kind, name in everything if kind == "ServiceMonitor"} == {
        "shadow-gateway",
        "shadow-gateway-student",
    }
    no_student = objects({"student": {"enabled": False}, "networkPolicy": {"enabled": True}})
    assert not [name for _kind, name in no_student if name == "shadow-gateway-student"]


def test_no_replicas_under_the_hpa() -> None:
    rendered = objects({"replicaCount": 7})  # ignored while the HPA owns the count
    assert "replicas" not in rendered[("Deployment", "shadow-gateway")]["spec"]
    hpa = rendered[("HorizontalPodAutoscaler", "shadow-gateway")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "shadow-gateway"


# -- parity with the kustomize base -----------------------------------------------------------


def _without_labels(node: Any) -> Any:
    """``node`` with every ``labels``/``matchLabels`` map dropped: the chart adds the standard
    Helm labels (instance, version, chart) where the base has only name and component."""
    if isinstance(node, dict):
        return {
            key: _without_labels(value)
            for key, value in node.items()
            if key not in ("labels", "matchLabels", "annotations")
            and not (key == "selector" and _is_label_map(value))  # a Service's selector
        }
    if isinstance(node, list):
        return [_without_labels(item) for item in node]
    return node


def _is_label_map(node: Any) -> bool:
    return isinstance(node, dict) and all(isinstance(value, str) for value in node.values())


def test_gateway_deployment_matches_the_base() -> None:
    base = container_named(base_objects()[("Deployment", "shadow-gateway")], "gateway")
    deployment = objects()[("Deployment", "shadow-gateway")]
    gateway = container_named(deployment, "gateway")
    assert [item["name"] for item in gateway["env"]] == [item["name"] for item in base["env"]]
    assert _secret_refs(gateway) == _secret_refs(base)
    for key in ("readinessProbe", "livenessProbe", "ports", "securityContext", "resources"):
        assert gateway[key] == base[key], key
    assert gateway["lifecycle"] == base["lifecycle"]
    assert gateway["volumeMounts"] == base["volumeMounts"]
    assert gateway["image"] == "shadow-gateway:0.1.0"
    assert "command" not in gateway
    assert "args" not in gateway
    written = base_objects()[("Deployment", "shadow-gateway")]["spec"]
    # The pod around the container, too: volumes (the same ConfigMap name as kustomize's before
    # its hash), user, grace period, spread.
    pod = {**deployment["spec"]["template"]["spec"], "containers": None}
    assert _without_labels(pod) == _without_labels(
        {**written["template"]["spec"], "containers": None}
    )
    assert deployment["spec"]["strategy"] == written["strategy"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in annotations  # a config change rolls the pods


def _secret_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def test_hpa_pdb_services_and_student_match_the_base() -> None:
    base = base_objects()
    rendered = objects()
    keys: list[tuple[str, str]] = [
        ("HorizontalPodAutoscaler", "shadow-gateway"),
        ("PodDisruptionBudget", "shadow-gateway"),
        ("Service", "shadow-gateway"),
        ("Service", "shadow-gateway-student"),
        ("Deployment", "shadow-gateway-student"),
    ]
    for key in keys:
        expected = _without_labels(base[key]["spec"])
        actual = _without_labels(rendered[key]["spec"])
        if key == ("Deployment", "shadow-gateway-student"):
            (container,) = actual["template"]["spec"]["containers"]
            assert container.pop("image") == "shadow-gateway-student:0.1.0"
            expected["template"]["spec"]["containers"][0].pop("image")
        assert actual == expected, key
        if key[0] == "Service":  # the base's selector, narrowed to the release
            selector = rendered[key]["spec"]["selector"]
            assert base[key]["spec"]["selector"].items() <= selector.items(), key


def test_migrate_job_is_a_hook_that_matches_the_base() -> None:
    base_job = base_objects()[("Job", "shadow-gateway-migrate")]
    rendered = objects()
    job = rendered[("Job", "shadow-gateway-migrate")]
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    migrate = container_named(job, "migrate")
    base = container_named(base_job, "migrate")
    assert (
        migrate["image"]
        == container_named(rendered[("Deployment", "shadow-gateway")], "gateway")["image"]
    )
    for key in ("args", "env", "resources", "securityContext", "volumeMounts"):
        assert migrate[key] == base[key], key
    assert (
        _without_labels(job["spec"])["template"]["spec"]["securityContext"]
        == (base_job["spec"]["template"]["spec"]["securityContext"])
    )
    # A pre-install hook runs before the release's own objects exist: its ConfigMap is a hook
    # too, created before the Job (lower weight), with the same config.
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    config_map = rendered[("ConfigMap", volume["configMap"]["name"])]
    hook = config_map["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(hook["helm.sh/hook-weight"]) < int(annotations.get("helm.sh/hook-weight", "0"))
    assert config_map["data"] == rendered[("ConfigMap", "shadow-gateway-config")]["data"]


def test_config_is_the_base_config_and_loads(tmp_path: Path) -> None:
    config_map = objects()[("ConfigMap", "shadow-gateway-config")]
    text = config_map["data"]["config.yaml"]
    assert yaml.safe_load(text) == load_yaml(BASE / "config.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = load_config_file(path)
    build_analyses(config)  # comparators and slice rules compile
    assert config.server.workers == 1
    # The student URL follows the release's name (values' config strings go through tpl).
    other = objects(name="sg")
    routes = yaml.safe_load(
        other[("ConfigMap", "sg-shadow-gateway-config")]["data"]["config.yaml"]
    )["routes"]
    assert routes[0]["student"]["base_urls"] == ["http://sg-shadow-gateway-student:8000/v1"]
    assert ("Service", "sg-shadow-gateway-student") in other


def test_network_policies_and_service_monitors_match_the_components() -> None:
    rendered = objects(ALL_ON)
    components = K8S / "components"
    written = [
        document
        for path in [
            *sorted((components / "network-policy").glob("*-networkpolicy.yaml")),
            components / "prometheus-operator" / "servicemonitor.yaml",
        ]
        for document in yaml_documents(path)
    ]
    for document in written:
        key = (document["kind"], document["metadata"]["name"])
        assert _without_labels(rendered[key]["spec"]) == _without_labels(document["spec"]), key
        # The selectors select what the component's select, and the release's pods only.
        for path in ("podSelector", "selector"):
            if path in document["spec"]:
                chart_labels = rendered[key]["spec"][path]["matchLabels"]
                assert document["spec"][path]["matchLabels"].items() <= chart_labels.items()
                assert chart_labels["app.kubernetes.io/instance"] == RELEASE
    assert rendered[("ServiceMonitor", "shadow-gateway")]["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )


def test_notes_secret_command_creates_every_key_the_pods_require(tmp_path: Path) -> None:
    for values in SCENARIOS.values():
        rendered = render(values)
        required = {
            ref["key"]
            for document in documents(rendered)
            for ref in _secret_key_refs(document)
            if ref["name"] == SECRET and not ref.get("optional", False)
        }
        notes = tmp_path / "NOTES.txt"
        notes.write_text(_notes(rendered))
        assert set(secret_command_literals(notes)) == required
