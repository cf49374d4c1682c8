"""Every setting the deployment files give the server or the fetcher is one they know, with a
value they accept: a misspelt ``HUBLESS_*`` variable would otherwise be silently ignored."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
import yaml

from hubless_fetcher import settings as fetcher_settings
from hubless_server.core import flags as server_config
from tests.deploy.deploy_helpers import (
    COMPONENTS,
    DEPLOY,
    K8S,
    OVERLAYS,
    REPO,
    VARIANTS,
    compose_env,
    parse_dockerfile,
)
from tests.deploy.test_deploy_k8s import build, env_of, one, server_container

SERVER_VARS = {server_config.env_name(f.name) for f in dataclasses.fields(server_config.Settings)}
FETCHER_SOURCE = (REPO / "fetcher" / "src" / "hubless_fetcher" / "settings.py").read_text(
    encoding="utf-8"
)


def _compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8"))


def _defined(env: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in env.items() if v is not None}


def _k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's env with resourceFieldRef (limits.cpu) resolved as the kubelet does."""
    out: dict[str, str] = {}
    for name, item in env_of(container).items():
        if "value" in item:
            out[name] = item["value"]
        elif "resourceFieldRef" in item["valueFrom"]:
            ref = item["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu" and ref["divisor"] == "1"
            out[name] = str(int(container["resources"]["limits"]["cpu"]))
    return out


@functools.cache
def built(overlay: str) -> list[dict[str, Any]]:
    return build(overlay)


SERVER_WHERE = ["Dockerfile.server", "compose", "compose+gpu", "compose+tls", "compose+trust"] + [
    f"k8s/{v}" for v in VARIANTS
]
FETCHER_WHERE = [
    "Dockerfile.fetcher",
    "compose",
    "k8s/init-container/fetch",
    "k8s/shared-cache/wait-for-models",
    "k8s/shared-cache/fetch",
]


@functools.cache
def server_environments() -> dict[str, dict[str, str]]:
    """Where the server gets its environment, image defaults first."""
    image = parse_dockerfile(REPO / "Dockerfile.server").final.env()
    base = _defined(compose_env(_compose("docker-compose.yml")["services"]["server"]))
    gpu = _defined(compose_env(_compose("docker-compose.gpu.yml")["services"]["server"]))
    tls = _defined(compose_env(_compose("docker-compose.tls.yml")["services"]["server"]))
    trust = _defined(compose_env(_compose("docker-compose.trust.yml")["services"]["server"]))
    envs = {
        "Dockerfile.server": image,
        "compose": {**image, **base},
        "compose+gpu": {**image, **base, **gpu},
        "compose+tls": {**image, **base, **tls},
        "compose+trust": {**image, **base, **trust},
    }
    for variant in VARIANTS:
        container = server_container(one(built(variant), "Deployment", "hubless-server"))
        envs[f"k8s/{variant}"] = {**image, **_k8s_env(container)}
    return envs


def test_every_server_environment_is_checked() -> None:
    assert list(server_environments()) == SERVER_WHERE


@pytest.mark.parametrize("where", SERVER_WHERE)
def test_server_accepts_its_deployment_settings(where: str) -> None:
    env = server_environments()[where]
    unknown = sorted(k for k in env if k.startswith("HUBLESS_") and k not in SERVER_VARS)
    assert not unknown, f"{where}: hubless-serve does not know {unknown}"
    settings = server_config.load_settings([], environ=env)
    assert str(settings.models_dir) == "/models"
    assert settings.host == "0.0.0.0"
    assert (settings.port, settings.metrics_port) == (50051, 9090)
    # The HTTP API: off in the bare image, on 8080 wherever a deployment publishes it.
    assert settings.http_port == (0 if where == "Dockerfile.server" else 8080)
    assert settings.grace_period == 20
    if where == "compose+gpu":
        assert settings.device == "cuda"
    if where.endswith("tls") or where.endswith("tls-auth"):
        assert settings.tls_cert_file and settings.tls_key_file and settings.auth_token_file
        assert settings.health_port not in (0, settings.port, settings.metrics_port)
    trusted = where.endswith("trust") or where.endswith("trusted-key")
    assert (settings.trusted_key is not None) == trusted


def test_kubernetes_threads_follow_the_cpu_limit() -> None:
    for overlay in OVERLAYS:
        container = server_container(one(built(overlay), "Deployment", "hubless-server"))
        settings = server_config.load_settings([], environ=_k8s_env(container))
        assert settings.threads == int(container["resources"]["limits"]["cpu"])


@functools.cache
def fetcher_environments() -> dict[str, dict[str, str]]:
    image = parse_dockerfile(REPO / "Dockerfile.fetcher").final.env()
    compose = _defined(compose_env(_compose("docker-compose.yml")["services"]["fetcher"]))
    envs = {"Dockerfile.fetcher": image, "compose": {**image, **compose}}
    for overlay in OVERLAYS:
        docs = built(overlay)
        specs = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in {"Deployment", "Job"}]
        for spec in specs:
            for container in spec.get("initContainers", []) + spec["containers"]:
                if container["image"].startswith("hubless-fetcher"):
                    key = f"k8s/{overlay}/{container['name']}"
                    envs[key] = {**image, **_k8s_env(container)}
    return envs


def test_every_fetcher_environment_is_checked() -> None:
    assert sorted(fetcher_environments()) == sorted(FETCHER_WHERE)


@pytest.mark.parametrize("where", FETCHER_WHERE)
def test_fetcher_accepts_its_deployment_settings(where: str) -> None:
    env = fetcher_environments()[where]
    unknown = sorted(k for k in env if k.startswith("HUBLESS_") and f'"{k}"' not in FETCHER_SOURCE)
    assert not unknown, f"{where}: hubless-fetch does not know {unknown}"
    settings = fetcher_settings.Settings.from_env(env)
    assert str(settings.models_dir) == "/models"


def test_k8s_dir_has_only_the_two_documented_overlays() -> None:
    assert sorted(p.name for p in (K8S / "overlays").iterdir()) == sorted(OVERLAYS)
    assert sorted(p.name for p in (K8S / "components").iterdir()) == sorted(COMPONENTS)
