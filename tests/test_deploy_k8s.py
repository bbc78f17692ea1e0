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
- What SREs trip over: the Secret command in docs/deploy.md (and the base's comment) creates
  every key a pod requires; no Deployment that an HPA scales sets ``replicas``; every container
  runs as a non-root user with no privilege escalation, no capabilities and the runtime's
  seccomp profile, and the pods' uid is the image's.
"""

from __future__ import annotations

import re
import shlex
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
from tests.test_deploy_compose import (
    GATEWAY_DOCKERFILE,
    STUDENT_DOCKERFILE,
    dockerfile_env,
    gateway_command,
    image_user,
    parse_gateway_args,
)

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE = K8S / "components" / "prometheus-operator" / "prometheusrule.yaml"
DOCS = ROOT / "docs" / "deploy.md"
SECRET = "shadow-gateway"  # the Secret the pods read with secretKeyRef

# Postgres's default max_connections (100) less a reserve for superusers, the migrations Job,
# the CLI and analysts: what the gateway pods may hold at the HPA's maximum.
CONNECTION_BUDGET = 90
OLDEST_SUPPORTED = "1.29"  # docs/deploy.md says so; HPA v2, PDB v1 and Job TTL are older
OPERATOR_GROUP = "monitoring.coreos.com"
# A Kubernetes resource quantity (apimachinery's resource.Quantity grammar, simplified).
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


# -- reading the manifests --------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _resource_files() -> list[Path]:
    """Every file a kustomization lists under ``resources`` (whole manifests, not patches)."""
    files: set[Path] = set()
    for kustomization in _kustomizations():
        for entry in load_yaml(kustomization).get("resources", []):
            path = (kustomization.parent / entry).resolve()
            if path.is_file():
                files.add(path)
    return sorted(files)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _by_kind(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}


def base_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """The base's resources as written (no kustomize needed)."""
    kustomization = load_yaml(BASE / "kustomization.yaml")
    return _by_kind(
        [doc for entry in kustomization["resources"] for doc in yaml_documents(BASE / entry)]
    )


def container_named(workload: dict[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _written_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every object and strategic-merge patch under deploy/k8s, as written (configs excluded)."""
    return [
        (path, document)
        for path in sorted(K8S.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
        for document in yaml_documents(path)
        if "kind" in document
    ]


def _secret_key_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("secretKeyRef"), dict):
            yield node["secretKeyRef"]
        for value in node.values():
            yield from _secret_key_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_key_refs(item)


def secret_command_literals(path: Path) -> dict[str, str]:
    """``--from-literal`` keys and values of the file's ``kubectl create secret generic`` command
    for the Secret (in a code block, or in ``#`` comments), continuation lines joined."""
    lines = [line.strip().removeprefix("#").strip() for line in path.read_text().splitlines()]
    for index, line in enumerate(lines):
        if f"create secret generic {SECRET}" not in line:
            continue
        command = line
        while command.endswith("\\"):
            index += 1
            command = command[:-1] + " " + lines[index]
        literals = [w for w in shlex.split(command) if w.startswith("--from-literal=")]
        return dict(w.removeprefix("--from-literal=").split("=", 1) for w in literals)
    pytest.fail(f"{_rel(path)} has no `kubectl create secret generic {SECRET}` command")


def _hpa_scaled_deployments(documents: list[dict[str, Any]]) -> set[str]:
    targets = [
        doc["spec"]["scaleTargetRef"]
        for doc in documents
        if doc["kind"] == "HorizontalPodAutoscaler" and "scaleTargetRef" in doc["spec"]
    ]  # an overlay's patch of an HPA may leave the target out
    return {target["name"] for target in targets if target["kind"] == "Deployment"}


def _check_no_replicas_under_an_hpa(documents: list[dict[str, Any]], where: str) -> None:
    scaled = _hpa_scaled_deployments(documents)
    for doc in documents:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] in scaled:
            # kubectl apply would reset the HPA's count to it each time (docs/deploy.md).
            assert "replicas" not in doc.get("spec", {}), (
                f"{where}: Deployment {doc['metadata']['name']} sets replicas under an HPA"
            )


def _check_unprivileged(workload: dict[str, Any], where: str) -> None:
    """Each container: non-root, no privilege escalation, no capabilities, RuntimeDefault
    seccomp; a container's own securityContext wins over the pod's, as in Kubernetes."""
    pod = workload["spec"]["template"]["spec"]
    pod_context = pod.get("securityContext", {})
    assert pod.get("automountServiceAccountToken") is False, where
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = container.get("securityContext", {})
        name = f"{where}: {workload['metadata']['name']}/{container['name']}"
        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, name
        assert context.get("runAsUser", pod_context.get("runAsUser")) != 0, name
        assert context.get("allowPrivilegeEscalation") is False, name
        assert context.get("privileged", False) is False, name
        assert context.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not context.get("capabilities", {}).get("add"), name
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", name


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
    spec = load_yaml(kustomization)
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
    documents = yaml_documents(manifest)
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
    _check_no_replicas_under_an_hpa(documents, f"kustomize build {_rel(target)}")
    for document in documents:
        if document["kind"] in ("Deployment", "Job"):
            _check_unprivileged(document, f"kustomize build {_rel(target)}")
    if target == OVERLAY:
        assert {"PrometheusRule", "ServiceMonitor", "Namespace", "NetworkPolicy"} <= set(kinds)
        namespaced = [doc for doc in documents if doc["kind"] != "Namespace"]
        assert all(doc["metadata"].get("namespace") == "shadow-gateway" for doc in namespaced)


def test_prometheus_rule_is_generated_from_the_rule_files() -> None:
    rule = load_yaml(RULE)
    sources = (
        load_yaml(PROMETHEUS / "alerts.yml")["groups"]
        + load_yaml(PROMETHEUS / "recording.yml")["groups"]
    )
    assert rule["spec"]["groups"] == sources, (
        "deploy/k8s/components/prometheus-operator/prometheusrule.yaml is out of date: run "
        "`.venv/bin/python deploy/k8s/render_prometheus_rule.py`"
    )


# -- the pieces fit ---------------------------------------------------------------------------


def gateway_configs() -> list[tuple[str, GatewayConfig]]:
    return [
        (_rel(path), load_config_file(path))
        for path in (BASE / "config.yaml", OVERLAY / "config.yaml")
    ]


def test_configs_are_valid_for_this_gateway() -> None:
    for _where, config in gateway_configs():
        build_analyses(config)  # comparators and slice rules compile
        assert config.server.workers == 1  # scale with pods; metrics are per pod


def test_gateway_deployment_probes_drain_and_resources() -> None:
    base = base_objects()
    deployment = base[("Deployment", "shadow-gateway")]
    pod = deployment["spec"]["template"]["spec"]
    gateway = container_named(deployment, "gateway")
    served = {route.path for route in health_router.routes}  # type: ignore[attr-defined]
    # /readyz stays 200 through a shared Postgres outage (docs/deploy.md, "Probes").
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["livenessProbe"]["httpGet"]["path"] in served
    assert gateway["readinessProbe"]["httpGet"]["path"] in served
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
    for where, config in gateway_configs():
        assert str(config.data_dir) == mounts["data"], f"{where}: data_dir is not the volume"
        drain = config.server.drain_timeout_s
        needed = int(prestop[1]) + 2 * drain + 10  # + the log queue's last write
        assert pod["terminationGracePeriodSeconds"] >= needed, where
        # Memory: queued records (~0.4 MB each with top_logprobs 5) must fit the limit.
        limit_gib = float(gateway["resources"]["limits"]["memory"].removesuffix("Gi"))
        assert config.log_writer.queue_max * 0.4 / 1024 < limit_gib / 2, where


def test_pdb_hpa_and_service_select_the_gateway() -> None:
    base = base_objects()
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
    port_names = {port["name"] for port in container_named(deployment, "gateway")["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    monitors = yaml_documents(K8S / "components" / "prometheus-operator" / "servicemonitor.yaml")
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
    base = base_objects()
    pods = {
        "gateway": container_named(base[("Deployment", "shadow-gateway")], "gateway"),
        "migrate": container_named(base[("Job", "shadow-gateway-migrate")], "migrate"),
    }
    for where, config in gateway_configs():
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
    hpa = base_objects()[("HorizontalPodAutoscaler", "shadow-gateway")]
    overlay = yaml_documents(OVERLAY / "gateway-scale.yaml")
    overlay_hpa = next(doc for doc in overlay if doc["kind"] == "HorizontalPodAutoscaler")
    most = max(hpa["spec"]["maxReplicas"], overlay_hpa["spec"]["maxReplicas"])
    for where, config in gateway_configs():
        # SQLAlchemy pool + its overflow, plus the log writer's and the listener's connections.
        per_process = 2 * config.database.pool_size + 2
        total = most * config.server.workers * per_process
        assert total <= CONNECTION_BUDGET, f"{where}: {most} pods could open {total} connections"


def test_migrate_job_runs_the_migrate_command() -> None:
    job = base_objects()[("Job", "shadow-gateway-migrate")]
    container = container_named(job, "migrate")
    assert (
        container["image"]
        == container_named(base_objects()[("Deployment", "shadow-gateway")], "gateway")["image"]
    )
    assert "command" not in container  # the image's entrypoint: shadow-gateway
    assert parse_gateway_args(container["args"]).handler is cmd_migrate
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_routes_point_at_the_student_service_and_its_model() -> None:
    base = base_objects()
    student = base[("Deployment", "shadow-gateway-student")]
    vllm = container_named(student, "vllm")
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
    for where, config in gateway_configs():
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


# -- what SREs trip over ----------------------------------------------------------------------


def test_the_documented_secret_command_creates_every_key_the_pods_require() -> None:
    required: set[str] = set()
    read: set[str] = set()
    for _path, document in _written_objects():
        for ref in _secret_key_refs(document):
            if ref["name"] == SECRET:
                read.add(ref["key"])
                if not ref.get("optional", False):
                    required.add(ref["key"])
    assert required, f"no pod reads the Secret {SECRET}"
    for path in (DOCS, BASE / "kustomization.yaml"):
        created = set(secret_command_literals(path))
        # A required key missing from the Secret: the pod fails with CreateContainerConfigError.
        assert required <= created, f"{_rel(path)}: the command lacks {sorted(required - created)}"
        assert created <= read, f"{_rel(path)}: no pod reads {sorted(created - read)}"


def test_no_deployment_an_hpa_scales_sets_replicas() -> None:
    written = _written_objects()
    documents = [document for _path, document in written]
    scaled = _hpa_scaled_deployments(documents)
    assert "shadow-gateway" in scaled
    for path, document in written:  # the base and every patch of a component or overlay
        if document["kind"] == "Deployment" and document["metadata"]["name"] in scaled:
            assert "replicas" not in document["spec"], f"{_rel(path)}: replicas under an HPA"
    for kustomization in _kustomizations():
        spec = load_yaml(kustomization)
        for entry in spec.get("replicas", []):  # kustomize's replicas transformer
            assert entry["name"] not in scaled, f"{_rel(kustomization)}: replicas {entry}"
        for patch in spec.get("patches", []):
            if patch.get("target", {}).get("kind", "Deployment") == "Deployment":
                assert "/spec/replicas" not in patch.get("patch", ""), _rel(kustomization)
    assert base_objects()[("HorizontalPodAutoscaler", "shadow-gateway")]["spec"]["minReplicas"] >= 2


def test_every_container_runs_unprivileged() -> None:
    workloads = [doc for doc in base_objects().values() if doc["kind"] in ("Deployment", "Job")]
    assert len(workloads) == 3
    for workload in workloads:
        _check_unprivileged(workload, _rel(BASE))


def test_pods_run_as_their_image_user() -> None:
    base = base_objects()
    expected = {
        ("Deployment", "shadow-gateway"): image_user(GATEWAY_DOCKERFILE),
        ("Job", "shadow-gateway-migrate"): image_user(GATEWAY_DOCKERFILE),
        ("Deployment", "shadow-gateway-student"): image_user(STUDENT_DOCKERFILE),
    }
    for key, (uid, gid) in expected.items():
        context = base[key]["spec"]["template"]["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), key
        assert context.get("fsGroup", gid) == gid, key
    # The student's weights cache is a volume at the image's HF_HOME, writable through fsGroup.
    student = base[("Deployment", "shadow-gateway-student")]
    mounts = {m["name"]: m["mountPath"] for m in container_named(student, "vllm")["volumeMounts"]}
    assert mounts["hf-cache"] == dockerfile_env(STUDENT_DOCKERFILE)["HF_HOME"]
    assert "fsGroup" in student["spec"]["template"]["spec"]["securityContext"]
