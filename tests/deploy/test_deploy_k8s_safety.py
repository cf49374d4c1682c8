"""deploy/k8s: the safe defaults every render keeps. An ingress NetworkPolicy (API from labelled
clients, metrics from the monitoring namespace), a PodDisruptionBudget that takes one server at a
time, spread over zones and nodes, ephemeral-storage requests and limits for the init-container
overlay's emptyDir, the stated minimum Kubernetes version (checked against its schemas), the
ServiceMonitor scraping HTTPS with tls-auth, and the documented own kustomization building.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.deploy_helpers import CUSTOM_KINDS, K8S, OVERLAYS, REPO, VARIANTS, tool
from tests.deploy.test_deploy_k8s import K8S_VERSION, build, one, server_container

Doc = dict[str, Any]
#: The oldest Kubernetes the manifests are for: the preStop `sleep` action is beta (on by
#: default) from 1.30. docs/deploy.md and base/kustomization.yaml state it.
MIN_K8S_VERSION = "1.30.0"
DOCS = REPO / "docs" / "deploy.md"
CLIENT_LABEL = {"hubless-client": "true"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}


@functools.cache
def built(variant: str) -> list[Doc]:
    return build(variant)


def server_pod(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", "hubless-server")["spec"]["template"]


def ingress_policies(docs: list[Doc]) -> list[Doc]:
    labels = server_pod(docs)["metadata"]["labels"]
    return [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and "Ingress" in d["spec"]["policyTypes"]
        and all(labels.get(k) == v for k, v in d["spec"]["podSelector"]["matchLabels"].items())
    ]


def gib(quantity: str) -> float:
    assert quantity.endswith("Gi"), quantity
    return float(quantity[:-2])


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_ingress_network_policy_guards_every_server_port(variant: str) -> None:
    """gRPC and HTTP from pods labelled as clients only, metrics from the monitoring
    namespace only, and nothing else from anywhere, except the health-only port of tls-auth
    (for the kubelet's probes); every port a rule names is a port of the server."""
    docs = built(variant)
    (policy,) = ingress_policies(docs)
    server = server_container(one(docs, "Deployment", "hubless-server"))
    ports = {p["name"] for p in server["ports"]}
    sources: dict[str, list[Doc | None]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports"), "a rule without ports would open every port"
        for port in rule["ports"]:
            assert port["port"] in ports, (port, ports)
            sources.setdefault(port["port"], []).extend(rule.get("from") or [None])
    assert sources["grpc"] == [{"podSelector": {"matchLabels": CLIENT_LABEL}}]
    assert sources["http"] == [{"podSelector": {"matchLabels": CLIENT_LABEL}}]
    assert sources["metrics"] == [
        {"namespaceSelector": {"matchLabels": MONITORING}, "podSelector": {}}
    ]
    if "health" in ports:  # tls-auth: plaintext, grpc.health.v1 only
        assert sources["health"] == [None]
    assert set(sources) <= {"grpc", "http", "metrics", "health"}


def test_the_shared_cache_keeps_its_egress_deny_beside_the_ingress_policy() -> None:
    docs = built("shared-cache")
    names = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy")
    assert names == ["hubless-server-deny-egress", "hubless-server-ingress"]
    assert len(ingress_policies(built("init-container"))) == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_disruption_budget_takes_one_server_at_a_time(overlay: str) -> None:
    """maxUnavailable: 1, not minAvailable: 1 (with 6 replicas that lets a drain evict 5)."""
    pdb = one(built(overlay), "PodDisruptionBudget")
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_spread_over_zones_and_nodes(overlay: str) -> None:
    pod = server_pod(built(overlay))
    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in spread.values():
        selector = constraint["labelSelector"]["matchLabels"]
        assert all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"  # never left Pending


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.startswith("init-container")])
def test_the_pod_local_volume_is_accounted_as_ephemeral_storage(variant: str) -> None:
    """Every emptyDir has a sizeLimit, and every container of the pod requests at least what
    they hold together (the scheduler's view) and is limited above that (eviction, not a full
    node)."""
    spec = server_pod(built(variant))["spec"]
    empty_dirs = [v for v in spec["volumes"] if "emptyDir" in v]
    assert {v["name"] for v in empty_dirs} >= {"models", "tmp"}
    held = sum(gib(v["emptyDir"]["sizeLimit"]) for v in empty_dirs)
    assert held >= 20
    for container in spec["initContainers"] + spec["containers"]:
        resources = container["resources"]
        request = gib(resources["requests"]["ephemeral-storage"])
        limit = gib(resources["limits"]["ephemeral-storage"])
        assert held <= request < limit, container["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_manifests_need_the_stated_minimum_kubernetes(variant: str) -> None:
    """Every resource validates strictly against the schemas of the stated minimum; the one of
    1.28 lacks the preStop sleep action, so the minimum is not lower than stated."""
    docs = built(variant)
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, MIN_K8S_VERSION, strict=True)
    deployment = one(docs, "Deployment", "hubless-server")
    assert server_container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.28.0", strict=True)


def test_the_minimum_kubernetes_version_is_stated() -> None:
    minor = ".".join(MIN_K8S_VERSION.split(".")[:2])
    docs = " ".join(DOCS.read_text(encoding="utf-8").split())
    assert f"**Kubernetes {minor} or newer**" in docs
    base = (K8S / "base" / "kustomization.yaml").read_text(encoding="utf-8")
    assert f"Needs Kubernetes {minor} or newer" in base
    assert tuple(map(int, K8S_VERSION.split("."))) >= tuple(map(int, MIN_K8S_VERSION.split(".")))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_with_tls_auth_the_servicemonitor_scrapes_https(overlay: str) -> None:
    plain = one(built(f"{overlay}+servicemonitor"), "ServiceMonitor")
    assert plain["spec"]["endpoints"][0]["scheme"] == "http"
    docs = kustomize_own(
        {
            "resources": [f"../overlays/{overlay}"],
            "components": ["../components/servicemonitor", "../components/tls-auth"],
        }
    )
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"]["name"] == "hubless-tls"
    tls_volumes = [v for v in server_pod(docs)["spec"]["volumes"] if v["name"] == "tls"]
    assert tls_volumes[0]["secret"]["secretName"] == "hubless-tls"


def kustomize_own(kustomization: Doc) -> list[Doc]:
    """``kubectl kustomize`` of a kustomization of the user's own in a folder beside the
    overlays (deploy/k8s/<temporary>), as docs/deploy.md shows, with its relative paths."""
    body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    body.update(kustomization)
    with tempfile.TemporaryDirectory(dir=K8S, prefix="mine-") as tmp:
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
        result = subprocess.run(
            [tool("kubectl"), "kustomize", tmp], capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_documented_kustomization_builds_with_kubectl_alone() -> None:
    """The example of docs/deploy.md ("Your own kustomization") builds as written: the
    registry in every image, the components applied; and no doc or manifest comment asks for
    the separate kustomize binary (`kustomize edit`)."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    (example,) = [yaml.safe_load(b) for b in blocks if "kind: Kustomization" in b]
    docs = kustomize_own(example)
    images = [
        c["image"]
        for d in docs
        if d["kind"] in {"Deployment", "Job"}
        for c in d["spec"]["template"]["spec"].get("initContainers", [])
        + d["spec"]["template"]["spec"]["containers"]
    ]
    assert images and all(i.startswith("registry.example.com/hubless-") for i in images), images
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "https"
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, MIN_K8S_VERSION, strict=True)
    texts = [DOCS, *K8S.rglob("*.yaml")]
    assert not [p for p in texts if "kustomize edit" in p.read_text(encoding="utf-8")]
