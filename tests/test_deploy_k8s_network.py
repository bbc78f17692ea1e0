"""The NetworkPolicies of deploy/k8s/components/network-policy, read as a network plugin reads them.

tests/test_deploy_k8s.py validates them against the schemas (the component's files are
resources) and builds the example overlay, which includes them. Here, what they allow:

- Each workload of the base is selected by exactly one policy, and each policy selects one.
- The gateway reaches what its configs name (DNS, Postgres at the docs' DATABASE_URL port, every
  teacher, the student pods behind the student URLs), and nothing else; apps reach it on its
  port from any namespace.
- The student accepts the gateway and Prometheus on its port, and no one else.
- The migrations reach DNS and Postgres, and accept nothing.

The model: a peer is a pod (its namespace's labels and its own) or an address outside the pod
network. Traffic to and from the pod's own node (the kubelet's probes) is always allowed by
Kubernetes, so it is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.test_deploy_k8s import (
    DOCS,
    K8S,
    OVERLAY,
    base_objects,
    gateway_configs,
    load_yaml,
    secret_command_literals,
    yaml_documents,
)

COMPONENT = K8S / "components" / "network-policy"
NAMESPACE = {"kubernetes.io/metadata.name": "shadow-gateway"}  # what the overlay deploys into
DEFAULT_PORTS = {"https": 443, "http": 80, "postgresql": 5432}


@dataclass(frozen=True)
class Peer:
    """The other end of a connection. ``labels`` None: an address outside the pod network."""

    labels: dict[str, str] | None = None
    namespace: dict[str, str] = field(default_factory=lambda: dict(NAMESPACE))
    ports: dict[str, int] = field(default_factory=dict)  # its named container ports


OUTSIDE = Peer()
KUBE_DNS = Peer({"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"})
APP = Peer({"app": "checkout"}, {"kubernetes.io/metadata.name": "shop"})
PROMETHEUS = Peer(
    {"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"}
)
POSTGRES_IN_CLUSTER = Peer({"cnpg.io/cluster": "pg"}, {"kubernetes.io/metadata.name": "db"})


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"model matchLabels only: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(entry: dict[str, Any], peer: Peer) -> bool:
    if "ipBlock" in entry:  # only "anywhere" is modelled; a pod's address is not predictable
        return peer.labels is None and entry["ipBlock"]["cidr"] in ("0.0.0.0/0", "::/0")
    if peer.labels is None:
        return False
    if "namespaceSelector" in entry:
        namespace_ok = _selects(entry["namespaceSelector"], peer.namespace)
    else:
        namespace_ok = peer.namespace == NAMESPACE  # a podSelector alone: the policy's namespace
    return namespace_ok and _selects(entry.get("podSelector", {}), peer.labels)


def _port_matches(entry: dict[str, Any], port: int, protocol: str, named: dict[str, int]) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    wanted = entry.get("port")
    if wanted is None:
        return True
    number = named.get(wanted) if isinstance(wanted, str) else wanted
    return number == port if "endPort" not in entry else number <= port <= entry["endPort"]


def _allows(
    policy: dict[str, Any],
    direction: str,
    peer: Peer,
    port: int,
    protocol: str = "TCP",
    own_ports: dict[str, int] | None = None,
) -> bool:
    """Whether this policy lets the connection through (``direction``: Ingress or Egress)."""
    spec = policy["spec"]
    if direction not in spec["policyTypes"]:
        return True
    # A named port is the selected pod's for ingress, the destination pod's for egress.
    named = (own_ports or {}) if direction == "Ingress" else peer.ports
    peers_key = "from" if direction == "Ingress" else "to"
    return any(
        (not rule.get(peers_key) or any(_peer_matches(e, peer) for e in rule[peers_key]))
        and (
            not rule.get("ports")
            or any(_port_matches(e, port, protocol, named) for e in rule["ports"])
        )
        for rule in spec.get(direction.lower(), [])
    )


def _policies() -> list[dict[str, Any]]:
    component = load_yaml(COMPONENT / "kustomization.yaml")
    assert component["kind"] == "Component"
    documents = [
        doc for entry in component["resources"] for doc in yaml_documents(COMPONENT / entry)
    ]
    assert all(doc["kind"] == "NetworkPolicy" for doc in documents)
    return documents


def _workload(kind: str, name: str) -> tuple[Peer, dict[str, Any]]:
    """The workload's pods as a peer (in the policies' namespace), and the one policy on them."""
    workload = base_objects()[(kind, name)]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    ports = {
        port["name"]: port["containerPort"]
        for container in workload["spec"]["template"]["spec"]["containers"]
        for port in container.get("ports", [])
    }
    (policy,) = [p for p in _policies() if _selects(p["spec"]["podSelector"], labels)]
    return Peer(labels, ports=ports), policy


def _url_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or DEFAULT_PORTS[parts.scheme]


# -- the tests --------------------------------------------------------------------------------


def test_every_workload_has_exactly_one_policy_and_the_overlay_uses_them() -> None:
    workloads = [doc for doc in base_objects().values() if doc["kind"] in ("Deployment", "Job")]
    policies = _policies()
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selecting = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert len(selecting) == 1, f"{workload['metadata']['name']}: {len(selecting)} policies"
    for policy in policies:
        labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
        assert any(_selects(policy["spec"]["podSelector"], found) for found in labels)
        assert policy["spec"]["podSelector"]["matchLabels"], "an empty selector takes every pod"
    overlay = load_yaml(OVERLAY / "kustomization.yaml")
    assert "../../components/network-policy" in overlay["components"]


def test_the_gateway_reaches_what_its_configs_name_and_nothing_else() -> None:
    _gateway, policy = _workload("Deployment", "shadow-gateway")
    assert "Egress" in policy["spec"]["policyTypes"]
    for protocol in ("UDP", "TCP"):
        for resolver in (KUBE_DNS, OUTSIDE):  # kube-dns, or a node-local cache
            assert _allows(policy, "Egress", resolver, 53, protocol)
    database_url = secret_command_literals(DOCS)["DATABASE_URL"]
    postgres_port = _url_port(database_url)
    for postgres in (OUTSIDE, POSTGRES_IN_CLUSTER):  # a managed service, or an operator's pods
        assert _allows(policy, "Egress", postgres, postgres_port), "Postgres"

    student, _ = _workload("Deployment", "shadow-gateway-student")
    services = {name: doc for (kind, name), doc in base_objects().items() if kind == "Service"}
    allowed: set[int] = {53, postgres_port}
    for where, config in gateway_configs():
        for route in config.routes:
            teacher_port = _url_port(str(route.teacher.base_url))
            assert _allows(policy, "Egress", OUTSIDE, teacher_port), f"{where}: {route.name}"
            allowed.add(teacher_port)
            assert route.student is not None
            for base_url in route.student.base_urls:
                # A policy sees the pod behind the Service: its labels and its container port.
                service = services[str(urlsplit(str(base_url)).hostname)]
                assert _selects({"matchLabels": service["spec"]["selector"]}, student.labels or {})
                (service_port,) = service["spec"]["ports"]
                pod_port = student.ports[service_port["targetPort"]]
                assert _allows(policy, "Egress", student, pod_port), f"{where}: {base_url}"
                assert not _allows(policy, "Egress", OUTSIDE, pod_port), "student port: pods only"
    for port in (22, 80, 3306, 6379, 8080, 9090):
        if port not in allowed:
            assert not _allows(policy, "Egress", OUTSIDE, port), port
            assert not _allows(policy, "Egress", APP, port), port


def test_the_gateway_accepts_apps_and_prometheus_on_its_port_only() -> None:
    gateway, policy = _workload("Deployment", "shadow-gateway")
    assert "Ingress" in policy["spec"]["policyTypes"]
    port = gateway.ports["http"]
    for caller in (APP, PROMETHEUS, Peer({"app": "other"})):
        assert _allows(policy, "Ingress", caller, port, own_ports=gateway.ports), caller
        assert not _allows(policy, "Ingress", caller, port + 1, own_ports=gateway.ports)
    # The pods' prometheus.io/port annotation is the port allowed.
    deployment = base_objects()[("Deployment", "shadow-gateway")]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port


def test_the_student_accepts_only_the_gateway_and_prometheus() -> None:
    student, policy = _workload("Deployment", "shadow-gateway-student")
    gateway, _ = _workload("Deployment", "shadow-gateway")
    migrate, _ = _workload("Job", "shadow-gateway-migrate")
    assert "Ingress" in policy["spec"]["policyTypes"]
    port = student.ports["http"]  # what the Service targets and Prometheus scrapes
    assert _allows(policy, "Ingress", gateway, port, own_ports=student.ports)
    assert _allows(policy, "Ingress", PROMETHEUS, port, own_ports=student.ports)
    for stranger in (
        APP,
        OUTSIDE,
        migrate,
        Peer({"app": "other"}),  # any other pod of the namespace
        Peer(gateway.labels, {"kubernetes.io/metadata.name": "elsewhere"}),  # a lookalike
        Peer(PROMETHEUS.labels, {"kubernetes.io/metadata.name": "shop"}),  # a lookalike
        Peer({"app": "grafana"}, PROMETHEUS.namespace),  # not Prometheus
    ):
        assert not _allows(policy, "Ingress", stranger, port, own_ports=student.ports), stranger
    assert not _allows(policy, "Ingress", gateway, port + 1, own_ports=student.ports)
    deployment = base_objects()[("Deployment", "shadow-gateway-student")]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port


def test_the_migrations_reach_postgres_and_accept_nothing() -> None:
    _migrate, policy = _workload("Job", "shadow-gateway-migrate")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not policy["spec"].get("ingress"), "nothing calls the migrations"
    database_url = secret_command_literals(DOCS)["DATABASE_URL"]
    postgres_port = _url_port(database_url)
    assert _allows(policy, "Egress", OUTSIDE, postgres_port)
    assert _allows(policy, "Egress", KUBE_DNS, 53, "UDP")
    for port in (80, 443, 8000, 8080):
        assert not _allows(policy, "Egress", OUTSIDE, port), port


@pytest.mark.parametrize("policy", _policies(), ids=lambda p: p["metadata"]["name"])
def test_named_ports_are_ports_of_the_selected_pods(policy: dict[str, Any]) -> None:
    pods = [
        _workload(kind, name)[0] for kind, name in base_objects() if kind in ("Deployment", "Job")
    ]
    (own,) = [pod for pod in pods if _selects(policy["spec"]["podSelector"], pod.labels or {})]
    for rule in policy["spec"].get("ingress", []):
        for entry in rule.get("ports", []):
            if isinstance(entry.get("port"), str):  # an ingress rule's named port is the pod's
                assert entry["port"] in own.ports, f"{policy['metadata']['name']}: {entry}"
