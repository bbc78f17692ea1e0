"""The Kubernetes manifests in deploy/k8s, checked offline.

- Every kustomization's resources, components, patches and generator files exist.
- Every manifest validates against the Kubernetes JSON schemas (``kubernetes-validate``, which
  bundles them; strict, so an unknown or misspelt field fails) for the oldest Kubernetes these
  manifests support and the newest the package knows. The Prometheus Operator's CRDs are not
  in those schemas: their structure is checked here instead, and the PrometheusRule must hold
  exactly the groups of deploy/prometheus/alerts.yml and recording.yml.
- The base and the example overlay build with kustomize (a ``kustomize`` binary, else
  ``kubectl kustomize``; skipped without either), and what they build validates too.
- The pieces fit: probes hit endpoints the gateway serves, the grace period outlasts the drain
  the config allows, selectors select, the route's student URL is the student Service, every
  secret the config names reaches the pods, and the config is valid for this gateway.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from gateway.api.health import router as health_router
from gateway.commands.serve import cmd_migrate
from gateway.config import GatewayConfig, load_config_file
from gateway.shadow.analysis import build_analyses
from tests.test_deploy_compose import gateway_command, parse_gateway_args

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE = K8S / "components" / "prometheus-operator" / "prometheusrule.yaml"

# Postgres's default max_connections (100) less a reserve for superusers, the migrations Job,
# the CLI and analysts: what the gateway pods may hold at the HPA's maximum.
CONNECTION_BUDGET = 90
OLDEST_SUPPORTED = "1.29"  # docs/deploy.md says so; HPA v2, PDB v1 and Job TTL are older
OPERATOR_GROUP = "monitoring.coreos.com"
# A Kubernetes resource quantity (apimachinery's resource.Quantity grammar, simplified).
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


# -- reading the manifests --------------------------------------------------------------------


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _resource_files() -> list[Path]:
    """Every file a kustomization lists under ``resources`` (whole manifests, not patches)."""
    files: set[Path] = set()
    for kustomization in _kustomizations():
        for entry in _load(kustomization).get("resources", []):
            path = (kustomization.parent / entry).resolve()
            if path.is_file():
                files.add(path)
    return sorted(files)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _by_kind(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}


def _base() -> dict[tuple[str, str], dict[str, Any]]:
    """The base's resources as written (no kustomize needed)."""
    kustomization = _load(BASE / "kustomization.yaml")
    return _by_kind(
        [doc for entry in kustomization["resources"] for doc in _documents(BASE / entry)]
    )


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _validation_versions() -> list[str]:
    """The oldest supported Kubernetes (or the oldest schemas shipped) and the newest."""
    shipped = sorted({_minor(version) for version in all_versions()})
    oldest = max(_minor(OLDEST_SUPPORTED), shipped[0])
    return [f"{major}.{minor}" for major, minor in (oldest, shipped[-1])]


def _validate(document: dict[str, Any], where: str) -> None:
    group = document["apiVersion"].split("/")[0]
    if group == OPERATOR_GROUP:
        _check_operator_object(document, where)
        return
    for version in _validation_versions():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(
                f"{where}: {document['kind']} invalid for Kubernetes {version}: {path}: "
                f"{exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")
    _check_quantities(document, where)


