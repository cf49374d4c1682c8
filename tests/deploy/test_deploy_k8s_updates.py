"""deploy/k8s, updating models: the shared-cache servers follow the volume (a reload interval),
and the optional ``fetch-cron`` component of that overlay (a CronJob running the fetch Job's
pod with ``--refresh``) builds as a user adds it, validates strictly and stays out of the
default render."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hubless_fetcher import settings as fetcher_settings
from hubless_server.core import flags as server_config
from tests.deploy.deploy_helpers import K8S, REPO, tool
from tests.deploy.test_deploy_k8s import K8S_VERSION, env_of, one, selects, server_container

Doc = dict[str, Any]
SHARED = "shared-cache"
FETCHER_SOURCE = (REPO / "fetcher" / "src" / "hubless_fetcher" / "settings.py").read_text(
    encoding="utf-8"
)


def _kustomize(root: Path) -> list[Doc]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(root)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def default() -> list[Doc]:
    return _kustomize(K8S / "overlays" / SHARED)


@pytest.fixture(scope="module")
def with_cron(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    """The overlay after ``kustomize edit add component fetch-cron``, on a copy of deploy/k8s."""
    k8s = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, k8s)
    kustomization = k8s / "overlays" / SHARED / "kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
    data["components"] = [*data.get("components", []), "fetch-cron"]
    kustomization.write_text(yaml.safe_dump(data), encoding="utf-8")
    return _kustomize(k8s / "overlays" / SHARED)


def test_the_default_render_has_no_cronjob(default: list[Doc], with_cron: list[Doc]) -> None:
    assert not [d for d in default if d["kind"] == "CronJob"]
    assert len([d for d in with_cron if d["kind"] == "CronJob"]) == 1
    names = {(d["kind"], d["metadata"]["name"]) for d in default}
    assert names < {(d["kind"], d["metadata"]["name"]) for d in with_cron}


def test_shared_cache_servers_follow_the_volume(default: list[Doc]) -> None:
    server = server_container(one(default, "Deployment", "hubless-server"))
    env = {k: v["value"] for k, v in env_of(server).items() if "value" in v}
    assert float(env["HUBLESS_RELOAD_INTERVAL"]) > 0
    settings = server_config.load_settings([], environ=env)
    assert settings.reload_interval == float(env["HUBLESS_RELOAD_INTERVAL"])


def test_every_resource_with_the_component_validates_strictly(with_cron: list[Doc]) -> None:
    for doc in with_cron:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_cronjob_runs_the_fetch_jobs_pod_with_refresh(with_cron: list[Doc]) -> None:
    cron = one(with_cron, "CronJob")
    job = one(with_cron, "Job", "hubless-fetch")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert pod["metadata"]["labels"] == job["spec"]["template"]["metadata"]["labels"]
    spec, job_spec = pod["spec"], job["spec"]["template"]["spec"]
    steps = ("initContainers", "containers")
    assert {k: v for k, v in spec.items() if k not in steps} == {
        k: v for k, v in job_spec.items() if k not in steps
    }  # same volume (the shared PVC, writable), security context, restart policy
    assert spec["containers"] == job_spec["containers"]  # then hubless-optimize, the same
    (fetcher,) = spec["initContainers"]
    (job_fetcher,) = job_spec["initContainers"]
    assert fetcher["args"] == ["fetch", "--refresh"]
    assert fetcher["image"] == job_fetcher["image"]
    for key in ("resources", "securityContext", "volumeMounts"):
        assert fetcher[key] == job_fetcher[key], key
    env = env_of(fetcher)
    assert {k: v for k, v in env.items() if k != "HUBLESS_KEEP_PREVIOUS"} == env_of(job_fetcher)
    values = {k: v["value"] for k, v in env.items() if "value" in v}
    assert all(f'"{k}"' in FETCHER_SOURCE for k in values if k.startswith("HUBLESS_"))
    settings = fetcher_settings.Settings.from_env(values)
    assert str(settings.models_dir) == "/models" and str(settings.keep_previous) == "last"


def test_the_cronjob_is_not_denied_egress(with_cron: list[Doc]) -> None:
    labels = one(with_cron, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]
    for policy in (d for d in with_cron if d["kind"] == "NetworkPolicy"):
        assert not selects(policy["spec"]["podSelector"]["matchLabels"], labels["labels"])
