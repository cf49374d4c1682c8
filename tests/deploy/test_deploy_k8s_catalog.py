"""deploy/k8s: the catalog ConfigMap every fetcher container reads, the init-container
pattern with a lock file (the ``locked`` component: every replica installs the same commits),
and the optional ServiceMonitor component (a custom resource, which kubernetes-validate has no
schema for: checked here against the Service and the Deployment instead)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hubless_fakehub import HubMirror
from hubless_fetcher.catalog import Catalog
from hubless_fetcher.cli import main as fetch_main
from hubless_fetcher.errors import ExitCode
from hubless_volume import Manifest, catalog_file
from tests.deploy.deploy_helpers import CUSTOM_KINDS, K8S, OVERLAYS, REPO, parse_dockerfile, tool
from tests.deploy.test_deploy_k8s import K8S_VERSION, build, env_of, mount_config_maps, one

Doc = dict[str, Any]
INIT = "init-container"
CATALOG_MOUNT = "/etc/hubless/catalog"
FETCHER_ENTRYPOINT = parse_dockerfile(REPO / "Dockerfile.fetcher").final.exec_form("ENTRYPOINT")


def kustomize(overlay: Path, *components: Path) -> list[Doc]:
    """``kubectl kustomize`` of ``overlay`` with ``components`` added (as ``kustomize edit add
    component`` does)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(overlay, tmp)],
                    "components": [os.path.relpath(c, tmp) for c in components],
                }
            )
        )
        result = subprocess.run(
            [tool("kubectl"), "kustomize", tmp], capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def fetcher_pods(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(pod spec, container) of every container running the fetcher image."""
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in {"Deployment", "Job"}]
    pods += [
        d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in docs if d["kind"] == "CronJob"
    ]
    return [
        (pod, container)
        for pod in pods
        for container in pod.get("initContainers", []) + pod["containers"]
        if container["image"].startswith("hubless-fetcher")
    ]


def fetch_in_container(
    docs: list[Doc], pod: Doc, container: Doc, folder: Path, **env: str
) -> tuple[int, str]:
    """Run a fetcher container's command (the image ENTRYPOINT and its args) in-process, with
    its environment, its ConfigMap mounts written under ``folder`` and ``env`` on top."""
    values = {k: v["value"] for k, v in env_of(container).items() if "value" in v}
    for target, source in mount_config_maps(docs, pod, container, folder).items():
        values = {k: v.replace(target, str(source)) for k, v in values.items()}
    assert FETCHER_ENTRYPOINT == ["hubless-fetch"] and "command" not in container
    code = fetch_main(container["args"], env={**values, **env})
    return code, values["HUBLESS_CATALOG"]


def test_the_catalog_copy_is_the_packaged_catalog() -> None:
    """deploy/k8s/base/catalog.toml is what the ConfigMap carries: the packaged default,
    byte for byte (copy it again after changing volume/src/hubless_volume/catalog.toml)."""
    copy = K8S / "base" / "catalog.toml"
    assert copy.read_bytes() == catalog_file().read_bytes(), (
        f"cp {catalog_file().relative_to(REPO)} {copy.relative_to(REPO)}"
    )


@pytest.mark.parametrize("variant", [*OVERLAYS, "shared-cache+fetch-cron"])
def test_every_fetcher_reads_the_catalog_config_map(variant: str) -> None:
    overlay, _, component = variant.partition("+")
    root = K8S / "overlays" / overlay
    docs = kustomize(root, *([root / component] if component else []))
    (config,) = [d for d in docs if d["metadata"]["name"].startswith("hubless-catalog")]
    assert config["kind"] == "ConfigMap" and config["metadata"]["name"] != "hubless-catalog"
    assert sorted(config["data"]) == ["catalog.lock.json", "catalog.toml"]  # name hash suffix
    assert config["data"]["catalog.toml"] == catalog_file().read_text(encoding="utf-8")
    pods = fetcher_pods(docs)
    assert len(pods) == {"init-container": 1, "shared-cache": 2}[overlay] + bool(component)
    for pod, container in pods:
        path = Path(env_of(container)["HUBLESS_CATALOG"]["value"])
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
        assert mount["readOnly"] is True and "subPath" not in mount, container["name"]
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == config["metadata"]["name"]
        lock_path = Catalog(models={}, tasks={}, path=path).lock_path
        assert {path.name, lock_path.name} == set(config["data"]), container["name"]


def test_the_placeholder_lock_is_refused_until_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the lock file as shipped (no models), ``fetch --locked`` stops before any
    network (exit 7) and says to run ``hubless-fetch lock``."""
    locked = json.loads((K8S / "base" / "catalog.lock.json").read_text(encoding="utf-8"))
    assert locked == {"version": 1, "models": {}}
    docs = kustomize(K8S / "overlays" / INIT, K8S / "overlays" / INIT / "locked")
    pod = one(docs, "Deployment", "hubless-server")["spec"]["template"]["spec"]
    (fetch,) = [c for c in pod["initContainers"] if c["name"] == "fetch"]
    code, _ = fetch_in_container(
        docs, pod, fetch, tmp_path, HUBLESS_MODELS_DIR=str(tmp_path / "m"), HF_HUB_OFFLINE="1"
    )
    assert code == ExitCode.LOCK_MISMATCH
    assert "run `hubless-fetch lock`" in capsys.readouterr().err


def test_the_locked_component_only_changes_the_fetch_args() -> None:
    plain = kustomize(K8S / "overlays" / INIT)
    docs = kustomize(K8S / "overlays" / INIT, K8S / "overlays" / INIT / "locked")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    pod = one(docs, "Deployment", "hubless-server")["spec"]["template"]["spec"]
    (fetch,) = [c for c in pod["initContainers"] if c["name"] == "fetch"]
    assert fetch["args"] == ["fetch", "--locked"]
    fetch["args"] = ["fetch"]
    assert docs == plain


def test_every_replica_installs_the_locked_commits(hub_mirror: HubMirror, tmp_path: Path) -> None:
    """As documented: ``hubless-fetch lock --catalog deploy/k8s/base/catalog.toml`` (here
    against the local hub) replaces the placeholder; with the component, each pod's init
    container installs exactly those commits, also after upstream moved on."""
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    hub = {"HF_ENDPOINT": hub_mirror.endpoint, "HUBLESS_RETRIES": "2", "HUBLESS_DISK_MARGIN": "0"}
    assert fetch_main(["lock", "--catalog", str(k8s / "base" / "catalog.toml")], env=hub) == 0
    lock = json.loads((k8s / "base" / "catalog.lock.json").read_text(encoding="utf-8"))
    commits = {name: model["commit"] for name, model in lock["models"].items()}
    assert sorted(commits) == sorted(Catalog.load(catalog_file()).models)

    docs = kustomize(k8s / "overlays" / INIT, k8s / "overlays" / INIT / "locked")
    pod = one(docs, "Deployment", "hubless-server")["spec"]["template"]["spec"]
    (fetch,) = [c for c in pod["initContainers"] if c["name"] == "fetch"]
    moved = next(iter(lock["models"].values()))["repo_id"]
    for replica in ("pod-a", "pod-b"):
        volume = tmp_path / replica / "models"
        code, catalog = fetch_in_container(
            docs, pod, fetch, tmp_path / replica, HUBLESS_MODELS_DIR=str(volume), **hub
        )
        assert code == ExitCode.OK
        assert Path(catalog).parent.name == "catalog"
        installed = Manifest.load(volume).models
        assert {name: entry.commit for name, entry in installed.items()} == commits
        # upstream moves on between the two pods' starts: the second still gets the lock
        hub_mirror.update_repo(moved, {"README.md": b"a new commit upstream\n"})
    assert hub_mirror.commits[moved] not in commits.values()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_scrapes_the_metrics_port_of_the_server(overlay: str) -> None:
    docs = build(f"{overlay}+servicemonitor")
    assert not [d for d in build(overlay) if d["kind"] == "ServiceMonitor"]
    monitor = one(docs, "ServiceMonitor")
    assert (monitor["apiVersion"], monitor["kind"]) in CUSTOM_KINDS
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s
        for s in docs
        if s["kind"] == "Service"
        and all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())
    ]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    scraped = [
        s for s in services if any(p["name"] == endpoint["port"] for p in s["spec"]["ports"])
    ]
    assert [s["metadata"]["name"] for s in scraped] == ["hubless"], "each pod scraped once"
    port = next(p for p in scraped[0]["spec"]["ports"] if p["name"] == endpoint["port"])
    deployment = one(docs, "Deployment", "hubless-server")
    server = next(c for c in deployment["spec"]["template"]["spec"]["containers"])
    container_port = next(p for p in server["ports"] if p["name"] == port["targetPort"])
    metrics_port = next(e["value"] for e in server["env"] if e["name"] == "HUBLESS_METRICS_PORT")
    assert str(container_port["containerPort"]) == metrics_port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == metrics_port
    for doc in docs:  # everything else still validates strictly
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