def _quantities(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every value under a ``requests``, ``limits``, ``sizeLimit`` or ``storage`` key."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}"
            if key in ("requests", "limits") and isinstance(value, dict):
                yield from ((f"{here}.{name}", amount) for name, amount in value.items())
            elif key in ("sizeLimit", "storage"):
                yield here, value
            else:
                yield from _quantities(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _quantities(item, f"{path}[{index}]")


def _check_quantities(document: dict[str, Any], where: str) -> None:
    # The schemas type quantities as int-or-string; "2 GB" would pass them and fail the API.
    for path, amount in _quantities(document.get("spec", {})):
        assert _QUANTITY.match(str(amount)), f"{where}: {path}: {amount!r} is not a quantity"


def _check_operator_object(document: dict[str, Any], where: str) -> None:
    """What the Prometheus Operator's CRDs require of the fields used here."""
    assert document["apiVersion"] == f"{OPERATOR_GROUP}/v1", where
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", document["metadata"]["name"]), where
    spec = document["spec"]
    if document["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, where
        assert spec["selector"]["matchLabels"], where
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, where
            assert isinstance(endpoint["port"], str), f"{where}: endpoints[].port is a port name"
            assert endpoint["path"].startswith("/"), where
    elif document["kind"] == "PrometheusRule":
        assert set(spec) == {"groups"}, where
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules", "limit"}, where
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), f"{where}: {rule}"
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert isinstance(rule["expr"], str), where
                assert rule["expr"].strip(), where
    else:
        pytest.fail(f"{where}: no structural check for {document['kind']}")


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        probe = subprocess.run(
            [kubectl, "kustomize", "--help"], capture_output=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return [kubectl, "kustomize"]
    return None


# -- the files --------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", _kustomizations(), ids=_rel)
def test_kustomization_refers_to_files_that_exist(kustomization: Path) -> None:
    spec = _load(kustomization)
    here = kustomization.parent
    entries = list(spec.get("resources", [])) + list(spec.get("components", []))
    entries += [patch["path"] for patch in spec.get("patches", []) if "path" in patch]
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        entries += [entry.split("=", 1)[-1] for entry in generator.get("files", [])]
        entries += generator.get("envs", [])
    assert entries, f"{_rel(kustomization)} lists nothing"
    for entry in entries:
        path = (here / entry).resolve()
        assert path.exists(), f"{_rel(kustomization)}: {entry} does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), f"{entry}: not a kustomization"


@pytest.mark.parametrize("manifest", _resource_files(), ids=_rel)
def test_manifest_validates_against_the_kubernetes_schemas(manifest: Path) -> None:
    documents = _documents(manifest)
    assert documents, f"{_rel(manifest)} is empty"
    for document in documents:
        _validate(document, _rel(manifest))


@pytest.mark.parametrize("target", [BASE, OVERLAY], ids=_rel)
def test_kustomize_builds_valid_manifests(target: Path) -> None:
    command = _kustomize()
    if command is None:
        pytest.skip("no kustomize or kubectl on PATH (the files were checked one by one)")
    result = subprocess.run(
        [*command, str(target)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    kinds = sorted(doc["kind"] for doc in documents)
    for kind in ("ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job"):
        assert kind in kinds, f"{kind} missing from {kinds}"
    for document in documents:
        _validate(document, f"kustomize build {_rel(target)}")
    built = _by_kind(documents)
    config_maps = {name for kind, name in built if kind == "ConfigMap"}
    for (kind, name), document in built.items():
        if kind not in ("Deployment", "Job"):
            continue
        for volume in document["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{name}: {volume}"
    if target == OVERLAY:
        assert {"PrometheusRule", "ServiceMonitor", "Namespace"} <= set(kinds)
        namespaced = [doc for doc in documents if doc["kind"] != "Namespace"]
        assert all(doc["metadata"].get("namespace") == "shadow-gateway" for doc in namespaced)


def test_prometheus_rule_is_generated_from_the_rule_files() -> None:
    rule = _load(RULE)
    sources = (
        _load(PROMETHEUS / "alerts.yml")["groups"] + _load(PROMETHEUS / "recording.yml")["groups"]
    )
    assert rule["spec"]["groups"] == sources, (
        "deploy/k8s/components/prometheus-operator/prometheusrule.yaml is out of date: run "
        "`.venv/bin/python deploy/k8s/render_prometheus_rule.py`"
    )


# -- the pieces fit ---------------------------------------------------------------------------


def _configs() -> list[tuple[str, GatewayConfig]]:
    return [
        (_rel(path), load_config_file(path))
        for path in (BASE / "config.yaml", OVERLAY / "config.yaml")
    ]


def test_configs_are_valid_for_this_gateway() -> None:
    for _where, config in _configs():
        build_analyses(config)  # comparators and slice rules compile
        assert config.server.workers == 1  # scale with pods; metrics are per pod


def test_gateway_deployment_probes_drain_and_resources() -> None:
    base = _base()
    deployment = base[("Deployment", "shadow-gateway")]
    pod = deployment["spec"]["template"]["spec"]
    gateway = _container(deployment, "gateway")
    served = {route.path for route in health_router.routes}  # type: ignore[attr-defined]
    # /readyz stays 200 through a shared Postgres outage (docs/deploy.md, "Probes").
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["livenessProbe"]["httpGet"]["path"] in served
    assert gateway["readinessProbe"]["httpGet"]["path"] in served
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(gateway["resources"][kind]), kind
    # The image's command is the documented serve command; the pod must not replace it.
    assert "command" not in gateway
    assert "args" not in gateway
    serve = parse_gateway_args(gateway_command()[1:])
    assert gateway["ports"][0]["containerPort"] == serve.port
    mounts = {mount["name"]: mount["mountPath"] for mount in gateway["volumeMounts"]}
    assert serve.config == f"{mounts['config']}/config.yaml"
    prestop = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    for where, config in _configs():
        assert str(config.data_dir) == mounts["data"], f"{where}: data_dir is not the volume"
        drain = config.server.drain_timeout_s
        needed = int(prestop[1]) + 2 * drain + 10  # + the log queue's last write
        assert pod["terminationGracePeriodSeconds"] >= needed, where
        # Memory: queued records (~0.4 MB each with top_logprobs 5) must fit the limit.
        limit_gib = float(gateway["resources"]["limits"]["memory"].removesuffix("Gi"))
        assert config.log_writer.queue_max * 0.4 / 1024 < limit_gib / 2, where


def test_pdb_hpa_and_service_select_the_gateway() -> None:
    base = _base()
    deployment = base[("Deployment", "shadow-gateway")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = base[("PodDisruptionBudget", "shadow-gateway")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = base[("HorizontalPodAutoscaler", "shadow-gateway")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "shadow-gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    service = base[("Service", "shadow-gateway")]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {port["name"] for port in _container(deployment, "gateway")["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    monitors = _documents(K8S / "components" / "prometheus-operator" / "servicemonitor.yaml")
    services = {doc["metadata"]["name"]: doc for doc in base.values() if doc["kind"] == "Service"}
    for monitor in monitors:
        selected = [
            svc
            for svc in services.values()
            if monitor["spec"]["selector"]["matchLabels"].items()
            <= svc["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, monitor["metadata"]["name"]
        ports = {port["name"] for port in selected[0]["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports


def test_secrets_reach_the_gateway_and_the_migrations() -> None:
    base = _base()
    pods = {
        "gateway": _container(base[("Deployment", "shadow-gateway")], "gateway"),
        "migrate": _container(base[("Job", "shadow-gateway-migrate")], "migrate"),
    }
    for where, config in _configs():
        names = {"DATABASE_URL"} | {key.key_env for key in config.auth.keys}
        names |= {r.teacher.api_key_env for r in config.routes if r.teacher.api_key_env}
        names |= {
            r.student.api_key_env for r in config.routes if r.student and r.student.api_key_env
        }
        refs: dict[str, list[dict[str, Any]]] = {}
        for pod, container in pods.items():
            env = {item["name"]: item for item in container["env"]}
            for name in names:
                assert name in env, f"{pod} lacks {name} ({where})"
                assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} not secret"
                refs.setdefault(name, []).append(env[name]["valueFrom"]["secretKeyRef"])
        for name, found in refs.items():
            assert all(ref == found[0] for ref in found), f"{name}: pods read different secrets"
        # Console sessions must verify on every replica: one secret, from the Secret.
        session = config.console.session_secret_env
        assert session, f"replicas need a shared console session secret ({where})"
        env = {item["name"]: item for item in pods["gateway"]["env"]}
        assert "secretKeyRef" in env[session]["valueFrom"], where


def test_gateway_pods_fit_the_postgres_connection_budget() -> None:
    hpa = _base()[("HorizontalPodAutoscaler", "shadow-gateway")]
    overlay = _documents(OVERLAY / "gateway-scale.yaml")
    overlay_hpa = next(doc for doc in overlay if doc["kind"] == "HorizontalPodAutoscaler")
    most = max(hpa["spec"]["maxReplicas"], overlay_hpa["spec"]["maxReplicas"])
    for where, config in _configs():
        # SQLAlchemy pool + its overflow, plus the log writer's and the listener's connections.
        per_process = 2 * config.database.pool_size + 2
        total = most * config.server.workers * per_process
        assert total <= CONNECTION_BUDGET, f"{where}: {most} pods could open {total} connections"


def test_migrate_job_runs_the_migrate_command() -> None:
    job = _base()[("Job", "shadow-gateway-migrate")]
    container = _container(job, "migrate")
    assert (
        container["image"]
        == _container(_base()[("Deployment", "shadow-gateway")], "gateway")["image"]
    )
    assert "command" not in container  # the image's entrypoint: shadow-gateway
    assert parse_gateway_args(container["args"]).handler is cmd_migrate
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_routes_point_at_the_student_service_and_its_model() -> None:
    base = _base()
    student = base[("Deployment", "shadow-gateway-student")]
    vllm = _container(student, "vllm")
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {item["name"]: item.get("value") for item in vllm["env"]}
    service = base[("Service", "shadow-gateway-student")]
    assert (
        service["spec"]["selector"].items()
        <= student["spec"]["template"]["metadata"]["labels"].items()
    )
    (port,) = service["spec"]["ports"]
    assert {p["name"]: p["containerPort"] for p in vllm["ports"]}[port["targetPort"]] == int(
        env["STUDENT_PORT"]
    )
    for where, config in _configs():
        for route in config.routes:
            assert route.student is not None, f"{where}: {route.name}"
            assert route.student.model == env["STUDENT_SERVED_NAME"], f"{where}: {route.name}"
            for base_url in route.student.base_urls:
                parts = urlsplit(str(base_url))
                assert (parts.hostname, parts.port, parts.path.rstrip("/")) == (
                    service["metadata"]["name"],
                    port["port"],
                    "/v1",
                ), f"{where}: {route.name}"
